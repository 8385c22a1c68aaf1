"""Golden files: small stored expectations, so that a numeric drift fails a test.

The pattern is torchvision's ``_assert_expected`` (``test/test_models.py``): a test computes a
result from fixed, seeded, hand-sized inputs and compares it with ``tests/expected/<name>.json``.
The file is written on purpose only, by running the test with ``OMNIDISTILL_ACCEPT=1``::

    OMNIDISTILL_ACCEPT=1 .venv/bin/pytest -q tests/ensemble/test_golden_merge.py

which (re)writes the file instead of comparing; review the diff before committing it. A missing
file without the variable fails and says that command.

Values are stored as JSON with Python's full float ``repr`` (exact round trip). Integers, strings,
booleans, ``None`` and the structure (keys, lengths) must match exactly; floats within
``|actual - expected| <= atol + rtol * |expected|`` (defaults 1e-6 both; NaN equals NaN only).
Tensors and arrays become nested lists, tuples lists, numpy scalars Python numbers, and mapping
keys strings (as JSON keeps them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dd_core.storage.fs import write_bytes_atomic

EXPECTED_DIR = Path(__file__).parent / "expected"
ACCEPT_ENV = "OMNIDISTILL_ACCEPT"
MAX_BYTES = 20_000
"""A golden file is a small, reviewable expectation, not a data dump (torchvision caps its at 50 KB)."""

_SHOWN = 10  # mismatches listed in one failure


def accepting() -> bool:
    """Whether this run (re)writes golden files instead of comparing (``OMNIDISTILL_ACCEPT=1``)."""
    return os.environ.get(ACCEPT_ENV, "") not in ("", "0")


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON types: tensors/arrays -> nested lists, tuples -> lists, keys -> strings."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a golden file: {value!r}")


def dumps(value: Any) -> str:
    """Indented JSON, with every list of scalars on one line (short files, readable diffs)."""
    return _dumps(to_jsonable(value), 0) + "\n"


def _dumps(value: Any, level: int) -> str:
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def mismatches(actual: Any, expected: Any, rtol: float = 1e-6, atol: float = 1e-6, where: str = "$") -> list[str]:
    """Every difference between ``actual`` and ``expected`` (both JSON types), each naming its path."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {type(actual).__name__}"]
        if actual.keys() != expected.keys():
            return [f"{where}: keys {sorted(actual)} != expected {sorted(expected)}"]
        return [m for k in sorted(expected) for m in mismatches(actual[k], expected[k], rtol, atol, f"{where}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {type(actual).__name__}"]
        if len(actual) != len(expected):
            return [f"{where}: length {len(actual)} != expected {len(expected)}"]
        pairs = enumerate(zip(actual, expected))
        return [m for i, (a, e) in pairs for m in mismatches(a, e, rtol, atol, f"{where}[{i}]")]
    if isinstance(expected, float):
        if not isinstance(actual, float) or isinstance(actual, bool):
            return [f"{where}: expected a float {expected!r}, got {actual!r}"]
        if math.isnan(expected) and math.isnan(actual):
            return []
        if not abs(actual - expected) <= atol + rtol * abs(expected):  # NaN or inf differences fail too
            return [f"{where}: {actual!r} != expected {expected!r} "
                    f"(diff {actual - expected:.3g}, rtol={rtol}, atol={atol})"]
        return []
    # Integers (ids, counts), booleans, strings, None: exact, and of the same JSON type.
    if type(actual) is not type(expected) or actual != expected:
        return [f"{where}: {actual!r} != expected {expected!r} (exact)"]
    return []


def assert_matches(actual: Any, expected: Any, rtol: float = 1e-6, atol: float = 1e-6, label: str = "value") -> None:
    """Raise ``AssertionError`` listing where ``actual`` differs from ``expected``."""
    found = mismatches(to_jsonable(actual), to_jsonable(expected), rtol, atol)
    if found:
        more = f"\n  ... and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        lines = "\n  ".join(found[:_SHOWN])
        raise AssertionError(f"{label}: {len(found)} difference(s) from the golden file:\n  {lines}{more}\n"
                             f"If the change is intended, regenerate it with {ACCEPT_ENV}=1 and review the diff.")


def assert_expected(actual: Any, name: str, rtol: float = 1e-6, atol: float = 1e-6,
                    directory: Path = EXPECTED_DIR) -> None:
    """Compare ``actual`` with ``directory/<name>.json``, or (re)write that file under ``OMNIDISTILL_ACCEPT=1``."""
    path = Path(directory) / f"{name}.json"
    if accepting():
        text = dumps(actual)
        if len(text.encode()) > MAX_BYTES:
            raise AssertionError(f"{path}: the golden value is {len(text.encode())} bytes, over {MAX_BYTES}: "
                                 "store a smaller case or a summary of it")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(str(path), text.encode())
        return
    if not path.exists():
        pytest.fail(f"{path}: no golden file. Create it on purpose with "
                    f"`{ACCEPT_ENV}=1 .venv/bin/pytest <this test>` and review it before committing.")
    assert_matches(actual, json.loads(path.read_text()), rtol, atol, label=str(path))


def load_expected(name: str, directory: Path = EXPECTED_DIR) -> Any:
    """The stored golden value ``name`` (for tests of the comparison itself)."""
    return json.loads((Path(directory) / f"{name}.json").read_text())
