"""COCO evaluation (pycocotools' COCOeval) of teacher and student, with or without TTA."""

from dd_core.evaluate.coco_eval import BBOX_STATS, KEYPOINT_STATS, coco_evaluate
from dd_core.evaluate.predict import outputs_to_results, predict
from dd_core.evaluate.results import ResultsError, validate_results

__all__ = ["BBOX_STATS", "KEYPOINT_STATS", "ResultsError", "coco_evaluate",
           "outputs_to_results", "predict", "validate_results"]
