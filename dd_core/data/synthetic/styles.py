"""Image styles: stand-ins for two data distributions (COCO-like photos vs Sports-1M-like frames).

A style only changes *how* an image looks and what it contains (background, palette, counts,
sizes, poses); labels are produced the same way and the left/right hue cue (see ``colors``) is
shared, so a model trained on one style can transfer to the other -- with a domain gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

Range = tuple[float, float]


@dataclass(frozen=True)
class Style:
    """Every knob that differs between data distributions."""

    name: str
    background: Literal["indoor", "field"]
    noise_sigma: Range  # per-image sensor noise std (8-bit levels)
    saturation: Range  # palette of limbs, shapes and clutter
    value: Range
    # keypoint images
    people_counts: tuple[int, ...]  # possible numbers of people ...
    people_weights: tuple[float, ...]  # ... and their probabilities
    person_height: Range  # (min height in px, max height as a fraction of the shorter image side)
    poses: tuple[tuple[str, float], ...]  # pose archetype -> weight (see ``people.POSE_ARCHETYPES``)
    tumble_prob: float  # chance that a figure is rotated far from upright (lying, diving, falling)
    occluder_prob: float  # chance that an image gets 1-2 occluders over people
    limb_distractors: Range  # (min, max) limb-like sticks in the clutter
    blob_distractors: Range  # (min, max) blobs in the clutter
    # detection images
    object_counts: tuple[int, int]  # (min, max) shapes per image
    object_size: Range  # (min radius px, max radius as a fraction of the shorter side)


STYLES: Mapping[str, Style] = MappingProxyType({
    "coco": Style(
        name="coco",
        background="indoor",
        noise_sigma=(3.0, 10.0),
        saturation=(0.45, 0.95),
        value=(0.45, 0.95),
        people_counts=(1, 2, 3, 4),
        people_weights=(0.45, 0.3, 0.17, 0.08),
        person_height=(32.0, 0.9),
        poses=(("standing", 0.3), ("walking", 0.2), ("sitting", 0.15), ("arms_up", 0.08), ("reaching", 0.1),
               ("crouching", 0.07), ("running", 0.05), ("random", 0.05)),
        tumble_prob=0.02,
        occluder_prob=0.2,
        limb_distractors=(0, 3),
        blob_distractors=(2, 6),
        object_counts=(1, 6),
        object_size=(5.0, 0.45),
    ),
    "sports": Style(
        name="sports",
        background="field",
        noise_sigma=(2.0, 8.0),
        saturation=(0.7, 1.0),
        value=(0.7, 1.0),
        people_counts=(1, 2, 3, 4),
        people_weights=(0.1, 0.25, 0.35, 0.3),
        person_height=(26.0, 0.7),
        poses=(("running", 0.3), ("walking", 0.15), ("arms_up", 0.15), ("reaching", 0.15), ("crouching", 0.1),
               ("standing", 0.1), ("random", 0.05)),
        tumble_prob=0.1,
        occluder_prob=0.2,
        limb_distractors=(0, 3),
        blob_distractors=(1, 4),
        object_counts=(3, 8),
        object_size=(4.0, 0.25),
    ),
})


def get_style(name: str) -> Style:
    """The style called ``name``; a ``ValueError`` names the known ones otherwise."""
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown synthetic style {name!r}; known styles: {', '.join(sorted(STYLES))}") from None
