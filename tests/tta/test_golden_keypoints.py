"""Golden file of keypoint multi-transform inference: heatmaps averaged on fixed RoIs -> keypoints.

The model is cut down to the parts this step runs, real torchvision modules with seeded weights:
the keypoint RoI pooler (``MultiScaleRoIAlign``), an identity keypoint head and a
``KeypointRCNNPredictor``; the backbone's features at two scales are seeded tensors handed in as
:class:`ScaleBatch`es, so no backbone runs. ``average_keypoint_logits`` maps the RoIs into each of
four transforms (two scales, each unflipped and mirrored), pools, un-flips the mirrored heatmaps
(left/right swapped), averages the low-resolution logits and upsamples once;
``decode_keypoints`` takes the argmax in the base frame and rescales to the original images.
``tests/expected/keypoints_on_fixed_rois.json`` holds the keypoints, their scores and sums of
the averaged logits; regenerate it on purpose with ``OMNIDISTILL_ACCEPT=1`` (``tests/golden.py``).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES as FLIP
from dd_core.tta.keypoints import average_keypoint_logits, decode_keypoints
from dd_core.tta.transforms import ScaleBatch, TestTransform
from tests import golden

CHANNELS, STRIDE = 8, 4
SIZES = [(96, 128), (80, 112)]  # original images (h, w)
FRAMES = {48: [(48, 64), (40, 56)], 72: [(72, 96), (60, 84)]}  # each image's frame at each scale
BASE_SCALE = 48
BASE_BOXES = [  # RoIs in the base frame: one touching the border, one small, one wide
    torch.tensor([[4.0, 6.0, 30.5, 44.0], [0.0, 20.0, 12.25, 31.5], [25.0, 2.5, 63.0, 22.0]]),
    torch.tensor([[8.5, 3.0, 40.0, 38.0], [30.0, 18.0, 55.75, 40.0]]),
]


def keypoint_parts(g: torch.Generator) -> nn.Module:
    """A module with the ``roi_heads`` attributes ``average_keypoint_logits`` uses, seeded."""
    heads = nn.Module()
    heads.keypoint_roi_pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    heads.keypoint_head = nn.Identity()
    heads.keypoint_predictor = KeypointRCNNPredictor(CHANNELS, len(FLIP))
    with torch.no_grad():
        for p in heads.keypoint_predictor.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model = nn.Module()
    model.roi_heads = heads
    return model.eval()


def scale_batch(scale: int, g: torch.Generator) -> ScaleBatch:
    """Both images under ``scale`` unflipped then mirrored (transform-major), with seeded features."""
    transforms = [TestTransform(scale), TestTransform(scale, hflip=True)]
    sizes = FRAMES[scale] * len(transforms)
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = ImageList(torch.zeros(len(sizes), 3, h, w), sizes)
    features = {"0": torch.randn(len(sizes), CHANNELS, h // STRIDE, w // STRIDE, generator=g)}
    return ScaleBatch(scale, transforms, images, features)


def ensembled_keypoints() -> dict:
    g = torch.Generator().manual_seed(30)
    model = keypoint_parts(g)
    batches = [scale_batch(BASE_SCALE, g), scale_batch(72, g)]
    transforms = [t for b in batches for t in b.transforms]
    images = [torch.zeros(3, *size) for size in SIZES]
    with torch.inference_mode():
        logits = average_keypoint_logits(model, images, BASE_BOXES, FRAMES[BASE_SCALE], transforms, FLIP, batches)
        decoded = decode_keypoints(logits, BASE_BOXES, FRAMES[BASE_SCALE], SIZES)
    as64 = logits.double()
    inputs = [p.tolist() for p in model.parameters()] + [b.features["0"].tolist() for b in batches]
    return {
        "inputs_sha256": hashlib.sha256(json.dumps(inputs).encode()).hexdigest(),
        "logits": {"shape": list(logits.shape), "dtype": str(logits.dtype), "sum": as64.sum().item(),
                   "sum_of_squares": (as64 ** 2).sum().item(),
                   "per_keypoint_max": logits.amax(dim=(0, 2, 3))},
        "images": [{"keypoints": d["keypoints"], "keypoints_scores": d["keypoints_scores"]} for d in decoded],
    }


def test_keypoints_on_fixed_rois_match_golden_file() -> None:
    golden.assert_expected(ensembled_keypoints(), "keypoints_on_fixed_rois")


def test_golden_case_depends_on_the_mirrored_transforms() -> None:
    # Averaging only the unflipped transforms gives other keypoints: the file pins the un-flip too.
    g = torch.Generator().manual_seed(30)
    model = keypoint_parts(g)
    batches = [scale_batch(BASE_SCALE, g), scale_batch(72, g)]
    all_t = [t for b in batches for t in b.transforms]
    images = [torch.zeros(3, *size) for size in SIZES]
    with torch.inference_mode():
        both = average_keypoint_logits(model, images, BASE_BOXES, FRAMES[BASE_SCALE], all_t, FLIP, batches)
        for b in batches:  # the same features with every entry read as unflipped
            b.transforms = [TestTransform(b.scale), TestTransform(b.scale)]
        unflipped = average_keypoint_logits(model, images, BASE_BOXES, FRAMES[BASE_SCALE], all_t, FLIP, batches)
    assert both.shape == (5, len(FLIP), 28, 28)
    assert not torch.allclose(both, unflipped, rtol=1e-3, atol=1e-3)
