"""Drawing primitives in COCO pixel coordinates, painted into a color image and a label mask.

Geometry is computed in COCO's continuous convention (pixel ``i`` covers ``[i, i+1)``, so a
pixel's center is ``i + 0.5``); PIL puts a pixel's center at ``i``, hence the ``-0.5`` shift in
:func:`_pil`. Every primitive can be painted with the same call into the RGB image (appearance)
and into an ``"L"`` label image holding the owner's id (which later answers "is this keypoint
visible?" and "how much of this object is still visible?").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import ImageDraw

Point = tuple[float, float]
Fill = Union[int, tuple[int, int, int]]


@dataclass(frozen=True)
class Segment:
    """A thick straight line, e.g. a limb."""

    p0: Point
    p1: Point
    width: float


@dataclass(frozen=True)
class Disc:
    """A filled circle, e.g. a joint, a head, an eye."""

    center: Point
    radius: float


@dataclass(frozen=True)
class Polygon:
    """A filled polygon, e.g. a torso or a shape."""

    points: tuple[Point, ...]


@dataclass(frozen=True)
class Ring:
    """An elliptic annulus whose hole shows whatever is beneath it."""

    center: Point
    rx: float
    ry: float
    width: float


Primitive = Union[Segment, Disc, Polygon, Ring]


def _pil(p: Point) -> Point:
    return p[0] - 0.5, p[1] - 0.5


def _ellipse_box(center: Point, rx: float, ry: float) -> list[float]:
    cx, cy = _pil(center)
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def draw_primitive(draw: ImageDraw.ImageDraw, prim: Primitive, fill: Fill) -> None:
    """Paint one primitive with ``fill`` (an RGB triple, or an int for label images)."""
    if isinstance(prim, Segment):
        draw.line([_pil(prim.p0), _pil(prim.p1)], fill=fill, width=max(1, int(round(prim.width))))
    elif isinstance(prim, Disc):
        draw.ellipse(_ellipse_box(prim.center, prim.radius, prim.radius), fill=fill)
    elif isinstance(prim, Polygon):
        draw.polygon([_pil(p) for p in prim.points], fill=fill)
    elif isinstance(prim, Ring):
        draw.ellipse(_ellipse_box(prim.center, prim.rx, prim.ry), outline=fill,
                     width=max(1, int(round(prim.width))))
    else:  # pragma: no cover - exhaustive over Primitive
        raise TypeError(f"not a primitive: {prim!r}")


def sample_image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size``: half landscape, a quarter portrait, a quarter square.

    Aspect ratios up to 4:3 either way, so aspect-ratio-grouping batch samplers see both groups.
    """
    u = rng.random()
    long_side = int(round(size * rng.uniform(1.0, 4.0 / 3.0)))
    if u < 0.5:
        return long_side, size
    if u < 0.75:
        return size, long_side
    return size, size


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight COCO ``[x, y, w, h]`` box around the true pixels of a boolean mask (None if empty)."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """IoU of two COCO ``[x, y, w, h]`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
