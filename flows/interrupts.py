"""Stopping a run cleanly: Ctrl-C, SIGTERM, or a cancel from the Prefect UI.

Either way every loop of the process is asked to stop (:data:`dd_core.ops.stop.PROCESS`),
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

from dd_core.ops.stop import PROCESS

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
        PROCESS.request(_received(signum))
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


def signal_received() -> int | None:
    """The signal (SIGINT or SIGTERM) that asked this process to stop, if one did."""
    reason = PROCESS.reason()
    return next((s for s in SIGNALS if reason == _received(s)), None)


def _received(signum: int) -> str:
    return f"{signal.Signals(signum).name} received"


def interruption(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, why) when ``exc`` ended a command that a signal told to stop, else None.

    Besides our :class:`Interrupted`, KeyboardInterrupt and Prefect's TerminationSignal, this is any
    error raised after a signal: libraries wrap what a signal raised inside them in errors of their
    own (pydantic reports ``Error calling function `_ser_model`: KeyboardInterrupt``).
    """
    if isinstance(exc, Interrupted):
        return exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted by SIGINT"
    from prefect.exceptions import TerminationSignal

    signum = exc.signal if isinstance(exc, TerminationSignal) else signal_received()
    return None if signum is None else (128 + signum, f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def ctrl_c_noted() -> Iterator[None]:
    """Within: Ctrl-C raises KeyboardInterrupt as by default, and is noted (:func:`signal_received`),
    so that an error a library wraps it in still reads as an interruption. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        PROCESS.request(_received(signum))
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# multiprocessing's resource tracker (a Dask local cluster starts one) reports, as it exits after
# us, the semaphores of worker processes a signal ended; it cleans them up either way. The report
# would come after a stopped run's last line.
TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def quiet_resource_tracker() -> None:
    """Keep the resource tracker's leak report off the console (set before it starts: it reads the
    environment of the process that starts it)."""
    filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    if TRACKER_WARNING not in filters:
        os.environ["PYTHONWARNINGS"] = ",".join([*filters, TRACKER_WARNING])


# Values that may hold credentials: the resume line names the setting, not its value.
SECRET_SETTINGS = ("storage.options",)


def resume_command(config: str, overrides: Sequence[str], run_id: str) -> str:
    """The command that resumes run ``run_id`` of ``config`` (the same ``--set`` values, this run id;
    storage options, which may hold credentials, shown as ``<hidden>``)."""
    sets = [_hidden(o) for o in overrides if not o.strip().startswith("run_id=")] + [f"run_id={run_id}"]
    return shlex.join(["omnidistill", "run", config, *[part for o in sets for part in ("--set", o)]])


def _hidden(override: str) -> str:
    key = override.split("=", 1)[0].strip()
    secret = any(key == name or key.startswith(name + ".") for name in SECRET_SETTINGS)
    return f"{key}=<hidden>" if secret and "=" in override else override


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
                        PROCESS.request("the flow run was cancelled")
