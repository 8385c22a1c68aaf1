"""Training tasks. A retried task resumes from the latest checkpoint instead of starting over."""

from __future__ import annotations

from typing import Any

from prefect import task

from dd_core.config import (
    DistributedConfig,
    LabeledConfig,
    ModelConfig,
    TrainStageConfig,
    model_overrides,
    resolve_device,
    train_config,
)
from dd_core.train.job import TrainJob, run_job
from dd_core.train.launch import launch_distributed
from tasks import TASK_DEFAULTS


@task(name="train", task_run_name="train {role}", tags=["gpu"], retries=2, retry_delay_seconds=[10, 60],
      **TASK_DEFAULTS)
def train_model(role: str, task_type: str, labeled: LabeledConfig, model: ModelConfig, stage: TrainStageConfig,
                out_dir: str, seed: int, device: str, options: dict[str, Any],
                pseudo_annotations: str | None = None, pseudo_images: str | None = None,
                labeled_ratio: float = 1.0, init_checkpoint: str | None = None,
                distributed: DistributedConfig | None = None) -> str:
    """Train a teacher (labeled only) or a student (labeled + pseudo-labels); returns the final checkpoint URL.

    With ``distributed.nproc_per_node > 1`` the training runs in that many processes started by torchrun.
    """
    job = TrainJob(task=task_type, labeled_annotations=labeled.annotations, labeled_images=labeled.images,
                   checkpoint_dir=out_dir, train=train_config(stage, seed), model=model_overrides(model),
                   device=resolve_device(device), options=options, pseudo_annotations=pseudo_annotations,
                   pseudo_images=pseudo_images, labeled_ratio=labeled_ratio, init_checkpoint=init_checkpoint)
    if distributed is not None and distributed.nproc_per_node > 1:
        return launch_distributed(job, distributed.nproc_per_node, distributed.backend).checkpoint
    return run_job(job).checkpoint
