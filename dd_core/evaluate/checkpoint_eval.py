"""Evaluate a saved teacher or student on a labeled set, with or without multi-transform inference."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dd_core.data.coco import CocoData
from dd_core.data.dataset import CocoDataset
from dd_core.data.transforms import Compose, to_float
from dd_core.evaluate.coco_eval import coco_evaluate
from dd_core.evaluate.predict import predict
from dd_core.models.data_fit import check_data_fits_model
from dd_core.models.loading import LoadedDetector, load_detector
from dd_core.ops.stop import NEVER, StopToken
from dd_core.tta.model import MultiTransformModel
from dd_core.tta.settings import MultiTransformSettings


def evaluate_model(model: torch.nn.Module, detector: LoadedDetector, data: CocoData, *,
                   options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                   progress: bool = True, stop: StopToken = NEVER) -> dict[str, float]:
    """COCO stats (AP, AP50, ...) on ``data`` of ``model``: ``detector.model``, or it under
    multi-transform inference. Its labels, task and OKS sigmas (keypoints) are ``detector``'s."""
    # Whole, whatever their size (README): no pixel limit, no reduced decode.
    dataset = CocoDataset(data, Compose([to_float]), options, detector.cat_to_label, max_pixels=None)
    desc = "evaluate" if model is detector.model else "evaluate+tta"
    results = predict(model, dataset, batch_size=batch_size, device=device, progress=progress, desc=desc, stop=stop)
    # A set with some of the model's categories (README allows it) is scored on those alone, as COCO's
    # evaluation scores only the ground truth's categories (each on its own: dropping the others changes
    # no score); their predictions would otherwise be refused as results of unknown categories.
    scored = {int(c["id"]) for c in data.categories}
    results = [r for r in results if r["category_id"] in scored]
    iou_type = "keypoints" if detector.task == "keypoints" else "bbox"
    # Keypoints are scored with the keypoint set's OKS sigmas, as trained.
    return coco_evaluate(data.to_dict(), results, iou_type, sigmas=detector.oks_sigmas)


def evaluate_detector(detector: LoadedDetector, data: CocoData, tta: MultiTransformSettings | None = None, *,
                      options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                      progress: bool = True, stop: StopToken = NEVER) -> dict[str, float]:
    """COCO stats of ``detector`` on ``data``; with ``tta``, under multi-transform inference.

    A ``data`` set the model does not fit (another task, unknown categories, other names or keypoints)
    is refused before any inference.
    """
    check_data_fits_model(data, detector.categories, detector.task, f"the checkpoint {detector.url}")
    model = detector.model
    if tta is not None:
        model = MultiTransformModel.from_settings(model, tta.for_task(detector.task), detector.keypoint_names,
                                                  detector.flip_pairs)
    return evaluate_model(model, detector, data, options=options, device=device, batch_size=batch_size,
                          progress=progress, stop=stop)


def evaluate_checkpoint(checkpoint: str, data: CocoData, tta: MultiTransformSettings | None = None, *,
                        options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                        progress: bool = True, stop: StopToken = NEVER) -> dict[str, float]:
    """Load ``checkpoint`` (safely) and evaluate it on ``data`` (:func:`evaluate_detector`)."""
    return evaluate_detector(load_detector(checkpoint, options), data, tta, options=options, device=device,
                             batch_size=batch_size, progress=progress, stop=stop)
