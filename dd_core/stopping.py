"""Stopping long work early: Ctrl-C, SIGTERM, or a run cancelled from the Prefect UI.

A signal reaches the main thread only; pseudo-labeling runs shard tasks in other threads, which
would finish their shard (minutes) before the process could exit. Whoever learns that the run
must stop calls :func:`request_stop`; the long loops (the training step loop, the batches of a
shard) call :func:`check_stop` between steps and raise :class:`StopRequested`, so every thread
winds down within one step. The request is per process and stays until cleared
(:func:`clear_stop`): every command of the CLI and every distillation or labeling flow clears it
when it starts, so a stop (or a failed labeling, which stops its other shards) ends that run only.
"""

from __future__ import annotations

import threading

_requested = threading.Event()
_reason: list[str] = []


class StopRequested(Exception):
    """The run was asked to stop (the message says why); what was finished stays finished."""


def request_stop(reason: str) -> None:
    """Ask every loop in this process to stop at its next step (the first reason is kept)."""
    if not _requested.is_set():
        _reason[:] = [reason]
        _requested.set()


def stop_reason() -> str | None:
    """Why a stop was requested, or ``None``."""
    return _reason[0] if _requested.is_set() else None


def check_stop() -> None:
    """Raise :class:`StopRequested` if a stop was requested: call it between steps of long work."""
    if _requested.is_set():
        raise StopRequested(f"stopped: {_reason[0]}")


def clear_stop() -> None:
    """Forget a stop request (a process that starts another run after a stopped one)."""
    _reason.clear()
    _requested.clear()
