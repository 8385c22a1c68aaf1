"""Multi-transform inference as a model: ``MultiTransformModel(detector, ...)(images)`` predicts as
``detector(images)`` does, ensembled over test-time transforms.

The shape of detectron2's ``GeneralizedRCNNWithTTA`` (an ``nn.Module`` with the model's own
interface, built from explicit arguments, with one ``from_settings`` that reads the settings
object), around this package's ensembling: a detection teacher merges the raw union of every
transform's boxes by NMS and box voting (:mod:`dd_core.tta.boxes`); a keypoint teacher averages
heatmaps on one fixed set of RoIs (:mod:`dd_core.tta.keypoints`). Either runs the backbone once
per scale, its layers as :class:`~dd_core.tta.precision.LayerSettings` say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from dd_core.tta.boxes import multi_transform_boxes
from dd_core.tta.keypoints import check_flip_indices, multi_transform_keypoints
from dd_core.tta.precision import FLOAT32, LayerSettings
from dd_core.tta.transforms import TestTransform, transform_set

if TYPE_CHECKING:
    from dd_core.tta.settings import MultiTransformSettings


@dataclass(frozen=True)
class BoxMerge:
    """How a detection teacher merges the union of its boxes: per-class NMS at ``nms_threshold``, box
    voting of each kept box by the boxes overlapping it at ``voting_threshold`` (scored by ``scoring``),
    at most ``max_detections`` per image (torchvision's cap)."""

    nms_threshold: float
    voting_threshold: float
    scoring: str
    max_detections: int = 100


class MultiTransformModel(nn.Module):
    """``model`` under multi-transform inference, called as ``model`` is: ``wrapper(images)`` in eval
    mode returns one dict per image (``boxes, labels, scores`` [, ``keypoints, keypoints_scores``], in
    original image coordinates) plus ``num_transforms``.

    Exactly one of ``flip_indices`` (a keypoint model: heatmaps averaged on the RoIs of one pass at
    the model's own scale, left/right channels swapped by ``flip_indices`` under a flip) and ``merge``
    (a detection model: union, NMS and box voting) is given. ``model`` stays reachable as
    ``wrapper.model`` (its preprocessing, its device); ``wrapper.eval()`` puts it in eval mode.
    """

    def __init__(self, model: nn.Module, transforms: Sequence[TestTransform], *,
                 flip_indices: Sequence[int] | None = None, merge: BoxMerge | None = None,
                 layers: LayerSettings = FLOAT32) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("multi-transform inference needs at least one transform")
        if (flip_indices is None) == (merge is None):
            raise ValueError("MultiTransformModel needs exactly one of flip_indices (keypoints) and merge (detection)")
        if flip_indices is not None:
            check_flip_indices(flip_indices)
        self.model = model
        self.transforms = list(transforms)
        self.flip_indices = None if flip_indices is None else list(flip_indices)
        self.merge = merge
        self.layers = layers

    @classmethod
    def from_settings(cls, model: nn.Module, settings: MultiTransformSettings, keypoint_names: Sequence[str],
                      flip_pairs: Sequence[Sequence[str]] | None = None) -> MultiTransformModel:
        """``model`` under the transform set and merging of ``settings``: detection when ``settings``
        merge boxes (:meth:`~dd_core.tta.settings.MultiTransformSettings.for_task`), keypoints otherwise
        (then ``keypoint_names``, and ``flip_pairs`` unless the names are ``left_*``/``right_*``, give
        the left/right swap)."""
        from dd_core.data.keypoints import flip_indices

        transforms = transform_set(settings.scales, settings.flip)
        layers = LayerSettings(settings.precision, settings.channels_last)
        if not settings.merges_boxes:
            if not keypoint_names:
                raise ValueError("multi-transform settings for keypoints (no box merging), "
                                 "but the model has no keypoints")
            return cls(model, transforms, flip_indices=flip_indices(list(keypoint_names), flip_pairs), layers=layers)
        merge = BoxMerge(settings.nms_threshold, settings.voting_threshold, settings.scoring)
        return cls(model, transforms, merge=merge, layers=layers)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor | int]]:
        """The ensembled predictions of each image (CHW float tensors in [0, 1], as for ``model``)."""
        if self.flip_indices is not None:
            return multi_transform_keypoints(self.model, images, self.transforms, self.flip_indices, self.layers)
        assert self.merge is not None
        return multi_transform_boxes(self.model, images, self.transforms, nms_threshold=self.merge.nms_threshold,
                                     voting_threshold=self.merge.voting_threshold, scoring=self.merge.scoring,
                                     max_detections=self.merge.max_detections, layers=self.layers)
