"""Where a labeling's time goes: a benchmark's seam into the shard loop."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator


class StageClock:
    """Seconds spent waiting for images (``read``: what reading ahead did not hide) and running the
    teacher (``infer``) while pseudo-labeling: a benchmark's seam into the shard loop. ``sync``
    (e.g. ``torch.cuda.synchronize``) runs at each stage's edges, so that a GPU's queued work is
    counted where it is done."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = sync or (lambda: None)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start


def timed(clock: StageClock | None, name: str) -> contextlib.AbstractContextManager[None]:
    """``clock``'s stage ``name``; nothing without a clock."""
    return clock.stage(name) if clock is not None else contextlib.nullcontext()
