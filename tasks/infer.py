"""Inference tasks: plan the shards, label each shard (one task per shard), write the manifest."""

from __future__ import annotations

from typing import Any

from prefect import task

from dd_core.config import UnlabeledConfig, resolve_device
from dd_core.data.unlabeled import list_unlabeled, write_plan
from dd_core.pseudo.infer import checkpoint_fingerprint, finished_shards, label_planned_shard
from dd_core.pseudo.manifest import remove_unplanned_shards, write_manifest
from dd_core.storage import parent
from tasks import TASK_DEFAULTS


@task(name="plan shards", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def plan_shards(unlabeled: UnlabeledConfig, shard_size: int, plan_url: str, options: dict[str, Any]) -> dict[str, Any]:
    """List the unlabeled images and write the shard plan (removing shards of an earlier plan); returns
    its size and the images' root."""
    images = list_unlabeled(unlabeled.images, unlabeled.root, options, unlabeled.limit)
    num_shards = write_plan(images, shard_size, plan_url, options)
    remove_unplanned_shards(parent(plan_url), num_shards, options)
    return {"num_shards": num_shards, "num_images": len(images.images), "root": images.root}


@task(name="fingerprint teacher", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def fingerprint_teacher(checkpoint: str, tta: dict[str, Any], options: dict[str, Any]) -> str:
    return checkpoint_fingerprint(checkpoint, tta, options)


@task(name="infer shard", task_run_name="infer shard-{index:05d}", tags=["gpu"], retries=3,
      retry_delay_seconds=[2, 5, 15], retry_jitter_factor=0.5, **TASK_DEFAULTS)
def infer_shard(checkpoint: str, plan_url: str, index: int, out_dir: str, tta: dict[str, Any], fingerprint: str,
                device: str, batch_size: int, options: dict[str, Any]) -> dict[str, Any]:
    """Multi-transform inference + ensembling on one shard -> Parquet (skipped if already done)."""
    return label_planned_shard(checkpoint, plan_url, index, out_dir, tta, fingerprint, options,
                               resolve_device(device), batch_size).to_dict()


@task(name="collect shards", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def collect_shards(plan_url: str, out_dir: str, fingerprint: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Summaries of every planned shard labeled elsewhere (flow runs on other workers); fails on a missing one."""
    return [s.to_dict() for s in finished_shards(plan_url, out_dir, fingerprint, options)]


@task(name="write manifest", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def write_inference_manifest(url: str, shards: list[dict[str, Any]], fingerprint: str, options: dict[str, Any]) -> dict:
    return write_manifest(url, shards, fingerprint, options)
