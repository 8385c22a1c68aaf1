"""Training transforms: ``(image, target) -> (image, target)``, each geometric one with its inverse.

Targets are torchvision detection targets: ``boxes`` (N, 4) xyxy float in continuous pixel
coordinates, ``labels`` (N,), and for people ``keypoints`` (N, K, 3) with (x, y, visibility).
Scale jitter during training is done by the model's own ``GeneralizedRCNNTransform`` (it picks a
random ``min_size`` per image), so the dataset only needs flips and an optional fixed resize.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Target = dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror xyxy boxes in an image ``width`` wide: ``x -> width - x``, x1 and x2 swapped. Its own inverse."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def hflip_keypoints(keypoints: torch.Tensor, width: float, flip_indices: Sequence[int]) -> torch.Tensor:
    """Mirror ``(N, K, 2 or 3)`` keypoints: ``x -> width - x``, left/right channels swapped.

    After a mirror the keypoint at the old left wrist's position is the person's *right* wrist,
    hence the permutation (an involution). Its own inverse.
    """
    out = keypoints[:, list(flip_indices)].clone()
    out[..., 0] = width - out[..., 0]
    return out


def hflip(image: torch.Tensor, target: Target, flip_indices: Sequence[int]) -> tuple[torch.Tensor, Target]:
    """Horizontally flip an image and its target."""
    width = image.shape[-1]
    target = dict(target)
    target["boxes"] = hflip_boxes(target["boxes"], width)
    if "keypoints" in target:
        kps = hflip_keypoints(target["keypoints"], width, flip_indices)
        kps[kps[..., 2] == 0] = 0  # unlabeled keypoints stay all-zero, as COCO writes them
        target["keypoints"] = kps
    return image.flip(-1), target


class RandomHorizontalFlip:
    """Flip with probability ``p``; people's left/right keypoints are swapped as they must be."""

    def __init__(self, flip_indices: Sequence[int] = (), p: float = 0.5):
        self.flip_indices = list(flip_indices)
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        # torch's RNG, not Python's: it is checkpointed with the run, and no library thread
        # (Prefect's clients use `random`) draws from it behind the trainer's back.
        if float(torch.rand(())) < self.p:
            return hflip(image, target, self.flip_indices)
        return image, target


def scale_target(target: Target, sx: float, sy: float) -> Target:
    """Scale boxes, keypoints and area by (sx, sy); ``scale_target(t, 1/sx, 1/sy)`` undoes it."""
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
    if "keypoints" in target:
        kps = target["keypoints"].clone()
        kps[..., 0] *= sx
        kps[..., 1] *= sy
        target["keypoints"] = kps
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    return target


def shorter_side_size(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``size`` and the longer at most ``max_size`` (aspect kept)."""
    scale = min(size / min(height, width), max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


class ResizeShorterSide:
    """Resize so the shorter side is ``size`` (the longer capped at ``max_size``).

    Useful to decode large images into small ones in the data-loader workers. ``inverse`` maps
    a target predicted on the resized image back to the original one.
    """

    def __init__(self, size: int, max_size: int):
        self.size, self.max_size = size, max_size

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        h, w = image.shape[-2:]
        nh, nw = shorter_side_size(h, w, self.size, self.max_size)
        resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if image.dtype == torch.uint8:
            resized = resized.round().clamp(0, 255).to(torch.uint8)
        return resized, scale_target(target, nw / w, nh / h)

    @staticmethod
    def inverse(target: Target, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> Target:
        return scale_target(target, original_hw[1] / resized_hw[1], original_hw[0] / resized_hw[0])


def resized_size(size: tuple[int, int], scale: int, max_size: int) -> tuple[int, int]:
    """The ``(h, w)`` that ``GeneralizedRCNNTransform(min_size=scale, max_size)`` resizes ``size`` to.

    Same arithmetic as torchvision: one factor ``min(scale / short, max_size / long)`` in Python
    floats, and ``interpolate``'s ``floor(side * factor)``. A side of 0 px is an error there
    ("Input and output sizes should be greater than 0"): a very thin image.
    """
    h, w = size
    factor = min(scale / min(h, w), max_size / max(h, w))
    return math.floor(h * factor), math.floor(w * factor)


def vanishing_scale(size: tuple[int, int], scales: Sequence[int], max_size: int) -> int | None:
    """The first of ``scales`` at which an image of ``size`` would resize to a side of 0 px, if any."""
    return next((s for s in scales if min(resized_size(size, s, max_size)) < 1), None)


def to_float(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """uint8 (3, H, W) -> float in [0, 1], as torchvision detection models expect."""
    return image.float().div_(255.0), target
