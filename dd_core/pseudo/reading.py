"""Reading the unlabeled images of a shard: each one that cannot be labeled is rejected on its own.

One odd image must not fail its shard (a failed shard is retried, and fails again on the same
image). An image that cannot be read (missing, a folder, forbidden), decoded, or resized by every
test-time transform is a rejection with its reason; storage that cannot be reached
(:class:`~dd_core.storage.StorageError`) concerns every image and goes through.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def load_image(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck, device: str) -> torch.Tensor:
    """The image at ``url`` as multi-transform inference takes it: float CHW in [0, 1] on ``device``.

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
    return pixels.to(device).float().div_(255.0)


def _unreadable(url: str, exc: Exception) -> str:
    detail = str(exc)
    if detail.startswith(url):  # read_bytes' errors name the URL already
        return detail
    what = next((text for kind, text in _UNREADABLE.items() if isinstance(exc, kind)), "not readable")
    return f"{url}: {what} ({detail})"


def read_batch(batch: list[UnlabeledImage], root: str, options: Mapping[str, Any] | None, device: str,
               check_image: ImageCheck = any_size
               ) -> tuple[list[torch.Tensor], list[UnlabeledImage], list[tuple[UnlabeledImage, ImageRejected]]]:
    """(tensors, their images, the images rejected and why) of one batch."""
    images, kept, refused = [], [], []
    for image in batch:
        try:
            images.append(load_image(join(root, image.file_name), options, check_image, device))
        except ImageRejected as exc:
            refused.append((image, exc))
            continue
        kept.append(image)
    return images, kept, refused
