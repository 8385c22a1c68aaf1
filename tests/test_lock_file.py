"""constraints.txt, the lock: every package pinned, agreeing with pyproject.toml, installed here, and
used by every install (Makefile, Dockerfile, docker-compose.yml, the README's worker install)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)")


def read_lock(path: Path) -> dict[str, Version]:
    """Package name (canonical) -> pinned version; every line a comment or ``name==version``."""
    pins: dict[str, Version] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.fullmatch(line)
        assert match, f"{path.name}:{number}: {line!r} is not 'name==version'"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"{path.name}:{number}: {name} is pinned twice"
        pins[name] = Version(match["version"])
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_every_requirement_of_pyproject_is_pinned_in_the_lock_at_a_version_it_allows():
    pins = read_lock(LOCK)
    assert "omnidistill" not in pins  # the project itself is installed from the checkout
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt: {requirement.name} is not pinned (pyproject.toml: {requirement})"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, pyproject.toml asks for {requirement}: run `make lock`")


def _tree(requirements: list[Requirement]) -> dict[str, str]:
    """Every distribution the requirements need, as installed here: canonical name -> version."""
    found: dict[str, str] = {}
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        dist = metadata.distribution(name)
        if name not in found:
            found[name] = dist.version
        for sub in map(Requirement, dist.requires or []):
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append((sub, frozenset(sub.extras)))
    return found


def test_what_is_installed_here_is_what_the_lock_pins():
    """The tests run on the locked versions (a package installed past the lock fails here)."""
    pins = read_lock(LOCK)
    installed = _tree(project_requirements())
    unpinned = sorted(name for name in installed if name not in pins)
    assert unpinned == [], f"installed but not in constraints.txt: {unpinned}; run `make lock`"
    drifted = {name: (version, str(pins[name])) for name, version in installed.items()
               if Version(version) != pins[name]}
    assert drifted == {}, f"installed (left) differs from constraints.txt (right): {drifted}"


def test_a_lock_that_disagrees_with_pyproject_is_caught(tmp_path):
    (tmp_path / "constraints.txt").write_text("# a comment\nSQLAlchemy==2.1.9\nprefect==3.9.0\n")
    pins = read_lock(tmp_path / "constraints.txt")
    [sqlalchemy] = [r for r in project_requirements() if canonicalize_name(r.name) == "sqlalchemy"]
    assert not sqlalchemy.specifier.contains(pins["sqlalchemy"])
    (tmp_path / "loose.txt").write_text("prefect>=3.9\n")
    with pytest.raises(AssertionError, match=r"loose.txt:1: 'prefect>=3.9' is not 'name==version'"):
        read_lock(tmp_path / "loose.txt")


def test_prefect_yaml_names_the_locked_prefect():
    spec = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    assert Version(spec["prefect-version"]) == read_lock(LOCK)["prefect"]


def test_every_install_uses_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject.toml \$\(LOCK\)$", makefile, re.M)
    assert "LOCK   := constraints.txt" in makefile and "pip install --quiet -c $(LOCK) -e '.[test]'" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY .*\bconstraints.txt\b", dockerfile, re.M)
    assert re.search(r"^RUN pip install -c constraints.txt \.$", dockerfile, re.M)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["prefect-server"]["build"] == compose["worker"]["build"] == "."  # not a floating image
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^`\n]*", readme)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
