"""What Prefect costs: the distillation flow against the same dd_core calls in a plain loop.

The demo's configuration (150 labeled, 600 unlabeled, 100 validation images, shards of 32, 6
transforms) with training shortened, since the overhead is per task and per flow run, not per
iteration: the seconds it adds are then compared with the full demo's wall time too.
"""

from __future__ import annotations

import time
from pathlib import Path

from dd_core.config import parse_config

DEMO_WALL_S = 22.8 * 60  # `make demo` on CPU-2, 2026-11-25 (BENCHMARKS.md)


def overhead(out: Path, teacher: int = 60, student: int = 120) -> dict:
    from bench.pipeline import plain_distill
    from flows.demo import demo_config
    from flows.distill import distill
    from flows.server import prefect_api

    out = out.resolve()
    base = demo_config(out, quick=False)
    base["teacher"].update(iterations=teacher, warmup_iters=10)
    base["student"].update(iterations=student, warmup_iters=10)
    stamp = time.strftime("%H%M%S")
    plain_cfg = parse_config({**base, "run_id": f"plain-{stamp}"})
    flow_cfg = parse_config({**base, "run_id": f"flow-{stamp}"})
    t0 = time.perf_counter()
    plain = plain_distill(plain_cfg)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with prefect_api(out / "prefect"):
        server_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        flow = distill(flow_cfg)
        flow_s = time.perf_counter() - t0
    same = plain["metrics"] == flow["metrics"]
    extra = flow_s - plain_s
    return {"benchmark": "Prefect flow vs plain loop", "teacher_iterations": teacher,
            "student_iterations": student, "plain_s": round(plain_s, 1), "flow_s": round(flow_s, 1),
            "overhead_s": round(extra, 1), "overhead_share": round(extra / flow_s, 4),
            "overhead_share_of_full_demo": round(extra / DEMO_WALL_S, 4),
            "local_server_start_s": round(server_s, 1), "same_metrics": same,
            "plain_stage_s": plain["seconds"]}
