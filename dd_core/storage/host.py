"""Which process wrote a record on storage, and whether asking the kernel about its pid tells anything.

A pid names a process only within one PID namespace of one boot of one machine: two containers on
one host share the host name (with ``--uts=host``) and the boot, but a live process of one is
"no such process" to ``os.kill(pid, 0)`` in the other, and pid 7 of one is some other process in
the other. So a record names the host, the boot (``/proc/sys/kernel/random/boot_id``) and the PID
namespace (``/proc/self/ns/pid``) of its process, and its pid is only looked up where all three
are this process's own (:func:`same_process_space`). Where the kernel tells neither (not Linux),
nothing is trusted.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any, Mapping


@functools.cache
def boot_id() -> str | None:
    """This boot of this machine (a new one at every restart), or None where the kernel does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where the kernel does not say.
    Not cached: ``unshare``/``setns`` may move a process's children to another one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_space() -> dict[str, Any]:
    """Where this process's pid means something: host, boot, PID namespace (fields of a record)."""
    return {"host": socket.gethostname(), "boot": boot_id(), "pid_ns": pid_namespace()}


def same_process_space(record: Mapping[str, Any]) -> bool:
    """Whether ``record``'s pid is a pid of this process's namespace, in this boot, on this host:
    only then does ``os.kill(pid, 0)`` tell whether its process runs."""
    here = process_space()
    return None not in (here["boot"], here["pid_ns"]) and all(record.get(k) == v for k, v in here.items())


def pid_runs(pid: int) -> bool:
    """Whether a process with this pid runs in this PID namespace (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):  # gone, or not a pid at all
        return False
    except PermissionError:
        return True
    return True
