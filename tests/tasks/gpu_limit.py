"""A ``gpu`` tag concurrency limit on the test server, for the tests of the shard task's slot.

Two memories stand between a limit created mid-run and the task runs of a process: ours
(``tasks.cache.GPU_LIMIT``, a "no" trusted for ``LIMIT_LOOK_EVERY`` = 10 s) and Prefect's task engine's
(a tag found without a limit is remembered for 5 s; any earlier test's ``train`` or ``evaluate`` task,
tagged ``gpu``, may have left one). In a run both were filled before the limit was made, so both
have passed 10 s after it. A test that does not wait those 10 s forgets ours and waits out Prefect's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prefect import flow, task
from prefect.client.orchestration import get_client

from tasks import cache
from tasks.infer import GPU_TAG


def active_gpu_slots() -> int:
    """The slots of the ``gpu`` limit in use now (0 without a limit)."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}").active_slots
        except ObjectNotFound:
            return 0


@task(tags=[GPU_TAG])
def _tagged() -> int:
    """A task carrying the ``gpu`` tag, as ``train`` and ``evaluate`` do: the engine takes its slot."""
    return active_gpu_slots()


@flow
def tagged_task() -> int:
    """Runs one ``gpu``-tagged task; the slots in use while it ran (1: its own, where a limit applies)."""
    return _tagged()


def wait_until_applied(applied, deadline_s: float = 60.0) -> float:
    """Calls ``applied()`` until it is true (at most ``deadline_s``); the seconds that took. Fails the test
    if it never is: a limit that does not apply to task runs."""
    start = time.monotonic()
    while not applied():
        assert time.monotonic() - start < deadline_s, f"the gpu limit did not apply within {deadline_s:.0f} s"
        time.sleep(0.5)
    return time.monotonic() - start


@contextlib.contextmanager
def gpu_limit(slots: int) -> Iterator[None]:
    """A ``gpu`` limit of ``slots`` on the server, deleted after the block; this process's task runs take
    its slots from the block's start (a task tagged ``gpu`` has held one). Nothing holds one then."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:  # one left by an earlier test (its slots perhaps held) would make the wait below block
            left = client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}")
        except ObjectNotFound:
            left = None
        assert left is None, f"a gpu limit is left on the test server: {left.limit} slots, {left.active_slots} held"
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)
        try:
            cache.GPU_LIMIT.forget()  # rather than wait out LIMIT_LOOK_EVERY
            wait_until_applied(lambda: tagged_task() == 1)
            yield
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)
            cache.GPU_LIMIT.forget()
