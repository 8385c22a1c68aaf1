# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first and install
# the versions the tests passed with (constraints.txt, the lock).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt

.PHONY: demo test quick-demo bench clean lock

# Prefect 3.9 and the locked numpy need Python 3.11 or newer (pyproject.toml's requires-python).
PYTHON_OK = $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	echo "omnidistill needs Python 3.11+ ($(PYTHON) is $$($(PYTHON) --version 2>&1)); run make PYTHON=python3.11 ..." >&2; exit 1; }

$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON_OK)
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

# Two pytest workers (pytest-xdist), a test file each at a time, one torch thread each: on CI's 2 cores
# the flow tests' waits (servers, subprocesses) overlap the other worker's compute, and two torch
# processes of one thread each do not slow each other down as two of two threads do.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Updating the lock on purpose (on Linux x86_64: the lock holds torch's CUDA wheels for it): the
# newest versions pyproject.toml allows, resolved in a fresh temporary venv (so nothing installed by
# hand into .venv gets pinned) and written to constraints.txt. Then `make test` (it reinstalls .venv
# from the new lock); commit constraints.txt if it passes.
lock:
	@$(PYTHON_OK)
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv $$tmp; \
	$$tmp/bin/python -m pip install --quiet --upgrade pip; \
	$$tmp/bin/python -m pip install --quiet --upgrade-strategy eager -e '.[test,dask]'; \
	{ echo "# pip constraints: the versions the tests pass with (all of them). Written by 'make lock' (pip freeze of a fresh venv)."; \
	  echo "# Used by make demo/test, the Dockerfile and the worker install: pip install -c constraints.txt ..."; \
	  $$tmp/bin/python -m pip freeze --all --exclude-editable --exclude pip; } > $(LOCK).tmp; \
	mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf demo-runs .pytest_cache
