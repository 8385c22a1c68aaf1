"""Where the shard tasks of ``label-unlabeled`` run, from ``shards.runner``.

- ``threads``: a thread pool in the flow's process, ``shards.workers`` shards at once.
- ``dask``: a DaskTaskRunner (prefect-dask) on ``shards.dask_address``, or on a local cluster of
  ``shards.workers`` single-threaded worker processes. With ``gpus_per_shard`` > 0 each shard task
  asks for that much of the Dask resource ``GPU``: start each remote worker with
  ``--resources GPU=1`` (one per GPU) and it runs one shard at a time.
- ``deployment``: groups of ``shards.per_flow_run`` shards become flow runs of ``shards.deployment``
  on the gpu work pool; the flow's own tasks only wait for them, so its threads are not bounded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from dd_core.config import ShardsConfig
from dd_core.pseudo.infer import labeled_after

DASK_EXTRA = "pip install -c constraints.txt -e '.[dask]' (in the omnidistill checkout, at the locked versions)"


def shard_task_runner(shards: ShardsConfig) -> TaskRunner:
    """The task runner for ``label-unlabeled``'s shard tasks (or, with runner "deployment", its group tasks)."""
    if shards.runner == "dask":
        return dask_task_runner(shards)
    if shards.runner == "deployment":
        return ThreadPoolTaskRunner()  # one waiting thread per shard group; the work pool bounds the work
    return ThreadPoolTaskRunner(max_workers=shards.workers)


def dask_task_runner(shards: ShardsConfig) -> TaskRunner:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ImportError(f"shards.runner 'dask' needs prefect-dask, which is not installed: {DASK_EXTRA}") from exc
    if shards.dask_address:
        return DaskTaskRunner(address=shards.dask_address)
    cluster_kwargs = {"n_workers": shards.workers, "threads_per_worker": 1, "processes": True}
    if shards.gpus_per_shard:
        # Each local worker stands for one GPU: it runs floor(1 / gpus_per_shard) shards at once.
        cluster_kwargs["resources"] = {"GPU": 1}
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


@contextlib.contextmanager
def shard_resources(shards: ShardsConfig) -> Iterator[None]:
    """Tasks submitted inside need ``gpus_per_shard`` of the Dask resource ``GPU`` (runner "dask" only)."""
    if shards.runner != "dask" or not shards.gpus_per_shard:
        yield
        return
    import dask

    with dask.annotate(resources={"GPU": shards.gpus_per_shard}):
        yield


def labeled_next(indices: list[int], shards: ShardsConfig) -> list[int | None]:
    """For each shard of ``indices`` (in the order submitted), the shard its worker labels next, whose
    first images are read meanwhile: the next one when one thread labels them in order (runner
    "threads", one worker); None where that cannot be told (several threads or Dask workers take them
    as they come)."""
    if shards.runner != "threads" or shards.workers != 1:
        return [None] * len(indices)
    return labeled_after(indices)


def shard_groups(num_shards: int, per_flow_run: int) -> list[list[int]]:
    """Shard indices in consecutive groups of ``per_flow_run`` (the last one may be shorter)."""
    if per_flow_run <= 0:
        raise ValueError(f"per_flow_run must be positive, got {per_flow_run}")
    return [list(range(start, min(start + per_flow_run, num_shards))) for start in range(0, num_shards, per_flow_run)]
