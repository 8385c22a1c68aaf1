"""Box ensembling for the detection teacher: union of transforms -> per-class NMS -> box voting.

The paper's Faster R-CNN experiments (section 6) ensemble the teacher's predictions on an
unlabeled image by taking "the union set of the boxes predicted under different transformations"
and combining them "using bounding box voting (a process similar to non-maximum suppression that
merges the suppressed boxes)". ``merge_detections`` is that step, in the order Detectron's
``box_results_with_nms_and_limit`` does it: per class, NMS over the union, box voting of the NMS
survivors against all of the class's detections, then a per-image cap on the number of boxes.

NMS is ``torchvision.ops.batched_nms`` and voting ``batched_box_voting``: both keep classes apart
in one call, on the device the detections are on, so the model's outputs never leave it.
"""

from __future__ import annotations

from typing import overload

import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor
from torchvision.ops import batched_nms

from dd_core.ensemble.arguments import as_boxes, as_labels, as_scores, as_tensor, check_finite, float_dtype, label_dtype
from dd_core.ensemble.box_voting import batched_box_voting, check_scoring
from dd_core.tta.settings import DEFAULT_NMS_THRESHOLD, DEFAULT_SCORING, DEFAULT_VOTING_THRESHOLD


@overload
def merge_detections(
    boxes: Tensor, scores: Tensor, labels: Tensor, nms_threshold: float = ..., voting_threshold: float = ...,
    scoring: str = ..., beta: float = ..., max_detections: int | None = ...,
) -> tuple[Tensor, Tensor, Tensor]: ...
@overload
def merge_detections(
    boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike, nms_threshold: float = ..., voting_threshold: float = ...,
    scoring: str = ..., beta: float = ..., max_detections: int | None = ...,
) -> tuple[NDArray, NDArray, NDArray]: ...
def merge_detections(
    boxes: Tensor | ArrayLike,
    scores: Tensor | ArrayLike,
    labels: Tensor | ArrayLike,
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
    voting_threshold: float = DEFAULT_VOTING_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    beta: float = 1.0,
    max_detections: int | None = 100,
) -> tuple[Tensor, Tensor, Tensor] | tuple[NDArray, NDArray, NDArray]:
    """Merge the teacher's detections from all transforms of one image into one set of boxes.

    ``boxes`` (N x 4, xyxy, continuous coordinates), ``scores`` (N) and ``labels`` (N, integer
    class ids) are the union of every transform's detections, already mapped back to the original
    image. For each class separately: NMS at ``nms_threshold`` (``torchvision.ops.batched_nms``:
    a box goes when its IoU with a kept, higher-scoring box is strictly greater, where Detectron
    suppresses at ``>=``), then box voting of the survivors against all of that class's
    detections (``voting_threshold``, ``scoring``, ``beta``, as ``box_voting``), so boxes of
    different classes never merge. Returns ``(boxes, scores, labels)`` of at most
    ``max_detections`` boxes (``None``: no cap), sorted by descending score (ties: class order,
    then NMS order). Unlike Detectron, which keeps every box scoring at least the
    ``max_detections``-th score, the cap is exact.

    Equal scores keep input order, in NMS as in the final sort, on every device (torchvision's
    NMS alone does not promise which of two equal-score boxes survives). Tensors in give tensors
    out, on the boxes' device (``scores`` and ``labels`` must be there too); numpy arrays or lists
    give numpy arrays. Boxes and scores keep their floating dtype (float64 for integer input) and
    labels theirs; computation is in float64.
    """
    check_scoring(scoring, beta)
    check_finite("nms_threshold", nms_threshold)
    check_finite("voting_threshold", voting_threshold)
    if max_detections is not None and max_detections < 0:
        raise ValueError(f"max_detections must be >= 0 or None, got {max_detections}")
    box_in = as_tensor("boxes", boxes)
    merged = _merge(
        box_in, as_tensor("scores", scores, box_in.device), as_tensor("labels", labels, box_in.device),
        nms_threshold, voting_threshold, scoring, beta, max_detections,
    )
    if isinstance(boxes, Tensor):
        return merged
    return merged[0].numpy(), merged[1].numpy(), merged[2].numpy()


def _merge(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    nms_threshold: float,
    voting_threshold: float,
    scoring: str,
    beta: float,
    max_detections: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``merge_detections`` on tensors, on ``boxes``' device (its options already checked)."""
    box_t = as_boxes("boxes", boxes)
    score_t = as_scores("scores", scores, len(box_t), boxes.device)
    label_t = as_labels("labels", labels, len(box_t), boxes.device)
    keep = _per_class_nms(box_t, score_t, label_t, nms_threshold)
    voted_boxes, voted_scores = batched_box_voting(
        box_t[keep], score_t[keep], label_t[keep], box_t, score_t, label_t, voting_threshold, scoring, beta
    )
    order = torch.argsort(voted_scores, descending=True, stable=True)[:max_detections]
    return (
        voted_boxes[order].to(float_dtype(boxes)),
        voted_scores[order].to(float_dtype(scores)),
        label_t[keep][order].to(label_dtype(labels)),
    )


def _per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Indices that ``torchvision.ops.batched_nms`` keeps, grouped by ascending label, each in NMS order.

    NMS only orders boxes by score, so it is given each box's rank in a stable descending sort
    instead: equal scores then keep input order on every device. Labels become dense class
    indices and boxes are shifted to non-negative coordinates, because batched_nms separates
    classes by offsetting each one by ``index * (max coordinate + 1)``, which keeps them apart
    only for coordinates >= 0 (its documented input) and loses precision for large class ids.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    classes = torch.unique(labels, return_inverse=True)[1]
    keep = batched_nms(boxes - boxes.min().clamp(max=0.0), _descending_ranks(scores), classes, iou_threshold)
    return keep[torch.argsort(classes[keep], stable=True)]


def _descending_ranks(scores: Tensor) -> Tensor:
    """Distinct stand-in scores, ``n`` for the highest down to 1, equal scores ranked in input order."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(len(scores), 0, -1, dtype=scores.dtype, device=scores.device)
    return ranks
