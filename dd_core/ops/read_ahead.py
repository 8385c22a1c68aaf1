"""Reading the first images of the shard a process labels next while it labels the current one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dd_core.data.images import MAX_PIXELS
from dd_core.data.unlabeled import UnlabeledImage
from dd_core.storage import join

if TYPE_CHECKING:
    from dd_core.pseudo.teacher import ImageCheck

# Images read at once. An S3 GET waits 10-50 ms for its first byte: read one after another, a
# batch of 8 would keep a GPU waiting longer than its inference takes.
READ_THREADS = 8

Reader = Callable[[UnlabeledImage, str, "Mapping[str, Any] | None", "ImageCheck", "int | None"], Any]
"""How one image is read: (image, root, storage options, image check, max_pixels) -> what the reads give
(:func:`dd_core.pseudo.reading.read_one`)."""


class ReadAhead:
    """The first images of the shard this process labels next, read while it labels the current one.

    Shards labeled one after another by one thread (``omnidistill label``, the flow's shard tasks
    on one worker, a ``label-shards`` flow run) would otherwise each start with the model idle until
    its first batch is read. :func:`~dd_core.pseudo.reading.read_batches` starts these reads once it
    has asked for its own last batch, and the next shard's ``read_batches`` takes them by URL (with
    the same storage options and image check; anything else is read anew). One instance per
    process, shared by its shard tasks (``tasks.cache``); the reads of the last ``keep`` shards
    announced are held, older ones (a guess that did not come true) are dropped. A labeling calls
    :meth:`clear` when it ends, however it ends: reads held past it could be of files rewritten since.
    ``read`` reads one image, the labeling's own way (:func:`dd_core.pseudo.reading.read_one`).
    """

    def __init__(self, read: Reader, threads: int = READ_THREADS, keep: int = 2) -> None:
        if not callable(read):
            raise TypeError(f"ReadAhead: read must be the function that reads one image "
                            f"(dd_core.pseudo.reading.read_one), got {read!r}")
        self._read = read
        self.threads, self.keep = max(1, threads), max(1, keep)
        self._lock = threading.Lock()
        self._starts: OrderedDict[int, dict[str, tuple[Any, tuple[ImageCheck, int | None], Future]]] = OrderedDict()
        self._count = 0
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent to another process (inside a pickled flow, say), it arrives empty: reads do not travel."""
        return {"read": self._read, "threads": self.threads, "keep": self.keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["read"], state["threads"], state["keep"])

    def read(self, image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
             check_image: ImageCheck, max_pixels: int | None = MAX_PIXELS) -> Future:
        """``image`` read on this object's threads, kept from shard to shard until :meth:`clear`:
        ``read_batches`` reads its shard on them too, rather than start threads of its own for every shard."""
        with self._lock:
            return self._submit(image, root, options, check_image, max_pixels)

    def _submit(self, image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
                check_image: ImageCheck, max_pixels: int | None) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="omnidistill-ahead")
        return self._pool.submit(self._read, image, root, options, check_image, max_pixels)

    def abandon(self) -> None:
        """Leave the reads under way (a stalled GET of a shard that stopped) to the threads they
        hold, and read from now on with new ones: a shard retried next must not queue behind them."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    def start(self, images: Sequence[UnlabeledImage], root: str, options: Mapping[str, Any] | None,
              check_image: ImageCheck, max_pixels: int | None = MAX_PIXELS) -> None:
        """Read ``images`` (of the shard labeled next) in the background."""
        if not images:
            return
        with self._lock:
            reads = {join(root, image.file_name): (options, (check_image, max_pixels),
                                                   self._submit(image, root, options, check_image, max_pixels))
                     for image in images}
            for older in self._starts.values():  # a retried shard announces its successor again: the newest read
                _cancel({url: older.pop(url) for url in reads.keys() & older.keys()})
            self._count += 1
            self._starts[self._count] = reads
            while len(self._starts) > self.keep:
                _cancel(self._starts.popitem(last=False)[1])

    def take(self, image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
             check_image: ImageCheck, max_pixels: int | None = MAX_PIXELS) -> Future | None:
        """The read of ``image`` started earlier with these options, check and pixel limit, now the
        caller's; else None."""
        url = join(root, image.file_name)
        with self._lock:
            for reads in self._starts.values():
                found = reads.pop(url, None)
                if found is not None:
                    break
            else:
                return None
        started_with, check, future = found
        if started_with != options or check != (check_image, max_pixels):
            future.cancel()
            return None
        return future

    def clear(self) -> None:
        """Drop every read held (the labeling is over) and let the reading threads end: reads not
        started are cancelled, those under way are not waited for."""
        with self._lock:
            while self._starts:
                _cancel(self._starts.popitem()[1])
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def __len__(self) -> int:
        """Reads held."""
        with self._lock:
            return sum(len(reads) for reads in self._starts.values())


def _cancel(reads: Mapping[str, tuple[Any, tuple[ImageCheck, int | None], Future]]) -> None:
    for _, _, future in reads.values():
        future.cancel()
