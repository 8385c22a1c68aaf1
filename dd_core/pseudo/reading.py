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

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from dd_core.data.images import MAX_PIXELS, ImageDecodeError, Reduction, read_reduced
from dd_core.data.unlabeled import UnlabeledImage
from dd_core.ops.read_ahead import READ_THREADS, ReadAhead
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


def read_one(image: UnlabeledImage, root: str, options: Mapping[str, Any] | None, check_image: ImageCheck,
             max_pixels: int | None = MAX_PIXELS) -> tuple[torch.Tensor, Reduction] | ImageRejected:
    """``image`` read (see :func:`read_unlabeled`), or why it is rejected."""
    try:
        return read_unlabeled(join(root, image.file_name), options, check_image, max_pixels)
    except ImageRejected as exc:
        return exc


BatchRead = tuple[list[torch.Tensor], list[UnlabeledImage], list[tuple[UnlabeledImage, ImageRejected]],
                  list[Reduction]]
"""(inputs, the images they are, the images rejected and why, each input's reduction)."""


@dataclass(frozen=True)
class ImageReading:
    """How a shard's images are read: under ``root`` with the storage ``options``, refused when
    ``check_image`` (the teacher's transforms) refuses their size or they have more than
    ``max_pixels`` pixels."""

    root: str
    options: Mapping[str, Any] | None = None
    check_image: ImageCheck = any_size
    max_pixels: int | None = MAX_PIXELS

    def read(self, image: UnlabeledImage) -> tuple[torch.Tensor, Reduction] | ImageRejected:
        return read_one(image, self.root, self.options, self.check_image, self.max_pixels)


def _batch_read(batch: Sequence[UnlabeledImage], futures: Sequence[Future], device: str) -> BatchRead:
    """The :data:`BatchRead` of ``batch`` once its reads (``futures``, in order) are done."""
    images, kept, refused, reductions = [], [], [], []
    for image, future in zip(batch, futures):
        result = future.result()
        if isinstance(result, ImageRejected):
            refused.append((image, result))
        else:
            images.append(as_input(result[0], device))
            kept.append(image)
            reductions.append(result[1])
    return images, kept, refused, reductions


def read_batches(batches: Sequence[list[UnlabeledImage]], reading: ImageReading, device: str,
                 threads: int = READ_THREADS, ahead: ReadAhead | None = None,
                 then: Sequence[UnlabeledImage] = ()) -> Iterator[BatchRead]:
    """(tensors on ``device``, their images, the images rejected and why, each tensor's
    :class:`~dd_core.data.images.Reduction`) of each batch, in order.

    ``threads`` images are read at once, and the next batch is read while the caller labels this
    one: besides the batch being labeled, two batches at most are in memory, as decoded uint8 pixels
    on the CPU (the reading threads never touch ``device``). A :data:`TRANSIENT` error is raised
    where its batch is yielded. Leaving early (an error, a stop, Ctrl-C) drops the reads not started
    and does not wait for those under way: a stalled GET must not hold up a stop.

    With ``ahead``, images it read already are taken from it, and once the last batch is asked for,
    ``then`` (the first images of the shard labeled next) are read into it (see
    :class:`~dd_core.ops.read_ahead.ReadAhead`): one batch more in memory. The reads are then made
    on ``ahead``'s threads (``threads`` is not used), rather than on threads started per shard.
    """
    own = ThreadPoolExecutor(max(1, threads), thread_name_prefix="omnidistill-read") if ahead is None else None
    how = (reading.root, reading.options, reading.check_image, reading.max_pixels)

    def read(image: UnlabeledImage) -> Future:
        if own is not None:
            return own.submit(reading.read, image)
        started = ahead.take(image, *how)
        return started if started is not None else ahead.read(image, *how)

    def submit(i: int) -> list[Future]:
        if i >= len(batches):
            return []
        futures = [read(image) for image in batches[i]]
        if ahead is not None and i == len(batches) - 1:
            ahead.start(then, *how)
        return futures

    current: list[Future] = []
    pending: list[Future] = []
    try:
        pending = submit(0)
        for i, batch in enumerate(batches):
            current, pending = pending, submit(i + 1)
            yield _batch_read(batch, current, device)
    finally:  # this shard's reads not started are dropped; those under way are not waited for
        for future in (*current, *pending):
            future.cancel()
        if own is not None:
            own.shutdown(wait=False, cancel_futures=True)
        elif not all(future.done() for future in (*current, *pending)):
            ahead.abandon()
