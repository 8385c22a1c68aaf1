"""Multi-transform keypoint inference against its lower bound and against the naive approach.

Three ways to get ensembled keypoints for a batch of images under ``T`` transforms:

* lower bound: the backbone alone, once per transform (no RPN, no heads, no merging): whatever
  multi-transform inference does, it must at least run the backbone on every transformed image;
* ours (:class:`dd_core.tta.model.MultiTransformModel`): one detection pass at the test scale, then
  per scale one backbone call for the image and its mirror and the keypoint head on fixed RoIs;
* naive: the full model once per transform (its own RPN, boxes and keypoints), predictions mapped
  back and merged afterwards (union + per-class NMS).

Used by ``bench/speed.py tta``; every time is the median of ``repeats`` runs after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES
from dd_core.tta import transform_set
from dd_core.tta.model import MultiTransformModel
from dd_core.tta.transforms import (
    TestTransform,
    apply_to_image,
    hflip_boxes,
    hflip_keypoints,
    image_size,
    resize_transform,
)


def sync(device: torch.device) -> None:
    """Wait for the GPU, so wall-clock timers measure its work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one untimed warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def backbone_only(model: nn.Module, images: Sequence[Tensor], transforms: Sequence[TestTransform],
                  device: torch.device) -> float:
    """Seconds spent in ``model.backbone`` alone, one call per transform (resizing not counted)."""
    total = 0.0
    for t in transforms:
        image_list, _ = resize_transform(model, t.scale)([apply_to_image(t, im) for im in images])
        sync(device)
        t0 = time.perf_counter()
        model.backbone(image_list.tensors)
        sync(device)
        total += time.perf_counter() - t0
    return total


@torch.inference_mode()
def naive_keypoints(model: nn.Module, images: list[Tensor], transforms: Sequence[TestTransform],
                    flip_indices: Sequence[int], nms_threshold: float = 0.5) -> list[dict[str, Tensor]]:
    """The full model once per transform; predictions mapped back, then union + per-class NMS."""
    own = model.transform
    parts: list[list[dict[str, Tensor]]] = []
    try:
        for t in transforms:
            model.transform = resize_transform(model, t.scale)
            outputs = model([apply_to_image(t, im) for im in images])
            if t.hflip:
                outputs = [{**o, "boxes": hflip_boxes(o["boxes"], image_size(im)[1]),
                            "keypoints": hflip_keypoints(o["keypoints"], image_size(im)[1], flip_indices),
                            "keypoints_scores": o["keypoints_scores"][:, list(flip_indices)]}
                           for o, im in zip(outputs, images)]
            parts.append(outputs)
    finally:
        model.transform = own
    merged = []
    for per_image in zip(*parts):
        cat = {k: torch.cat([p[k] for p in per_image]) for k in ("boxes", "scores", "labels", "keypoints",
                                                              "keypoints_scores")}
        keep = batched_nms(cat["boxes"], cat["scores"], cat["labels"], nms_threshold)
        merged.append({k: v[keep] for k, v in cat.items()})
    return merged


def compare(model: nn.Module, images: list[Tensor], scales: Sequence[int], repeats: int,
            device: torch.device) -> dict[str, float]:
    """Seconds per batch of the three approaches at ``scales`` x flip, and their ratios."""
    transforms = transform_set(scales, flip=True)
    flips = list(COCO_PERSON_FLIP_INDICES)
    teacher = MultiTransformModel(model, transforms, flip_indices=flips)
    lower = median_seconds(lambda: backbone_only(model, images, transforms, device), repeats, device)
    ours = median_seconds(lambda: teacher(images), repeats, device)
    naive = median_seconds(lambda: naive_keypoints(model, images, transforms, flips), repeats, device)
    boxes = sum(len(out["boxes"]) for out in teacher(images))
    return {"transforms": len(transforms), "boxes": boxes, "backbone_only_s": round(lower, 4), "ours_s": round(ours, 4),
            "naive_s": round(naive, 4), "ours_over_backbone_only": round(ours / lower, 3),
            "naive_over_ours": round(naive / ours, 3)}
