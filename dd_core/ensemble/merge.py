"""Box ensembling for the detection teacher: union of transforms -> per-class NMS -> box voting.

The paper's Faster R-CNN experiments (section 6) ensemble the teacher's predictions on an
unlabeled image by taking "the union set of the boxes predicted under different transformations"
and combining them "using bounding box voting (a process similar to non-maximum suppression that
merges the suppressed boxes)". ``merge_detections`` is that step, in the order Detectron's
``box_results_with_nms_and_limit`` does it: per class, NMS over the union, box voting of the NMS
survivors against all of the class's detections, then a per-image cap on the number of boxes.
"""

from __future__ import annotations

import numpy as np

from dd_core.ensemble.box_voting import _as_boxes, _as_scores, _check_scoring, _out_dtype, box_iou, box_voting


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of the kept boxes, highest score first.

    Same semantics as ``torchvision.ops.nms``: a box is suppressed when its IoU with a kept,
    higher-scoring box is strictly greater than ``iou_threshold`` (Detectron suppresses at ``>=``).
    Equal scores keep input order (stable sort), so the result is deterministic. Runs in
    ``O(n * kept)`` time and ``O(n)`` extra memory.
    """
    if not np.isfinite(iou_threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold}")
    boxes = _as_boxes("boxes", boxes)
    scores = _as_scores("scores", scores, len(boxes))
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        overlaps = box_iou(boxes[best : best + 1], boxes[rest])[0]
        order = rest[overlaps <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def merge_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    nms_threshold: float = 0.5,
    voting_threshold: float = 0.8,
    scoring: str = "ID",
    beta: float = 1.0,
    max_detections: int | None = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the teacher's detections from all transforms of one image into one set of boxes.

    ``boxes`` (N x 4, xyxy, continuous coordinates), ``scores`` (N) and ``labels`` (N, integer
    class ids) are the union of every transform's detections, already mapped back to the original
    image. For each class separately: NMS at ``nms_threshold``, then ``box_voting`` of the
    survivors against all of that class's detections (``voting_threshold``, ``scoring``,
    ``beta``), so boxes of different classes never merge. Returns ``(boxes, scores, labels)`` of
    at most ``max_detections`` boxes (``None``: no cap), sorted by descending score (ties: class
    order, then NMS order). Unlike Detectron, which keeps every box scoring at least the
    ``max_detections``-th score, the cap is exact.

    Boxes and scores keep their floating dtype (float64 for integer input); labels keep theirs.
    """
    _check_scoring(scoring, beta)
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
    box_arr = _as_boxes("boxes", boxes)
    score_arr = _as_scores("scores", scores, len(box_arr))
    label_arr = _as_labels(labels, len(box_arr))

    merged_boxes, merged_scores, merged_labels = [], [], []
    for label in np.unique(label_arr):
        members = np.flatnonzero(label_arr == label)
        cls_boxes, cls_scores = box_arr[members], score_arr[members]
        keep = nms(cls_boxes, cls_scores, nms_threshold)
        voted_boxes, voted_scores = box_voting(
            cls_boxes[keep], cls_scores[keep], cls_boxes, cls_scores, voting_threshold, scoring, beta
        )
        merged_boxes.append(voted_boxes)
        merged_scores.append(voted_scores)
        merged_labels.append(np.full(len(keep), label, dtype=label_arr.dtype))

    out_boxes = np.concatenate(merged_boxes) if merged_boxes else np.zeros((0, 4))
    out_scores = np.concatenate(merged_scores) if merged_scores else np.zeros(0)
    out_labels = np.concatenate(merged_labels) if merged_labels else label_arr[:0]
    order = np.argsort(-out_scores, kind="stable")[:max_detections]
    return (
        out_boxes[order].astype(_out_dtype(boxes)),
        out_scores[order].astype(_out_dtype(scores)),
        out_labels[order],
    )


def _as_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """``labels`` as an integer ``(n,)`` array (an empty list becomes int64)."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match boxes, got {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64) if not np.issubdtype(arr.dtype, np.integer) else arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {arr.dtype}")
    return arr
