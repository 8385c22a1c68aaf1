"""Stopping long work early: Ctrl-C, SIGTERM, or a run cancelled from the Prefect UI.

A signal reaches the main thread only; pseudo-labeling runs shard tasks in other threads, which
would finish their shard (minutes) before the process could exit. Whoever learns that the run
must stop calls :func:`request_stop`; the long loops (the training step loop, the batches of a
shard) call :func:`check_stop` between steps and raise :class:`StopRequested`, so every thread
winds down within one step. The request is per process and stays until cleared
(:func:`clear_stop`): every command of the CLI and every distillation or labeling flow clears it
when it starts, so a stop (or a failed labeling, which stops its other shards) ends that run only.
A condition that lasts (:func:`stop_if`: the run's lock was taken by another run) is not forgotten
by :func:`clear_stop`; it holds for as long as its ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_requested = threading.Event()
_reason: list[str] = []
_conditions: list[Callable[[], "str | None"]] = []


class StopRequested(Exception):
    """The run was asked to stop (the message says why); what was finished stays finished."""


def request_stop(reason: str) -> None:
    """Ask every loop in this process to stop at its next step (the first reason is kept)."""
    if not _requested.is_set():
        _reason[:] = [reason]
        _requested.set()


def stop_reason() -> str | None:
    """Why a stop was requested (or a :func:`stop_if` condition holds), or ``None``."""
    if _requested.is_set():
        return _reason[0]
    return next((reason for reason in (condition() for condition in list(_conditions)) if reason), None)


def check_stop() -> None:
    """Raise :class:`StopRequested` if a stop was requested: call it between steps of long work."""
    reason = stop_reason()
    if reason is not None:
        raise StopRequested(f"stopped: {reason}")


@contextlib.contextmanager
def stop_if(condition: Callable[[], "str | None"]) -> Iterator[None]:
    """Within: every loop stops whenever ``condition()`` gives a reason (it is asked at each step,
    so it must be cheap); :func:`clear_stop` does not forget it."""
    _conditions.append(condition)
    try:
        yield
    finally:
        _conditions.remove(condition)


def clear_stop() -> None:
    """Forget a stop request (a process that starts another run after a stopped one)."""
    _reason.clear()
    _requested.clear()
