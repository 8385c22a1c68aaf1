"""A teacher's predict function under multi-transform inference: what evaluation and labeling call."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dd_core.tta.boxes import multi_transform_boxes
from dd_core.tta.keypoints import multi_transform_keypoints
from dd_core.tta.precision import LayerSettings
from dd_core.tta.settings import MultiTransformSettings
from dd_core.tta.transforms import transform_set

PredictFn = Callable[[torch.nn.Module, list[torch.Tensor]], list[dict[str, torch.Tensor]]]
"""``(model, images) -> one output dict per image``, as ``model(images)`` in eval mode returns."""


def multi_transform_predict_fn(tta: MultiTransformSettings, keypoint_names: Sequence[str],
                               flip_pairs: Sequence[Sequence[str]] | None = None) -> PredictFn:
    """Multi-transform inference (the paper's test-time augmentation) as a ``predict_fn``.

    A keypoint teacher (``tta.boxes is None``) averages heatmaps on one set of boxes; a detection
    teacher merges the union of its boxes by NMS and box voting. ``tta.precision`` and
    ``tta.channels_last`` say how the model's layers run (:class:`~dd_core.tta.precision.LayerSettings`).
    """
    from dd_core.data.keypoints import flip_indices

    transforms = transform_set(tta.scales, tta.flip)
    layers = LayerSettings(tta.precision, tta.channels_last)
    if tta.boxes is None:
        if not keypoint_names:
            raise ValueError("multi-transform settings for keypoints (no box merging), but the model has no keypoints")
        inds = flip_indices(list(keypoint_names), flip_pairs)  # left_*/right_* names, or the pairs given
        return lambda model, images: multi_transform_keypoints(model, images, transforms, inds, layers)
    boxes = tta.boxes
    return lambda model, images: multi_transform_boxes(model, images, transforms, nms_threshold=boxes.nms_threshold,
                                                       voting_threshold=boxes.voting_threshold, scoring=boxes.scoring,
                                                       layers=layers)
