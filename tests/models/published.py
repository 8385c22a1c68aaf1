"""A torch cache filled as torch.hub fills it, with torchvision's own randomly initialised models
saved under the published file names: torch.hub reads a cached file without downloading (and
without its hash check, which only runs on download). Random weights say nothing about accuracy."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_weight


def _random_batchnorm(model: nn.Module, seed: int) -> None:
    """BatchNorm statistics and affine terms that are not 0 and 1, so frozen BatchNorm is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _detect_plenty(model: nn.Module) -> None:
    """A random detector that finds something everywhere: proposals are the anchors, boxes the
    proposals, and every box scores the first category high (and a little differently) (random box regressors blow boxes up
    to the image's edges, and random class scores fall below the threshold on padded batches)."""
    with torch.no_grad():
        for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        model.roi_heads.box_predictor.cls_score.weight.mul_(1e-3)  # scores that differ, all high
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0


def fill_cache(torch_home: Path, name: str, seed: int = 0, detects: bool = False) -> Path:
    """Save torchvision's randomly initialised model of the weights ``name`` where torch.hub looks
    for it: ``<torch_home>/hub/checkpoints/<published file name>``. Returns that path. ``detects``:
    a detector that finds something in any image (pseudo-labels to select)."""
    weights = get_weight(name)
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)
    if path.exists():
        return path
    builder = next(m for m in torchvision.models.list_models() if torchvision.models.get_model_weights(m) is type(weights))
    kwargs = {"weights": None, "num_classes": len(weights.meta["categories"])}
    if "keypoint_names" in weights.meta:
        kwargs["num_keypoints"] = len(weights.meta["keypoint_names"])
    if builder in torchvision.models.list_models(module=torchvision.models.detection):
        kwargs["weights_backbone"] = None
    torch.manual_seed(seed)
    model = get_model(builder, **kwargs)
    _random_batchnorm(model, seed)
    if detects:
        _detect_plenty(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
