"""A trained detector read back from its checkpoint, once, with what its users need to know of it.

The teacher of the labeling stage, ``omnidistill label`` (which also checks a labeled set against
the model) and the evaluation all start from the same checkpoint: :func:`load_detector` reads it
once and returns the model in eval mode beside its task, categories and keypoint set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dd_core.models.checkpoint import (
    checkpoint_keypoint_names,
    checkpoint_label_to_category,
    load_checkpoint,
    model_from_checkpoint,
)


@dataclass(frozen=True)
class LoadedDetector:
    """A detector rebuilt from the checkpoint at ``url``, in eval mode.

    ``task`` is ``keypoints`` or ``detection`` (``spec.task``); ``categories`` the COCO categories it
    was trained on; ``label_to_category`` maps its contiguous labels to their ids; ``keypoint_names``
    is empty for a box-only model; ``flip_pairs`` and ``oks_sigmas`` are the keypoint set's, as
    trained (``None``: the names' ``left_*``/``right_*`` pairs, COCO's sigmas).
    """

    url: str
    model: torch.nn.Module
    task: str
    categories: tuple[Mapping[str, Any], ...]
    label_to_category: Mapping[int, int]
    keypoint_names: tuple[str, ...]
    flip_pairs: Sequence[Sequence[str]] | None
    oks_sigmas: Sequence[float] | None

    @property
    def cat_to_label(self) -> dict[int, int]:
        """COCO category id -> the model's contiguous label (the inverse of ``label_to_category``)."""
        return {cat: label for label, cat in self.label_to_category.items()}


def load_detector(url: str, options: Mapping[str, Any] | None = None) -> LoadedDetector:
    """The detector in the checkpoint at ``url`` (read safely: no code runs), in eval mode."""
    state = load_checkpoint(url, options)
    model = model_from_checkpoint(state)
    spec = state["spec"]
    return LoadedDetector(url, model.eval(), spec["task"], tuple(state["categories"]),
                          checkpoint_label_to_category(state), tuple(checkpoint_keypoint_names(state)),
                          spec.get("flip_pairs"), spec.get("oks_sigmas"))
