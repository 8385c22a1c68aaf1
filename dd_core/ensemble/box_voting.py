"""Bounding-box voting: how the teacher's boxes from many transforms become one pseudo-label box.

Data distillation ensembles a single teacher over several transforms of an unlabeled image. For
boxes the paper "take[s] the union set of the boxes predicted under different transformations,
and combine[s] them using bounding box voting" (Gidaris & Komodakis, arXiv:1505.01749): after NMS,
each surviving box is replaced by the score-weighted mean of every same-class detection that
overlaps it by at least ``iou_threshold``, so the boxes that NMS would simply throw away still
pull the pseudo-label towards the consensus of the transforms.

This is a numpy port of Detectron's ``detectron/utils/boxes.py::box_voting`` with two deliberate
differences: boxes are xyxy in continuous coordinates as in torchvision (areas are
``(x2 - x1) * (y2 - y1)``, without Detectron's ``+ 1``), and the top boxes and their scores are
passed as separate arrays instead of an ``N x 5`` ``dets`` array. The scoring methods and their
formulas are Detectron's, including the one its config comment does not list (``TEMP_AVG``).
"""

from __future__ import annotations

import numpy as np

SCORING_METHODS: tuple[str, ...] = ("ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM")
"""Detectron's ``box_voting`` scoring methods (``TEST.BBOX_VOTE.SCORING_METHOD``)."""



def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (``len(a) x len(b)``) of xyxy boxes in continuous coordinates (no ``+ 1``).

    Matches ``torchvision.ops.box_iou`` except that a pair whose union is empty (two degenerate
    boxes) has IoU 0 instead of NaN, so it can never vote.
    """
    a = _as_boxes("a", a)
    b = _as_boxes("b", b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0.0, None) * np.clip(height, 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def box_voting(
    top_boxes: np.ndarray,
    top_scores: np.ndarray,
    all_boxes: np.ndarray,
    all_scores: np.ndarray,
    iou_threshold: float = 0.8,
    scoring: str = "ID",
    beta: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine the NMS survivors ``top_boxes`` by letting every detection in ``all_boxes`` vote.

    Call it once per class: ``all_boxes`` are that class's detections (the union over the
    teacher's transforms) and ``top_boxes`` the ones NMS kept. For each top box ``k`` the voters
    are the detections ``j`` with ``IoU(k, j) >= iou_threshold`` (a top box that is also in
    ``all_boxes`` votes for itself); the new box is ``sum_j s_j b_j / sum_j s_j``. The new score
    depends on ``scoring`` (Detectron's formulas; ``s`` are the voters' scores, ``n`` their number):

    - ``ID``: the top box keeps its own score (Detectron's default).
    - ``AVG``: ``mean(s)``.
    - ``IOU_AVG``: ``sum(iou_j * s_j) / sum(iou_j)``.
    - ``GENERALIZED_AVG``: the power mean ``mean(s ** beta) ** (1 / beta)``.
    - ``QUASI_SUM``: ``sum(s) / n ** beta`` (``n`` counts voters, not transforms).
    - ``TEMP_AVG``: ``mean(p_j)`` with ``p = s^(1/beta) / (s^(1/beta) + (1 - s)^(1/beta))``, each
      score seen as a two-way distribution and sharpened (``beta < 1``) or smoothed by a temperature.

    ``beta`` is only used by GENERALIZED_AVG (non-zero; negative gives e.g. the harmonic mean),
    QUASI_SUM (any) and TEMP_AVG (> 0). Detectron's own test pipeline never passes its
    ``SCORING_METHOD_BETA`` to ``box_voting``, so there beta is always the default 1.0.

    Where Detectron would divide by zero (a top box with no voter, or voters whose weights sum to
    0), the top box and its score are returned unchanged instead. ``all_boxes`` empty returns the
    top boxes and scores unchanged. Outputs keep the floating dtype of ``top_boxes`` and
    ``top_scores`` (float64 for integer input); computation is in float64.

    Raises ``ValueError`` for an unknown ``scoring``, a bad ``beta`` or ``iou_threshold``, and
    arrays of the wrong shape or with non-finite values.
    """
    _check_scoring(scoring, beta)
    if not np.isfinite(iou_threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold}")
    top_b = _as_boxes("top_boxes", top_boxes)
    top_s = _as_scores("top_scores", top_scores, len(top_b))
    all_b = _as_boxes("all_boxes", all_boxes)
    all_s = _as_scores("all_scores", all_scores, len(all_b))
    box_dtype = _out_dtype(top_boxes)
    score_dtype = _out_dtype(top_scores)

    if len(top_b) == 0 or len(all_b) == 0:
        return top_b.astype(box_dtype), top_s.astype(score_dtype)

    iou = box_iou(top_b, all_b)
    voters = iou >= iou_threshold
    new_boxes = _voted_boxes(top_b, all_b, all_s, voters)
    new_scores = _voted_scores(top_s, all_s, iou, voters, scoring, beta)
    return new_boxes.astype(box_dtype), new_scores.astype(score_dtype)


def _voted_boxes(top_b: np.ndarray, all_b: np.ndarray, all_s: np.ndarray, voters: np.ndarray) -> np.ndarray:
    """Score-weighted mean of each top box's voters; the top box itself where the weights sum to 0."""
    weights = np.where(voters, all_s[None, :], 0.0)
    total = weights.sum(axis=1)
    ok = total > 0
    out = top_b.copy()
    out[ok] = (weights[ok] @ all_b) / total[ok, None]
    return out


def _voted_scores(
    top_s: np.ndarray, all_s: np.ndarray, iou: np.ndarray, voters: np.ndarray, scoring: str, beta: float
) -> np.ndarray:
    """The new score of each top box by Detectron's ``scoring`` method (see ``box_voting``)."""
    if scoring == "ID":
        return top_s.copy()
    count = voters.sum(axis=1).astype(np.float64)
    if scoring == "IOU_AVG":
        numer = np.where(voters, iou * all_s[None, :], 0.0).sum(axis=1)
        denom = np.where(voters, iou, 0.0).sum(axis=1)
        return _divide_or_keep(numer, denom, top_s)
    if scoring == "QUASI_SUM":
        total = np.where(voters, all_s[None, :], 0.0).sum(axis=1)
        with np.errstate(divide="ignore"):  # 0 ** negative beta: rows without voters, kept as they are
            return _divide_or_keep(total, count**beta, top_s, valid=count > 0)
    if scoring == "AVG":
        per_voter = all_s
    elif scoring == "GENERALIZED_AVG":
        with np.errstate(divide="ignore", over="ignore"):
            per_voter = all_s**beta
    else:  # TEMP_AVG
        per_voter = _temperature_probability(all_s, beta)
    mean = _divide_or_keep(np.where(voters, per_voter[None, :], 0.0).sum(axis=1), count, top_s)
    if scoring == "GENERALIZED_AVG":
        with np.errstate(divide="ignore", over="ignore"):
            return np.where(count > 0, mean ** (1.0 / beta), top_s)
    return mean


def _temperature_probability(scores: np.ndarray, beta: float) -> np.ndarray:
    """Detectron's TEMP_AVG per-voter term: softmax of ``log([s, 1 - s]) / beta``, class ``s`` taken.

    Computed as Detectron does (subtracting the max log-probability first) so that ``s`` of 0 or 1
    gives exactly 0 or 1 instead of NaN.
    """
    probs = np.stack([scores, 1.0 - scores])
    with np.errstate(divide="ignore", invalid="ignore"):
        logits = np.log(probs / probs.max(axis=0)) / beta
        tempered = np.exp(logits)
        return tempered[0] / tempered.sum(axis=0)


def _divide_or_keep(
    numer: np.ndarray, denom: np.ndarray, fallback: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """``numer / denom`` where ``denom > 0`` (and ``valid``); ``fallback`` elsewhere."""
    ok = denom > 0 if valid is None else valid & (denom > 0)
    out = fallback.astype(np.float64, copy=True)
    out[ok] = numer[ok] / denom[ok]
    return out


def _check_scoring(scoring: str, beta: float) -> None:
    if scoring not in SCORING_METHODS:
        raise ValueError(f"unknown box voting scoring method {scoring!r}; valid ones: {', '.join(SCORING_METHODS)}")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if scoring == "GENERALIZED_AVG" and beta == 0:
        raise ValueError("beta must be non-zero for scoring 'GENERALIZED_AVG' (the power mean's exponent is 1/beta)")
    if scoring == "TEMP_AVG" and beta <= 0:
        raise ValueError(f"beta is a temperature for scoring 'TEMP_AVG' and must be > 0, got {beta}")


def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    """``boxes`` as a finite float64 ``(N, 4)`` array, or a ``ValueError`` naming the argument."""
    arr = np.asarray(boxes)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (xyxy boxes), got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite coordinates")
    return arr


def _as_scores(name: str, scores: np.ndarray, n: int) -> np.ndarray:
    """``scores`` as a finite float64 ``(n,)`` array, or a ``ValueError`` naming the argument."""
    arr = np.asarray(scores)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its boxes, got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite scores")
    return arr


def _out_dtype(arr: np.ndarray) -> np.dtype:
    """The input's floating dtype, so float32 teacher outputs stay float32; float64 otherwise."""
    dtype = np.asarray(arr).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
