"""Processes that race for one run lock (a module of its own, so that the fork server preloads only this),
and a lock holder to run in a PID namespace of its own (``python -m tests.storage.lock_racers``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from dd_core.storage import exists, parent
from dd_core.storage.lock import RunLock, RunLockedError


def race_for_lock(url: str, options: dict[str, Any] | None, start, finish, results, stale_after: float = 300.0,
                  heartbeat: float = 60.0) -> None:
    """Take the lock at the barrier ``start``; report "won" (holding it until ``finish``) or "locked"."""
    try:
        exists(parent(url), options)  # connect before the start, so that the race is tight
        start.wait(timeout=60)
        with RunLock(url, options, holder=f"racer {os.getpid()}", stale_after=stale_after, heartbeat=heartbeat):
            results.put(("won", os.getpid()))
            finish.wait(timeout=60)
    except RunLockedError:
        results.put(("locked", os.getpid()))
    except BaseException as exc:  # anything else is a failure the test shows
        results.put((f"error: {exc!r}", os.getpid()))


def hold(url: str, seconds: float) -> None:
    """Hold the lock at ``url`` (heartbeat every 0.2 s) for ``seconds``, or until killed."""
    with RunLock(url, heartbeat=0.2, holder="a run in another PID namespace"):
        print("held", flush=True)
        time.sleep(seconds)


def hold_with_pid(url: str, seconds: float, pid: int) -> None:
    """As the first process of a new PID namespace: hold the lock from a child whose pid is ``pid``
    (as the kernel lets its namespace's init pick the next pid), so that the holder's pid is one
    that the test knows to be free in its own namespace."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
    except OSError:
        pass  # the test finds the holder's pid taken in its namespace and says so
    child = subprocess.run([sys.executable, "-m", "tests.storage.lock_racers", "hold", url, str(seconds)])
    sys.exit(child.returncode)


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        hold(sys.argv[2], float(sys.argv[3]))
    else:
        hold_with_pid(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
