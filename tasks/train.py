"""Training tasks. A retried task resumes from the latest checkpoint instead of starting over."""

from __future__ import annotations

import dataclasses

from prefect import task

from dd_core.config import DistributedConfig
from dd_core.device import resolve_device
from dd_core.train.job import TrainJob, run_job
from dd_core.train.launch import launch_distributed
from dd_core.train.loop import TrainHooks
from dd_core.train.progress import ReportPacing
from tasks import TASK_DEFAULTS
from tasks.progress import TrainingProgress


@task(name="train", task_run_name="train {role}", tags=["gpu"], retries=2, retry_delay_seconds=[10, 60],
      **TASK_DEFAULTS)
def train_model(role: str, job: TrainJob, distributed: DistributedConfig | None = None) -> str:
    """Train a teacher (labeled only) or a student (labeled + pseudo-labels); returns the final checkpoint URL.

    ``role`` names the task run and its progress artifact (see :class:`tasks.progress.TrainingProgress`).
    A ``job.device`` of ``auto`` is resolved here, on the machine that trains. With ``distributed.nproc_per_node > 1`` the training runs in that many processes
    started by torchrun.
    """
    job = dataclasses.replace(job, device=resolve_device(job.device))
    report = TrainingProgress(role, ReportPacing(log_every=job.report_every))
    if distributed is not None and distributed.nproc_per_node > 1:
        return launch_distributed(job, distributed.nproc_per_node, backend=distributed.backend,
                                  on_progress=report).checkpoint
    return run_job(job, hooks=TrainHooks(on_progress=report)).checkpoint
