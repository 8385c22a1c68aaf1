"""One live run per run id: a lock file with a heartbeat under the run's folder.

Two runs with the same id would write the same shards and checkpoints. The first takes
``runs/<id>/_lock.json`` and refreshes it every ``heartbeat`` seconds; a second is refused while
that lock is live. A lock is stale — and taken over — when its heartbeat is older than
``stale_after`` seconds, or at once when its process is gone from this very host (a killed run
can be restarted immediately).

Taking the lock is an exclusive create (a hard link locally, a PUT with ``If-None-Match: *`` on
S3), so of many runs started at the same moment exactly one gets it. Taking over a stale lock is
race-free too: only the start that exclusively creates the marker ``_lock.json.takeover-<owner>-0``
may delete the stale lock of that owner (see :meth:`RunLock._take_over`); then everyone races for
the exclusive create again. What no lock file can rule out: a holder that stalls for longer than
``stale_after`` (a paused machine) and wakes up just as its lock is taken over may write one last
heartbeat over the new holder's lock; the new holder's heartbeat then finds it lost the lock and
warns. A lease is only as good as its timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any, Mapping

from dd_core.storage.fs import read_bytes, remove, write_bytes_atomic, write_bytes_exclusive

log = logging.getLogger(__name__)

# How long a start waits for another start that is taking over the same stale lock (which takes
# a few storage round trips) before giving up with RunLockedError.
TAKEOVER_PATIENCE = 10.0


class RunLockedError(ValueError):
    """Another live run holds this run id (a bad ``run_id`` for this start)."""


PROCESS = uuid.uuid4().hex
"""This process among all that ever had its pid on this host (a restarted container reuses pids)."""


def _pid_alive(pid: int, process: Any = None) -> bool:
    """Whether process ``pid`` of this host runs. Our own pid is alive only for a lock of this very
    process (``process`` is :data:`PROCESS`): a container restarted with the same host name starts
    with the pid of the run it replaced, and that run is gone."""
    if pid == os.getpid():
        return process in (None, PROCESS)  # None: a lock written before locks named their process
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):  # gone, or not a pid at all
        return False
    except PermissionError:
        return True
    return True


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def lock_is_live(lock: Mapping[str, Any], stale_after: float, now: float | None = None) -> bool:
    """Whether a lock record still belongs to a running run.

    Stale: a heartbeat older than ``stale_after`` seconds, or one that is not a time (missing, NaN)
    or lies further in the future than a clock could be off (``stale_after``); a pid of this host
    that is gone (or is this very process).
    """
    now = time.time() if now is None else now
    heartbeat = _number(lock.get("heartbeat"))
    if heartbeat is None or abs(now - heartbeat) > stale_after:
        return False
    if lock.get("host") == socket.gethostname():
        pid = _number(lock.get("pid"))
        if pid is None or pid != int(pid) or not _pid_alive(int(pid), lock.get("process")):
            return False
    return True


def _owner_key(record: Mapping[str, Any]) -> str:
    """A file-name-safe key of a record's owner (the owner field is read from storage, so may be anything)."""
    return hashlib.sha256(str(record.get("owner")).encode()).hexdigest()[:16]


class RunLock:
    """``with RunLock(url): ...`` holds the run id for the duration of the block."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, stale_after: float = 300.0,
                 heartbeat: float = 60.0, holder: str = ""):
        self.url, self.options = url, options
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "process": PROCESS, "holder": holder, "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, url: str) -> dict[str, Any] | None:
        """The record at ``url``, None when there is none; ValueError when it is not a record."""
        try:
            data = read_bytes(url, self.options)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"{url}: not a run lock record ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{url}: not a run lock record (a JSON {type(record).__name__}, expected an object)")
        return record

    def _read_lock(self) -> dict[str, Any] | None:
        try:
            return self._read(self.url)
        except ValueError as exc:  # never written by a RunLock: we do not guess whether it is live
            raise RunLockedError(f"{exc}; if no run uses this run id, delete that file and start again") from exc

    def _stamped(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _create(self, url: str) -> bool:
        """Exclusively create ``url`` with our record; False when it exists (or is being created)."""
        try:
            write_bytes_exclusive(url, self._stamped(), self.options)
        except FileExistsError:
            return False
        return True

    def _is_ours(self) -> bool:
        try:
            held = self._read(self.url)
        except ValueError:  # we never write anything unreadable
            return False
        return held is not None and held.get("owner") == self.record["owner"]

    def _beat(self) -> None:
        """Refresh the heartbeat while the lock is ours; stop (and warn) once someone took it over."""
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._is_ours():
                    log.warning("%s: the run lock was taken over by another run (this one looked stale for "
                                "%s s); not refreshing it any more", self.url, self.stale_after)
                    return
                write_bytes_atomic(self.url, self._stamped(), self.options)
            except OSError:  # storage hiccup: the next beat tries again
                pass

    def _refusal(self, held: Mapping[str, Any]) -> RunLockedError:
        started = _number(held.get("started"))
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) if started and 0 < started < 4e9 else "?"
        who = held.get("holder") or held.get("label") or "a run"  # "label": locks of earlier versions
        return RunLockedError(
            f"{self.url}: this run id is live in another process ({who} on "
            f"{held.get('host')}, pid {held.get('pid')}, since {since} UTC); wait for it to finish, "
            f"or start with another run id")

    def _take_over(self, stale: Mapping[str, Any]) -> bool:
        """Delete the stale lock ``stale`` unless another start is doing so; False while one is.

        Read-then-delete is safe for one start at a time only: a second start that read the same
        stale lock would delete the lock the first one has taken meanwhile. So a start must first
        exclusively create ``<lock>.takeover-<owner>-<n>``; marker ``n + 1`` is tried only when
        marker ``n`` was left by a start that died (its own record is stale), so that one
        generation of markers is never held by two. Once the stale lock is gone, its owner's
        markers can never matter again and are removed; a start that dies in between leaves one.
        """
        owner = _owner_key(stale)
        markers: list[str] = []
        while True:
            marker = f"{self.url}.takeover-{owner}-{len(markers)}"
            if self._create(marker):
                markers.append(marker)
                break
            try:
                taker = self._read(marker)
            except ValueError:
                taker = {}  # unreadable: never one of ours, so abandoned
            if taker is None:
                continue  # its start has just finished: try the same marker again
            if lock_is_live(taker, self.stale_after):
                return False
            markers.append(marker)  # abandoned by a start that died: go on to the next one
        gone = False  # whether the stale lock is gone for good (an owner never takes its lock again)
        try:
            held = self._read_lock()
            if held is None or _owner_key(held) != owner:
                gone = True
            elif not lock_is_live(held, self.stale_after):  # else its run came back to life
                remove(self.url, self.options)
                gone = True
        finally:
            for marker in markers if gone else markers[-1:]:
                remove(marker, self.options)
        return True

    def __enter__(self) -> "RunLock":
        deadline = time.monotonic() + TAKEOVER_PATIENCE
        while not self._create(self.url):
            held = self._read_lock()
            if held is not None and lock_is_live(held, self.stale_after):
                raise self._refusal(held)
            if held is not None and self._take_over(held):
                continue  # the stale lock is gone: race for the exclusive create again
            if time.monotonic() > deadline:
                raise RunLockedError(f"{self.url}: could not take the run lock within {TAKEOVER_PATIENCE:g} s "
                                     f"(another start is taking over its stale lock); try again")
            time.sleep(0.05)
        self._thread = threading.Thread(target=self._beat, name="omnidistill-run-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5)
        finally:  # also when a signal interrupts the join: a lock left behind would hold up the resume
            try:
                if self._is_ours():
                    remove(self.url, self.options)
            except OSError:  # storage gone: the lock goes stale and the next start takes it over
                pass
