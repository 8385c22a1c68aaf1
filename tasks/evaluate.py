"""Evaluation task: COCOeval of a checkpoint, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any

from prefect import task

from dd_core.config import LabeledConfig, RunConfig, check_run_inputs
from dd_core.data.coco import load_coco
from dd_core.device import resolve_device
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.tta.settings import MultiTransformSettings
from tasks import TASK_DEFAULTS


@task(name="evaluate", task_run_name="evaluate {name}", tags=["gpu"], retries=1, retry_delay_seconds=[10],
      **TASK_DEFAULTS)
def evaluate(name: str, checkpoint: str, val: LabeledConfig, tta: MultiTransformSettings | None, device: str,
             options: dict[str, Any]) -> dict[str, float]:
    data = load_coco(val.annotations, val.images, options)
    return evaluate_checkpoint(checkpoint, data, tta, options=options, device=resolve_device(device))


@task(name="validate inputs", **TASK_DEFAULTS)
def validate_inputs(config: RunConfig) -> dict[str, int]:
    """Load and validate every labeled json before anything is trained or written; returns image counts."""
    return check_run_inputs(config)
