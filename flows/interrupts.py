"""Stopping a run cleanly: Ctrl-C, SIGTERM, or a cancel from the Prefect UI.

Either way every loop of the process is asked to stop (:func:`dd_core.stopping.request_stop`),
so the shard threads and the training loop wind down within a step; the context managers on the
way out then release the run lock, close the Dask cluster, stop torchrun's ranks and the local
Prefect server. The command ends with one line that names the run and how to resume it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shlex
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from types import FrameType

from dd_core.stopping import request_stop

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Raising inside the logging module can leave its module lock held (``_releaseLock`` runs after every
# fork, in the middle of a DataLoader or server start), and the next log call from any thread then
# hangs or aborts the interpreter. A signal that lands there is delivered again a moment later.
_DEFER_IN = (logging.__file__,)
REDELIVER_AFTER = 0.02
MAX_DEFERRALS = 100  # 2 s: logging never takes that long, unless its stream is blocked


def _in_deferred_code(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in _DEFER_IN:
            return True
        frame = frame.f_back
    return False


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM. A BaseException, as KeyboardInterrupt: ``except Exception``
    (retries, per-image rejections) must not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM: what a shell reports for a process the signal ended."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGINT or SIGTERM asks every loop to stop and raises :class:`Interrupted` in the main thread.

    Prefect's flow engine installs a SIGTERM handler of its own while a flow runs; when it has
    wound down it sends the signal again to the handler it replaced, this one. A signal that
    arrives inside the logging module is raised once the log call is over (see ``_DEFER_IN``).
    """
    deferrals = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal deferrals
        request_stop(f"{signal.Signals(signum).name} received")
        if _in_deferred_code(frame) and deferrals < MAX_DEFERRALS:
            deferrals += 1
            threading.Timer(REDELIVER_AFTER, os.kill, (os.getpid(), signum)).start()
            return
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def is_interruption(exc: BaseException) -> int | None:
    """The exit code of an exception that means "the process was told to stop" (ours or Prefect's), else None."""
    if isinstance(exc, Interrupted):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return 128 + exc.signal
    return None


def resume_command(config: str, overrides: Sequence[str], run_id: str) -> str:
    """The command that resumes run ``run_id`` of ``config`` (the same ``--set`` values, this run id)."""
    sets = [o for o in overrides if not o.strip().startswith("run_id=")] + [f"run_id={run_id}"]
    return shlex.join(["omnidistill", "run", config, *[part for o in sets for part in ("--set", o)]])


class CancelWatch:
    """Watches a flow run's state and asks the run to stop when it turns Cancelling (a cancel in the
    UI, or ``prefect flow-run cancel``).

    A flow run started in this process (not by a worker) has no one else to stop it: Prefect sets
    its state and waits. The watch polls every ``every`` seconds, in a thread of its own.
    """

    def __init__(self, flow_run_id: uuid.UUID | str, every: float = 2.0) -> None:
        self.flow_run_id, self.every = uuid.UUID(str(flow_run_id)), every
        self.cancelled = threading.Event()
        self._done = threading.Event()
        # The thread runs in this thread's context: the Prefect API this run talks to is a context
        # setting, and a thread starts without it (it would start an ephemeral server of its own).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._watch,), name="omnidistill-cancel-watch",
                                        daemon=True)

    def __enter__(self) -> "CancelWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.every + 5)

    def _watch(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._done.wait(self.every):
                with contextlib.suppress(Exception):  # the API busy or gone for a moment: look again
                    state = client.read_flow_run(self.flow_run_id).state
                    if state is not None and state.is_cancelling():  # asked again while it lasts
                        self.cancelled.set()
                        request_stop("the flow run was cancelled")
