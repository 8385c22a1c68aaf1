"""One live run per run id: a lock file with a heartbeat under the run's folder.

Two runs with the same id would write the same shards and checkpoints. The first takes
``runs/<id>/_lock.json`` and rewrites it every ``heartbeat`` seconds; a second is refused while
that lock is live.

**Live** means: its heartbeat is fresh, and its process is not known to be gone. Fresh is judged
by the storage's own clock, never by the clocks of the two hosts (one 300 s off would see every
lock as stale): the lock's age is the storage's time now minus the time the storage says the lock
was last written (``os.stat`` mtime locally, ``LastModified`` on S3). The storage's time now is
read the same way, from a probe object the contender writes and deletes beside the lock, and then
carried forward on the contender's monotonic clock. A lock not rewritten for ``stale_after``
seconds is stale, whatever times its record holds. Where the storage tells no modification time,
the record's heartbeat is compared with this host's clock, as before.

A process that is gone makes its lock stale at once (a killed run can be restarted immediately),
but only where its pid can be trusted: the record names the host, boot id and PID namespace of its
process (:mod:`dd_core.storage.host`), and ``os.kill(pid, 0)`` is asked only when all three are
this process's own. A run in another container on the same host (another PID namespace) is "no
such process" to ``os.kill``, so its lock is live for as long as its heartbeat is fresh.

Taking the lock is an exclusive create (a hard link locally, a PUT with ``If-None-Match: *`` on
S3), so of many runs started at the same moment exactly one gets it. Taking over a stale lock is
race-free too: only the start that exclusively creates the marker ``_lock.json.takeover-<owner>-0``
may delete the stale lock of that owner (see :meth:`RunLock._take_over`); then everyone races for
the exclusive create again. What no lock file can rule out: a holder that stalls for longer than
``stale_after`` (a paused machine) and wakes up just as its lock is taken over. Its heartbeat then
finds the lock taken and the run stops (:class:`RunLockLost`): while the lock is held,
:meth:`StopToken.check <dd_core.ops.stop.StopToken.check>` of the token the lock is given (the
run's :data:`~dd_core.ops.stop.PROCESS`) raises in every loop once the heartbeat has found the lock
taken, and leaving the ``with`` block raises :class:`RunLockLost` (a run that lost
its lock never ends as a success). A lease is only as good as its timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Mapping

from dd_core.storage.fs import _is_local, filesystem, read_bytes, remove, write_bytes_atomic, write_bytes_exclusive
from dd_core.storage.host import pid_runs, process_space, same_process_space

if TYPE_CHECKING:  # storage is below ops: the lock is handed the token of the loops it stops
    from dd_core.ops.stop import StopToken

log = logging.getLogger(__name__)

# How long a start waits for another start that is taking over the same stale lock (which takes
# a few storage round trips) before giving up with RunLockedError.
TAKEOVER_PATIENCE = 10.0


class RunLockedError(ValueError):
    """Another live run holds this run id (a bad ``run_id`` for this start)."""


class RunLockLost(RuntimeError):
    """This run's lock was taken by another run while this one held it: this run must stop."""


PROCESS = uuid.uuid4().hex
"""This process among all that ever had its pid on this host (a restarted container reuses pids)."""


def _process_gone(lock: Mapping[str, Any]) -> bool:
    """Whether the process of ``lock`` is known not to run: only where its pid can be trusted (same
    host, boot and PID namespace). Our own pid is alive only for a lock of this very process
    (``process`` is :data:`PROCESS`): a container restarted with the same host name starts with the
    pid of the run it replaced, and that run is gone."""
    if not (same_process_space(lock) or _earlier_version_here(lock)):
        return False
    pid = _number(lock.get("pid"))
    if pid is None or pid != int(pid) or pid < 1:  # not a pid: never a process of ours
        return True
    if int(pid) == os.getpid():
        return lock.get("process") not in (None, PROCESS)  # None: a lock written before locks named their process
    return not pid_runs(int(pid))


def _earlier_version_here(lock: Mapping[str, Any]) -> bool:
    """A record of a version before records named their boot and PID namespace (neither field is
    there, not even as null), written on a host of our name. Such a record can only come from a
    process of that version, which asked ``os.kill`` about the pids of its host name too: its pid is
    trusted as it was then, so a killed run of that version can be restarted at once after an upgrade."""
    return "boot" not in lock and "pid_ns" not in lock and lock.get("host") == socket.gethostname()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def lock_is_live(lock: Mapping[str, Any], stale_after: float, age: float | None = None,
                 now: float | None = None) -> bool:
    """Whether a lock record still belongs to a running run.

    ``age``: seconds since the lock was last written, by the storage's clock (see the module
    docstring). Without it the record's heartbeat is compared with ``now`` (default: this host's
    clock). Stale: older than ``stale_after`` seconds; a heartbeat that is not a time (missing,
    NaN: never written by a RunLock); a process known to be gone (see :func:`_process_gone`).
    """
    heartbeat = _number(lock.get("heartbeat"))
    if heartbeat is None:
        return False
    if age is None:
        age = abs((time.time() if now is None else now) - heartbeat)
    return age <= stale_after and not _process_gone(lock)


def modified_at(url: str, options: Mapping[str, Any] | None = None) -> float | None:
    """When the storage says ``url`` was last written (its own clock, seconds since the epoch); None
    when it does not say. ``FileNotFoundError`` when there is nothing at ``url``."""
    fs, path = filesystem(url, options)
    if _is_local(fs):
        return os.stat(path).st_mtime
    meta = fs.info(path)
    stamp = meta.get("LastModified") or meta.get("mtime") or meta.get("last_modified")
    if hasattr(stamp, "timestamp"):
        return float(stamp.timestamp())
    return _number(stamp)


def _owner_key(record: Mapping[str, Any]) -> str:
    """A file-name-safe key of a record's owner (the owner field is read from storage, so may be anything)."""
    return hashlib.sha256(str(record.get("owner")).encode()).hexdigest()[:16]


class RunLock:
    """``with RunLock(url): ...`` holds the run id for the duration of the block.

    ``clock`` stamps this holder's heartbeats (shown to the user; staleness is judged by the
    storage's clock, see the module docstring). ``stop``: the token of the loops that must stop
    once the lock is found taken (the run's :data:`~dd_core.ops.stop.PROCESS`); without it, only
    leaving the block tells (:class:`RunLockLost`).
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, stale_after: float = 300.0,
                 heartbeat: float = 60.0, holder: str = "", clock: Callable[[], float] = time.time,
                 stop: StopToken | None = None):
        self.url, self.options = url, options
        self.stale_after, self.heartbeat, self.clock = stale_after, heartbeat, clock
        self.record = {"owner": uuid.uuid4().hex, **process_space(), "pid": os.getpid(),
                       "process": PROCESS, "holder": holder, "started": clock()}
        self.lost: str | None = None  # why this run must stop: its lock was taken (set by the heartbeat)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = (stop.stop_if(lambda: self.lost) if stop is not None  # the loops given ``stop`` stop
                          else contextlib.nullcontext())
        self._storage_clock: tuple[float, float] | None = None  # (storage time, monotonic time) of a probe

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

    def _storage_now(self) -> float | None:
        """The storage's time now: read once from a probe object (its modification time), then carried
        forward on this process's monotonic clock. None where the storage tells no time."""
        if self._storage_clock is None:
            probe = f"{self.url}.clock-{self.record['owner']}"
            write_bytes_atomic(probe, b"", self.options)
            try:
                stamp = modified_at(probe, self.options)
            finally:
                remove(probe, self.options)
            self._storage_clock = (math.nan if stamp is None else stamp, time.monotonic())
        stamp, then = self._storage_clock
        return None if math.isnan(stamp) else stamp + (time.monotonic() - then)

    def _age(self, url: str) -> float | None:
        """Seconds since ``url`` was last written, by the storage's clock (None: it tells no time).
        Read after the record: a record rewritten in between then looks younger, never older."""
        written = modified_at(url, self.options)
        now = self._storage_now() if written is not None else None
        return None if now is None else now - written

    def _is_live(self, url: str, record: Mapping[str, Any]) -> bool:
        """Whether ``record``, just read from ``url``, is a live lock (or takeover marker)."""
        try:
            age = self._age(url)
        except FileNotFoundError:  # removed since it was read: whoever wrote it is done with it
            return False
        return lock_is_live(record, self.stale_after, age=age, now=self.clock())

    def _stamped(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": self.clock()}).encode()

    def _create(self, url: str) -> bool:
        """Exclusively create ``url`` with our record; False when it exists (or is being created)."""
        try:
            write_bytes_exclusive(url, self._stamped(), self.options)
        except FileExistsError:
            return False
        return True

    def _held(self) -> dict[str, Any] | None:
        """The record of the lock as it is now (None: none; ``{}``: one that is not a record)."""
        try:
            return self._read(self.url)
        except ValueError:  # we never write anything unreadable
            return {}

    def _is_ours(self) -> bool:
        held = self._held()
        return held is not None and held.get("owner") == self.record["owner"]

    def _beat(self) -> None:
        """Rewrite the heartbeat while the lock is ours; once another run took it, ask this run to stop."""
        while not self._stop.wait(self.heartbeat):
            try:
                held = self._held()
                if held is None or held.get("owner") != self.record["owner"]:
                    self.lost = self._taken_by(held)
                    log.error("%s", self.lost)
                    return
                write_bytes_atomic(self.url, self._stamped(), self.options)
            except OSError:  # storage hiccup: the next beat tries again
                pass

    def _taken_by(self, held: Mapping[str, Any] | None) -> str:
        if held is None:
            return f"the run lock {self.url} was removed by someone else; this run stops"
        who = held.get("holder") or "a run"
        return (f"the run lock {self.url} was taken by {who} on {held.get('host')}, pid {held.get('pid')}; "
                f"this run stops")

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
            if self._is_live(marker, taker):
                return False
            markers.append(marker)  # abandoned by a start that died: go on to the next one
        gone = False  # whether the stale lock is gone for good (an owner never takes its lock again)
        try:
            held = self._read_lock()
            if held is None or _owner_key(held) != owner:
                gone = True
            elif not self._is_live(self.url, held):  # else its run came back to life
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
            if held is not None and self._is_live(self.url, held):
                raise self._refusal(held)
            if held is not None and self._take_over(held):
                continue  # the stale lock is gone: race for the exclusive create again
            if time.monotonic() > deadline:
                raise RunLockedError(f"{self.url}: could not take the run lock within {TAKEOVER_PATIENCE:g} s "
                                     f"(another start is taking over its stale lock); try again")
            time.sleep(0.05)
        self._stopping.__enter__()
        self._thread = threading.Thread(target=self._beat, name="omnidistill-run-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5)
        finally:  # also when a signal interrupts the join: a lock left behind would hold up the resume
            self._stopping.__exit__(None, None, None)
            try:
                if self._is_ours():
                    remove(self.url, self.options)
            except OSError:  # storage gone: the lock goes stale and the next start takes it over
                pass
        # A lost lock ends the run as a failure, whatever ended the block (a signal stays a signal).
        if self.lost is not None and (exc_type is None or issubclass(exc_type, Exception)):
            raise RunLockLost(self.lost)
