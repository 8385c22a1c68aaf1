"""Evaluation task: COCOeval of a checkpoint, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from dd_core.config import LabeledConfig, resolve_device
from dd_core.data.coco import load_coco
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint


@task(name="evaluate", task_run_name="evaluate {name}", tags=["gpu"], retries=1, retry_delay_seconds=[10],
      cache_policy=NONE)
def evaluate(name: str, checkpoint: str, val: LabeledConfig, tta: dict[str, Any] | None, device: str,
             options: dict[str, Any]) -> dict[str, float]:
    data = load_coco(val.annotations, val.images, options)
    return evaluate_checkpoint(checkpoint, data, tta=tta, options=options, device=resolve_device(device))


@task(name="validate inputs", cache_policy=NONE)
def validate_inputs(labeled: LabeledConfig, val: LabeledConfig, upper_bound: LabeledConfig | None,
                    options: dict[str, Any]) -> dict[str, int]:
    """Load and validate every labeled json before anything is trained or written; returns image counts."""
    counts = {"labeled": len(load_coco(labeled.annotations, labeled.images, options).images),
              "val": len(load_coco(val.annotations, val.images, options).images)}
    if upper_bound:
        counts["upper_bound"] = len(load_coco(upper_bound.annotations, upper_bound.images, options).images)
    return counts
