"""Evaluate a saved teacher or student on a labeled set, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from dd_core.data.coco import CocoData, check_compatible
from dd_core.data.dataset import CocoDataset
from dd_core.data.transforms import Compose, to_float
from dd_core.evaluate.coco_eval import coco_evaluate
from dd_core.evaluate.predict import PredictFn, predict
from dd_core.train.checkpoint import checkpoint_keypoint_names, load_checkpoint, model_from_checkpoint


def tta_predict_fn(task: str, scales: Sequence[int], flip: bool, keypoint_names: Sequence[str],
                   nms_threshold: float = 0.5, voting_threshold: float = 0.8, scoring: str = "ID") -> PredictFn:
    """A ``predict_fn`` running multi-transform inference (the paper's test-time augmentation)."""
    from dd_core.data.keypoints import flip_indices
    from dd_core.tta import multi_transform_boxes, multi_transform_keypoints, transform_set

    transforms = transform_set(scales, flip)
    if task == "keypoints":
        inds = flip_indices(list(keypoint_names))
        return lambda model, images: multi_transform_keypoints(model, images, transforms, inds)
    return lambda model, images: multi_transform_boxes(model, images, transforms, nms_threshold=nms_threshold,
                                                       voting_threshold=voting_threshold, scoring=scoring)


def evaluate_model(model: torch.nn.Module, task: str, data: CocoData, cat_to_label: Mapping[int, int],
                   predict_fn: PredictFn | None = None, options: Mapping[str, Any] | None = None,
                   device: str = "cpu", batch_size: int = 8, progress: bool = True, desc: str = "evaluate"
                   ) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) of ``model`` on ``data``."""
    dataset = CocoDataset(data, Compose([to_float]), options, cat_to_label)
    results = predict(model, dataset, batch_size=batch_size, predict_fn=predict_fn, device=device,
                      progress=progress, desc=desc)
    return coco_evaluate(data.to_dict(), results, "keypoints" if task == "keypoints" else "bbox")


def evaluate_checkpoint(checkpoint: str, data: CocoData, tta: Mapping[str, Any] | None = None,
                        options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                        progress: bool = True) -> dict[str, float]:
    """Load ``checkpoint`` (safely), evaluate it on ``data``; ``tta`` = ``{"scales": [...], "flip": bool}``."""
    state = load_checkpoint(checkpoint, options)
    model = model_from_checkpoint(state)
    task = state["spec"]["task"]
    check_compatible(data, state["categories"], task, f"the model in {checkpoint}")
    cat_to_label = {int(k): int(v) for k, v in state["cat_to_label"].items()}
    predict_fn = tta_predict_fn(task, keypoint_names=checkpoint_keypoint_names(state), **tta) if tta else None
    return evaluate_model(model, task, data, cat_to_label, predict_fn, options, device, batch_size, progress,
                          desc="evaluate+tta" if tta else "evaluate")
