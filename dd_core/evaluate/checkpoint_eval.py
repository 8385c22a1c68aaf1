"""Evaluate a saved teacher or student on a labeled set, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from dd_core.data.coco import CocoData
from dd_core.data.dataset import CocoDataset
from dd_core.data.transforms import Compose, to_float
from dd_core.evaluate.coco_eval import coco_evaluate
from dd_core.evaluate.predict import predict
from dd_core.models.data_fit import check_data_fits_model
from dd_core.train.checkpoint import checkpoint_keypoint_names, load_checkpoint, model_from_checkpoint
from dd_core.tta.predict import PredictFn, multi_transform_predict_fn
from dd_core.tta.settings import MultiTransformSettings


def evaluate_model(model: torch.nn.Module, task: str, data: CocoData, cat_to_label: Mapping[int, int], *,
                   predict_fn: PredictFn | None = None, options: Mapping[str, Any] | None = None,
                   device: str = "cpu", batch_size: int = 8, progress: bool = True, desc: str = "evaluate",
                   sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) of ``model`` on ``data`` (keypoints: scored with OKS ``sigmas``)."""
    # Whole, whatever their size (README): no pixel limit, no reduced decode.
    dataset = CocoDataset(data, Compose([to_float]), options, cat_to_label, max_pixels=None)
    results = predict(model, dataset, batch_size=batch_size, predict_fn=predict_fn, device=device,
                      progress=progress, desc=desc)
    # A set with some of the model's categories (README allows it) is scored on those alone, as COCO's
    # evaluation scores only the ground truth's categories (each on its own: dropping the others changes
    # no score); their predictions would otherwise be refused as results of unknown categories.
    scored = {int(c["id"]) for c in data.categories}
    results = [r for r in results if r["category_id"] in scored]
    return coco_evaluate(data.to_dict(), results, "keypoints" if task == "keypoints" else "bbox", sigmas=sigmas)


def evaluate_checkpoint(checkpoint: str, data: CocoData, tta: MultiTransformSettings | None = None, *,
                        options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                        progress: bool = True) -> dict[str, float]:
    """Load ``checkpoint`` (safely) and evaluate it on ``data``; with ``tta``, under multi-transform inference.

    A ``data`` set the model does not fit (another task, unknown categories, other names or keypoints)
    is refused before the model is built.
    """
    state = load_checkpoint(checkpoint, options)
    task = state["spec"]["task"]
    check_data_fits_model(data, state["categories"], task, f"the checkpoint {checkpoint}")
    model = model_from_checkpoint(state)
    cat_to_label = {int(k): int(v) for k, v in state["cat_to_label"].items()}
    predict_fn = None
    if tta is not None:
        predict_fn = multi_transform_predict_fn(tta.fitted(task), checkpoint_keypoint_names(state),
                                                state["spec"].get("flip_pairs"))
    return evaluate_model(model, task, data, cat_to_label, predict_fn=predict_fn, options=options, device=device,
                          batch_size=batch_size, progress=progress, desc="evaluate+tta" if tta else "evaluate",
                          sigmas=state["spec"].get("oks_sigmas"))  # the keypoint set's, as trained
