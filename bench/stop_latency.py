"""How long a Ctrl-C takes to give the prompt back: `omnidistill run` stopped while it labels.

The scene of tests/flows/test_interrupts.py (4 labeled, 60 unlabeled 64-px images, shards of 2
labeled by 2 workers at 2 scales x flip, a teacher trained 2 steps): once two shards are written the
CLI gets SIGINT, and each run reports three times from the signal:

- ``shards``: until the labeling flow reports it stopped (the shards in flight finish their batch);
- ``line``: until the run's last line, the resume command, is printed;
- ``exit``: until the process has exited;

and ``teardown``, from the last line to the exit (the interpreter's exit hooks and teardown).

``--code DIR`` runs the CLI of another checkout (a `git archive` of an older commit): give two and the
runs alternate between them, so that both see the same machine. Run it alone (BENCHMARKS.md).

    python bench/stop_latency.py --runs 5 [--code OLD_TREE --code .]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _make_scene(folder: Path) -> Path:
    from dd_core.config import parse_config
    from dd_core.data.synthetic import make_keypoints_dataset

    for (name, seed, start), n in zip((("labeled", 1, 1), ("unlabeled", 2, 1001), ("val", 3, 2001)), (4, 60, 2)):
        make_keypoints_dataset(folder / name, n, seed=seed, start_id=start, size=64)
    d = folder
    config = parse_config({
        "run_id": "stop", "storage": {"root": f"{d}/store"},
        "labeled": {"annotations": f"{d}/labeled/annotations.json", "images": f"{d}/labeled/images"},
        "unlabeled": {"images": f"{d}/unlabeled/images"},
        "val": {"annotations": f"{d}/val/annotations.json", "images": f"{d}/val/images"},
        "model": {"test_size": 64, "min_size": [64], "max_size": 96},
        "teacher": {"iterations": 2, "batch_size": 2, "warmup_iters": 0},
        "student": {"iterations": 1, "batch_size": 2, "warmup_iters": 0},
        "tta": {"scales": [64, 96], "flip": True}, "shards": {"size": 2, "workers": 2},
    })
    path = folder / "stop.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def stop_once(code: Path) -> dict[str, float]:
    """One run of the CLI in ``code``, stopped by SIGINT after two shards: seconds from the signal."""
    with tempfile.TemporaryDirectory(prefix="stop-latency-") as tmp:
        folder = Path(tmp)
        config = _make_scene(folder)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(folder / "prefect-home"),
               "PYTHONPATH": str(code)}
        env.pop("PREFECT_API_URL", None)
        process = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], cwd=folder, env=env,
                                   text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        seen: dict[str, float] = {}

        def watch() -> None:
            for line in process.stderr:
                if "Flow run 'stop-label-round-1' - Finished in state Cancelled" in line:
                    seen.setdefault("shards", time.monotonic())
                if line.startswith("omnidistill: run stop stopped"):
                    seen.setdefault("line", time.monotonic())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        inference = folder / "store/runs/stop/inference"
        deadline = time.monotonic() + 600
        while len(list(inference.glob("shard-*.parquet"))) < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the run ended (or took 600 s) before two shards were written: {process.returncode}")
            time.sleep(0.05)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code_ = process.wait(timeout=120)
        exited = time.monotonic()
        watcher.join(timeout=5)
        if code_ != 130 or "line" not in seen:
            raise SystemExit(f"the run did not stop as a Ctrl-C should: exit code {code_}")
        return {"shards": seen.get("shards", float("nan")) - sent, "line": seen["line"] - sent, "exit": exited - sent,
                "teardown": exited - seen["line"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="stops per checkout (default 5)")
    parser.add_argument("--code", type=Path, action="append",
                        help="a checkout whose CLI to run (repeatable; default: this one)")
    args = parser.parse_args(argv)
    codes = [path.resolve() for path in args.code or [ROOT]]
    results: dict[str, list[dict[str, float]]] = {str(code): [] for code in codes}
    for i in range(args.runs):
        for code in codes:
            one = stop_once(code)
            results[str(code)].append(one)
            print(f"{i + 1}/{args.runs} {code}: " + ", ".join(f"{k} {v:.2f} s" for k, v in one.items()), flush=True)
    summary = {code: {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
               for code, runs in results.items()}
    print(json.dumps({"median seconds from the signal": summary}, indent=2))


if __name__ == "__main__":
    main()
