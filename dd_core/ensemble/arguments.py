"""Argument checks shared by box voting and merging: inputs become float64 tensors or fail by name.

Both ``box_voting`` (numpy, the public contract) and ``merge_detections`` (tensors or numpy) take
boxes, scores and labels from callers; they check them here so that an error names the argument
that is wrong and what was expected, before any arithmetic runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

Device = torch.device | str | None


def as_tensor(name: str, value: ArrayLike | Tensor, device: Device = None) -> Tensor:
    """``value`` as a tensor on ``device`` (``None``: where it is, the CPU for non-tensors).

    A tensor must already be on ``device``: copying it between devices silently would hide a
    caller's mix-up. Anything else goes through a copy by ``numpy.array``, so read-only or
    negatively strided arrays work and the caller's array is never shared.
    """
    if isinstance(value, Tensor):
        if device is not None and value.device != torch.device(device):
            raise ValueError(f"{name} must be on {torch.device(device)} like the boxes, got {value.device}")
        return value
    return torch.from_numpy(np.array(value)).to(device)


def as_boxes(name: str, value: ArrayLike | Tensor, device: Device = None) -> Tensor:
    """``value`` as a finite float64 ``(N, 4)`` tensor (an empty list is ``(0, 4)``)."""
    boxes = as_tensor(name, value, device)
    if boxes.ndim == 1 and boxes.numel() == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (xyxy boxes), got {tuple(boxes.shape)}")
    boxes = boxes.to(torch.float64)
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name} contains non-finite coordinates")
    return boxes


def as_scores(name: str, value: ArrayLike | Tensor, n: int, device: Device = None) -> Tensor:
    """``value`` as a finite float64 ``(n,)`` tensor, one score per box."""
    scores = as_tensor(name, value, device)
    if tuple(scores.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its boxes, got {tuple(scores.shape)}")
    scores = scores.to(torch.float64)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} contains non-finite scores")
    return scores


def as_labels(name: str, value: ArrayLike | Tensor, n: int, device: Device = None) -> Tensor:
    """``value`` as an int64 ``(n,)`` tensor of class ids (an empty list is accepted whatever its dtype)."""
    labels = as_tensor(name, value, device)
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its boxes, got {tuple(labels.shape)}")
    if n and not is_integer(labels.dtype):
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    return labels.to(torch.int64)


def check_finite(name: str, value: float) -> None:
    """Refuse a NaN or infinite threshold (every comparison with NaN is false: nothing would happen)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def is_integer(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` holds integer class ids (``bool`` does not)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def float_dtype(value: Tensor) -> torch.dtype:
    """The input's floating dtype, so float32 teacher outputs stay float32; float64 otherwise."""
    return value.dtype if value.dtype.is_floating_point else torch.float64


def label_dtype(value: Tensor) -> torch.dtype:
    """The input's integer dtype, so labels come back as they went in; int64 for an empty non-integer list."""
    return value.dtype if is_integer(value.dtype) else torch.int64
