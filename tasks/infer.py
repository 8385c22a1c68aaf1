"""Pseudo-labeling tasks: plan the shards, pseudo-label each shard (one task per shard), write the manifest."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

from prefect import task

from dd_core.data.images import MAX_PIXELS
from dd_core.device import resolve_device
from dd_core.ops.labeling import LabelingOps
from dd_core.ops.stop import PROCESS
from dd_core.method import Labeling, plan_labeling
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob, ShardSummary, done_shards, finished_shards, pseudo_label_planned_shard
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.pipeline import PlanSummary
from dd_core.tta.settings import MultiTransformSettings
from tasks import TASK_DEFAULTS, cache


@task(name="plan shards", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def plan_shards(labeling: Labeling, options: dict[str, Any]) -> PlanSummary:
    """List the unlabeled images (none under ``labeling.exclude``) and write the shard plan; returns its size and
    the images' root."""
    return plan_labeling(labeling, options)


@task(name="fingerprint teacher", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def fingerprint_teacher(checkpoint: str, tta: MultiTransformSettings, options: dict[str, Any],
                        max_pixels: int | None = MAX_PIXELS) -> str:
    return checkpoint_fingerprint(checkpoint, tta, options, max_pixels)


GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu N`: at most N training, evaluation or shard tasks at once


def gpu_slot() -> AbstractContextManager[Any]:
    """A slot of the ``gpu`` tag concurrency limit, for this task run, held while a shard is computed.

    ``infer shard`` takes it itself, once its shard is found not done, rather than carry the tag:
    the task engine takes a tag's slot before the task starts (Prefect issue 23182), so a resume
    would queue for a slot once per finished shard (one acquisition at a time per process, each
    waiting for a running shard to free the slot) only to find its shard done. The same name,
    holder and lease as the engine's: `prefect concurrency-limit inspect gpu` lists these task runs.
    Without a ``gpu`` limit on the server (:data:`tasks.cache.GPU_LIMIT`, asked every
    :data:`~tasks.cache.LIMIT_LOOK_EVERY` seconds), no slot is asked for: Prefect's ``concurrency``
    logs a warning each time it is asked for a limit that does not exist (the usual case on one machine).
    """
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None or not cache.GPU_LIMIT():  # a plain function call (``infer_shard.fn``), or no limit
        return contextlib.nullcontext()
    return concurrency([f"tag:{GPU_TAG}"], occupy=1, lease_duration=60,
                       holder=ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id))


@task(name="infer shard", task_run_name="infer shard-{index:05d}", retries=3, retry_delay_seconds=[2, 5, 15],
      retry_jitter_factor=0.5, **TASK_DEFAULTS)
def infer_shard(job: ShardJob, index: int, options: dict[str, Any], check_done: bool = True,
                next_index: int | None = None) -> ShardSummary:
    """Multi-transform inference + ensembling on one shard -> Parquet (skipped if already done, without a
    ``gpu`` slot: see :func:`gpu_slot`; ``check_done=False`` when the flow has just found it not done).
    ``next_index``: the shard this worker labels next, if known; its first images are read meanwhile."""
    ops = LabelingOps(hold=gpu_slot, read_ahead=cache.READ_AHEAD, stop=PROCESS, teachers=cache.TEACHERS,
                      plans=cache.PLANS)
    return pseudo_label_planned_shard(job, index, device=resolve_device(job.device), options=options,
                                      check_done=check_done, next_index=next_index, ops=ops)


@task(name="find done shards", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def find_done_shards(job: ShardJob, options: dict[str, Any]) -> dict[int, ShardSummary]:
    """Summaries of the shards this teacher labeled already, by index: a resumed run starts no task for them."""
    return done_shards(job.plan_url, job.out_dir, job.fingerprint, options)


@task(name="collect shards", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def collect_shards(plan_url: str, out_dir: str, fingerprint: str, options: dict[str, Any]) -> list[ShardSummary]:
    """Summaries of every planned shard labeled elsewhere (flow runs on other workers); fails on a missing one."""
    return finished_shards(plan_url, out_dir, fingerprint, options)


@task(name="write manifest", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def write_inference_manifest(url: str, shards: list[ShardSummary], fingerprint: str, options: dict[str, Any]) -> dict:
    return write_manifest(url, shards, fingerprint, options)
