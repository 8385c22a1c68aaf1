"""Training progress in the Prefect UI: a progress artifact kept up to date, and a log line now and then."""

from __future__ import annotations

import re

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from dd_core.train.progress import Progress, ReportPacing


def progress_key(role: str) -> str:
    """The artifact key of a training role: ``student round 2`` -> ``student-round-2-training``."""
    return re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-") + "-training"


class TrainingProgress:
    """The :data:`~dd_core.train.progress.ProgressHook` of a training task.

    The progress artifact (``<role>-training``, percent of iterations done) moves every
    ``update_every`` seconds; a line with the iteration, losses, learning rate, seconds per
    iteration and time left goes to the task run's log every ``log_every`` seconds (and at the
    first and last step), so a run of days logs every few minutes.
    """

    def __init__(self, role: str, pacing: ReportPacing | None = None) -> None:
        self.role = role
        self.key = progress_key(role)
        self.pacing = pacing or ReportPacing()
        self.artifact = None
        self.logger = get_run_logger()

    def __call__(self, progress: Progress) -> None:
        if self.pacing.update(progress):
            percent = 100.0 * progress.fraction
            if self.artifact is None:
                self.artifact = create_progress_artifact(percent, key=self.key,
                                                         description=f"Iterations of {self.role} training done")
            else:
                update_progress_artifact(self.artifact, percent)
        if self.pacing.log(progress):
            self.logger.info("%s: %s", self.role, progress.summary())
