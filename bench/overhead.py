"""What Prefect costs: the distillation flow against the same dd_core calls in a plain loop.

The demo's configuration (150 labeled, 600 unlabeled, 100 validation images, shards of 32, 6
transforms) with training shortened, since the overhead is per task and per flow run, not per
iteration: the seconds it adds are then compared with the full demo's wall time too.

Besides the two wall times it reports where the flow's time went, stage by stage, from the task
runs the Prefect API recorded (next to the plain loop's own stage clock), the CPU seconds this
process used in each half and those the local Prefect server used during the flow: on 2 cores every
CPU second the server or the client's background threads take is a second torch's threads wait for.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from dd_core.config import parse_config

DEMO_WALL_S = 22.8 * 60  # `make demo` on CPU-2, 2026-11-25 (BENCHMARKS.md)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def children_cpu_seconds(exclude: frozenset[int] = frozenset()) -> float:
    """CPU seconds of this process's live children (the local Prefect server and its workers), but
    those whose pid is in ``exclude``."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            total += _cpu_seconds(child)
        except psutil.Error:
            pass
    return total


def stage_of(task_run_name: str) -> str:
    """The plain loop's stage a task run of the flow belongs to (names from ``tasks/``)."""
    for prefix, stage in (("train teacher", "teacher"), ("evaluate teacher", "evaluate teacher"),
                          ("infer shard", "label unlabeled"), ("plan shards", "label unlabeled"),
                          ("fingerprint teacher", "label unlabeled"), ("write manifest", "label unlabeled"),
                          ("select pseudo", "select"), ("train student", "student"),
                          ("evaluate student", "evaluate student"), ("write report", "report"),
                          # the parent's record of the subflow: its wall time, tasks and the gaps between them
                          ("label-unlabeled", "label unlabeled (subflow wall)")):
        if task_run_name.startswith(prefix):
            return stage
    return "other"


def flow_task_seconds(flow_run_id: Any) -> dict[str, float]:
    """Seconds the flow run's tasks (its subflows' included) ran, summed per plain-loop stage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    time.sleep(6)  # the server writes task runs' states in batches, at least every 5 s (flows.server.SERVER_SETTINGS)
    with get_client(sync_client=True) as client:
        runs = [flow_run_id] + [r.id for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)), limit=200)
    seconds: dict[str, float] = defaultdict(float)
    for run in tasks:
        seconds[stage_of(run.name)] += run.total_run_time.total_seconds()
    return {k: round(v, 1) for k, v in sorted(seconds.items())}


def overhead(out: Path, teacher: int = 60, student: int = 120, quick: bool = False) -> dict:
    from bench.pipeline import plain_distill
    from flows.demo import demo_config
    from flows.distill import distill
    from flows.server import prefect_api

    out = out.resolve()
    base = demo_config(out, quick=quick)  # quick: the quick demo's data, a smoke run of this benchmark
    base["teacher"].update(iterations=teacher, warmup_iters=10)
    base["student"].update(iterations=student, warmup_iters=10)
    stamp = time.strftime("%H%M%S")
    plain_cfg = parse_config({**base, "run_id": f"plain-{stamp}"})
    flow_cfg = parse_config({**base, "run_id": f"flow-{stamp}"})
    me = psutil.Process()
    cpu0, t0 = _cpu_seconds(me), time.perf_counter()
    plain = plain_distill(plain_cfg)
    plain_s, plain_cpu = time.perf_counter() - t0, _cpu_seconds(me) - cpu0
    t0 = time.perf_counter()
    with prefect_api(out / "prefect"):
        server_s = time.perf_counter() - t0
        server_cpu0, cpu0, t0 = children_cpu_seconds(), _cpu_seconds(me), time.perf_counter()
        state = distill(flow_cfg, return_state=True)
        flow_s, flow_cpu = time.perf_counter() - t0, _cpu_seconds(me) - cpu0
        server_cpu = children_cpu_seconds() - server_cpu0
        flow = state.result()
        tasks = flow_task_seconds(state.state_details.flow_run_id)
    same = plain["metrics"] == flow["metrics"]
    extra = flow_s - plain_s
    return {"benchmark": "Prefect flow vs plain loop", "teacher_iterations": teacher,
            "student_iterations": student, "plain_s": round(plain_s, 1), "flow_s": round(flow_s, 1),
            "overhead_s": round(extra, 1), "overhead_share": round(extra / flow_s, 4),
            "overhead_share_of_full_demo": round(extra / DEMO_WALL_S, 4),
            "local_server_start_s": round(server_s, 1), "same_metrics": same,
            "plain_stage_s": plain["seconds"], "flow_task_s": tasks,
            "cpu_s": {"plain_process": round(plain_cpu, 1), "flow_process": round(flow_cpu, 1),
                      "server_during_flow": round(server_cpu, 1)}}
