"""Training progress for whoever watches a run: how far, how fast, how long still, the losses.

The step loop hands a :class:`Progress` to a :data:`ProgressHook` after every step of the rank
that writes checkpoints (rank 0). Reporting it costs an API call (a Prefect artifact, a log line),
so a :class:`ReportPacing` decides when a step is worth reporting: often enough that the UI moves,
seldom enough that a run of days logs every few minutes, not 360,000 times.
Under torchrun rank 0 is another process: it writes each report as one marked line on its standard
output (:func:`progress_line`), and the launching process reads it back (:func:`parse_progress_line`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """Where a training run is after a step."""

    iteration: int                     # steps taken
    total: int                         # steps of the whole run
    losses: dict[str, float]           # this step's loss parts
    lr: float                          # this step's learning rate
    seconds_per_iteration: float       # mean over the steps of this process so far
    start: int = 0                     # the step this process resumed from

    @property
    def fraction(self) -> float:
        return self.iteration / self.total

    @property
    def seconds_left(self) -> float:
        return (self.total - self.iteration) * self.seconds_per_iteration

    def summary(self) -> str:
        """One log line: ``iteration 1200/90000 (1.3%) loss 2.314 (loss_classifier 0.41, ...) lr 0.02 ...``."""
        parts = ", ".join(f"{k} {v:.3f}" for k, v in self.losses.items())
        return (f"iteration {self.iteration}/{self.total} ({100 * self.fraction:.1f}%) loss "
                f"{sum(self.losses.values()):.3f} ({parts}) lr {self.lr:.5g} {self.seconds_per_iteration:.2f} s/it, "
                f"{_duration(self.seconds_left)} left")


ProgressHook = Callable[[Progress], None]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Pace:
    """Due at the first call, then once ``every`` seconds have passed since it was last due, and
    always at the last step: how often a report worth an API call is made."""

    every: float
    clock: Callable[[], float] = time.monotonic
    _last: float | None = field(default=None, init=False)

    def due(self, last_step: bool = False) -> bool:
        now = self.clock()
        if self._last is None or now - self._last >= self.every or last_step:
            self._last = now
            return True
        return False


@dataclass
class ReportPacing:
    """When to update a progress display (``update``) and when to write a log line (``log``).

    A log line at the first step, then every ``log_every`` seconds, and at the last step; the
    display every ``update_every`` seconds and at the last step. Time-based, so a slow run (1 s/it
    on a CPU) and a fast one (0.1 s/it on 8 GPUs) both log every few minutes.
    """

    log_every: float = 180.0
    update_every: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _log: Pace = field(init=False)
    _update: Pace = field(init=False)

    def __post_init__(self) -> None:
        self._log, self._update = Pace(self.log_every, self.clock), Pace(self.update_every, self.clock)

    def log(self, progress: Progress) -> bool:
        return self._log.due(progress.iteration >= progress.total)

    def update(self, progress: Progress) -> bool:
        return self._update.due(progress.iteration >= progress.total)


MARK = "OMNIDISTILL-PROGRESS "


def progress_line(progress: Progress) -> str:
    """A report as one line of rank 0's output under torchrun (the launching process reads it)."""
    return MARK + json.dumps(dataclasses.asdict(progress))


def parse_progress_line(line: str) -> Progress | None:
    """The report in a line of :func:`progress_line`, or ``None`` for any other line."""
    if not line.startswith(MARK):
        return None
    try:
        return Progress(**json.loads(line[len(MARK):]))
    except (ValueError, TypeError):
        return None
