"""Two run folders compared file by file: what a refactoring must leave unchanged.

    python bench/compare_runs.py RUN_A RUN_B

Each file of either run is reported as one of:
- ``same bytes``;
- ``same tensors``: a checkpoint equal in every entry but its random number generators' states,
  which are named (``rng/python`` moves with Prefect's event client);
- ``same table (metadata differs)``: a Parquet file with equal rows (a shard's metadata holds the
  teacher's fingerprint, which hashes the checkpoint's bytes);
- ``same but for the run's id and folders``: json, yaml, markdown or text equal once run A's
  output folder and run id are replaced by run B's;
- ``only in A``, ``only in B`` or ``DIFFERS``.
Exits 1 if any file differs or is missing from one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _differing_entries(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Keys under which two checkpoint dicts differ (tensors compared with ``torch.equal``)."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in (_differing_entries(a.get(k), b.get(k), f"{prefix}{k}/")
                                         if k in a and k in b else [f"{prefix}{k}"])]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differing_entries(x, y, f"{prefix}{i}/")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [prefix.rstrip("/")]


def compare_file(a: Path, b: Path, renames: dict[str, str]) -> str:
    """The verdict on ``a`` against ``b``; ``renames`` maps run A's folders and id to run B's."""
    if a.read_bytes() == b.read_bytes():
        return "same bytes"
    if a.suffix in (".json", ".md", ".yaml", ".txt"):
        text = a.read_text()
        for old, new in renames.items():
            text = text.replace(old, new)
        return "same but for the run's id and folders" if text == b.read_text() else "DIFFERS"
    if a.suffix == ".pth":
        import torch

        differ = _differing_entries(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
        if any(not d.startswith("rng/") for d in differ):  # weights, optimizer, spec, signature, ...
            return "DIFFERS: " + ", ".join(differ[:5])
        return "same tensors (differ: " + ", ".join(differ) + ")"
    if a.suffix == ".parquet":
        import pyarrow.parquet as pq

        ta, tb = pq.read_table(a), pq.read_table(b)
        if not ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None)):
            return "DIFFERS: rows"
        return "same table (metadata differs)"
    return "DIFFERS"


def compare_runs(run_a: Path, run_b: Path) -> dict[str, str]:
    # a run's folder is <out>/runs/<run id> (``omnidistill demo`` keeps its data in <out>/data)
    renames = {str(run_a.parents[1]): str(run_b.parents[1]), run_a.name: run_b.name}
    names = {p.relative_to(run_a) for p in run_a.rglob("*") if p.is_file()}
    names |= {p.relative_to(run_b) for p in run_b.rglob("*") if p.is_file()}
    return {str(n): ("only in B" if not (run_a / n).exists() else "only in A" if not (run_b / n).exists()
                     else compare_file(run_a / n, run_b / n, renames)) for n in sorted(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    verdicts = compare_runs(args.run_a, args.run_b)
    for name, verdict in verdicts.items():
        print(f"{verdict:40s} {name}" if len(verdict) <= 40 else f"{name}: {verdict}")
    bad = [n for n, v in verdicts.items() if v.startswith(("DIFFERS", "only in"))]
    print(f"{len(verdicts)} files, {len(bad)} differ or are missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
