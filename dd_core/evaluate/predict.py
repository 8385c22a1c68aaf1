"""Run a model over a data set and turn its outputs into COCO results."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dd_core.data.dataset import CocoDataset, collate
from dd_core.ops.stop import NEVER, StopToken


def outputs_to_results(output: Mapping[str, torch.Tensor], image_id: int,
                       label_to_category: Mapping[int, int]) -> list[dict[str, Any]]:
    """One image's torchvision output -> COCO result records (xywh boxes, category ids)."""
    boxes = output["boxes"].tolist()
    scores = output["scores"].tolist()
    labels = output["labels"].tolist()
    kps = output["keypoints"].tolist() if "keypoints" in output else None
    out = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        x1, y1, x2, y2 = box
        r: dict[str, Any] = {"image_id": int(image_id), "category_id": int(label_to_category[int(label)]),
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
        if kps is not None:
            r["keypoints"] = [v for x, y, _ in kps[i] for v in (x, y, 1.0)]
        out.append(r)
    return out


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: CocoDataset, batch_size: int = 8,
            device: str | torch.device = "cpu", num_workers: int = 0, progress: bool = True,
            desc: str = "predict", stop: StopToken = NEVER) -> list[dict[str, Any]]:
    """COCO results of ``model`` on every image of ``dataset`` (a
    :class:`~dd_core.tta.model.MultiTransformModel` adds multi-transform inference); ``stop`` is
    checked before each batch."""
    device = torch.device(device)
    model.to(device).eval()
    label_to_category = {v: k for k, v in dataset.cat_to_label.items()}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    results: list[dict[str, Any]] = []
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for images, targets in loader:
            stop.check()
            outputs = model([im.to(device) for im in images])
            for output, target in zip(outputs, targets):
                output = {k: v.cpu() for k, v in output.items() if isinstance(v, torch.Tensor)}
                results.extend(outputs_to_results(output, int(target["image_id"]), label_to_category))
            bar.update(len(images))
    return results
