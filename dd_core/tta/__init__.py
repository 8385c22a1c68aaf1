"""Multi-transform inference (test-time augmentation): the teacher's side of data distillation.

One model, several geometric transforms of an image (scales x horizontal flip), predictions
mapped back to the original image and ensembled into one "hard" label set (paper, sections 3-4).
"""

from dd_core.tta.boxes import detect_in_frame, multi_transform_boxes
from dd_core.tta.keypoints import (
    average_keypoint_logits,
    keypoint_logits,
    multi_transform_keypoints,
    multi_transform_keypoints_on_boxes,
    predictor_stages,
    upsample_heatmaps,
)
from dd_core.tta.transforms import (
    TestTransform,
    base_transform,
    boxes_from_frame,
    boxes_to_frame,
    hflip_boxes,
    hflip_heatmaps,
    hflip_image,
    hflip_keypoints,
    keypoints_from_frame,
    keypoints_to_frame,
    resize_boxes,
    resize_keypoints,
    resize_transform,
    transform_set,
)

__all__ = [
    "TestTransform",
    "average_keypoint_logits",
    "base_transform",
    "boxes_from_frame",
    "boxes_to_frame",
    "detect_in_frame",
    "hflip_boxes",
    "hflip_heatmaps",
    "hflip_image",
    "hflip_keypoints",
    "keypoint_logits",
    "keypoints_from_frame",
    "keypoints_to_frame",
    "multi_transform_boxes",
    "multi_transform_keypoints",
    "multi_transform_keypoints_on_boxes",
    "predictor_stages",
    "resize_boxes",
    "resize_keypoints",
    "resize_transform",
    "transform_set",
    "upsample_heatmaps",
]
