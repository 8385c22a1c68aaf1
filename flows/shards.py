"""The flow a GPU worker runs for ``shards.runner: deployment``: label a group of planned shards.

Deploy it on the ``gpu`` work pool (``label-shards`` in deployments/prefect.yaml) and start one
worker per GPU; ``label-unlabeled`` submits groups of ``shards.per_flow_run`` shards as its flow
runs and reads the results back from the Parquet shards themselves.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.infer import infer_shard


@flow(name="label-shards")
def label_shards(checkpoint: str, plan_url: str, indices: list[int], out_dir: str, tta: dict[str, Any],
                 fingerprint: str, device: str = "auto", batch_size: int = 4) -> list[dict[str, Any]]:
    """Label shards ``indices`` of the plan one after another on this worker's device (skipping done ones).

    No storage options among the parameters: this worker's environment holds the credentials
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), so they never reach
    the Prefect API.
    """
    return [infer_shard(checkpoint, plan_url, index, out_dir, tta, fingerprint, device, batch_size, {})
            for index in indices]
