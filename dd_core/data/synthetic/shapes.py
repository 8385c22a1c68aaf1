"""Detection images: filled shapes of 8 categories with unequal frequency and difficulty.

Frequent and easy (circle, square, triangle) next to rare ones (star, ring), and look-alike pairs
that get hard when small or occluded: circle vs ring vs hexagon, square vs diamond. Objects may be
truncated by the border and overlap, but a new object may not leave an earlier one less than half
visible, so every annotated object can actually be seen. Boxes are tight around the rasterized
object (clipped to the image); ``area`` is its pixel count, as COCO's mask area would be.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from dd_core.data.synthetic.backgrounds import add_sensor_noise, render_background
from dd_core.data.synthetic.canvas import Point, Polygon, Primitive, Ring, draw_primitive, mask_box, sample_image_size
from dd_core.data.synthetic.clutter import draw_distractors, draw_partial_shapes
from dd_core.data.synthetic.colors import any_hue_contrasting
from dd_core.data.synthetic.styles import Style
from dd_core.data.synthetic.writer import SyntheticKind, build_dataset

DETECTION_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": i + 1, "name": name, "supercategory": "shape"}
    for i, name in enumerate(("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"))
)
CATEGORY_WEIGHTS: dict[str, float] = {
    "circle": 0.26, "square": 0.2, "triangle": 0.16, "cross": 0.1, "hexagon": 0.1, "diamond": 0.08,
    "ring": 0.05, "star": 0.05,
}
MIN_VISIBLE_FRACTION = 0.5
MIN_BOX_SIDE = 4.0


def _polygon(center: Point, radii: np.ndarray, angles: np.ndarray, rotation: float,
             stretch: tuple[float, float] = (1.0, 1.0)) -> Polygon:
    """Polygon from polar vertices, stretched along its own axes, then rotated and moved to ``center``."""
    xs, ys = radii * np.cos(angles) * stretch[0], radii * np.sin(angles) * stretch[1]
    c, s = math.cos(rotation), math.sin(rotation)
    return Polygon(tuple((float(center[0] + x * c - y * s), float(center[1] + x * s + y * c)) for x, y in zip(xs, ys)))


def _regular(n: int, start: float = 0.0) -> np.ndarray:
    return start + np.arange(n) * 2 * math.pi / n


def _circle(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    return _polygon(c, np.full(32, r), _regular(32), rng.uniform(0, math.pi), (1.0, rng.uniform(0.85, 1.0)))


def _ring(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    return Ring(c, r, r * rng.uniform(0.9, 1.1), max(1.5, r * rng.uniform(0.25, 0.5)))


def _square(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    return _polygon(c, np.full(4, r), _regular(4, math.pi / 4), math.radians(rng.uniform(-20, 20)),
                    (1.0, rng.uniform(0.9, 1.1)))


def _diamond(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    return _polygon(c, np.full(4, r), _regular(4), math.radians(rng.uniform(-15, 15)), (rng.uniform(0.55, 0.8), 1.0))


def _triangle(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    angles = _regular(3) + rng.uniform(-0.25, 0.25, size=3)
    return _polygon(c, r * rng.uniform(0.85, 1.1, size=3), angles, rng.uniform(0, 2 * math.pi))


def _star(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    radii = np.tile([r, r * rng.uniform(0.38, 0.55)], 5)
    return _polygon(c, radii, _regular(10), rng.uniform(0, 2 * math.pi))


def _cross(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    t = r * rng.uniform(0.28, 0.42)  # half arm thickness
    outline = [(t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t), (-t, -r), (t, -r), (t, -t), (r, -t), (r, t)]
    pts = np.array(outline)
    radii, angles = np.hypot(pts[:, 0], pts[:, 1]), np.arctan2(pts[:, 1], pts[:, 0])
    return _polygon(c, radii, angles, rng.uniform(0, math.pi / 2))


def _hexagon(rng: np.random.Generator, c: Point, r: float) -> Primitive:
    return _polygon(c, np.full(6, r), _regular(6), rng.uniform(0, math.pi / 3))


SHAPES: dict[str, Callable[[np.random.Generator, Point, float], Primitive]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star, "cross": _cross, "ring": _ring,
    "diamond": _diamond, "hexagon": _hexagon,
}
_CATEGORY_ID = {c["name"]: c["id"] for c in DETECTION_CATEGORIES}


def sample_shape(rng: np.random.Generator, style: Style, width: int, height: int) -> tuple[str, Primitive]:
    """A category by frequency, a log-uniform size and a position that may cross the border."""
    names = list(CATEGORY_WEIGHTS)
    probs = np.array([CATEGORY_WEIGHTS[n] for n in names])
    name = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    lo = style.object_size[0]
    hi = max(lo, style.object_size[1] * min(width, height))
    r = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    center = (float(rng.uniform(-0.3 * r, width + 0.3 * r)), float(rng.uniform(-0.3 * r, height + 0.3 * r)))
    return name, SHAPES[name](rng, center, r)


def shape_mask(prim: Primitive, width: int, height: int) -> np.ndarray:
    """Boolean mask of one shape painted alone."""
    mask = Image.new("L", (width, height), 0)
    draw_primitive(ImageDraw.Draw(mask), prim, 1)
    return np.asarray(mask, dtype=bool)


def _keeps_others_visible(mask: np.ndarray, owner: np.ndarray, full_areas: list[int]) -> bool:
    """True if painting ``mask`` on top leaves every earlier object at least half visible."""
    for k, area in enumerate(full_areas):
        still = np.count_nonzero((owner == k + 1) & ~mask)
        if still < MIN_VISIBLE_FRACTION * area:
            return False
    return True


def render_detection_image(rng: np.random.Generator, style: Style, size: int,
                           empty: bool = False) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image: background, distractors and shape fragments, then the labeled shapes, then sensor noise.

    ``empty``: no labeled shapes; the fragments (hard negatives) stay.
    """
    width, height = sample_image_size(rng, size)
    image = render_background(rng, style, width, height)
    draw = ImageDraw.Draw(image)
    draw_distractors(draw, rng, style, width, height)
    draw_partial_shapes(draw, rng, style, width, height, int(rng.integers(1, 5)))
    background = np.asarray(image).copy()
    owner = np.zeros((height, width), dtype=np.uint8)
    anns: list[dict[str, Any]] = []
    areas: list[int] = []
    for _ in range(0 if empty else int(rng.integers(style.object_counts[0], style.object_counts[1] + 1))):
        for _attempt in range(4):
            name, prim = sample_shape(rng, style, width, height)
            mask = shape_mask(prim, width, height)
            box = mask_box(mask)
            if box is None or box[2] < MIN_BOX_SIDE or box[3] < MIN_BOX_SIDE or not _keeps_others_visible(mask, owner, areas):
                continue
            reference = background[mask].mean(axis=0)
            draw_primitive(draw, prim, any_hue_contrasting(rng, reference, style.saturation, style.value))
            owner[mask] = len(areas) + 1
            areas.append(int(mask.sum()))
            anns.append({"category_id": _CATEGORY_ID[name], "bbox": list(box), "area": float(areas[-1])})
            break
    return add_sensor_noise(image, rng, rng.uniform(*style.noise_sigma)), anns


def make_detection_dataset(out_dir: str | Path, num_images: int, seed: int, style: str = "coco", size: int = 128,
                           start_id: int = 1, empty_fraction: float = 0.0) -> dict:
    """Write ``num_images`` multi-class shape images and ``annotations.json`` under ``out_dir``; return the json dict.

    Images are ``out_dir/images/{id:06d}.png`` with ids ``start_id ..``; shorter side ``size`` px,
    aspect up to 4:3 either way. About ``empty_fraction`` of the images hold no labeled shape.
    Same arguments give byte-identical files.
    """
    kind = SyntheticKind("detection", render_detection_image, DETECTION_CATEGORIES)
    return build_dataset(out_dir, num_images, seed, style, size, start_id, kind, empty_fraction)
