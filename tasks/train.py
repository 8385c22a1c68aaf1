"""Training tasks. A retried task resumes from the latest checkpoint instead of starting over."""

from __future__ import annotations

from typing import Any

from prefect import task

from dd_core.config import (
    LabeledConfig,
    ModelConfig,
    TrainStageConfig,
    model_overrides,
    resolve_device,
    train_config,
)
from dd_core.data.coco import load_coco
from dd_core.train.checkpoint import load_checkpoint
from dd_core.train.detector import spec_for, train_detector
from tasks import TASK_DEFAULTS


@task(name="train", task_run_name="train {role}", tags=["gpu"], retries=2, retry_delay_seconds=[10, 60],
      **TASK_DEFAULTS)
def train_model(role: str, task_type: str, labeled: LabeledConfig, model: ModelConfig, stage: TrainStageConfig,
                out_dir: str, seed: int, device: str, options: dict[str, Any],
                pseudo_annotations: str | None = None, pseudo_images: str | None = None,
                labeled_ratio: float = 1.0, init_checkpoint: str | None = None) -> str:
    """Train a teacher (labeled only) or a student (labeled + pseudo-labels); returns the final checkpoint URL."""
    coco = load_coco(labeled.annotations, labeled.images, options)
    pseudo = load_coco(pseudo_annotations, pseudo_images, options) if pseudo_annotations else None
    init = load_checkpoint(init_checkpoint, options)["model"] if init_checkpoint else None
    result = train_detector(spec_for(task_type, coco, **model_overrides(model)), coco, train_config(stage, seed),
                            out_dir, pseudo=pseudo, labeled_ratio=labeled_ratio, init_state=init, options=options,
                            device=resolve_device(device))
    return result.checkpoint
