"""Data-loader workers forked from a process that runs Prefect: a workaround for CPython's fork.

A forked worker inherits the thread-exit hooks the parent's objects registered (Prefect's log and
event services), and ``threading._shutdown`` calls them as the worker exits. They stop threads that
fork does not copy, and Prefect's fail there (its after-fork reset leaves ``_done_event`` None): the
worker then exits with code 1 and the DataLoader reports it dead after every training. A training
loop passes :func:`drop_inherited_exit_hooks` as its DataLoader's ``worker_init_fn``.
"""

from __future__ import annotations

import inspect
import threading


def drop_inherited_exit_hooks(worker_id: int) -> None:
    """In a forked loader worker: forget the thread-exit hooks bound to the parent's objects.

    The module-level hooks (``concurrent.futures``') stay: they are fork-safe and serve the worker's
    own pools.
    """
    hooks = getattr(threading, "_threading_atexits", None)  # CPython's list, as _register_atexit fills it
    if isinstance(hooks, list):
        hooks[:] = [hook for hook in hooks if not inspect.ismethod(getattr(hook, "func", hook))]
