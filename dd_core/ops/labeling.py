"""What a labeling is given besides the method: caches shared by its shards, reading ahead, a GPU
slot, a clock and the stop token."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dd_core.ops.caches import TeacherCache
from dd_core.ops.clock import StageClock
from dd_core.ops.plans import PlanCache
from dd_core.ops.read_ahead import ReadAhead
from dd_core.ops.stop import NEVER, StopToken


@dataclass(frozen=True)
class LabelingOps:
    """The operations a shard's pseudo-labeling runs with; none changes what it writes.

    - ``hold()``: held while a shard is computed, never for a finished one (a GPU concurrency slot).
    - ``read_ahead``: where the first images of the shard labeled next are read meanwhile, and
      every image read (:class:`~dd_core.ops.read_ahead.ReadAhead`); without, each shard reads on
      threads of its own.
    - ``clock``: seconds spent reading and inferring (a benchmark's).
    - ``stop``: checked before each batch; a stopped shard is left unwritten, redone on resume.
    - ``teachers``: the teacher loaded once and shared by the next shards; without, loaded per shard.
    - ``plans``: the shard plan read once; without, read for each shard.
    """

    hold: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    read_ahead: ReadAhead | None = None
    clock: StageClock | None = None
    stop: StopToken = NEVER
    teachers: TeacherCache | None = None
    plans: PlanCache | None = None
