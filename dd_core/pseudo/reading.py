"""Reading the unlabeled images of a shard: each one that cannot be labeled is rejected on its own.

One odd image must not fail its shard (a failed shard is retried, and fails again on the same
image). An image that cannot be read (missing, a folder, forbidden), decoded, or resized by every
test-time transform is a rejection with its reason; storage that cannot be reached
(:class:`~dd_core.storage.StorageError`) concerns every image and goes through.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from dd_core.data.images import ImageDecodeError, read_image
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


def read_pixels(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck) -> torch.Tensor:
    """The image at ``url`` as decoded: uint8 CHW on the CPU.

    Raises :class:`ImageRejected` for an image that cannot be read, decoded, or resized by the
    teacher's transforms (``check_image``); :data:`TRANSIENT` errors (unreachable storage, a
    connection reset, a timeout) go through.
    """
    try:
        pixels = read_image(url, options)
    except TRANSIENT:
        raise
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc)) from exc
    except (OSError, ValueError) as exc:  # missing, a folder, forbidden, a FIFO, a name too long, ...
        raise ImageRejected(_unreadable(url, exc)) from exc
    reason = check_image(int(pixels.shape[-2]), int(pixels.shape[-1]))
    if reason is not None:
        raise ImageRejected(f"{url}: {reason}")
    return pixels


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
              check_image: ImageCheck) -> torch.Tensor | ImageRejected:
    try:
        return read_pixels(join(root, image.file_name), options, check_image)
    except ImageRejected as exc:
        return exc


# Images read at once. An S3 GET waits 10-50 ms for its first byte: read one after another, a
# batch of 8 would keep a GPU waiting longer than its inference takes.
READ_THREADS = 8

BatchRead = tuple[list[torch.Tensor], list[UnlabeledImage], list[tuple[UnlabeledImage, ImageRejected]]]


def read_batches(batches: Sequence[list[UnlabeledImage]], root: str, options: Mapping[str, Any] | None, device: str,
                 check_image: ImageCheck = any_size, threads: int = READ_THREADS) -> Iterator[BatchRead]:
    """(tensors on ``device``, their images, the images rejected and why) of each batch, in order.

    ``threads`` images are read at once, and the next batch is read while the caller labels this
    one: besides the batch being labeled, two batches at most are in memory, as decoded uint8 pixels
    on the CPU (the reading threads never touch ``device``). A :data:`TRANSIENT` error is raised
    where its batch is yielded. Leaving early (an error, a stop, Ctrl-C) drops the reads not started
    and does not wait for those under way: a stalled GET must not hold up a stop.
    """
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="omnidistill-read")

    def submit(batch: list[UnlabeledImage]) -> list[Future]:
        return [pool.submit(_read_one, image, root, options, check_image) for image in batch]

    try:
        pending = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            current, pending = pending, submit(batches[i + 1]) if i + 1 < len(batches) else []
            images, kept, refused = [], [], []
            for image, future in zip(batch, current):
                result = future.result()
                if isinstance(result, ImageRejected):
                    refused.append((image, result))
                else:
                    images.append(as_input(result, device))
                    kept.append(image)
            yield images, kept, refused
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
