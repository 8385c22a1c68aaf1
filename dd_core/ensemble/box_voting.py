"""Bounding-box voting: how the teacher's boxes from many transforms become one pseudo-label box.

Data distillation ensembles a single teacher over several transforms of an unlabeled image. For
boxes the paper "take[s] the union set of the boxes predicted under different transformations,
and combine[s] them using bounding box voting" (Gidaris & Komodakis, arXiv:1505.01749): after NMS,
each surviving box is replaced by the score-weighted mean of every same-class detection that
overlaps it by at least ``iou_threshold``, so the boxes that NMS would simply throw away still
pull the pseudo-label towards the consensus of the transforms.

This is a port of Detectron's ``detectron/utils/boxes.py::box_voting`` with two deliberate
differences: boxes are xyxy in continuous coordinates as in torchvision (areas are
``(x2 - x1) * (y2 - y1)``, without Detectron's ``+ 1``), and the top boxes and their scores are
passed as separate arrays instead of an ``N x 5`` ``dets`` array. The scoring methods and their
formulas are Detectron's, including the one its config comment does not list (``TEMP_AVG``).

The formulas are written once, on tensors (``batched_box_voting``: on the detections' device,
classes kept apart like ``torchvision.ops.batched_nms``); ``box_voting`` is the numpy contract of
the design notes, a thin wrapper over it.
"""

from __future__ import annotations

import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor
from torchvision.ops import box_iou

from dd_core.ensemble.arguments import as_boxes, as_labels, as_scores, as_tensor, check_finite, float_dtype
from dd_core.tta.settings import DEFAULT_SCORING, DEFAULT_VOTING_THRESHOLD, SCORING_METHODS  # noqa: F401 (re-exported)


def box_voting(
    top_boxes: ArrayLike,
    top_scores: ArrayLike,
    all_boxes: ArrayLike,
    all_scores: ArrayLike,
    iou_threshold: float = DEFAULT_VOTING_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    beta: float = 1.0,
) -> tuple[NDArray, NDArray]:
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
    0), the top box and its score are returned unchanged instead. A pair of degenerate boxes
    (empty union) has IoU 0, not torchvision's NaN. ``all_boxes`` empty returns the top boxes and
    scores unchanged. Outputs keep the floating dtype of ``top_boxes`` and ``top_scores``
    (float64 for integer input); computation is in float64.

    Raises ``ValueError`` for an unknown ``scoring``, a bad ``beta`` or ``iou_threshold``, and
    arrays of the wrong shape or with non-finite values.
    """
    boxes, scores = batched_box_voting(
        as_tensor("top_boxes", top_boxes), as_tensor("top_scores", top_scores), None,
        as_tensor("all_boxes", all_boxes), as_tensor("all_scores", all_scores), None,
        iou_threshold, scoring, beta,
    )
    return boxes.cpu().numpy(), scores.cpu().numpy()


def batched_box_voting(
    top_boxes: Tensor,
    top_scores: Tensor,
    top_labels: Tensor | None,
    all_boxes: Tensor,
    all_scores: Tensor,
    all_labels: Tensor | None,
    iou_threshold: float = DEFAULT_VOTING_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    beta: float = 1.0,
    *,
    chunk: int = 0,
) -> tuple[Tensor, Tensor]:
    """``box_voting`` on tensors, every class at once: only detections of a top box's label vote.

    As ``torchvision.ops.batched_nms`` does for NMS, ``top_labels`` and ``all_labels`` (integer
    class ids, or both ``None`` for a single class) keep classes apart, so one call replaces a
    per-class loop; the work is class by class, in chunks of top boxes, so memory grows with one
    class's detections, not with the square of all of them. Everything else is ``box_voting``'s contract: same voters, formulas, checks
    and dtypes. Works where the inputs are (they must share ``top_boxes``' device) and returns
    there; computation is in float64. ``chunk``: top boxes voted at a time (0: :data:`VOTE_CHUNK`).
    """
    check_scoring(scoring, beta)
    check_finite("iou_threshold", iou_threshold)
    device = top_boxes.device
    top_b = as_boxes("top_boxes", top_boxes)
    top_s = as_scores("top_scores", top_scores, len(top_b), device)
    all_b = as_boxes("all_boxes", all_boxes, device)
    all_s = as_scores("all_scores", all_scores, len(all_b), device)
    groups = _class_groups(top_labels, all_labels, len(top_b), len(all_b), device)
    box_dtype, score_dtype = float_dtype(top_boxes), float_dtype(top_scores)

    new_b, new_s = top_b.clone(), top_s.clone()  # copies: an output never aliases a caller's tensor
    for rows, columns in groups:  # class by class, VOTE_CHUNK top boxes at a time: memory stays bounded
        voters_b, voters_s = all_b[columns], all_s[columns]
        for part in rows.split(chunk or VOTE_CHUNK):
            iou = _voting_iou(top_b[part], voters_b)
            voters = iou >= iou_threshold
            new_b[part] = _voted_boxes(top_b[part], voters_b, voters_s, voters)
            new_s[part] = _voted_scores(top_s[part], voters_s, iou, voters, scoring, beta)
    return new_b.to(box_dtype), new_s.to(score_dtype)


def check_scoring(scoring: str, beta: float) -> None:
    """Refuse an unknown scoring method or a ``beta`` its formula cannot use, before any work."""
    if scoring not in SCORING_METHODS:
        raise ValueError(f"unknown box voting scoring method {scoring!r}; valid ones: {', '.join(SCORING_METHODS)}")
    check_finite("beta", beta)
    if scoring == "GENERALIZED_AVG" and beta == 0:
        raise ValueError("beta must be non-zero for scoring 'GENERALIZED_AVG' (the power mean's exponent is 1/beta)")
    if scoring == "TEMP_AVG" and beta <= 0:
        raise ValueError(f"beta is a temperature for scoring 'TEMP_AVG' and must be > 0, got {beta}")


# Top boxes voted at a time: the IoU and voter matrices are VOTE_CHUNK x (detections of the class),
# so 20,000 raw detections of one image cost tens of MB, not the square of all of them.
VOTE_CHUNK = 512


def _class_groups(
    top_labels: Tensor | None, all_labels: Tensor | None, n_top: int, n_all: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """(top box indices, detection indices) of each class; one group of everything without labels."""
    if top_labels is None and all_labels is None:
        return [(torch.arange(n_top, device=device), torch.arange(n_all, device=device))]
    if top_labels is None or all_labels is None:
        raise ValueError("top_labels and all_labels must be given together (or both None for a single class)")
    top_l = as_labels("top_labels", top_labels, n_top, device)
    all_l = as_labels("all_labels", all_labels, n_all, device)
    return [(torch.nonzero(top_l == c).flatten(), torch.nonzero(all_l == c).flatten()) for c in torch.unique(top_l)]


def _voting_iou(top_b: Tensor, all_b: Tensor) -> Tensor:
    """``torchvision.ops.box_iou`` with 0 where it gives NaN (two degenerate boxes: union 0).

    A degenerate pair overlaps nothing, so it compares like any disjoint pair: it never votes at a
    positive threshold, and a NaN can never reach a weight or a score.
    """
    return torch.nan_to_num(box_iou(top_b, all_b), nan=0.0)


def _voted_boxes(top_b: Tensor, all_b: Tensor, all_s: Tensor, voters: Tensor) -> Tensor:
    """Score-weighted mean of each top box's voters; the top box itself where the weights sum to 0."""
    weights = torch.where(voters, all_s[None, :], 0.0)
    total = weights.sum(dim=1)
    return torch.where((total > 0)[:, None], (weights @ all_b) / total[:, None], top_b)


def _voted_scores(
    top_s: Tensor, all_s: Tensor, iou: Tensor, voters: Tensor, scoring: str, beta: float
) -> Tensor:
    """The new score of each top box by Detectron's ``scoring`` method (see ``box_voting``)."""
    if scoring == "ID":
        return top_s.clone()
    count = voters.sum(dim=1).to(torch.float64)
    if scoring == "IOU_AVG":
        numer = torch.where(voters, iou * all_s[None, :], 0.0).sum(dim=1)
        denom = torch.where(voters, iou, 0.0).sum(dim=1)
        return _divide_or_keep(numer, denom, top_s)
    if scoring == "QUASI_SUM":
        total = torch.where(voters, all_s[None, :], 0.0).sum(dim=1)
        # count ** negative beta is inf for rows without voters: those are kept as they are
        return _divide_or_keep(total, count**beta, top_s, valid=count > 0)
    if scoring == "AVG":
        per_voter = all_s
    elif scoring == "GENERALIZED_AVG":
        per_voter = all_s**beta  # 0 ** negative beta is inf; the power mean then gives 0
    else:  # TEMP_AVG
        per_voter = _temperature_probability(all_s, beta)
    mean = _divide_or_keep(torch.where(voters, per_voter[None, :], 0.0).sum(dim=1), count, top_s)
    if scoring == "GENERALIZED_AVG":
        return torch.where(count > 0, mean ** (1.0 / beta), top_s)
    return mean


def _temperature_probability(scores: Tensor, beta: float) -> Tensor:
    """Detectron's TEMP_AVG per-voter term: softmax of ``log([s, 1 - s]) / beta``, class ``s`` taken.

    Computed as Detectron does (subtracting the max log-probability first) so that ``s`` of 0 or 1
    gives exactly 0 or 1 instead of NaN.
    """
    probs = torch.stack([scores, 1.0 - scores])
    tempered = torch.exp(torch.log(probs / probs.max(dim=0).values) / beta)
    return tempered[0] / tempered.sum(dim=0)


def _divide_or_keep(numer: Tensor, denom: Tensor, fallback: Tensor, valid: Tensor | None = None) -> Tensor:
    """``numer / denom`` where ``denom > 0`` (and ``valid``); ``fallback`` elsewhere."""
    ok = denom > 0 if valid is None else valid & (denom > 0)
    return torch.where(ok, numer / denom, fallback)
