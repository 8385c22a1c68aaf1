"""Teacher and student models: torchvision Keypoint R-CNN / Faster R-CNN with FPN backbones."""

from dd_core.models.builders import build_model, load_backbone_weights
from dd_core.models.presets import PRESETS
from dd_core.models.spec import ModelOverrides, ModelSpec

__all__ = ["PRESETS", "ModelOverrides", "ModelSpec", "build_model", "load_backbone_weights"]
