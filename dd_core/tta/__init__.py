"""Multi-transform inference (test-time augmentation): the teacher's side of data distillation.

One model, several geometric transforms of an image (scales x horizontal flip), predictions
mapped back to the original image and ensembled into one "hard" label set (paper, sections 3-4).

The names below are imported on first use (PEP 562): :mod:`dd_core.tta.settings`, whose default
scales ``omnidistill --help`` shows, loads without torch.
"""

from __future__ import annotations

from dd_core.lazy import lazy_exports

_EXPORTS = {
    "dd_core.tta.boxes": ["detect_in_frame", "multi_transform_boxes"],
    "dd_core.tta.keypoints": ["average_keypoint_logits", "multi_transform_keypoints",
                              "multi_transform_keypoints_on_boxes", "predictor_stages", "upsample_heatmaps"],
    "dd_core.tta.precision": ["LayerSettings"],
    "dd_core.tta.model": ["BoxMerge", "MultiTransformModel"],
    "dd_core.tta.settings": ["DEFAULT_SCALES", "SCORING_METHODS", "MultiTransformSettings"],
    "dd_core.tta.transforms": ["TestTransform", "base_transform", "boxes_from_frame", "boxes_to_frame", "hflip_boxes",
                               "hflip_heatmaps", "hflip_image", "hflip_keypoints", "keypoints_from_frame",
                               "keypoints_to_frame", "resize_boxes", "resize_keypoints", "resize_transform",
                               "transform_set"],
}
__getattr__, __all__ = lazy_exports("dd_core.tta", _EXPORTS)
