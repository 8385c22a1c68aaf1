"""Ensembling the teacher's predictions over transforms into pseudo-labels (box voting, NMS)."""

from dd_core.ensemble.box_voting import SCORING_METHODS, box_iou, box_voting
from dd_core.ensemble.merge import merge_detections, nms

__all__ = ["SCORING_METHODS", "box_iou", "box_voting", "merge_detections", "nms"]
