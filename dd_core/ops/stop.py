"""Stopping long work early: Ctrl-C, SIGTERM, a run cancelled from the Prefect UI, a lost run lock.

A signal reaches the main thread only; pseudo-labeling runs shard tasks in other threads, which
would finish their shard (minutes) before the process could exit. The long loops of the method (the
training step loop, the batches of a shard, evaluation) are each given a :class:`StopToken` and call
its :meth:`~StopToken.check` between steps, so every thread winds down within one step.

:data:`PROCESS` is the token of this process's run: the flows, the CLI and the signal handlers
(``flows/interrupts.py``) request and clear it, and the tasks pass it to the loops. A request stays
until cleared: every command of the CLI and every distillation or labeling flow clears it when it
starts, so a stop (or a failed labeling, which stops its other shards) ends that run only. A
condition that lasts (:meth:`StopToken.stop_if`: the run's lock was taken by another run) is not
forgotten by :meth:`~StopToken.clear`; it holds for as long as its ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class StopRequested(Exception):
    """The run was asked to stop (the message says why); what was finished stays finished."""


class StopToken:
    """Whether long work should stop, and why: requested once (the first reason is kept), or
    while a condition holds."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._reason: list[str] = []
        self._conditions: list[Callable[[], str | None]] = []

    def request(self, reason: str) -> None:
        """Ask every loop given this token to stop at its next step."""
        if not self._requested.is_set():
            self._reason[:] = [reason]
            self._requested.set()

    def reason(self) -> str | None:
        """Why a stop was requested (or a :meth:`stop_if` condition holds), or ``None``."""
        if self._requested.is_set():
            return self._reason[0]
        return next((reason for reason in (condition() for condition in list(self._conditions)) if reason), None)

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was requested: call it between steps of long work."""
        reason = self.reason()
        if reason is not None:
            raise StopRequested(f"stopped: {reason}")

    @contextlib.contextmanager
    def stop_if(self, condition: Callable[[], str | None]) -> Iterator[None]:
        """Within: every loop stops whenever ``condition()`` gives a reason (asked at each step, so it
        must be cheap); :meth:`clear` does not forget it."""
        self._conditions.append(condition)
        try:
            yield
        finally:
            self._conditions.remove(condition)

    def clear(self) -> None:
        """Forget a stop request (a process that starts another run after a stopped one)."""
        self._reason.clear()
        self._requested.clear()

    def __reduce__(self) -> tuple[Callable[[str], StopToken], tuple[str]]:
        """:data:`PROCESS` and :data:`NEVER` travel by name (a task sent to a Dask worker gets that
        process's token); a token of one's own does not leave its process."""
        for name in ("PROCESS", "NEVER"):
            if globals().get(name) is self:
                return _named, (name,)
        raise TypeError("a StopToken other than dd_core.ops.stop.PROCESS or NEVER cannot leave its process")


def _named(name: str) -> StopToken:
    return globals()[name]


NEVER = StopToken()
"""A token nobody requests: the default of a loop run on its own (a test, a benchmark). Never request it."""

PROCESS = StopToken()
"""This process's run: requested by signals, a cancel from the UI or a failed labeling; passed by the tasks to the loops."""
