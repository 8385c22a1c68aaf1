"""Calibrating the score thresholds that select the teacher's predictions as pseudo-labels."""

from dd_core.calibrate.thresholds import (
    keypoint_score_threshold,
    labeled_instances_per_image,
    labeled_keypoints_per_instance,
    per_category_thresholds,
)

__all__ = [
    "keypoint_score_threshold",
    "labeled_instances_per_image",
    "labeled_keypoints_per_instance",
    "per_category_thresholds",
]
