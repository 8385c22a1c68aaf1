"""Training tasks. A retried task resumes from the latest checkpoint instead of starting over."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefect import task
from prefect.artifacts import create_table_artifact

from dd_core.config import DistributedConfig
from dd_core.device import resolve_device
from dd_core.ops.stop import PROCESS
from dd_core.train.job import TrainJob, run_job
from dd_core.train.launch import launch_distributed
from dd_core.train.loop import TrainHooks
from dd_core.train.progress import ReportPacing
from tasks import TASK_DEFAULTS
from tasks.progress import TrainingProgress, progress_key


@dataclass(frozen=True)
class Trained:
    """What a training task hands the flow: the final checkpoint's URL, and per set (``labeled``,
    ``pseudo``) its images, those left out of training and those trained on."""

    checkpoint: str
    images: dict[str, dict[str, int]]


@task(name="train", task_run_name="train {role}", tags=["gpu"], retries=2, retry_delay_seconds=[10, 60],
      **TASK_DEFAULTS)
def train_model(role: str, job: TrainJob, distributed: DistributedConfig | None = None) -> Trained:
    """Train a teacher (labeled only) or a student (labeled + pseudo-labels): its final checkpoint
    and the images trained on and left out.

    ``role`` names the task run and its artifacts: progress (see :class:`tasks.progress.TrainingProgress`)
    and the images left out of training. A ``job.device`` of ``auto`` is resolved here, on the
    machine that trains. With ``distributed.nproc_per_node > 1`` the training runs in that many
    processes started by torchrun.
    """
    job = dataclasses.replace(job, device=resolve_device(job.device))
    report = TrainingProgress(role, ReportPacing(log_every=job.train.report_every))
    if distributed is not None and distributed.nproc_per_node > 1:
        result = launch_distributed(job, distributed.nproc_per_node, backend=distributed.backend, on_progress=report)
    else:
        result = run_job(job, hooks=TrainHooks(on_progress=report), stop=PROCESS)
    _images_artifact(role, result.images, job)
    return Trained(checkpoint=result.checkpoint, images=result.images)


def _images_artifact(role: str, images: dict[str, dict[str, int]], job: TrainJob) -> None:
    """The images each set of this training had, and those left out (with the rule), as a table."""
    rule = job.images.rule(job.task == "keypoints")
    rows = [{"set": name, "images": c["images"], "left out": c["left_out"], "trained on": c["trained_on"], "rule": rule}
            for name, c in images.items()]
    if rows:
        create_table_artifact(rows, key=f"{progress_key(role)}-images",
                              description=f"Images the {role} training learned from, and those left out")
