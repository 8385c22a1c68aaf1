"""Multi-transform inference for boxes (the paper's Faster R-CNN teacher, section 6.1).

"We simply take the union set of the boxes predicted under different transformations, and
combine them using bounding box voting." Each transform runs the whole detector (RPN and box
head) on its own frame and keeps its *raw* detections: every class score above the model's score
threshold (0.05), before NMS and before the per-image cap (:func:`raw_detections_in_frame`). The
boxes are mapped back to the original image and their union is merged once, as Detectron's
``im_detect_bbox_aug`` does: per-class NMS, then box voting of each kept box by every raw box of
every transform (:func:`dd_core.ensemble.merge.merge_detections`). Merging detections that each
transform had already suppressed would leave a kept box at most one voter per transform.

The steps, as in detectron2's TTA: augment (:func:`~dd_core.tta.transforms.scale_batches`),
run (:func:`raw_detections_in_frame`), invert (:func:`~dd_core.tta.transforms.boxes_from_frame`),
merge (:func:`merge_boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from dd_core.ensemble.merge import merge_detections
from dd_core.tta.precision import FLOAT32, LayerSettings
from dd_core.tta.settings import DEFAULT_NMS_THRESHOLD, DEFAULT_SCORING, DEFAULT_VOTING_THRESHOLD
from dd_core.tta.transforms import TestTransform, boxes_from_frame, image_size, scale_batches

Detections = dict[str, Tensor]


def check_inference_ready(model: nn.Module, transforms: Sequence[TestTransform]) -> None:
    """Refuse a model in training mode (its RPN wants targets, its BatchNorms would update)."""
    if model.training:
        raise ValueError("multi-transform inference needs the model in eval mode: call model.eval() first")
    if not transforms:
        raise ValueError("multi-transform inference needs at least one transform")


def proposals_in_frame(model: nn.Module, images: ImageList, features: dict[str, Tensor],
                       layers: LayerSettings = FLOAT32) -> list[Tensor]:
    """The RPN's proposals (eval mode): ``model.rpn`` itself in float32; otherwise its head as
    ``layers`` says and everything after it (anchors, decoding, NMS) in float32.

    torchvision's box coder decodes in the dtype of the deltas, anchors included: bfloat16 deltas
    would round anchor coordinates to 8 px at 1,200 px. The steps are ``RegionProposalNetwork.forward``'s.
    """
    if layers.precision == "float32":
        return model.rpn(images, features)[0]
    return rpn_proposals(model, images, features, layers)


def rpn_proposals(model: nn.Module, images: ImageList, features: dict[str, Tensor], layers: LayerSettings) -> list[Tensor]:
    """``model.rpn``'s eval-mode steps with the head run as ``layers`` says and float32 from its outputs on."""
    rpn, levels = model.rpn, list(features.values())
    objectness, deltas = layers.run(rpn.head, levels, device=images.tensors.device)
    anchors = rpn.anchor_generator(images, levels)
    per_level = [o[0].numel() for o in objectness]  # anchors per level and image
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)[0]


def _box_head(model: nn.Module, images: ImageList, features: dict[str, Tensor], proposals: list[Tensor],
              layers: LayerSettings) -> tuple[Tensor, Tensor]:
    """``(class_logits, box_regression)`` of the proposals: RoI pooling in float32, the head as ``layers`` says."""
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, proposals, images.image_sizes)
    return layers.run(lambda x: heads.box_predictor(heads.box_head(x)), pooled, device=pooled.device)


def detect_in_frame(model: nn.Module, images: ImageList, features: dict[str, Tensor],
                    layers: LayerSettings = FLOAT32) -> list[Detections]:
    """RPN + box head on already computed features: ``boxes, labels, scores`` in the frame.

    The box half of ``model.roi_heads`` only, so a Keypoint R-CNN does not also run its keypoint
    head here; results are exactly those of ``model.roi_heads`` before ``postprocess``.
    """
    proposals = proposals_in_frame(model, images, features, layers)
    heads = model.roi_heads
    class_logits, box_regression = _box_head(model, images, features, proposals, layers)
    boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals, images.image_sizes)
    return [{"boxes": b, "labels": lab, "scores": s} for b, lab, s in zip(boxes, labels, scores)]


def raw_detections_in_frame(model: nn.Module, images: ImageList, features: dict[str, Tensor],
                            layers: LayerSettings = FLOAT32) -> list[Detections]:
    """RPN + box head on computed features: every detection before NMS, in the frame.

    What ``RoIHeads.postprocess_detections`` computes before its NMS and cap: class-specific
    boxes decoded from each proposal, clipped to the image, for every class whose score is above
    ``roi_heads.score_thresh``, boxes under 0.01 px dropped.
    """
    proposals = proposals_in_frame(model, images, features, layers)
    heads = model.roi_heads
    class_logits, box_regression = _box_head(model, images, features, proposals, layers)
    boxes = heads.box_coder.decode(box_regression, proposals).split([len(p) for p in proposals])
    scores = F.softmax(class_logits, -1).split([len(p) for p in proposals])
    out = []
    for image_boxes, image_scores, size in zip(boxes, scores, images.image_sizes):
        image_boxes = box_ops.clip_boxes_to_image(image_boxes, size)[:, 1:].reshape(-1, 4)  # class 0: background
        labels = torch.arange(1, image_scores.shape[-1], device=image_scores.device).expand(len(image_scores), -1)
        image_scores, labels = image_scores[:, 1:].reshape(-1), labels.reshape(-1)
        keep = torch.where(image_scores > heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(image_boxes[keep], min_size=1e-2)]
        out.append({"boxes": image_boxes[keep], "labels": labels[keep], "scores": image_scores[keep]})
    return out


def merge_boxes(parts: Sequence[Detections], **merge_options: object) -> Detections:
    """Union of one image's detections over transforms, merged by ``merge_detections``.

    The merge runs on the tensors where the model left them (its device and dtypes), so
    nothing makes a round trip through the host.
    """
    boxes, scores, labels = merge_detections(
        torch.cat([p["boxes"] for p in parts]), torch.cat([p["scores"] for p in parts]),
        torch.cat([p["labels"] for p in parts]), **merge_options,
    )
    return {"boxes": boxes, "labels": labels, "scores": scores}


@torch.inference_mode()
def multi_transform_boxes(
    model: nn.Module,
    images: list[Tensor],
    transforms: Sequence[TestTransform],
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
    voting_threshold: float = DEFAULT_VOTING_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    max_detections: int = 100,
    layers: LayerSettings = FLOAT32,
) -> list[dict[str, Tensor | int]]:
    """Detections of ``model`` on each image, ensembled over ``transforms`` (union of the raw
    detections, then NMS and box voting once).

    ``images`` are CHW float tensors in [0, 1], as for ``model(images)``. Returns per image
    ``boxes`` (xyxy, original image coordinates), ``labels``, ``scores`` and ``num_transforms``.
    With the single identity transform, the model's own NMS threshold and cap, and a voting
    threshold of 1 (each box votes for itself alone), this returns the model's own detections.
    ``layers`` may run the model's layers in bfloat16; the union, NMS and voting stay float32.
    """
    check_inference_ready(model, transforms)
    sizes = [image_size(image) for image in images]
    parts: list[list[Detections]] = [[] for _ in images]
    for batch in scale_batches(model, images, transforms, layers):
        detections = raw_detections_in_frame(model, batch.images, batch.features, layers)
        for (transform, i, frame), det in zip(batch.entries(), detections):
            parts[i].append({**det, "boxes": boxes_from_frame(det["boxes"], transform, frame, sizes[i])})
    options = dict(nms_threshold=nms_threshold, voting_threshold=voting_threshold,
                   scoring=scoring, max_detections=max_detections)
    return [{**merge_boxes(p, **options), "num_transforms": len(transforms)} for p in parts]
