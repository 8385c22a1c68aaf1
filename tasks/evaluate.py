"""Evaluation task: COCOeval of a checkpoint, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from dd_core.config import LabeledConfig, RunConfig, run_input_counts
from dd_core.config.resume import record_settings
from dd_core.data.coco import load_coco
from dd_core.device import resolve_device
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.ops.stop import PROCESS
from dd_core.tta.settings import MultiTransformSettings
from tasks import TASK_DEFAULTS


@task(name="evaluate", task_run_name="evaluate {name}", tags=["gpu"], retries=1, retry_delay_seconds=[10],
      **TASK_DEFAULTS)
def evaluate(name: str, checkpoint: str, val: LabeledConfig, tta: MultiTransformSettings | None, device: str,
             options: dict[str, Any]) -> dict[str, float]:
    """COCO stats of ``checkpoint`` on the validation set; also a table artifact ``evaluation-<name>``."""
    data = load_coco(val.annotations, val.images, options)
    stats = evaluate_checkpoint(checkpoint, data, tta, options=options, device=resolve_device(device), stop=PROCESS)
    create_table_artifact([{"stat": stat, "value": round(value, 4)} for stat, value in stats.items()],
                          key=f"evaluation-{name.replace('_', '-')}",
                          description=f"COCO AP of {name.replace('_', ' + ')} on {val.annotations}")
    return stats


@task(name="record settings", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def record_run_settings(config: RunConfig, url: str) -> None:
    """Refuse to resume the run with other result settings; record a new run's (under its lock)."""
    record_settings(config, url, config.storage.options)


@task(name="validate inputs", **TASK_DEFAULTS)
def validate_inputs(config: RunConfig) -> dict[str, int]:
    """Load and validate every labeled json before anything is trained or written (the CLI's check of this
    config, seconds before, is trusted); returns image counts."""
    return run_input_counts(config)
