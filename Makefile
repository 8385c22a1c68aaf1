# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first and install
# the versions the tests passed with (constraints.txt, the lock).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt

.PHONY: demo test quick-demo bench clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned in pyproject.toml; pip (not uv/poetry) takes them from local disk.
	# -c: every package at the version constraints.txt names (pip refuses a pyproject.toml it contradicts).
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/omnidistill demo

quick-demo: $(STAMP)
	$(BIN)/omnidistill demo --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Updating the lock on purpose: .venv upgraded to the newest versions pyproject.toml allows, and
# those written to constraints.txt. Then `make test`; commit constraints.txt if it passes.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	{ echo "# pip constraints: the versions the tests pass with (all of them). Written by 'make lock' (pip freeze of .venv)."; \
	  echo "# Used by make demo/test, the Dockerfile and the worker install: pip install -c constraints.txt ..."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --exclude pip; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	touch $(STAMP)

clean:
	rm -rf demo-runs .pytest_cache
