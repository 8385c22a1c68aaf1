"""Teacher and student models: torchvision Keypoint R-CNN / Faster R-CNN with FPN backbones.

The names below are imported on first use (PEP 562): :mod:`dd_core.models.spec`, whose
:class:`ModelConfig` the run config's schema validates, loads without torch.
"""

from __future__ import annotations

from dd_core.lazy import lazy_exports

_EXPORTS = {
    "dd_core.models.builders": ["build_model", "load_backbone_weights"],
    "dd_core.models.presets": ["PRESETS"],
    "dd_core.models.spec": ["KeypointSetConfig", "ModelConfig", "ModelSpec"],
}
__getattr__, __all__ = lazy_exports("dd_core.models", _EXPORTS)
