"""Which images a training run learns from: images with nothing to learn from are left out.

About half of COCO's images hold no person, and a teacher labels many unlabeled images with
nothing above its thresholds. Trained on, such an image is pure background: for keypoints a step
that teaches no keypoint at all. Detectron leaves keypoint-training images without a visible
keypoint out (``roidb.filter_for_training``); torchvision's references leave out images without
annotations (and, for keypoints, with fewer than 10 visible keypoints). The same rule applies to
the labeled and the pseudo-labeled set, so a student's 6:4 minibatches mix images that teach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dd_core.data.coco import MIN_BOX_SIDE, CocoData, trainable_box


class TrainingImageFilter(BaseModel):
    """Leave out images with nothing to learn from: the run config's ``training_images:`` section.

    Every training (teacher, student, upper bound) applies it, to labeled and pseudo-labeled images
    alike. An image is kept when it holds a trainable instance (not a crowd region, a box of at least
    :data:`~dd_core.data.coco.MIN_BOX_SIDE`), and, for keypoints, at least
    ``min_visible_keypoints`` labeled keypoints over its instances (Detectron's rule is 1,
    torchvision's references use 10). ``keep_empty`` keeps every image (background included).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_empty: bool = False  # true: train on every image, background ones included
    # Keypoints only: an image needs this many visible keypoints over its instances. Box sets need one instance.
    min_visible_keypoints: int = Field(default=1, ge=0, le=1000)

    def rule(self, keypoints: bool) -> str:
        """The rule in words, for logs and the report."""
        if self.keep_empty:
            return "every image kept"
        if keypoints and self.min_visible_keypoints:
            return (f"images with fewer than {self.min_visible_keypoints} visible keypoint(s) on instances to train "
                    "on left out; crowd regions and tiny boxes are not such instances")
        return "images without an instance to train on left out; crowd regions and tiny boxes are not such instances"

    def keeps(self, annotations: Sequence[Mapping[str, Any]], keypoints: bool) -> bool:
        """Whether an image with these annotations is trained on."""
        if self.keep_empty:
            return True
        instances = [a for a in annotations if not a.get("iscrowd", 0) and trainable_box(a["bbox"])]
        if not instances:
            return False
        if not keypoints:
            return True
        visible = sum(sum(1 for v in (a.get("keypoints") or [])[2::3] if v > 0) for a in instances)
        return visible >= self.min_visible_keypoints

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


@dataclass(frozen=True)
class FilteredSet:
    """A set after :func:`filter_for_training`: what is trained on, and how many images were left out."""

    data: CocoData
    total: int
    left_out: int

    def summary(self) -> dict[str, int]:
        return {"images": self.total, "left_out": self.left_out, "trained_on": self.total - self.left_out}


def filter_for_training(data: CocoData, image_filter: TrainingImageFilter) -> FilteredSet:
    """``data`` with only the images ``image_filter`` keeps (their annotations unchanged)."""
    keypoints = bool(data.keypoint_names)
    kept = [im for im in data.images if image_filter.keeps(data.annotations_by_image[im["id"]], keypoints)]
    if len(kept) == len(data.images):
        return FilteredSet(data, len(data.images), 0)
    ids = {im["id"] for im in kept}
    subset = dataclasses.replace(data, images=kept, annotations=[a for a in data.annotations if a["image_id"] in ids])
    return FilteredSet(subset, len(data.images), len(data.images) - len(kept))


def check_labeled_for_training(labeled: CocoData, image_filter: TrainingImageFilter) -> FilteredSet:
    """The labeled set as trained on; raises ``ValueError`` if the filter leaves none of it."""
    filtered = filter_for_training(labeled, image_filter)
    if not filtered.data.images:
        keypoints = bool(labeled.keypoint_names)
        raise ValueError(f"{labeled.source}: every one of its {len(labeled.images)} images is left out of training "
                         f"({image_filter.rule(keypoints)}): nothing in it teaches the model; "
                         f"{_what_to_try(image_filter, keypoints)}")
    return filtered


def _what_to_try(image_filter: TrainingImageFilter, keypoints: bool) -> str:
    """The hint of a set left out whole. Not ``keep_empty``: it would train on the same images, with
    nothing on them to learn (crowd regions and tiny boxes are ignored by training either way)."""
    hint = f"label instances that are not crowd regions (iscrowd 0) with boxes of at least {MIN_BOX_SIDE} px"
    if keypoints:
        hint += " and visible keypoints"
        if image_filter.min_visible_keypoints > 1:
            hint += f", or lower training_images.min_visible_keypoints (now {image_filter.min_visible_keypoints})"
    return hint
