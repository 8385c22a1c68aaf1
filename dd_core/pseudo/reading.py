"""Reading the unlabeled images of a shard: each one that cannot be labeled is rejected on its own.

One odd image must not fail its shard (a failed shard is retried, and fails again on the same
image). An image that cannot be read (missing, a folder, forbidden), decoded (in memory too: a
``MemoryError``), resized by every test-time transform, or that has more than ``max_pixels``
pixels (``unlabeled.max_pixels``, read from its header) is a rejection with its reason; storage
that cannot be reached (:class:`~dd_core.storage.StorageError`) concerns every image and goes through.

A photo much larger than the teacher's largest frame is decoded reduced to about that size
(:func:`dd_core.data.images.decode_reduced`, with the teacher's ``check_image.largest_frame`` where
it has one); each image read comes with its :class:`~dd_core.data.images.Reduction`, which maps the
predictions back to the file's own coordinates and size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from dd_core.data.images import MAX_PIXELS, ImageDecodeError, Reduction, read_reduced
from dd_core.data.unlabeled import UnlabeledImage
from dd_core.pseudo.teacher import ImageCheck, any_size
from dd_core.storage import StorageError, join

# Failures of the storage, not of an image: the shard fails and its task is retried.
TRANSIENT = (StorageError, ConnectionError, TimeoutError)


class ImageRejected(Exception):
    """An image that cannot be pseudo-labeled, for a reason that concerns it alone (the message, naming its URL)."""


# How reading one image fails for reasons of its own (any other OSError or ValueError is one too:
# a FIFO, a name too long, a key s3fs cannot take). StorageError (an OSError as well: the endpoint
# cannot be reached) is not among them: it concerns every image, and the shard task is retried.
_UNREADABLE: dict[type[OSError], str] = {
    FileNotFoundError: "no such file",
    IsADirectoryError: "a folder, not an image file",
    NotADirectoryError: "no such file (a folder on its path is a file)",
    PermissionError: "not allowed to read it",
}


def read_pixels(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck,
                max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """The image at ``url`` as decoded (reduced for the teacher): uint8 CHW on the CPU; see :func:`read_unlabeled`."""
    return read_unlabeled(url, options, check_image, max_pixels)[0]


def read_unlabeled(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck,
                   max_pixels: int | None = MAX_PIXELS) -> tuple[torch.Tensor, Reduction]:
    """The image at ``url`` as decoded, reduced for the teacher (uint8 CHW on the CPU), and its reduction.

    Raises :class:`ImageRejected` for an image that cannot be read, decoded (``MemoryError``
    included), resized by the teacher's transforms (``check_image``), or has more than
    ``max_pixels`` pixels; :data:`TRANSIENT` errors (unreachable storage, a connection reset, a
    timeout) go through.
    """
    try:
        pixels, reduction = read_reduced(url, options, max_pixels, getattr(check_image, "largest_frame", None))
    except TRANSIENT:
        raise
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc)) from exc
    except MemoryError as exc:  # reading the file itself (up to MAX_IMAGE_BYTES)
        raise ImageRejected(f"{url}: not enough memory to read it (MemoryError)") from exc
    except (OSError, ValueError) as exc:  # missing, a folder, forbidden, a FIFO, a name too long, ...
        raise ImageRejected(_unreadable(url, exc)) from exc
    reason = _size_rejected(check_image, reduction, (int(pixels.shape[-2]), int(pixels.shape[-1])))
    if reason is not None:
        raise ImageRejected(f"{url}: {reason}")
    return pixels, reduction


def _size_rejected(check_image: ImageCheck, reduction: Reduction, reduced: tuple[int, int]) -> str | None:
    """Why ``check_image`` refuses the file's size or the reduced one the teacher sees (both must pass),
    in the file's size: a 10x100000 px file is that, not the 1x12500 px it was decoded to."""
    reason = check_image(reduction.height, reduction.width)
    if reason is None and reduced != (reduction.height, reduction.width):
        reason = check_image(*reduced)  # flooring by the factor can make a thin image thinner still
        if reason is not None:
            return f"{reduction.width}x{reduction.height} px (width x height), decoded reduced to {reason}"
    return reason


def as_input(pixels: torch.Tensor, device: str) -> torch.Tensor:
    """Decoded uint8 pixels as multi-transform inference takes them: float CHW in [0, 1] on ``device``."""
    return pixels.to(device).float().div_(255.0)


def load_image(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck, device: str) -> torch.Tensor:
    """:func:`read_pixels`, then :func:`as_input`."""
    return as_input(read_pixels(url, options, check_image), device)


def _unreadable(url: str, exc: Exception) -> str:
    detail = str(exc)
    if detail.startswith(url):  # read_bytes' errors name the URL already
        return detail
    what = next((text for kind, text in _UNREADABLE.items() if isinstance(exc, kind)), "not readable")
    return f"{url}: {what} ({detail})"


def _read_one(image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
              check_image: ImageCheck, max_pixels: int | None = MAX_PIXELS
              ) -> tuple[torch.Tensor, Reduction] | ImageRejected:
    try:
        return read_unlabeled(join(root, image.file_name), options, check_image, max_pixels)
    except ImageRejected as exc:
        return exc


# Images read at once. An S3 GET waits 10-50 ms for its first byte: read one after another, a
# batch of 8 would keep a GPU waiting longer than its inference takes.
READ_THREADS = 8

BatchRead = tuple[list[torch.Tensor], list[UnlabeledImage], list[tuple[UnlabeledImage, ImageRejected]],
                  list[Reduction]]
"""(inputs, the images they are, the images rejected and why, each input's reduction)."""


class ReadAhead:
    """The first images of the shard this process labels next, read while it labels the current one.

    Shards labeled one after another by one thread (``omnidistill label``, the flow's shard tasks
    on one worker, a ``label-shards`` flow run) would otherwise each start with the model idle until
    its first batch is read: on moto's S3, a batch of 8 took 48 ms, a tenth of a 50-image shard at
    32 px on 2 CPU cores. :func:`read_batches` starts these reads once it has asked for its own last
    batch, and the next shard's :func:`read_batches` takes them by URL (with the same storage
    options and image check; anything else is read anew). One instance per process, shared by its
    shard tasks (``tasks.cache``); the reads of the last ``keep`` shards announced are held, older
    ones (a guess that did not come true) are dropped. A labeling calls :meth:`clear` when it ends,
    however it ends: reads held past it could be of files rewritten since.
    """

    def __init__(self, threads: int = READ_THREADS, keep: int = 2) -> None:
        self.threads, self.keep = max(1, threads), max(1, keep)
        self._lock = threading.Lock()
        self._starts: OrderedDict[int, dict[str, tuple[Any, tuple[ImageCheck, int | None], Future]]] = OrderedDict()
        self._count = 0
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Sent to another process (inside a pickled flow, say), it arrives empty: reads do not travel."""
        return {"threads": self.threads, "keep": self.keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["threads"], state["keep"])

    def read(self, image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
             check_image: ImageCheck, max_pixels: int | None = MAX_PIXELS) -> Future:
        """``image`` read on this object's threads, kept from shard to shard until :meth:`clear`:
        :func:`read_batches` reads its shard on them too, rather than start threads of its own for
        every shard."""
        with self._lock:
            return self._submit(image, root, options, check_image, max_pixels)

    def _submit(self, image: UnlabeledImage, root: str, options: Mapping[str, Any] | None,
                check_image: ImageCheck, max_pixels: int | None) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="omnidistill-ahead")
        return self._pool.submit(_read_one, image, root, options, check_image, max_pixels)

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


def read_batches(batches: Sequence[list[UnlabeledImage]], root: str, options: Mapping[str, Any] | None, device: str,
                 check_image: ImageCheck = any_size, threads: int = READ_THREADS, ahead: ReadAhead | None = None,
                 then: Sequence[UnlabeledImage] = (), max_pixels: int | None = MAX_PIXELS) -> Iterator[BatchRead]:
    """(tensors on ``device``, their images, the images rejected and why, each tensor's
    :class:`~dd_core.data.images.Reduction`) of each batch, in order.

    ``threads`` images are read at once, and the next batch is read while the caller labels this
    one: besides the batch being labeled, two batches at most are in memory, as decoded uint8 pixels
    on the CPU (the reading threads never touch ``device``). A :data:`TRANSIENT` error is raised
    where its batch is yielded. Leaving early (an error, a stop, Ctrl-C) drops the reads not started
    and does not wait for those under way: a stalled GET must not hold up a stop.

    With ``ahead``, images it read already are taken from it, and once the last batch is asked for,
    ``then`` (the first images of the shard labeled next) are read into it (see :class:`ReadAhead`):
    one batch more in memory. The reads are then made on ``ahead``'s threads (``threads`` is not
    used): starting 8 threads per shard took about 1% of a labeling in 16-image shards.
    """
    own = ThreadPoolExecutor(max(1, threads), thread_name_prefix="omnidistill-read") if ahead is None else None

    def read(image: UnlabeledImage) -> Future:
        if own is not None:
            return own.submit(_read_one, image, root, options, check_image, max_pixels)
        started = ahead.take(image, root, options, check_image, max_pixels)
        return started if started is not None else ahead.read(image, root, options, check_image, max_pixels)

    def submit(i: int) -> list[Future]:
        if i >= len(batches):
            return []
        futures = [read(image) for image in batches[i]]
        if ahead is not None and i == len(batches) - 1:
            ahead.start(then, root, options, check_image, max_pixels)
        return futures

    current: list[Future] = []
    pending: list[Future] = []
    try:
        pending = submit(0)
        for i, batch in enumerate(batches):
            current, pending = pending, submit(i + 1)
            images, kept, refused, reductions = [], [], [], []
            for image, future in zip(batch, current):
                result = future.result()
                if isinstance(result, ImageRejected):
                    refused.append((image, result))
                else:
                    images.append(as_input(result[0], device))
                    kept.append(image)
                    reductions.append(result[1])
            yield images, kept, refused, reductions
    finally:  # this shard's reads not started are dropped; those under way are not waited for
        for future in (*current, *pending):
            future.cancel()
        if own is not None:
            own.shutdown(wait=False, cancel_futures=True)
        elif not all(future.done() for future in (*current, *pending)):
            ahead.abandon()
