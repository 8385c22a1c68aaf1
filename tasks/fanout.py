"""Shard groups as flow runs of a deployment (``shards.runner: deployment``), one task per group."""

from __future__ import annotations

from typing import Any

from prefect import task

from dd_core.pseudo.infer import ShardJob
from tasks import TASK_DEFAULTS


class ShardGroupError(RuntimeError):
    """A flow run of the shard-labeling deployment that did not complete."""


@task(name="label shard group", task_run_name="label shards {indices[0]:05d}+", retries=1, retry_delay_seconds=[10],
      **TASK_DEFAULTS)
def label_shard_group(deployment: str, job: ShardJob, indices: list[int]) -> dict[str, Any]:
    """Run ``deployment`` (flow/deployment name) on shards ``indices`` of ``job`` and wait; fails unless
    its flow run completes.

    Its parameters are URLs and settings only: storage options (with their credentials) are never
    flow-run parameters, workers read them from their environment.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = f"shards {indices[0]:05d}-{indices[-1]:05d}"
    parameters = {"job": job.parameters(), "indices": list(indices)}
    try:
        run = run_deployment(deployment, parameters=parameters, flow_run_name=name, timeout=None)
    except ObjectNotFound as exc:
        raise ValueError(f"shards.deployment: no deployment {deployment!r} on this Prefect server; deploy "
                         "label-shards from deployments/prefect.yaml or name another one") from exc
    state = run.state
    if state is None or not state.is_completed():
        raise ShardGroupError(f"flow run {run.name!r} ({run.id}) of {deployment} for shards {list(indices)} ended "
                              f"{state.name if state else 'without a state'}: {state.message if state else ''}")
    return {"flow_run": str(run.id), "name": run.name, "shards": list(indices)}
