"""Backgrounds and sensor noise: where the two styles differ most visibly.

``indoor`` (the "coco" style): smooth random color fields, muted furniture-like blocks and a
blotchy texture -- varied and busy, like everyday photos. ``field`` (the "sports" style): a
grass, clay or hard-court surface with mowing stripes, white court lines and sometimes a
pixelated crowd band at the top -- like broadcast sports frames.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dd_core.data.synthetic.colors import hsv, random_hsv
from dd_core.data.synthetic.styles import Style

SURFACES: tuple[tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]], ...] = (
    # (probability, hue range, saturation range, value range)
    (0.7, (95.0, 130.0), (0.45, 0.75), (0.4, 0.75)),  # grass
    (0.15, (15.0, 30.0), (0.35, 0.6), (0.6, 0.85)),  # clay / wooden court
    (0.15, (200.0, 220.0), (0.35, 0.6), (0.45, 0.7)),  # blue hard court
)


def render_background(rng: np.random.Generator, style: Style, width: int, height: int) -> Image.Image:
    """A fresh RGB background of the given size in ``style``."""
    if style.background == "field":
        return _field(rng, width, height)
    return _indoor(rng, width, height)


def add_sensor_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Gaussian pixel noise over the finished image (people and shapes included, like a real sensor)."""
    arr = np.asarray(image, dtype=np.float32)
    arr = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int, colors: np.ndarray) -> np.ndarray:
    """Upsample a coarse grid of the given colors into a smooth float image."""
    gw, gh = int(rng.integers(2, cells + 1)), int(rng.integers(2, cells + 1))
    grid = colors[rng.integers(0, len(colors), size=(gh, gw))].astype(np.uint8)
    return np.asarray(Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def _indoor(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    palette = np.array([random_hsv(rng, (0.0, 360.0), (0.05, 0.55), (0.2, 0.9)) for _ in range(4)], dtype=np.float32)
    arr = _smooth_field(rng, width, height, 5, palette)
    coarse = rng.normal(0.0, rng.uniform(6.0, 18.0), size=(max(1, height // 4), max(1, width // 4))).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.Resampling.BILINEAR))
    arr = np.clip(arr + texture[..., None], 0, 255).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        _furniture(draw, rng, width, height)
    return image


def _furniture(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    """A muted block (rectangle or ellipse) standing in for walls, tables, windows."""
    x0, y0 = rng.uniform(-0.2 * width, width), rng.uniform(-0.2 * height, height)
    w, h = rng.uniform(0.15, 0.7) * width, rng.uniform(0.15, 0.7) * height
    color = random_hsv(rng, (0.0, 360.0), (0.05, 0.5), (0.2, 0.9))
    box = [x0, y0, x0 + w, y0 + h]
    if rng.random() < 0.7:
        draw.rectangle(box, fill=color)
    else:
        draw.ellipse(box, fill=color)


def _field(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    probs = np.array([s[0] for s in SURFACES])
    _, hues, sats, vals = SURFACES[int(rng.choice(len(SURFACES), p=probs / probs.sum()))]
    base = np.array(random_hsv(rng, hues, sats, vals), dtype=np.float32)
    arr = np.broadcast_to(base, (height, width, 3)).copy()
    arr += _stripes(rng, width, height)[..., None]
    if rng.random() < 0.4:
        _crowd(rng, arr)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    _court_lines(ImageDraw.Draw(image), rng, width, height)
    return image


def _stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Mowing stripes: alternating brighter/darker bands at a random angle and period."""
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(0.15, 0.5) * max(width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    return np.where(np.floor(phase) % 2 == 0, 1.0, -1.0).astype(np.float32) * rng.uniform(3.0, 12.0)


def _crowd(rng: np.random.Generator, arr: np.ndarray) -> None:
    """A band of spectators at the top: a dark, pixelated mosaic of bright colors (in place)."""
    height, width = arr.shape[:2]
    band = int(height * rng.uniform(0.12, 0.3))
    cell = int(rng.integers(2, 4))
    gh, gw = max(1, band // cell), max(1, width // cell)
    colors = rng.integers(0, 256, size=(gh, gw, 3)).astype(np.float32) * rng.uniform(0.4, 0.8)
    mosaic = np.asarray(Image.fromarray(colors.astype(np.uint8), "RGB").resize((width, band), Image.Resampling.NEAREST))
    arr[:band] = mosaic


def _court_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    """White markings: a few long straight lines and sometimes a center-circle arc."""
    white = hsv(0.0, 0.0, rng.uniform(0.85, 1.0))
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            x0, x1 = rng.uniform(0, width, size=2)
            pts = [(x0, -1.0), (x1, float(height))]
        else:
            y0, y1 = rng.uniform(0, height, size=2)
            pts = [(-1.0, y0), (float(width), y1)]
        draw.line(pts, fill=white, width=int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.2, 0.5) * min(width, height)
        draw.ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], outline=white, width=int(rng.integers(1, 3)))
