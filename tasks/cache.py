"""The teachers, shard plans and images read ahead this process holds: one
:class:`~dd_core.ops.caches.TeacherCache`, one :class:`~dd_core.ops.plans.PlanCache` and one
:class:`~dd_core.ops.read_ahead.ReadAhead` per process; and whether the server has a ``gpu``
concurrency limit (:data:`GPU_LIMIT`, asked every :data:`LIMIT_LOOK_EVERY` seconds at most).

The shard tasks a process runs share them: the threads of the flow's own process, a Dask worker's,
a deployment worker's. Tasks reach them through this module (never a copy of it): a task function
sent to a Dask worker travels by value, but a module travels by name, so on the worker they are the
worker's own caches.
"""

import threading
import time
from collections.abc import Callable

from dd_core.ops.caches import TeacherCache
from dd_core.ops.plans import PlanCache
from dd_core.ops.read_ahead import ReadAhead
from dd_core.pseudo.reading import read_one

TEACHERS = TeacherCache()
PLANS = PlanCache()
READ_AHEAD = ReadAhead(read_one)


class Recent:
    """A yes/no answer of ``ask`` trusted for ``every`` seconds: threads share it, one asks at a time.

    An ``ask`` that raises is not remembered (the next call asks again) and its error propagates.
    """

    def __init__(self, ask: Callable[[], bool], every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ask, self.every, self.clock = ask, every, clock
        self._answer: bool | None = None
        self._until = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            now = self.clock()
            if self._answer is None or now >= self._until:  # an ask that raises leaves the old answer expired
                self._answer, self._until = self.ask(), now + self.every
            return self._answer

    def forget(self) -> None:
        """The next call asks again."""
        with self._lock:
            self._answer = None


def _gpu_limit_exists() -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.infer import GPU_TAG

    with get_client(sync_client=True) as client:
        try:  # `prefect concurrency-limit create gpu N` makes the global limit "tag:gpu"
            client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}")
        except ObjectNotFound:
            return False
    return True


# Whether a "gpu" limit exists is asked once per this many seconds, not once per shard task (a
# request each shard would wait for). A limit created mid-run applies within this: Prefect's task engine
# also remembers for 5 s that a task with the tag (``train``, ``evaluate``) found no limit, but it found
# that before the limit was made, so that memory ends first.
LIMIT_LOOK_EVERY = 10.0
GPU_LIMIT = Recent(_gpu_limit_exists, LIMIT_LOOK_EVERY)
