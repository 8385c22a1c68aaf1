"""Distractors and occluders: things that are *not* labeled but look like things that are.

Distractors are painted under the labeled objects (limb-like sticks in the very hues of left and
right limbs, blobs, partial shapes, lines), so a detector must use structure rather than color.
Occluders are painted over people; the keypoints they hide become ``v=1`` (labeled, not visible).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import ImageDraw

from dd_core.data.synthetic.canvas import Disc, Point, Polygon, Primitive, Segment, draw_primitive
from dd_core.data.synthetic.colors import LEFT_HUES, RGB, RIGHT_HUES, random_hsv
from dd_core.data.synthetic.styles import Style


def _distractor_color(rng: np.random.Generator, style: Style) -> RGB:
    """Left-limb hues, right-limb hues or any hue, in equal parts."""
    u = rng.random()
    hues = LEFT_HUES if u < 1 / 3 else RIGHT_HUES if u < 2 / 3 else (0.0, 360.0)
    return random_hsv(rng, hues, style.saturation, style.value)


def limb_stick(rng: np.random.Generator, style: Style, width: int, height: int) -> list[Primitive]:
    """A bent 1-3 segment stick with round joints, sized like a limb of a plausible person."""
    scale = math.exp(rng.uniform(math.log(style.person_height[0]), math.log(style.person_height[1] * min(width, height))))
    thickness = max(1.0, scale * rng.uniform(0.035, 0.065))
    p: Point = (rng.uniform(0, width), rng.uniform(0, height))
    angle = rng.uniform(0, 2 * math.pi)
    prims: list[Primitive] = [Disc(p, thickness / 2)]
    for _ in range(int(rng.integers(1, 4))):
        length = scale * rng.uniform(0.14, 0.26)
        q = (p[0] + length * math.cos(angle), p[1] + length * math.sin(angle))
        prims += [Segment(p, q, thickness), Disc(q, thickness / 2)]
        p, angle = q, angle + rng.uniform(-1.8, 1.8)
    return prims


def blob(rng: np.random.Generator, width: int, height: int) -> list[Primitive]:
    """A lumpy polygon blob (irregular radius around a center)."""
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.03, 0.2) * min(width, height)
    n = int(rng.integers(5, 11))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    radii = r * rng.uniform(0.6, 1.3, size=n)
    return [Polygon(tuple((float(cx + rr * math.cos(a)), float(cy + rr * math.sin(a))) for a, rr in zip(angles, radii)))]


def draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: Style, width: int, height: int) -> None:
    """Style-dependent numbers of limb sticks and blobs, in random order of painting."""
    n_sticks = int(rng.integers(int(style.limb_distractors[0]), int(style.limb_distractors[1]) + 1))
    n_blobs = int(rng.integers(int(style.blob_distractors[0]), int(style.blob_distractors[1]) + 1))
    kinds = ["stick"] * n_sticks + ["blob"] * n_blobs
    for i in rng.permutation(len(kinds)):
        prims = limb_stick(rng, style, width, height) if kinds[i] == "stick" else blob(rng, width, height)
        color = _distractor_color(rng, style)
        for prim in prims:
            draw_primitive(draw, prim, color)


def draw_partial_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: Style, width: int, height: int,
                        count: int) -> None:
    """Arcs, half discs, open polylines and stray lines: fragments of the detection shapes."""
    for _ in range(count):
        color = _distractor_color(rng, style)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.2) * min(width, height)
        box = [cx - r, cy - r, cx + r, cy + r]
        start = rng.uniform(0, 360)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.arc(box, start, start + rng.uniform(60, 270), fill=color, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.chord(box, start, start + rng.uniform(90, 200), fill=color)
        elif kind == 2:
            pts = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a)))
                   for a in np.deg2rad(start + np.sort(rng.uniform(0, 300, size=3)))]
            draw.line(pts, fill=color, width=int(rng.integers(1, 4)))
        else:
            end = (cx + rng.uniform(-1, 1) * width / 2, cy + rng.uniform(-1, 1) * height / 2)
            draw.line([(cx, cy), end], fill=color, width=int(rng.integers(1, 3)))


def occluder(rng: np.random.Generator, around: Point, scale: float) -> Primitive:
    """A rotated rectangle or an ellipse of roughly ``scale`` px placed over ``around`` (a joint)."""
    cx = around[0] + rng.uniform(-0.3, 0.3) * scale
    cy = around[1] + rng.uniform(-0.3, 0.3) * scale
    a, b = scale * rng.uniform(0.25, 0.6), scale * rng.uniform(0.15, 0.45)
    theta = rng.uniform(0, math.pi)
    if rng.random() < 0.6:
        corners = ((a, b), (-a, b), (-a, -b), (a, -b))
    else:
        corners = tuple((a * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 16, endpoint=False))
    c, s = math.cos(theta), math.sin(theta)
    return Polygon(tuple((float(cx + x * c - y * s), float(cy + x * s + y * c)) for x, y in corners))
