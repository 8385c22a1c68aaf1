"""Ensembling the teacher's predictions over transforms into pseudo-labels (NMS, box voting)."""

from dd_core.ensemble.box_voting import SCORING_METHODS, batched_box_voting, box_voting
from dd_core.ensemble.merge import merge_detections

__all__ = ["SCORING_METHODS", "batched_box_voting", "box_voting", "merge_detections"]
