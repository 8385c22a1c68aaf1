"""Training transforms: ``(image, target) -> (image, target)``, each geometric one with its inverse.

Targets are torchvision detection targets: ``boxes`` (N, 4) xyxy float in continuous pixel
coordinates, ``labels`` (N,), and for people ``keypoints`` (N, K, 3) with (x, y, visibility).
Scale jitter during training is done by the model's own ``GeneralizedRCNNTransform`` (it picks a
random ``min_size`` per image), so the dataset only needs flips; :func:`resized_size` is that
resize's arithmetic.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

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
