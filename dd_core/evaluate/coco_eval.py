"""COCOeval for ``bbox`` and ``keypoints`` with the stats named as in the paper's tables."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dd_core.data.keypoints import oks_sigmas
from dd_core.evaluate.results import validate_results

BBOX_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl")


def _coco_api(gt: dict[str, Any]) -> COCO:
    api = COCO()
    api.dataset = copy.deepcopy(gt)
    api.dataset.setdefault("info", {})
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _num_keypoints(gt: dict[str, Any]) -> int:
    return max((len(c.get("keypoints") or []) for c in gt["categories"]), default=0)


def _keypoint_names(gt: dict[str, Any]) -> list[str]:
    return max((list(c.get("keypoints") or []) for c in gt["categories"]), key=len, default=[])


def coco_evaluate(gt: dict[str, Any], results: Sequence[dict[str, Any]], iou_type: str,
                  verbose: bool = False, sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """COCO AP of ``results`` on the ground-truth dict ``gt`` (``iou_type``: bbox or keypoints).

    Keypoints are scored with the OKS ``sigmas`` given (one per keypoint), else COCO's for its 17
    person keypoints, else 0.05 each (:func:`dd_core.data.keypoints.oks_sigmas`). No results at all
    scores 0 on every stat (pycocotools would raise IndexError).
    """
    if iou_type not in ("bbox", "keypoints"):
        raise ValueError(f"iou_type must be 'bbox' or 'keypoints', got {iou_type!r}")
    names = BBOX_STATS if iou_type == "bbox" else KEYPOINT_STATS
    k = _num_keypoints(gt) if iou_type == "keypoints" else None
    validate_results(results, {img["id"] for img in gt["images"]}, {c["id"] for c in gt["categories"]}, k)
    if not results:
        return {name: 0.0 for name in names}
    gt_api = _coco_api(gt)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt_api = gt_api.loadRes(copy.deepcopy(list(results)))
        evaluator = COCOeval(gt_api, dt_api, iou_type)
        if iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = np.asarray(oks_sigmas(_keypoint_names(gt), sigmas))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(out.getvalue())
    # COCOeval reports -1 where a size range has no ground truth; keep it, it means "undefined".
    return {name: float(v) for name, v in zip(names, evaluator.stats)}
