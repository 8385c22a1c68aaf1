"""Processes that race for one run lock (a module of its own, so that the fork server preloads only this)."""

from __future__ import annotations

import os
from typing import Any

from dd_core.storage import exists, parent
from dd_core.storage.lock import RunLock, RunLockedError


def race_for_lock(url: str, options: dict[str, Any] | None, start, finish, results) -> None:
    """Take the lock at the barrier ``start``; report "won" (holding it until ``finish``) or "locked"."""
    try:
        exists(parent(url), options)  # connect before the start, so that the race is tight
        start.wait(timeout=60)
        with RunLock(url, options, holder=f"racer {os.getpid()}"):
            results.put(("won", os.getpid()))
            finish.wait(timeout=60)
    except RunLockedError:
        results.put(("locked", os.getpid()))
    except BaseException as exc:  # anything else is a failure the test shows
        results.put((f"error: {exc!r}", os.getpid()))
