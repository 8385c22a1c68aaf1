"""Shard plans read once per process: every shard task of a labeling needs its one shard of a plan
that lists every unlabeled image.

A plan held at the digest a labeling planned is watched by one thread, which looks at the storage's
version of the plan so that a labeling whose plan was written again stops (:class:`PlanChanged`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dd_core.data.unlabeled import Shard, parse_plan, read_plan
from dd_core.storage import version

log = logging.getLogger(__name__)


class PlanChanged(ValueError):
    """The plan at a URL is not the one a labeling planned: it was written again since."""


@dataclass
class _Pinned:
    """A plan held at the digest a labeling planned, with the storage's version of it when it was read
    and what the last look at the storage found."""

    plan: tuple[str, list[Shard]]
    token: Any
    look: Future[None] | None = None
    changed: str | None = None


class PlanCache:
    """Shard plans read once per process, for every shard task that needs its one shard.

    A plan lists every unlabeled image (about 10 MB of json for COCO's 123k): read by each shard
    task, it would be read and parsed once per shard. The ``maxsize`` latest plans are kept.

    - With the digest a labeling planned (``expected``: :attr:`~dd_core.data.unlabeled.WrittenPlan.digest`,
      carried by its shard job), a plan held is returned at once, and a plan read with another
      digest raises :class:`PlanChanged`. Meanwhile one thread looks at the storage's version of the
      plan, one look at a time: a plan written again with other shards since (the same run planned
      anew while this process still labels the old plan: a straggler) raises :class:`PlanChanged`
      at the next call, so that shards of the old plan stop being written over the new plan's. No
      shard task waits for the storage to be asked (an S3 HEAD) before its first image.
    - Without, a plan is keyed by its URL and its :func:`~dd_core.storage.version`, asked of the
      storage at each call (a stat, an S3 HEAD); a plan rewritten is read again.

    Owner: the process that runs shard tasks (``tasks.cache.PLANS``). Threads share it: one reads
    a plan while the others wait for it rather than read it too. Sent to another process (inside a
    pickled flow, say), it arrives empty.
    """

    def __init__(self, maxsize: int = 2) -> None:
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple[str, Any], tuple[str, list[Shard]]] = OrderedDict()
        self._pinned: OrderedDict[tuple[str, str], _Pinned] = OrderedDict()
        self._lock = threading.Lock()
        self._looker: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """A cache sent to another process arrives empty: each process reads its own plans."""
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["maxsize"])

    def read(self, url: str, options: Mapping[str, Any] | None = None,
             expected: str | None = None) -> tuple[str, list[Shard]]:
        """(images root, shards) of the plan at ``url`` as it is now (see
        :func:`~dd_core.data.unlabeled.read_plan`), or as planned with digest ``expected`` (see the class docstring)."""
        if expected is not None:
            return self._read_pinned(url, options, expected)
        # The version before the read: a plan rewritten in between is stored under the old
        # version and read again at the next call, never the other way round.
        token = version(url, options)
        if token is None:  # a storage that tells no version: nothing to tell a rewrite by
            return read_plan(url, options)
        key = (url, token)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            plan = self._plans[key] = read_plan(url, options)
            for old in [k for k in self._plans if k[0] == url and k != key]:
                del self._plans[old]  # an earlier version of this plan: never asked for again
            while len(self._plans) > self.maxsize:
                self._plans.popitem(last=False)
            return plan

    def _read_pinned(self, url: str, options: Mapping[str, Any] | None, expected: str) -> tuple[str, list[Shard]]:
        from dd_core.storage import read_json

        key = (url, expected)
        with self._lock:
            pinned = self._pinned.get(key)
            if pinned is None:
                token = version(url, options)  # before the read: a rewrite in between is seen by the first look
                document = read_json(url, options)
                if document.get("digest") != expected:
                    raise PlanChanged(_changed(url, expected, document.get("digest")))
                pinned = self._pinned[key] = _Pinned(parse_plan(document), token)
                while len(self._pinned) > self.maxsize:
                    self._pinned.popitem(last=False)
            self._pinned.move_to_end(key)
            if pinned.changed is not None:  # read again next time: the run may be planned back to this digest
                del self._pinned[key]
                raise PlanChanged(pinned.changed)
            if pinned.token is not None and (pinned.look is None or pinned.look.done()):
                if self._looker is None:
                    self._looker = ThreadPoolExecutor(1, thread_name_prefix="omnidistill-plan")
                pinned.look = self._looker.submit(_look, url, options, expected, pinned)
            return pinned.plan

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._pinned.clear()
            if self._looker is not None:
                self._looker.shutdown(wait=False, cancel_futures=True)
                self._looker = None


def _changed(url: str, expected: str, found: str | None) -> str:
    """What :class:`PlanChanged` says: the plan, and the digests planned and found (their first 12 digits)."""
    return (f"{url}: the shard plan changed since this labeling planned it (digest {expected[:12]}, now "
            f"{(found or 'none')[:12]}): the same run was planned again meanwhile; this labeling stops")


def _look(url: str, options: Mapping[str, Any] | None, expected: str, pinned: _Pinned) -> None:
    """Whether the plan at ``url`` is still the one of digest ``expected``: a new version of the file
    is read, and marks ``pinned`` changed unless its digest is the same. A look that fails (the
    storage unreachable for a moment) says nothing: the next one asks again."""
    from dd_core.storage import read_json

    try:
        token = version(url, options)
        if token == pinned.token:
            return
        found = read_json(url, options).get("digest")
    except FileNotFoundError:
        pinned.changed = f"{url}: the shard plan is gone since this labeling read it (planned again, or deleted)"
        return
    except Exception:  # noqa: BLE001 - a look, not the labeling: the next call looks again
        log.debug("looking at %s failed", url, exc_info=True)
        return
    if found == expected:
        pinned.token = token  # written again with the same shards (a resume planning the same images)
    else:
        pinned.changed = _changed(url, expected, found)
