"""The teacher as the labeling stage uses it: a model under multi-transform inference, the category
of each of its labels, the image sizes it can take."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dd_core.models.loading import LoadedDetector, load_detector
from dd_core.tta.model import MultiTransformModel
from dd_core.tta.settings import MultiTransformSettings
from dd_core.tta.transforms import base_scale, frame_size, transform_set

ImageCheck = Callable[[int, int], "str | None"]
"""``(height, width) -> None`` for an image the teacher can take, else why not (without the URL)."""


def any_size(height: int, width: int) -> str | None:
    """The :data:`ImageCheck` of a teacher that takes every image (one that resizes nothing)."""
    return None


@dataclass
class Teacher:
    """A teacher ready to pseudo-label: ``model(images)`` predicts under multi-transform inference (a
    :class:`~dd_core.tta.model.MultiTransformModel`), its labels' category ids, and which image sizes
    its transforms can take (checked before inference)."""

    model: torch.nn.Module
    label_to_category: Mapping[int, int]
    check_image: ImageCheck = any_size


MIN_FRAME_SIDE = 1
"""The thinnest frame side (px) a test-time transform may give. A side of 0 px is what breaks:
``interpolate`` refuses it ("Input and output sizes should be greater than 0"). Frames with a 1-px
side (at scale 64: an image 1 px high and 96 px wide, or 2 px high and 150 px wide) go through the
slim keypoint and box teachers' multi-transform inference with finite predictions (see
tests/pseudo/test_infer.py), so nothing larger is needed to keep inference from failing."""


def frame_check(model: torch.nn.Module, scales: Sequence[int], min_side: int = MIN_FRAME_SIDE) -> ImageCheck:
    """An :data:`ImageCheck` refusing an image that one of ``scales`` would resize to a frame with a side
    under ``min_side`` px: a very thin image, whose longer side hits the scale's cap first.

    Frame sizes come from :func:`dd_core.tta.transforms.frame_size`, the arithmetic of torchvision's
    own resize, so the check refuses exactly the images the resize would fail on.
    """
    return FrameCheck(model, sorted(set(int(s) for s in scales)), min_side)


class FrameCheck:
    """The :data:`ImageCheck` of :func:`frame_check`; also knows the largest frame an image gets
    (:meth:`largest_frame`), so that a large photo is decoded no larger than that needs
    (:func:`dd_core.data.images.decode_reduced`)."""

    def __init__(self, model: torch.nn.Module, scales: Sequence[int], min_side: int) -> None:
        self.model, self.scales, self.min_side = model, list(scales), min_side

    def __call__(self, height: int, width: int) -> str | None:
        if min(height, width) < 1:
            return f"{width}x{height} px (width x height): an empty image"
        for scale in self.scales:
            side = min(frame_size(self.model, scale, (height, width)))
            if side < self.min_side:
                return (f"{width}x{height} px (width x height): too thin for the test-time transforms "
                        f"(its shorter side resizes to {side} px at scale {scale}; at least {self.min_side} px needed)")
        return None

    def largest_frame(self, height: int, width: int) -> tuple[int, int]:
        """The largest ``(h, w)`` an image of this size is resized to by any of the scales."""
        frames = [frame_size(self.model, scale, (height, width)) for scale in self.scales]
        return max(h for h, _ in frames), max(w for _, w in frames)


def checked_scales(model: torch.nn.Module, tta: MultiTransformSettings) -> list[int]:
    """The scales an image the teacher accepts must survive: the transform set's, and the model's own
    test scale. A keypoint teacher's boxes come from one pass at that scale (see
    :func:`dd_core.tta.keypoints.multi_transform_keypoints`); and every pseudo-labeled image becomes a
    training image of the student, whose resize caps the longer side at the same ``max_size`` at
    every training scale, so that a thin image gets the frame it gets at the model's test scale.
    """
    return [t.scale for t in transform_set(tta.scales, tta.flip)] + [base_scale(model)]


def teacher_of(detector: LoadedDetector, tta: MultiTransformSettings) -> Teacher:
    """``detector`` as a teacher under the transform set ``tta``, refusing images too thin for its scales."""
    if tta.merges_boxes != (detector.task == "detection"):
        raise ValueError(f"{detector.url}: a {detector.task} teacher needs multi-transform settings for "
                         f"{detector.task} ({'no ' if detector.task == 'keypoints' else ''}box merging settings)")
    model = detector.model
    wrapped = MultiTransformModel.from_settings(model, tta, detector.keypoint_names, detector.flip_pairs)
    return Teacher(wrapped, detector.label_to_category, frame_check(model, checked_scales(model, tta)))


def teacher_from_checkpoint(checkpoint: str, tta: MultiTransformSettings,
                            options: Mapping[str, Any] | None = None) -> Teacher:
    """The teacher in ``checkpoint`` under the transform set ``tta`` (:func:`teacher_of`)."""
    return teacher_of(load_detector(checkpoint, options), tta)
