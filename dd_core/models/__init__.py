"""Teacher and student models: torchvision Keypoint R-CNN / Faster R-CNN with FPN backbones."""

from dd_core.models.builders import PRESETS, ModelSpec, build_model, load_backbone_weights

__all__ = ["PRESETS", "ModelSpec", "build_model", "load_backbone_weights"]
