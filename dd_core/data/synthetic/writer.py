"""Writing a synthetic data set: per-image randomness, PNG files and an atomic COCO json.

Each image gets its own generator seeded from ``(seed, task, style, image id)``, so images can be
produced in any order (or in parallel) and the same arguments always give byte-identical output.
Keying on the image id (not the position in the call) also means two calls with the same seed but
disjoint id ranges (``start_id``) produce different images.
"""

from __future__ import annotations

import copy
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from dd_core.data.synthetic.styles import Style, get_style
from dd_core.storage import write_bytes_atomic

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
MAX_OBJECTS_PER_IMAGE = 100
"""Annotation ids are ``image_id * 100 + k``: unique, and disjoint whenever image ids are."""

Renderer = Callable[[np.random.Generator, Style, int, bool], tuple[Image.Image, list[dict[str, Any]]]]
"""``(rng, style, size, empty) -> (image, annotations without id/image_id/iscrowd)``; ``empty``: no objects."""


def image_rng(seed: int, task: str, style: str, image_id: int) -> np.random.Generator:
    """The generator for one image: independent of every other image and of generation order."""
    key = [seed, zlib.crc32(task.encode()), zlib.crc32(style.encode()), image_id]
    return np.random.default_rng(np.random.SeedSequence(key))


def is_empty_image(seed: int, task: str, style: str, image_id: int, empty_fraction: float) -> bool:
    """Whether image ``image_id`` is drawn without objects (background and clutter only).

    Decided by a generator of its own, so ``empty_fraction=0`` leaves every image byte-identical
    to a data set made without the option, and a larger fraction empties a superset of images.
    """
    return bool(image_rng(seed, task + ":empty", style, image_id).random() < empty_fraction)


def _check_args(num_images: int, seed: int, size: int, start_id: int, empty_fraction: float = 0.0) -> None:
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    if start_id < 0:
        raise ValueError(f"start_id must be >= 0, got {start_id}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must be between 0 and 1, got {empty_fraction}")


def _finish_annotation(ann: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """Fixed key order and rounded floats, so the json text is stable and compact."""
    out: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": int(ann["category_id"]),
                           "bbox": [round(float(v), 2) for v in ann["bbox"]], "area": round(float(ann["area"]), 2),
                           "iscrowd": 0}
    if "keypoints" in ann:
        out["keypoints"] = ann["keypoints"]
        out["num_keypoints"] = int(ann["num_keypoints"])
    return out


@dataclass(frozen=True)
class SyntheticKind:
    """What a synthetic data set holds: its task, the renderer of one image and the categories."""

    task: str
    render: Renderer
    categories: Sequence[dict[str, Any]]


def build_dataset(out_dir: str | Path, num_images: int, seed: int, style_name: str, size: int, start_id: int,
                  kind: SyntheticKind, empty_fraction: float = 0.0) -> dict[str, Any]:
    """Render ``num_images`` images of ``kind`` and write them plus ``annotations.json`` under ``out_dir``.

    About ``empty_fraction`` of the images hold no object (like COCO, where about half the images
    have no person): they stay in ``images`` with no annotation.
    """
    style, task = get_style(style_name), kind.task
    _check_args(num_images, seed, size, start_id, empty_fraction)
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(start_id, start_id + num_images):
        empty = is_empty_image(seed, task, style.name, image_id, empty_fraction)
        image, anns = kind.render(image_rng(seed, task, style.name, image_id), style, size, empty)
        if len(anns) >= MAX_OBJECTS_PER_IMAGE:
            raise RuntimeError(f"renderer produced {len(anns)} objects; at most {MAX_OBJECTS_PER_IMAGE - 1} fit the id scheme")
        file_name = f"{image_id:06d}.png"
        image.save(out / IMAGES_DIR / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        annotations += [_finish_annotation(a, image_id * MAX_OBJECTS_PER_IMAGE + k + 1, image_id) for k, a in enumerate(anns)]
    coco = {
        "info": {"description": f"omnidistill synthetic {task} (style={style.name}, seed={seed}, size={size}"
                               + (f", empty_fraction={empty_fraction:g})" if empty_fraction else ")"),
                 "version": "1.0", "year": 2024, "contributor": "dd_core.data.synthetic", "date_created": "1970-01-01"},
        "licenses": [{"id": 1, "name": "synthetic, public domain", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": copy.deepcopy(list(kind.categories)),
    }
    write_bytes_atomic(str(out / ANNOTATIONS_FILE), json.dumps(coco, separators=(",", ":")).encode())
    return coco
