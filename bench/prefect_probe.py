"""Two probes behind the Prefect-overhead row of BENCHMARKS.md (suspects of the flow's extra time).

    python bench/prefect_probe.py thread               # slim forward passes: main thread vs a pool thread
    python bench/prefect_probe.py idle-server [--seconds 60] [--quiet-services]

``thread``: Prefect's ThreadPoolTaskRunner runs submitted tasks in worker threads; is torch slower there?
``idle-server``: CPU share of one core used by an idle local ``prefect server start`` (flows/server.py),
optionally with the services a single local run does not need switched off.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def cpu() -> float:
        total = 0.0
        for p in psutil.Process().children(recursive=True):
            if p.pid not in before:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total

    with tempfile.TemporaryDirectory() as home, local_prefect_server(home):
        time.sleep(10)  # past its start-up
        c0, t0 = cpu(), time.perf_counter()
        time.sleep(seconds)
        used, wall = cpu() - c0, time.perf_counter() - t0
    return {"server_cpu_s": round(used, 2), "wall_s": round(wall, 1), "share_of_one_core": round(used / wall, 4),
            "quiet_services": quiet_services}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("probe", choices=["thread", "idle-server"])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--quiet-services", action="store_true")
    args = p.parse_args(argv)
    if args.probe == "thread":
        for row in thread_probe():
            print(row, flush=True)
    else:
        print(idle_server_probe(args.seconds, args.quiet_services), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
