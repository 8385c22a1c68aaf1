"""Colors: HSV sampling, the left/right hue families, and contrast against the background.

The left/right cue lives here so that people, clutter and tests agree on it: every person's
*left* limbs (arm, leg, foot, ear) are drawn in a WARM hue (reds to yellows) and every *right*
limb in a COOL hue (cyans to blues). Without such an appearance cue a horizontally flipped
person would be indistinguishable from the original, and flip-based test-time augmentation and
left/right keypoint labels could not be learned. Styles change saturation/value, never the hue
families.
"""

from __future__ import annotations

import colorsys

import numpy as np

RGB = tuple[int, int, int]
Range = tuple[float, float]

LEFT_HUES: Range = (0.0, 45.0)
"""Hue range (degrees) of left-side limbs: red, orange, amber, yellow-orange (red channel dominates)."""

RIGHT_HUES: Range = (190.0, 250.0)
"""Hue range (degrees) of right-side limbs: cyan-blue to blue (blue channel dominates)."""

SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (240, 200, 160), (224, 172, 128), (198, 134, 90), (141, 85, 54), (92, 56, 36),
)
HAIR_COLORS: tuple[RGB, ...] = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 170, 110), (140, 140, 140))


def hsv(hue_deg: float, saturation: float, value: float) -> RGB:
    """8-bit RGB from hue in degrees and saturation/value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def random_hsv(rng: np.random.Generator, hues: Range, saturation: Range, value: Range) -> RGB:
    """A color drawn uniformly inside the given hue/saturation/value box."""
    return hsv(rng.uniform(*hues), rng.uniform(*saturation), rng.uniform(*value))


def color_distance(a: RGB | np.ndarray, b: RGB | np.ndarray) -> float:
    """L1 distance in RGB: crude, but enough to keep a figure from vanishing into its background."""
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).sum())


def contrasting_hsv(rng: np.random.Generator, reference: RGB | np.ndarray, hues: Range, saturation: Range,
                    value: Range, min_distance: float = 90.0, tries: int = 6) -> RGB:
    """Sample in the given HSV box until the color differs from ``reference`` by ``min_distance``.

    Falls back to the most distant candidate, so the hue family (the left/right cue) is always kept.
    """
    best, best_d = (0, 0, 0), -1.0
    for _ in range(tries):
        c = random_hsv(rng, hues, saturation, value)
        d = color_distance(c, reference)
        if d >= min_distance:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def any_hue_contrasting(rng: np.random.Generator, reference: RGB | np.ndarray, saturation: Range, value: Range,
                        min_distance: float = 90.0) -> RGB:
    """A color of any hue that stands out from ``reference``."""
    return contrasting_hsv(rng, reference, (0.0, 360.0), saturation, value, min_distance)

