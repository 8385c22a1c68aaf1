"""The teacher as the labeling stage uses it: a model, its multi-transform predict function, the
category of each of its labels, the image sizes it can take; and who keeps it loaded, for how long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dd_core.tta.predict import PredictFn, multi_transform_predict_fn
from dd_core.tta.settings import MultiTransformSettings
from dd_core.tta.transforms import base_scale, frame_size, transform_set

ImageCheck = Callable[[int, int], "str | None"]
"""``(height, width) -> None`` for an image the teacher can take, else why not (without the URL)."""


def any_size(height: int, width: int) -> str | None:
    """The :data:`ImageCheck` of a teacher that takes every image (one that resizes nothing)."""
    return None


@dataclass
class Teacher:
    """A teacher ready to pseudo-label: the model, its multi-transform predict function, its labels'
    category ids, and which image sizes its transforms can take (checked before inference)."""

    model: torch.nn.Module
    predict_fn: PredictFn
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


def teacher_from_checkpoint(checkpoint: str, tta: MultiTransformSettings,
                            options: Mapping[str, Any] | None = None) -> Teacher:
    """The teacher in ``checkpoint`` under the transform set ``tta``, refusing images too thin for its scales."""
    from dd_core.train.checkpoint import (
        checkpoint_keypoint_names,
        checkpoint_label_to_category,
        load_checkpoint,
        model_from_checkpoint,
    )

    state = load_checkpoint(checkpoint, options)
    task = state["spec"]["task"]
    if (tta.boxes is None) != (task == "keypoints"):
        raise ValueError(f"{checkpoint}: a {task} teacher needs multi-transform settings for {task} "
                         f"({'no ' if task == 'keypoints' else ''}box merging settings)")
    model = model_from_checkpoint(state)
    predict_fn = multi_transform_predict_fn(tta, checkpoint_keypoint_names(state), state["spec"].get("flip_pairs"))
    check = frame_check(model, checked_scales(model, tta))
    return Teacher(model, predict_fn, checkpoint_label_to_category(state), check)


class TeacherCache:
    """Teachers loaded once and shared by the shard tasks of one process; at most one at a time.

    A worker pseudo-labels shard after shard with one teacher: loading it per shard costs a
    checkpoint read each time and, on a GPU, left several copies allocated at once. A teacher's
    forward passes do not change it, so threads may share it.

    Owner and lifetime: the process that runs shard tasks owns one cache (``tasks.cache.TEACHERS``). It holds the latest teacher until a shard of another fingerprint
    arrives or :meth:`clear` is called. The flow clears the cache of its own process when labeling
    is over (threads runner), before the student trains there; a Dask worker or a deployment's
    worker keeps its teacher until it exits or labels for another teacher.
    """

    def __init__(self) -> None:
        self._teachers: dict[str, Teacher] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """A cache sent to another process (inside a pickled flow, say) arrives empty: teachers
        do not travel, each process loads its own."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def get(self, fingerprint: str, load: Callable[[], Teacher]) -> Teacher:
        """The teacher of ``fingerprint``, loaded by ``load`` unless this cache holds it already."""
        with self._lock:
            if fingerprint not in self._teachers:
                self._teachers.clear()  # the old one first: two teachers at once may not fit on a GPU
                self._teachers[fingerprint] = load()
            return self._teachers[fingerprint]

    def clear(self) -> int:
        """Let every cached teacher go; returns how many there were."""
        with self._lock:
            count = len(self._teachers)
            self._teachers.clear()
            return count

    def fingerprints(self) -> list[str]:
        """The fingerprints of the teachers held now."""
        with self._lock:
            return list(self._teachers)
