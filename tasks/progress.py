"""Progress in the Prefect UI: progress artifacts kept up to date, and for training a log line now and then."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from dd_core.train.progress import Pace, Progress, ReportPacing


def progress_key(role: str) -> str:
    """The artifact key of a training role: ``student round 2`` -> ``student-round-2-training``."""
    return re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-") + "-training"


class ProgressArtifact:
    """A Prefect progress artifact (percent done), created at the first :meth:`show`.

    Each update is an API call: with ``every`` seconds, updates closer than that to the last one
    are left out (never the first, nor 100%), so 2,000 shards done in a minute cost a dozen calls,
    not 2,000.

    The artifact is a picture, not a result: when the API refuses an update (gone, restarting,
    the artifact deleted) one warning says so and the work goes on without it.
    """

    def __init__(self, key: str, description: str, every: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key, self.description = key, description
        self.pace = Pace(every, clock)
        self.artifact = None
        self.shown = True  # False once an update failed

    def show(self, percent: float) -> None:
        if not self.shown or not self.pace.due(last_step=percent >= 100.0):
            return
        try:
            if self.artifact is None:
                self.artifact = create_progress_artifact(percent, key=self.key, description=self.description)
            else:
                update_progress_artifact(self.artifact, percent)
        except Exception as exc:  # noqa: BLE001 - any API failure: the work matters, not its picture
            self.shown = False
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            get_run_logger().warning("%s: no longer updated (%s: %s)", self.key, type(exc).__name__, first_line)


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
        self.artifact = ProgressArtifact(self.key, f"Iterations of {role} training done")
        self.logger = get_run_logger()

    def __call__(self, progress: Progress) -> None:
        if self.pacing.update(progress):
            self.artifact.show(100.0 * progress.fraction)
        if self.pacing.log(progress):
            self.logger.info("%s: %s", self.role, progress.summary())
