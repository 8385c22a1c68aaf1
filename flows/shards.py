"""The flow a GPU worker runs for ``shards.runner: deployment``: pseudo-label a group of planned shards.

Deploy it on the ``gpu`` work pool (``label-shards`` in deployments/prefect.yaml) and start one
worker per GPU; ``label-unlabeled`` submits groups of ``shards.per_flow_run`` shards as its flow
runs and reads the results back from the Parquet shards themselves.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from dd_core.pseudo.infer import ShardJob, ShardSummary, labeled_after
from tasks import cache
from tasks.infer import infer_shard


@flow(name="label-shards")
def label_shards(job: dict[str, Any], indices: list[int]) -> list[ShardSummary]:
    """Pseudo-label shards ``indices`` of ``job`` (:meth:`ShardJob.parameters`) one after another on
    this worker's device, skipping finished ones.

    No storage options among the parameters: this worker's environment holds the credentials
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), so they never reach
    the Prefect API.
    """
    shard_job = ShardJob.from_parameters(job)
    try:
        return [infer_shard(shard_job, index, {}, next_index=following)
                for index, following in zip(indices, labeled_after(indices))]
    finally:
        cache.PLANS.clear()
        cache.READ_AHEAD.clear()
