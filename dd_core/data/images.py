"""Decoding images from any URL into the tensors torchvision detection models take.

Every image becomes RGB uint8, upright. Pillow's own ``convert("RGB")`` is right for 8-bit modes
but not for all: it clips 16-bit grey to 255 (a white image) and ignores EXIF orientation (a phone
photo lies on its side), so those two are handled here before converting.

Large photos are decoded within bounded memory (:func:`decode_reduced`): the size is read from the
header first, an image of more than ``max_pixels`` pixels is refused before its pixels are decoded,
and one much larger than the largest frame a model resizes it to is reduced by a power of two
(JPEG: while decoding, by ``Image.draft``; others: ``Image.reduce`` right after) before anything
else is made of it. Decoding then takes about 4 bytes per pixel of the file's size once (Pillow's
own buffer; a JPEG reduced while decoding much less) and the reduced copy, where a whole decode
takes many times that. :class:`Reduction` maps predictions on the reduced
pixels back to the image's own coordinates, exactly.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps

from dd_core.storage import read_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""The files of an unlabeled folder that are its images. A GIF is its first frame (an animation's
others are left out), in RGB as every palette image is."""

# Modes holding one 16-bit sample per pixel. Pillow opens 16-bit grey PNG and TIFF as I;16 (or
# I;16B, ...) and 16-bit PGM as I (32-bit ints that hold 0..65535). 16-bit RGB(A) PNGs need nothing:
# Pillow itself decodes them to 8-bit RGB(A) by keeping each sample's high byte.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the URL and why."""


MAX_PIXELS = 150_000_000
"""The most pixels (width x height) an unlabeled image may have (``unlabeled.max_pixels``): a
12000 x 12000 photo passes, 13000 x 13000 does not. Pillow itself refuses more than 178,956,970
(its decompression-bomb limit), whatever this is."""

FrameSize = Callable[[int, int], tuple[int, int]]
"""``(height, width) -> (height, width)`` of the largest frame a model resizes an image of that
(upright) size to: pixels beyond it are averaged away anyway."""

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_SIDES = (5, 6, 7, 8)


@dataclass(frozen=True)
class Reduction:
    """Decoded pixels against the image file: the file's upright size, and the factor its pixels
    were reduced by. Pixel ``(x, y)`` of the reduced image covers ``[kx, k(x+1)) x [ky, k(y+1))`` of
    the original (the last ``< k`` rows and columns are left out), so a point maps back as ``k * p``."""

    height: int
    width: int
    factor: int = 1

    def to_original(self, output: Mapping[str, Any]) -> dict[str, Any]:
        """Predictions on the reduced pixels (``boxes`` xyxy, ``keypoints`` x, y, v) in the original's
        coordinates; anything else as it is. Factor 1 returns the very same values."""
        out = dict(output)
        if self.factor == 1:
            return out
        if out.get("boxes") is not None:
            out["boxes"] = out["boxes"] * self.factor
        if out.get("keypoints") is not None:
            keypoints = out["keypoints"]
            keypoints = keypoints.clone() if isinstance(keypoints, torch.Tensor) else np.array(keypoints, copy=True)
            keypoints[..., :2] *= self.factor
            out["keypoints"] = keypoints
        return out


def reduction_factor(height: int, width: int, frame: tuple[int, int]) -> int:
    """The largest power of two ``k`` that leaves at least ``frame`` (h, w) pixels: ``floor(h / k) >=
    frame_h`` and ``floor(w / k) >= frame_w`` (1 when none does). A model then still shrinks the
    reduced image to its frame, never enlarges it."""
    frame_h, frame_w = max(1, int(frame[0])), max(1, int(frame[1]))
    k = 1
    while height // (2 * k) >= frame_h and width // (2 * k) >= frame_w:
        k *= 2
    return k


def decode_image(data: bytes, url: str = "<bytes>", max_pixels: int | None = None) -> torch.Tensor:
    """RGB uint8 tensor (3, H, W) of the upright image (EXIF orientation applied), all of its pixels.

    Refuses empty, truncated, non-image and decompression-bomb files, and (with ``max_pixels``) one
    of more pixels than that, read from its header before decoding.
    """
    return decode_reduced(data, url, max_pixels)[0]


def decode_reduced(data: bytes, url: str = "<bytes>", max_pixels: int | None = None,
                   frame: FrameSize | None = None) -> tuple[torch.Tensor, Reduction]:
    """:func:`decode_image`, reduced for a model whose largest frame for an image is ``frame(h, w)``
    (see the module docstring); with it, the :class:`Reduction` that maps predictions back.

    Refuses (:class:`ImageDecodeError`, naming ``url`` and why) what :func:`decode_image` refuses,
    and an image that runs out of memory while decoding (``MemoryError``).
    """
    if not data:
        raise ImageDecodeError(f"{url}: empty file (0 bytes)")
    size = "?"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            size = f"{width}x{height} px (width x height)"
            if max_pixels is not None and width * height > max_pixels:
                raise ImageDecodeError(f"{url}: {size} is {width * height:,} pixels, more than the {max_pixels:,} "
                                       f"allowed (max_pixels); refused before decoding")
            orientation = _orientation(im)
            if orientation in _SWAPS_SIDES:
                width, height = height, width
            factor = 1 if frame is None else reduction_factor(height, width, frame(height, width))
            if factor == 1:
                im.load()
                pixels = rgb_pixels(upright(im))
            else:
                pixels = rgb_pixels(_reduced(im, factor, orientation))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_refusal(url, exc, max_pixels) from exc
    except MemoryError as exc:
        raise ImageDecodeError(f"{url}: {size}: not enough memory to decode it (MemoryError)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{url}: not a readable image ({exc})") from exc
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), Reduction(height, width, factor)


def _bomb_refusal(url: str, exc: Image.DecompressionBombError, max_pixels: int | None) -> ImageDecodeError:
    """Pillow's refusal to open an image of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels, in our
    words: over ``max_pixels`` it is that limit's refusal. Pillow raises before telling the size, and
    its limit is a module global that other threads read (not to be lifted for a moment), so the pixel
    count comes from its message."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    if found is not None and max_pixels is not None and int(found.group(1)) > max_pixels:
        return ImageDecodeError(f"{url}: {int(found.group(1)):,} pixels, more than the {max_pixels:,} allowed "
                                f"(max_pixels); refused before decoding")
    return ImageDecodeError(f"{url}: image too large to decode safely ({exc})")


def _orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag in the header, if any (unreadable EXIF: none, as :func:`upright`)."""
    try:
        return im.getexif().get(0x0112)
    except (SyntaxError, ValueError, OSError, struct.error):
        return None


def _reduced(im: Image.Image, factor: int, orientation: int | None) -> Image.Image:
    """``im`` (opened, not loaded) upright and reduced by ``factor`` (a power of two): pixel ``(x, y)``
    the mean of the original's ``[kx, k(x+1)) x [ky, k(y+1))``.

    A JPEG without orientation is reduced while decoding (``draft``: 1/2, 1/4 or 1/8 of each side,
    block for block), the rest by ``reduce`` on the decoded pixels. An image that must be turned
    upright is turned first (one more full-size copy): the rows and columns left out must be the
    upright image's last ones.
    """
    width, height = im.size
    rotated = orientation not in (None, 1)
    if im.format == "JPEG" and not rotated and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
        im.draft(im.mode, (-(-width // factor), -(-height // factor)))
    im.load()
    drafted = next((d for d in (8, 4, 2) if factor % d == 0 and im.size == (-(-width // d), -(-height // d))), 1)
    rest = factor // drafted  # what draft left to do
    if rotated:
        im = upright(im)
    if rest == 1:
        return im
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("P", "PA"):  # palette indices must not be averaged
        im = im.convert("RGB")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    box = (0, 0, rest * (im.size[0] // rest), rest * (im.size[1] // rest))
    return im.reduce(rest, box=box)


MAX_IMAGE_BYTES = 512 * 2**20
"""No image file of a data set is this large (COCO's largest is under 1 MB): a larger local file is
refused before it is read into memory."""


def read_image(url: str, options: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Read and decode the image at ``url`` (local path, ``file://`` or ``s3://``)."""
    return decode_image(read_bytes(url, options, max_bytes=MAX_IMAGE_BYTES), url)


def read_reduced(url: str, options: Mapping[str, Any] | None = None, max_pixels: int | None = MAX_PIXELS,
                 frame: FrameSize | None = None) -> tuple[torch.Tensor, Reduction]:
    """Read the image at ``url`` and decode it with :func:`decode_reduced`."""
    return decode_reduced(read_bytes(url, options, max_bytes=MAX_IMAGE_BYTES), url, max_pixels, frame)


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
