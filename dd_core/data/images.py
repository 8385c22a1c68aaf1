"""Decoding images from any URL into the tensors torchvision detection models take."""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from dd_core.storage import read_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the URL and why."""


def decode_image(data: bytes, url: str = "<bytes>") -> torch.Tensor:
    """RGB uint8 tensor (3, H, W). Refuses empty, truncated, non-image and decompression-bomb files."""
    if not data:
        raise ImageDecodeError(f"{url}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{url}: image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{url}: not a readable image ({exc})") from exc
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def read_image(url: str, options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Read and decode the image at ``url`` (local path, ``file://`` or ``s3://``)."""
    return decode_image(read_bytes(url, options), url)
