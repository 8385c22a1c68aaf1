"""Decoding images from any URL into the tensors torchvision detection models take.

Every image becomes RGB uint8, upright. Pillow's own ``convert("RGB")`` is right for 8-bit modes
but not for all: it clips 16-bit grey to 255 (a white image) and ignores EXIF orientation (a phone
photo lies on its side), so those two are handled here before converting.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps

from dd_core.storage import read_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Modes holding one 16-bit sample per pixel. Pillow opens 16-bit grey PNG and TIFF as I;16 (or
# I;16B, ...) and 16-bit PGM as I (32-bit ints that hold 0..65535). 16-bit RGB(A) PNGs need nothing:
# Pillow itself decodes them to 8-bit RGB(A) by keeping each sample's high byte.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the URL and why."""


def decode_image(data: bytes, url: str = "<bytes>") -> torch.Tensor:
    """RGB uint8 tensor (3, H, W) of the upright image (EXIF orientation applied).

    Refuses empty, truncated, non-image and decompression-bomb files.
    """
    if not data:
        raise ImageDecodeError(f"{url}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            pixels = rgb_pixels(upright(im))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{url}: image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{url}: not a readable image ({exc})") from exc
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


MAX_IMAGE_BYTES = 512 * 2**20
"""No image file of a data set is this large (COCO's largest is under 1 MB): a larger local file is
refused before it is read into memory."""


def read_image(url: str, options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Read and decode the image at ``url`` (local path, ``file://`` or ``s3://``)."""
    return decode_image(read_bytes(url, options, max_bytes=MAX_IMAGE_BYTES), url)


def upright(im: Image.Image) -> Image.Image:
    """``im`` rotated/mirrored as its EXIF orientation tag says (what a viewer shows, and detectron2's
    ``read_image`` does). Unreadable EXIF is ignored, as detectron2 does: the pixels are still fine."""
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, OSError, struct.error):
        return im


def rgb_pixels(im: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a decoded image of any mode.

    - 16-bit grey (I;16*, I): each sample's high byte (``value >> 8``), replicated to R, G, B. The
      high byte, not ``round(value / 257)``, because that is what Pillow does to 16-bit RGB PNGs
      and torchvision's ``to_dtype(uint16 -> uint8, scale=True)`` does: a 16-bit grey image gives
      the same pixels as the same image saved as 16-bit RGB. Mode I is read as 16-bit samples
      (clipped to 0..65535), which is what Pillow gives for 16-bit PGM.
    - float (F): see :func:`_float_to_uint8`.
    - everything else: Pillow's ``convert("RGB")``: 1-bit is 0/255, alpha (LA, RGBA, P with
      transparency) is dropped as torchvision's and detectron2's readers drop it, CMYK is
      ``(255 - C) * (255 - K) / 255`` per channel.
    """
    if im.mode in _SIXTEEN_BIT:
        grey = (np.clip(np.asarray(im).astype(np.int64), 0, 0xFFFF) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        return np.repeat(_float_to_uint8(np.asarray(im))[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples as uint8: a float image whose values all lie in [0, 1] is in torchvision's float
    convention and is scaled as torchvision's ``to_dtype(float -> uint8, scale=True)`` scales it;
    any other is in 0..255 and is clipped and truncated as Pillow's ``convert("L")`` does.

    Read the other way, [0, 1] images would come out black and 0..255 ones white; the rule only
    mistakes a 0..255 image so dark (all values <= 1) that it is black either way. NaN is 0.
    """
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        finite = finite * (256.0 - 1e-3)
    return np.clip(finite, 0.0, 255.0).astype(np.uint8)
