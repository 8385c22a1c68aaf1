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
from packaging.specifiers import SpecifierSet
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


# Installing from the lock again is the fix for a .venv that strayed from it; `make lock` is not (it
# upgrades and rewrites the committed lock).
REINSTALL = ("reinstall from the lock: `rm .venv/.installed && make test` (`make lock` only to move the lock "
             "to newer versions on purpose)")


def project_requirements() -> list[Requirement]:
    """pyproject.toml's requirements, its extras (test, dask) included, that apply on this platform."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return applicable([*project["dependencies"], *extras["test"], *extras["dask"]])


def applicable(lines: list[str]) -> list[Requirement]:
    """The requirements whose environment marker holds here (``; sys_platform == "win32"`` does not on Linux)."""
    requirements = map(Requirement, lines)
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def disagreements(pins: dict[str, Version], requirements: list[Requirement]) -> list[str]:
    """What in the lock ``pins`` contradicts ``requirements``: each requirement pinned, at a version it allows."""
    problems = ["the lock pins omnidistill itself (it is installed from the checkout)"] if "omnidistill" in pins else []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not pinned (pyproject.toml: {requirement})")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is pinned, pyproject.toml asks for {requirement}")
    return problems


def test_every_requirement_of_pyproject_is_pinned_in_the_lock_at_a_version_it_allows():
    problems = disagreements(read_lock(LOCK), project_requirements())
    assert problems == [], f"constraints.txt disagrees with pyproject.toml: {problems}; update it with `make lock`"


def _tree(requirements: list[Requirement]) -> dict[str, str]:
    """Every distribution the requirements need, as installed here: canonical name -> version."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()  # dependency cycles exist (a package and its extras)
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dist = metadata.distribution(name)
        found.setdefault(name, dist.version)
        for sub in map(Requirement, dist.requires or []):
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append((sub, frozenset(sub.extras)))
    return found


def drift(pins: dict[str, Version], installed: dict[str, str]) -> list[str]:
    """How ``installed`` (name -> version) strays from the lock ``pins``."""
    problems = [f"{name}=={version} is installed but not pinned" for name, version in sorted(installed.items())
                if name not in pins]
    problems += [f"{name}=={version} is installed, the lock pins {pins[name]}"
                 for name, version in sorted(installed.items()) if name in pins and Version(version) != pins[name]]
    return problems


def test_what_is_installed_here_is_what_the_lock_pins():
    """The tests run on the locked versions (a package installed past the lock fails here)."""
    problems = drift(read_lock(LOCK), _tree(project_requirements()))
    assert problems == [], f"installed here, not as constraints.txt says: {problems}; {REINSTALL}"


def _dist_info(folder: Path, name: str, *requires: str) -> None:
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0", "Provides-Extra: x",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_the_dependency_walk_ends_on_a_cycle_and_follows_extras(tmp_path, monkeypatch):
    _dist_info(tmp_path, "cycle-a", "cycle-b", 'cycle-c; extra == "x"')
    _dist_info(tmp_path, "cycle-b", "cycle-a[x]")  # a -> b -> a[x] -> b ...
    _dist_info(tmp_path, "cycle-c", 'cycle-a; python_version < "3"')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _tree([Requirement("cycle-a")]) == {"cycle-a": "1.0", "cycle-b": "1.0", "cycle-c": "1.0"}
    assert {"prefect-dask", "distributed", "moto", "sqlalchemy"} <= set(_tree(project_requirements()))


def test_requirements_for_another_platform_are_not_asked_of_the_lock():
    assert [str(r) for r in applicable(['pywin32>=300; sys_platform == "win32"', "prefect>=3.9"])] == ["prefect>=3.9"]


def test_a_lock_that_disagrees_with_pyproject_or_with_what_is_installed_is_caught(tmp_path):
    requirements = project_requirements()
    good = read_lock(LOCK)
    bad = LOCK.read_text().replace(f"prefect-dask=={good['prefect-dask']}\n", "")
    bad = re.sub(r"(?im)^sqlalchemy==.*$", "SQLAlchemy==2.1.9", bad) + "omnidistill==0.1.0\n"
    (tmp_path / "constraints.txt").write_text(bad)
    pins = read_lock(tmp_path / "constraints.txt")
    assert disagreements(pins, requirements) == [
        "the lock pins omnidistill itself (it is installed from the checkout)",
        "sqlalchemy==2.1.9 is pinned, pyproject.toml asks for sqlalchemy<2.1,>=2.0",
        "prefect-dask is not pinned (pyproject.toml: prefect-dask>=0.3)",
        "prefect-dask is not pinned (pyproject.toml: prefect-dask>=0.3)"]  # in [test] and in [dask]
    installed = _tree(requirements)
    assert drift(pins, installed) == [f"prefect-dask=={installed['prefect-dask']} is installed but not pinned",
                                      f"sqlalchemy=={installed['sqlalchemy']} is installed, the lock pins 2.1.9"]
    assert drift(good, installed) == []
    (tmp_path / "loose.txt").write_text("prefect>=3.9\n")
    with pytest.raises(AssertionError, match=r"loose.txt:1: 'prefect>=3.9' is not 'name==version'"):
        read_lock(tmp_path / "loose.txt")


def test_requires_python_is_prefects_and_every_locked_package_runs_on_the_lowest_python_it_admits():
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert requires == SpecifierSet(metadata.metadata("prefect")["Requires-Python"])
    lowest = next(f"3.{minor}.0" for minor in range(6, 20) if requires.contains(f"3.{minor}.0"))
    refusing = {name: needs for name in _tree(project_requirements())
                if (needs := metadata.metadata(name).get("Requires-Python")) and not SpecifierSet(needs).contains(lowest)}
    assert refusing == {}, f"pyproject.toml's requires-python admits Python {lowest}, these do not: {refusing}"
    makefile = (ROOT / "Makefile").read_text()
    assert "sys.exit(sys.version_info < (3, 11))" in makefile  # checked before .venv is made


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
    from flows.runners import DASK_EXTRA  # the install an ImportError tells a user to run

    assert "pip install -c constraints.txt" in DASK_EXTRA, DASK_EXTRA
