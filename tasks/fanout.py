"""Shard groups as flow runs of a deployment (``shards.runner: deployment``), one task per group."""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks import TASK_DEFAULTS


class ShardGroupError(RuntimeError):
    """A flow run of the shard-labeling deployment that did not complete."""


def group_parameters(checkpoint: str, plan_url: str, indices: list[int], out_dir: str, tta: dict[str, Any],
                     fingerprint: str, device: str, batch_size: int) -> dict[str, Any]:
    """Parameters of one ``label-shards`` flow run: URLs and settings only. Storage options (with
    their credentials) are never flow-run parameters: workers read them from their environment."""
    return {"checkpoint": checkpoint, "plan_url": plan_url, "indices": list(indices), "out_dir": out_dir,
            "tta": dict(tta), "fingerprint": fingerprint, "device": device, "batch_size": batch_size}


@task(name="label shard group", task_run_name="label shards {indices[0]:05d}+", retries=1, retry_delay_seconds=[10],
      **TASK_DEFAULTS)
def label_shard_group(deployment: str, checkpoint: str, plan_url: str, indices: list[int], out_dir: str,
                      tta: dict[str, Any], fingerprint: str, device: str, batch_size: int) -> dict[str, Any]:
    """Run ``deployment`` (flow/deployment name) on ``indices`` and wait; fails unless its flow run completes."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = f"shards {indices[0]:05d}-{indices[-1]:05d}"
    parameters = group_parameters(checkpoint, plan_url, indices, out_dir, tta, fingerprint, device, batch_size)
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
