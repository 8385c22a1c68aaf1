"""Teachers kept loaded between the shard tasks of one process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class TeacherCache(Generic[T]):
    """Teachers loaded once and shared by the shard tasks of one process; at most one at a time.

    A worker pseudo-labels shard after shard with one teacher: loading it per shard costs a
    checkpoint read each time and, on a GPU, left several copies allocated at once. A teacher's
    forward passes do not change it, so threads may share it.

    Owner and lifetime: the process that runs shard tasks owns one cache (``tasks.cache.TEACHERS``).
    It holds the latest teacher until a shard of another fingerprint arrives or :meth:`clear` is
    called. The flow clears the cache of its own process when labeling is over (threads runner),
    before the student trains there; a Dask worker or a deployment's worker keeps its teacher until
    it exits or labels for another teacher.
    """

    def __init__(self) -> None:
        self._teachers: dict[str, T] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """A cache sent to another process (inside a pickled flow, say) arrives empty: teachers
        do not travel, each process loads its own."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def get(self, fingerprint: str, load: Callable[[], T]) -> T:
        """The teacher of ``fingerprint``, loaded by ``load`` unless this cache holds it already."""
        with self._lock:
            if fingerprint not in self._teachers:
                self._teachers.clear()  # the old one first: two teachers at once may not fit on a GPU
                self._teachers[fingerprint] = load()
            return self._teachers[fingerprint]

    def clear(self) -> int:
        """Let every cached teacher go; returns how many there were."""
        with self._lock:
            count = len(self._teachers)
            self._teachers.clear()
            return count

    def fingerprints(self) -> list[str]:
        """The fingerprints of the teachers held now."""
        with self._lock:
            return list(self._teachers)
