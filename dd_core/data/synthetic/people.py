"""Keypoint images: stick-figure people with COCO's 17 keypoints among clutter and occluders.

Visibility follows COCO: ``v=2`` labeled and visible, ``v=1`` labeled but hidden (under an
occluder or another person), ``v=0`` not labeled (outside the image, or a face landmark turned
away from the camera) with ``x=y=0``. Visibility is read from a label image into which every
person and occluder is painted with its own id, so it is exact, not estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dd_core.data.keypoints import PERSON_CATEGORY
from dd_core.data.synthetic.backgrounds import add_sensor_noise, render_background
from dd_core.data.synthetic.canvas import box_iou, draw_primitive, mask_box, sample_image_size
from dd_core.data.synthetic.clutter import draw_distractors, occluder
from dd_core.data.synthetic.colors import (
    HAIR_COLORS,
    LEFT_HUES,
    RGB,
    RIGHT_HUES,
    SKIN_TONES,
    contrasting_hsv,
    random_hsv,
)
from dd_core.data.synthetic.figures import Figure, build_figure, figure_extent, sample_body
from dd_core.data.synthetic.poses import sample_pose
from dd_core.data.synthetic.styles import Style
from dd_core.data.synthetic.writer import SyntheticKind, build_dataset

OCCLUDER_LABEL = 255
MIN_BOX_SIDE = 4.0
MAX_PERSON_IOU = 0.6  # a new person overlapping an earlier one more than this is re-sampled
EYE_COLOR: RGB = (25, 20, 30)
BoxXYWH = tuple[float, float, float, float]


@dataclass
class Person:
    """A placed figure, its colors by role, and its tight box (from its own rasterized mask)."""

    figure: Figure
    box: BoxXYWH
    palette: dict[str, RGB]


def _place(rng: np.random.Generator, extent: float, limit: int) -> float:
    """Center coordinate letting up to a quarter of the figure leave the image (truncation)."""
    lo, hi = extent * 0.25, limit - extent * 0.25
    return float(rng.uniform(min(lo, hi), max(lo, hi)))


def sample_figure(rng: np.random.Generator, style: Style, width: int, height: int) -> Figure:
    """A random person (pose, build, size) at a random position."""
    pose = sample_pose(rng, style.poses, style.tumble_prob)
    body = sample_body(rng)
    lo, hi = style.person_height[0], max(style.person_height[0], style.person_height[1] * min(width, height))
    height_px = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ew, eh = figure_extent(build_figure(pose, body, height_px, (0.0, 0.0)))
    return build_figure(pose, body, height_px, (_place(rng, ew, width), _place(rng, eh, height)))


def figure_mask(figure: Figure, width: int, height: int) -> np.ndarray:
    """Boolean mask of the figure painted alone (clipped to the image)."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for part in figure.parts:
        for prim, _ in part.strokes:
            draw_primitive(draw, prim, 1)
    return np.asarray(mask, dtype=bool)


def rounded_keypoints(figure: Figure, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints rounded as they will be written, and which of them may be labeled (in the image, facing)."""
    kps = np.round(figure.keypoints, 2)
    inside = (kps[:, 0] >= 0) & (kps[:, 0] < width) & (kps[:, 1] >= 0) & (kps[:, 1] < height)
    return kps, inside & figure.labelable


def sample_palette(rng: np.random.Generator, style: Style, reference: np.ndarray) -> dict[str, RGB]:
    """Colors by role: warm left limbs, cool right limbs, a neutral torso, skin, hair."""
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    return {
        "left": contrasting_hsv(rng, reference, LEFT_HUES, style.saturation, style.value),
        "right": contrasting_hsv(rng, reference, RIGHT_HUES, style.saturation, style.value),
        "torso": random_hsv(rng, (0.0, 360.0), (0.0, 0.3), (0.15, 0.95)),
        "skin": skin,
        "hair": HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))],
        "eye": EYE_COLOR,
        "nose": (int(skin[0] * 0.7), int(skin[1] * 0.55), int(skin[2] * 0.55)),
    }


def _try_person(rng: np.random.Generator, style: Style, width: int, height: int, placed: list[Person],
                background: np.ndarray) -> Person | None:
    """One attempt at a new person; None if it is too small, has nothing to label, or hides another."""
    figure = sample_figure(rng, style, width, height)
    box = mask_box(figure_mask(figure, width, height))
    if box is None or box[2] < MIN_BOX_SIDE or box[3] < MIN_BOX_SIDE:
        return None
    if not rounded_keypoints(figure, width, height)[1].any():
        return None
    if any(box_iou(box, p.box) > MAX_PERSON_IOU for p in placed):
        return None
    x, y, w, h = (int(v) for v in box)
    reference = background[y:y + h, x:x + w].reshape(-1, 3).mean(axis=0)
    return Person(figure, box, sample_palette(rng, style, reference))


def sample_people(rng: np.random.Generator, style: Style, width: int, height: int, background: np.ndarray) -> list[Person]:
    """The style's number of people, each given a few attempts, sorted far (high in the image) to near."""
    count = int(rng.choice(style.people_counts, p=np.array(style.people_weights) / sum(style.people_weights)))
    people: list[Person] = []
    for _ in range(count):
        for _attempt in range(4):
            person = _try_person(rng, style, width, height, people, background)
            if person is not None:
                people.append(person)
                break
    people.sort(key=lambda p: p.box[1] + p.box[3])
    return people


def paint_person(draw: ImageDraw.ImageDraw, label_draw: ImageDraw.ImageDraw | None, person: Person, label: int) -> None:
    """Paint a person's parts back to front, in color and (optionally) into the label image."""
    for part in person.figure.parts:
        for prim, role in part.strokes:
            draw_primitive(draw, prim, person.palette[role])
            if label_draw is not None:
                draw_primitive(label_draw, prim, label)


def paint_occluders(draw: ImageDraw.ImageDraw, label_draw: ImageDraw.ImageDraw, rng: np.random.Generator,
                    style: Style, people: list[Person], width: int, height: int) -> None:
    """With the style's probability, 1-2 occluders, each over a labeled joint of a random person."""
    if not people or rng.random() >= style.occluder_prob:
        return
    for _ in range(int(rng.integers(1, 3))):
        person = people[int(rng.integers(len(people)))]
        kps, ok = rounded_keypoints(person.figure, width, height)
        joint = kps[int(rng.choice(np.flatnonzero(ok)))]
        prim = occluder(rng, (float(joint[0]), float(joint[1])), person.figure.height_px * rng.uniform(0.25, 0.55))
        draw_primitive(draw, prim, random_hsv(rng, (0.0, 360.0), style.saturation, style.value))
        draw_primitive(label_draw, prim, OCCLUDER_LABEL)


def annotate(person: Person, labels: np.ndarray, label: int) -> dict[str, Any]:
    """COCO keypoint annotation: v=1 where another person or an occluder is on top at the keypoint, else v=2.

    (Asking "is someone *else* on top?" rather than "is my own paint on top?" keeps a joint visible
    when rasterization of a 1-px limb happens to miss the keypoint's pixel.)
    """
    height, width = labels.shape
    kps, ok = rounded_keypoints(person.figure, width, height)
    flat: list[float | int] = []
    for (x, y), labeled in zip(kps, ok):
        if not labeled:
            flat += [0, 0, 0]
            continue
        on_top = labels[int(math.floor(y)), int(math.floor(x))]
        visible = on_top in (0, label)
        flat += [float(x), float(y), 2 if visible else 1]
    x, y, w, h = person.box
    return {"category_id": PERSON_CATEGORY["id"], "bbox": [x, y, w, h], "area": w * h, "keypoints": flat,
            "num_keypoints": int(ok.sum())}


def render_keypoints_image(rng: np.random.Generator, style: Style, size: int,
                           empty: bool = False) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One image: background, distractors, people (far to near), occluders, sensor noise; plus annotations.

    ``empty``: no people (hence no occluders), only background, distractors and noise.
    """
    width, height = sample_image_size(rng, size)
    image = render_background(rng, style, width, height)
    draw = ImageDraw.Draw(image)
    draw_distractors(draw, rng, style, width, height)
    people = [] if empty else sample_people(rng, style, width, height, np.asarray(image))
    label_image = Image.new("L", (width, height), 0)
    label_draw = ImageDraw.Draw(label_image)
    for i, person in enumerate(people):
        paint_person(draw, label_draw, person, i + 1)
    paint_occluders(draw, label_draw, rng, style, people, width, height)
    image = add_sensor_noise(image, rng, rng.uniform(*style.noise_sigma))
    labels = np.asarray(label_image)
    return image, [annotate(p, labels, i + 1) for i, p in enumerate(people)]


def make_keypoints_dataset(out_dir: str | Path, num_images: int, seed: int, style: str = "coco", size: int = 128,
                           start_id: int = 1, empty_fraction: float = 0.0) -> dict:
    """Write ``num_images`` person-keypoint images and ``annotations.json`` under ``out_dir``; return the json dict.

    Images are ``out_dir/images/{id:06d}.png`` with ids ``start_id ..``; shorter side ``size`` px,
    aspect up to 4:3 either way. About ``empty_fraction`` of the images hold no person. Same
    arguments give byte-identical files.
    """
    kind = SyntheticKind("keypoints", render_keypoints_image, [PERSON_CATEGORY])
    return build_dataset(out_dir, num_images, seed, style, size, start_id, kind, empty_fraction)
