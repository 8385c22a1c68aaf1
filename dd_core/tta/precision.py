"""How the teacher's layers run during multi-transform inference: float32 (the default) or bfloat16.

The fast path runs the *layers* (backbone and FPN, RPN head, box head, keypoint head) under
``torch.autocast`` to bfloat16 and keeps the *geometry* in float32: every output of a layer is cast
back to float32 before anything decodes or merges it, so anchors, box decoding, NMS, RoI pooling,
the heatmap average and its argmax (``heatmaps_to_keypoints``) and box voting all see float32.

Features are float32 between the stages for a reason besides precision: torchvision's anchor
generator takes the features' dtype and *stores* its cell anchors in it (``set_cell_anchors``), so
bfloat16 features would round the model's anchors for every later call, float32 ones included.

float32 calls the layers directly: no autocast context is entered and nothing is cast, so the
default path is the code as it was. On the CPU, autocast to bfloat16 needs AVX-512 BF16 or AMX to
be fast; on CUDA, an Ampere or later GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from dd_core.tta.settings import PRECISIONS, Precision

T = TypeVar("T")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")


def as_float32(value: T) -> T:
    """``value`` with every floating-point tensor in it (lists, tuples, dicts) cast to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value  # type: ignore[return-value]
    if isinstance(value, dict):
        return OrderedDict((k, as_float32(v)) for k, v in value.items())  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)  # type: ignore[return-value]
    return value


@dataclass(frozen=True)
class LayerSettings:
    """The float type of the model's layers and, on CUDA only, the backbone input's memory format.

    ``channels_last`` is ignored on the CPU: there it makes the threaded labeler disagree with the
    others and return no boxes, for a reason not understood.
    """

    precision: Precision = "float32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_precision(self.precision)

    def run(self, layers: Callable[..., T], *args: Any, device: torch.device) -> T:
        """``layers(*args)``, in bfloat16 under autocast on ``device`` with float32 outputs, or as is."""
        if self.precision == "float32":
            return layers(*args)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = layers(*args)
        return as_float32(out)

    def backbone_input(self, tensors: Tensor) -> Tensor:
        """The batched images as the backbone should read them (channels-last on CUDA when asked)."""
        if self.channels_last and tensors.device.type == "cuda":
            return tensors.contiguous(memory_format=torch.channels_last)
        return tensors


FLOAT32 = LayerSettings()
"""The default: every layer in float32, contiguous inputs."""


def agreement(reference: list[dict[str, Tensor]], other: list[dict[str, Tensor]], min_score: float = 0.5,
              iou: float = 0.9, pixels: float = 1.0) -> dict[str, float]:
    """How far ``other``'s predictions (e.g. bfloat16's) are from ``reference``'s (float32's), per image pair.

    Each reference instance scoring at least ``min_score`` is matched to the ``other`` box of the
    same label with the highest IoU. Returns the instances compared, the share matched at ``iou``,
    and for keypoint predictions the share whose keypoints all lie within ``pixels`` of the
    reference's (unmatched instances count as disagreeing), the share of the matched instances'
    single keypoints within ``pixels``, and the largest such distance (px).
    """
    from torchvision.ops import box_iou

    compared = matched = agreed = 0
    near, counted, worst = 0, 0, 0.0
    for ref, oth in zip(reference, other):
        keep = ref["scores"] >= min_score
        n = int(keep.sum())
        if n == 0:
            continue
        compared += n
        if len(oth["boxes"]) == 0:  # the other side found nothing: no instance matched
            continue
        overlap = box_iou(ref["boxes"][keep], oth["boxes"])
        overlap = overlap * (ref["labels"][keep][:, None] == oth["labels"][None, :])
        best, j = overlap.max(1)
        hit = best >= iou
        matched += int(hit.sum())
        if "keypoints" not in ref:
            continue
        dist = (ref["keypoints"][keep][hit][..., :2] - oth["keypoints"][j[hit]][..., :2]).norm(dim=-1)
        agreed += int((dist <= pixels).all(1).sum())
        near, counted = near + int((dist <= pixels).sum()), counted + dist.numel()
        worst = max(worst, float(dist.max())) if dist.numel() else worst
    out = {"instances": compared, "boxes_matched": matched / compared if compared else 1.0}
    if reference and "keypoints" in reference[0]:
        out.update(instances_agree=agreed / compared if compared else 1.0,
                   keypoints_within=near / counted if counted else 1.0, max_keypoint_distance=worst)
    return out
