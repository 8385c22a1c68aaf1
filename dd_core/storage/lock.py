"""One live run per run id: a lock file with a heartbeat under the run's folder.

Two runs with the same id would write the same shards and checkpoints. The first takes
``runs/<id>/_lock.json`` and refreshes it every ``heartbeat`` seconds; a second is refused while
that lock is live. A lock is stale — and taken over — when its heartbeat is older than
``stale_after`` seconds, or at once when its process is gone from this very host (a killed run
can be restarted immediately). On S3 there is no compare-and-swap, so two runs started within the
same second could both win: the lock protects against the common mistake, not against a race.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Mapping

from dd_core.storage.fs import read_bytes, remove, write_bytes_atomic


class RunLockedError(ValueError):
    """Another live run holds this run id (a bad ``run_id`` for this start)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_live(lock: Mapping[str, Any], stale_after: float, now: float | None = None) -> bool:
    """Whether a lock record still belongs to a running run."""
    now = time.time() if now is None else now
    if now - float(lock.get("heartbeat", 0)) > stale_after:
        return False
    if lock.get("host") == socket.gethostname() and not _pid_alive(int(lock.get("pid", -1))):
        return False
    return True


class RunLock:
    """``with RunLock(url): ...`` holds the run id for the duration of the block."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, stale_after: float = 300.0,
                 heartbeat: float = 60.0, label: str = ""):
        self.url, self.options = url, options
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "label": label, "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _current(self) -> dict[str, Any] | None:
        try:
            return json.loads(read_bytes(self.url, self.options))
        except (FileNotFoundError, ValueError):
            return None

    def _write(self) -> None:
        write_bytes_atomic(self.url, json.dumps({**self.record, "heartbeat": time.time()}).encode(), self.options)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self._write()
            except OSError:  # storage hiccup: the next beat tries again
                pass

    def __enter__(self) -> "RunLock":
        held = self._current()
        if held and held.get("owner") != self.record["owner"] and lock_is_live(held, self.stale_after):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(held.get("started", 0))))
            raise RunLockedError(
                f"{self.url}: this run id is live in another process ({held.get('label') or 'a run'} on "
                f"{held.get('host')}, pid {held.get('pid')}, since {since} UTC); wait for it to finish, "
                f"or start with another run id")
        self._write()
        self._thread = threading.Thread(target=self._beat, name="omnidistill-run-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._current()
            if held and held.get("owner") == self.record["owner"]:
                remove(self.url, self.options)
        except OSError:  # storage gone: the lock goes stale and the next start takes it over
            pass
