"""Model builders: one :class:`~dd_core.models.spec.ModelSpec` (primitives only, stored in every checkpoint) -> a model.

The paper's teacher and student are Mask R-CNN's keypoint variant (and Faster R-CNN for boxes)
with ResNet-50/101 and ResNeXt-101 FPN backbones. ``slim`` is a CPU preset: ResNet-18-FPN with 64
channels, a 4x64 keypoint head, a small box head and anchors for 128-px images.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN, KeypointRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_ops
from torchvision.ops.poolers import initLevelMapper

from dd_core.models.presets import PRESETS, Preset
from dd_core.models.spec import ModelSpec
from dd_core.models.weights import fetch_state_dict, load_detector_weights


def _norm_layer(kind: str, eps: float) -> Callable[[int], nn.Module]:
    return functools.partial(misc_ops.FrozenBatchNorm2d, eps=eps) if kind == "frozen" else nn.BatchNorm2d


def load_backbone_weights(body: nn.Module, source: str, options: Mapping[str, Any] | None = None) -> None:
    """Load ImageNet classification weights (a torchvision ResNet state dict, its ``fc`` left out):
    a torchvision weights name (``ResNet50_Weights.IMAGENET1K_V1``), a URL or a path (``options``:
    fsspec's, for an ``s3://`` URL)."""
    state = fetch_state_dict(source, "model.backbone_weights", options)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{source}: backbone weights do not match the architecture ({exc})") from None
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{source}: backbone weights do not match the architecture "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def freeze_backbone_layers(body: nn.Module, trainable: int) -> None:
    """Train only the last ``trainable`` of ResNet's five stages (conv1, layer1..4), as torchvision's
    ``trainable_backbone_layers`` does (5 also trains ``bn1``)."""
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers.append("bn1")
    for name, param in body.named_parameters():
        if not name.startswith(tuple(layers)):
            param.requires_grad_(False)


def _backbone(spec: ModelSpec, preset: Preset, options: Mapping[str, Any] | None) -> BackboneWithFPN:
    norm = spec.resolved_norm
    block = resnet.BasicBlock if preset.block == "basic" else resnet.Bottleneck
    body = resnet.ResNet(block, list(preset.depth), groups=preset.groups,
                         width_per_group=preset.width_per_group, norm_layer=_norm_layer(norm, spec.resolved_norm_eps))
    if spec.backbone_weights:
        load_backbone_weights(body, spec.backbone_weights, options)
    freeze_backbone_layers(body, spec.resolved_trainable_layers)
    c = 64 * block.expansion
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[c, c * 2, c * 4, c * 8],
        out_channels=preset.fpn_channels,
    )


FEATURE_STRIDES = (4, 8, 16, 32)
"""The strides of the FPN levels ``"0"``..``"3"`` the RoI poolers read (ResNet's layer1..layer4)."""


def roi_pool(output_size: int, sampling_ratio: int) -> MultiScaleRoIAlign:
    """A RoI pooler over the FPN levels, its scales set from :data:`FEATURE_STRIDES`.

    Left unset, torchvision's pooler infers them on its first call, from the first batch alone:
    feature map height over the largest unpadded image height, rounded to a power of two. Padding to
    a multiple of 32 px skews that (a 66-px high image padded to 96 px gives scales twice too large),
    and the scales stay for the model's life: a teacher whose first image was such predicts garbage,
    and processes that start at different images disagree.
    """
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, sampling_ratio)
    pool.scales = [1.0 / stride for stride in FEATURE_STRIDES]
    levels = [stride.bit_length() - 1 for stride in FEATURE_STRIDES]  # log2 of each stride
    pool.map_levels = initLevelMapper(levels[0], levels[-1], pool.canonical_scale, pool.canonical_level)
    return pool


def build_model(spec: ModelSpec, options: Mapping[str, Any] | None = None) -> nn.Module:
    """A torchvision Keypoint R-CNN or Faster R-CNN as described by ``spec``, started from its
    ``backbone_weights`` or ``weights`` (:mod:`dd_core.models.weights`) if it names any (read with
    ``options``, fsspec's storage options, where they are an ``s3://`` URL)."""
    preset = PRESETS[spec.preset]
    backbone = _backbone(spec, preset, options)
    ch = preset.fpn_channels
    anchors = AnchorGenerator(tuple((s,) for s in preset.anchor_sizes), ((0.5, 1.0, 2.0),) * len(preset.anchor_sizes))
    test_size = spec.test_size or preset.test_size
    train_sizes = spec.min_size or preset.min_size
    common = dict(
        # GeneralizedRCNNTransform picks a random min_size while training and min_size[-1] in
        # eval mode: putting the test scale last makes eval use it without touching the transform.
        min_size=tuple(s for s in train_sizes if s != test_size) + (test_size,),
        max_size=spec.max_size or preset.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(ch, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=preset.rpn_top_n_train[0],
        rpn_post_nms_top_n_train=preset.rpn_top_n_train[1],
        rpn_pre_nms_top_n_test=preset.rpn_top_n_test[0],
        rpn_post_nms_top_n_test=preset.rpn_top_n_test[1],
        box_roi_pool=roi_pool(7, preset.roi_sampling_ratio),
        box_head=TwoMLPHead(ch * 7 * 7, preset.box_head_dim),
        box_predictor=FastRCNNPredictor(preset.box_head_dim, spec.num_classes),
        box_batch_size_per_image=preset.box_batch_size_per_image,
        box_detections_per_img=spec.box_detections_per_img,
    )
    if spec.task == "keypoints":
        model: nn.Module = KeypointRCNN(
            backbone,
            keypoint_roi_pool=roi_pool(14, preset.roi_sampling_ratio),
            keypoint_head=KeypointRCNNHeads(ch, list(preset.keypoint_head)),
            keypoint_predictor=KeypointRCNNPredictor(preset.keypoint_head[-1], spec.num_keypoints),
            **common,
        )
    else:
        model = FasterRCNN(backbone, **common)
    if spec.weights:  # as torchvision: the frozen stages and norm are set above, then every weight loaded
        load_detector_weights(model, fetch_state_dict(spec.weights, "model.weights", options), spec.weights)
    return model
