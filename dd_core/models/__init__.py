"""Teacher and student models: torchvision Keypoint R-CNN / Faster R-CNN with FPN backbones.

The names below are imported on first use (PEP 562): :mod:`dd_core.models.spec`, whose
:class:`ModelConfig` the run config's schema validates, loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dd_core.models.builders": ["build_model", "load_backbone_weights"],
    "dd_core.models.presets": ["PRESETS"],
    "dd_core.models.spec": ["KeypointSetConfig", "ModelConfig", "ModelSpec"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'dd_core.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
