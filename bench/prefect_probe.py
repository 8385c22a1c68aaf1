"""Probes behind the Prefect-overhead row of BENCHMARKS.md (suspects of the flow's extra time).

    python bench/prefect_probe.py thread               # slim forward passes: main thread vs a pool thread
    python bench/prefect_probe.py idle-server [--seconds 60] [--quiet-services]
    python bench/prefect_probe.py task-start [--tasks 10] [--task-seconds 6] [--home DIR]   # gap between tasks

``thread``: Prefect's ThreadPoolTaskRunner runs submitted tasks in worker threads; is torch slower there?
``idle-server``: CPU share of one core used by an idle local ``prefect server start`` (flows/server.py),
optionally with the services a single local run does not need switched off.
``task-start``: seconds from one task's end to the next one's start on one worker thread, for tasks
with no tag and with a tag that has no concurrency limit (as ``infer shard``'s ``gpu`` tag). A tagged
task asks the server for a slot first; the client remembers "no limit" for 5 s only, so tasks
longer than that ask every time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import children_cpu_seconds  # noqa: E402
from dd_core.models import ModelSpec, build_model  # noqa: E402

QUIET_SERVICES = ("LATE_RUNS", "PAUSE_EXPIRATIONS", "CLEANUP_RECONCILER", "SCHEDULER", "FOREMAN", "REPOSSESSOR",
                  "CANCELLATION_CLEANUP", "TRIGGERS", "DB_VACUUM")


def thread_probe(passes: int = 15, repeats: int = 3) -> list[dict[str, float]]:
    """Seconds for ``passes`` slim forward passes (8 images of 128 px), alternating main thread and pool thread."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(task="keypoints", preset="slim")).eval()
    images = [torch.rand(3, 128, 128) for _ in range(8)]

    def work(n: int = passes) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                model(images)
        return time.perf_counter() - t0

    work(3)  # warm-up
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return [{"main_s": round(work(), 2), "pool_thread_s": round(pool.submit(work).result(), 2)}
                for _ in range(repeats)]


def idle_server_probe(seconds: float, quiet_services: bool) -> dict[str, float]:
    """CPU seconds an idle local Prefect server (and its children) uses over ``seconds``."""
    from flows.server import local_prefect_server

    if quiet_services:
        for name in QUIET_SERVICES:
            os.environ[f"PREFECT_SERVER_SERVICES_{name}_ENABLED"] = "false"
    before = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    with tempfile.TemporaryDirectory() as home, local_prefect_server(home):
        time.sleep(10)  # past its start-up
        c0, t0 = children_cpu_seconds(exclude=before), time.perf_counter()
        time.sleep(seconds)
        used, wall = children_cpu_seconds(exclude=before) - c0, time.perf_counter() - t0
    return {"server_cpu_s": round(used, 2), "wall_s": round(wall, 1), "share_of_one_core": round(used / wall, 4),
            "quiet_services": quiet_services}


def task_start_probe(tasks: int, task_seconds: float, home: Path | None = None) -> dict[str, Any]:
    """Seconds between consecutive task runs on one thread (each sleeping ``task_seconds``), untagged and tagged.

    Each task's body returns its start and end; on one worker thread, the gap from one body's end
    to the next one's start is what Prefect spends per task run (state changes, slot checks, events).
    ``home`` keeps the server's folder (its ``server.log``) instead of a temporary one.
    """
    import statistics

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.server import local_prefect_server

    def body(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        time.sleep(task_seconds)
        return t0, time.perf_counter()

    untagged = task(name="untagged")(body)
    tagged = task(name="tagged", tags=["probe-gpu"])(body)

    @flow(name="task-start-probe", task_runner=ThreadPoolTaskRunner(max_workers=1))
    def probe() -> dict[str, list[tuple[float, float]]]:
        return {fn.name: [f.result() for f in [fn.submit(i) for i in range(tasks)]] for fn in (untagged, tagged)}

    with tempfile.TemporaryDirectory() as tmp, local_prefect_server(home or tmp):
        spans = probe()
    row: dict[str, Any] = {"tasks_each": tasks, "task_seconds": task_seconds}
    for name, clock in spans.items():
        gaps = [b[0] - a[1] for a, b in zip(clock, clock[1:])]
        row[f"{name}_gap_s_median"] = round(statistics.median(gaps), 3)
        row[f"{name}_gaps_s"] = [round(g, 3) for g in gaps]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["thread", "idle-server", "task-start"])
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--task-seconds", type=float, default=6.0)
    p.add_argument("--home", type=Path, help="task-start: keep the local server's folder (and server.log) here")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--quiet-services", action="store_true")
    args = p.parse_args(argv)
    if args.probe == "thread":
        for row in thread_probe():
            print(row, flush=True)
    elif args.probe == "task-start":
        print(task_start_probe(args.tasks, args.task_seconds, args.home), flush=True)
    else:
        print(idle_server_probe(args.seconds, args.quiet_services), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
