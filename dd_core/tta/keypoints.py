"""Multi-transform inference for keypoints, as the paper does it (section 4, "Ensembling").

The RPN and box head run once, at the model's own test scale; only the keypoint head sees every
transform. All transforms then share one set of RoIs, and a RoI's heatmaps are "with reference to
the local coordinate system of the same RoI" whatever the transform: they can be averaged
directly (a flipped RoI's heatmaps are un-flipped first, left/right channels swapped). The
average is decoded (argmax) into keypoints once.

torchvision never returns heatmaps, so the keypoint head is run by hand on each transform's
features: ``keypoint_roi_pool`` -> ``keypoint_head`` -> ``keypoint_predictor``. Heatmaps are the
predictor's raw logits, averaged as Detectron's keypoint TTA does (``HM_AVG``); the predictor's
final upsampling is linear and mirror-symmetric, so it runs once, on the average
(:func:`predictor_stages`).

Keypoints are decoded in the *base frame* (the image resized to the model's test scale), where
torchvision decodes its own, then rescaled to the original image: a single identity transform
then gives exactly ``model(images)``'s keypoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints

from dd_core.tta.boxes import check_inference_ready, detect_in_frame
from dd_core.tta.precision import FLOAT32, LayerSettings
from dd_core.tta.transforms import (
    ScaleBatch,
    Size,
    TestTransform,
    base_scale,
    base_transform,
    boxes_to_frame,
    frame_size,
    hflip_heatmaps,
    image_size,
    resize_boxes,
    resize_keypoints,
    scale_batches,
)


def check_flip_indices(flip_indices: Sequence[int]) -> None:
    """A left/right map must be a permutation that is its own inverse (left<->right, nose fixed)."""
    k = len(flip_indices)
    if sorted(flip_indices) != list(range(k)) or any(flip_indices[flip_indices[i]] != i for i in range(k)):
        raise ValueError(f"flip_indices must be a self-inverse permutation of 0..{k - 1}, got {list(flip_indices)}")


def _head_logits(model: nn.Module, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[Size],
                 predictor: Callable[[Tensor], Tensor], layers: LayerSettings = FLOAT32) -> Tensor:
    """The keypoint head's logits of the RoIs ``boxes``: pooling in float32, the head as ``layers``
    says, float32 logits either way (they are averaged and decoded in float32)."""
    heads = model.roi_heads
    pooled = heads.keypoint_roi_pool(features, boxes, image_sizes)
    return layers.run(lambda x: predictor(heads.keypoint_head(x)), pooled, device=pooled.device)


def upsample_heatmaps(logits: Tensor, factor: int) -> Tensor:
    """torchvision's ``KeypointRCNNPredictor`` upsampling: bilinear, ``factor`` times, corners unaligned.

    Linear, and mirror-symmetric at an integer factor: it commutes with a mean over transforms and
    with :func:`hflip_heatmaps`.
    """
    return F.interpolate(logits, scale_factor=float(factor), mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)


def predictor_stages(predictor: nn.Module) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``predictor`` as (the part each transform runs, the part run once on the average).

    torchvision's predictor is a transposed convolution then :func:`upsample_heatmaps`; averaging
    before the upsampling gives the same mean (up to rounding) from a quarter of the pixels, and
    upsamples one set of maps instead of one per transform. Any other predictor runs whole on
    every transform.
    """
    if type(predictor) is KeypointRCNNPredictor:  # a subclass may predict otherwise
        return predictor.kps_score_lowres, lambda x: upsample_heatmaps(x, predictor.up_scale)
    return predictor, lambda x: x


def average_keypoint_logits(
    model: nn.Module, images: Sequence[Tensor], base_boxes: list[Tensor], base_frames: list[Size],
    transforms: Sequence[TestTransform], flip_indices: Sequence[int], batches: Iterable[ScaleBatch] | None = None,
    layers: LayerSettings = FLOAT32,
) -> Tensor:
    """Mean over ``transforms`` of the heatmap logits of fixed RoIs, in the RoIs' own coordinates.

    ``base_boxes[i]`` are image ``i``'s RoIs in its base frame (of size ``base_frames[i]``); each
    transform sees them mapped into its own frame. Rows follow ``torch.cat(base_boxes)``. The
    running sum holds one scale's features at a time. ``batches`` are the backbone's
    :func:`scale_batches` of ``images`` under ``transforms`` when the caller already started them.
    ``layers`` may run the backbone and head in bfloat16; the logits are summed in float32.
    """
    num_rois = sum(len(b) for b in base_boxes)
    per_transform, shared = predictor_stages(model.roi_heads.keypoint_predictor)
    total: Tensor | None = None
    for batch in batches if batches is not None else scale_batches(model, images, transforms, layers):
        frame_boxes = [boxes_to_frame(base_boxes[i], t, base_frames[i], frame) for t, i, frame in batch.entries()]
        logits = _head_logits(model, batch.features, frame_boxes, batch.images.image_sizes, per_transform, layers)
        for transform, chunk in zip(batch.transforms, logits.split(num_rois)):
            chunk = hflip_heatmaps(chunk, flip_indices) if transform.hflip else chunk
            total = chunk if total is None else total + chunk
    assert total is not None  # at least one transform (checked by the callers)
    return shared(total / len(transforms))


def decode_keypoints(
    logits: Tensor, base_boxes: list[Tensor], base_frames: list[Size], sizes: list[Size]
) -> list[dict[str, Tensor]]:
    """Argmax keypoints ``(R, K, 3)`` and their logit scores ``(R, K)`` per image, in original coordinates.

    Decoded in the base frame, then rescaled, exactly as torchvision's ``roi_heads`` + ``postprocess``.
    """
    out = []
    for maps, boxes, frame, size in zip(logits.split([len(b) for b in base_boxes]), base_boxes, base_frames, sizes):
        keypoints, scores = heatmaps_to_keypoints(maps, boxes)
        out.append({"keypoints": resize_keypoints(keypoints, frame, size), "keypoints_scores": scores})
    return out


def _keypoints_on_base_boxes(
    model: nn.Module, images: Sequence[Tensor], base_boxes: list[Tensor], base_frames: list[Size],
    transforms: Sequence[TestTransform], flip_indices: Sequence[int], batches: Iterable[ScaleBatch] | None = None,
    layers: LayerSettings = FLOAT32,
) -> list[dict[str, Tensor]]:
    """Ensembled keypoints for RoIs given in the base frame; no RoIs at all skips every head call."""
    check_inference_ready(model, transforms)
    check_flip_indices(flip_indices)
    sizes = [image_size(image) for image in images]
    if sum(len(b) for b in base_boxes) == 0:
        k = len(flip_indices)
        return [{"keypoints": torch.zeros((0, k, 3)), "keypoints_scores": torch.zeros((0, k))} for _ in images]
    logits = average_keypoint_logits(model, images, base_boxes, base_frames, transforms, flip_indices, batches,
                                     layers)
    if logits.shape[1] != len(flip_indices):
        raise ValueError(f"flip_indices has {len(flip_indices)} entries but the model predicts {logits.shape[1]} keypoints")
    return decode_keypoints(logits, base_boxes, base_frames, sizes)


def base_detections(model: nn.Module, images: Sequence[Tensor],
                    layers: LayerSettings = FLOAT32) -> tuple[list[dict[str, Tensor]], list[Size]]:
    """The model's detections at its test scale, in the base frame, and each image's base frame size.

    Its features are dropped on return: the keypoint passes compute their own, one scale at a time.
    """
    base = next(scale_batches(model, images, [base_transform(model)], layers))
    detections = detect_in_frame(model, base.images, base.features, layers)
    return detections, [tuple(s) for s in base.images.image_sizes]


@torch.inference_mode()
def multi_transform_keypoints_on_boxes(
    model: nn.Module, images: list[Tensor], boxes: list[Tensor],
    transforms: Sequence[TestTransform], flip_indices: Sequence[int], layers: LayerSettings = FLOAT32,
) -> list[dict[str, Tensor]]:
    """Ensembled ``keypoints`` and ``keypoints_scores`` of the RoIs ``boxes[i]`` (original coordinates).

    The keypoint half of :func:`multi_transform_keypoints`, for boxes from elsewhere (another
    detector, ground truth, or a test that needs exactly mirrored boxes).
    """
    sizes = [image_size(image) for image in images]
    frames = [frame_size(model, base_scale(model), size) for size in sizes]
    base_boxes = [resize_boxes(b, size, frame) for b, size, frame in zip(boxes, sizes, frames)]
    return _keypoints_on_base_boxes(model, images, base_boxes, frames, transforms, flip_indices, layers=layers)


@torch.inference_mode()
def multi_transform_keypoints(
    model: nn.Module, images: list[Tensor], transforms: Sequence[TestTransform], flip_indices: Sequence[int],
    layers: LayerSettings = FLOAT32,
) -> list[dict[str, Tensor | int]]:
    """A Keypoint R-CNN's predictions with the keypoint head ensembled over ``transforms``.

    Boxes come from one pass at the model's test scale (the paper's simplification, which keeps
    the RoIs identical across transforms). Returns per image what ``model(images)`` returns
    (``boxes, labels, scores, keypoints, keypoints_scores``, original coordinates) plus
    ``num_transforms``. ``flip_indices`` swaps left/right keypoints, e.g.
    ``dd_core.data.keypoints.COCO_PERSON_FLIP_INDICES``. ``layers`` may run the model's layers in
    bfloat16 (:mod:`dd_core.tta.precision`); heatmaps are averaged and decoded in float32 either way.
    """
    check_inference_ready(model, transforms)
    base = base_transform(model)
    # The base scale's backbone pass first: when the identity transform is in the set, its
    # features also give the boxes, and the backbone never runs twice on the same input.
    transforms = sorted(transforms, key=lambda t: t.scale != base.scale)
    batches = scale_batches(model, images, transforms, layers)
    first = next(batches)
    if base in first.transforms:
        base_images, base_features = first.part(base)
        detections = detect_in_frame(model, base_images, base_features, layers)
        frames = [tuple(s) for s in base_images.image_sizes]
    else:
        detections, frames = base_detections(model, images, layers)
    base_boxes = [d["boxes"] for d in detections]
    keypoints = _keypoints_on_base_boxes(model, images, base_boxes, frames, transforms, flip_indices,
                                         itertools.chain([first], batches), layers)
    sizes = [image_size(image) for image in images]
    return [
        {**det, "boxes": resize_boxes(det["boxes"], frame, size), **kp, "num_transforms": len(transforms)}
        for det, kp, frame, size in zip(detections, keypoints, frames, sizes)
    ]
