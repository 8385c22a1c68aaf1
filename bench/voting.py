"""Box voting over the union of transforms, Detectron's way against the way before it (issue #17).

    python bench/voting.py --checkpoint CKPT --data DIR [--scales 64 80 ...] [--images N] [--out FILE.jsonl]

Runs a detection teacher under multi-transform inference on a labeled set twice:

* ``raw union`` (what :func:`dd_core.tta.boxes.multi_transform_boxes` does): every transform's raw
  detections (all above the model's score threshold, before NMS and the per-image cap) are pooled,
  then NMS and box voting run once over the union, as Detectron's ``im_detect_bbox_aug``;
* ``post-NMS union`` (the code before): each transform's detections after its own NMS and cap
  are pooled and merged, so a kept box has at most one voter per transform.

and prints, for each, the voters per kept box (boxes of the union of its class with IoU >= the
voting threshold, itself included: the boxes box voting averages), overall and for kept boxes
scoring >= 0.5 (those a pseudo-label is likely made of), and COCO box AP on the set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dd_core.data.coco import load_coco, resolve_dataset  # noqa: E402
from dd_core.data.dataset import CocoDataset  # noqa: E402
from dd_core.data.transforms import Compose, to_float  # noqa: E402
from dd_core.evaluate.coco_eval import coco_evaluate  # noqa: E402
from dd_core.evaluate.predict import predict  # noqa: E402
from dd_core.models.loading import load_detector  # noqa: E402
from dd_core.tta.boxes import detect_in_frame, merge_boxes, raw_detections_in_frame  # noqa: E402
from dd_core.tta.settings import DEFAULT_SCALES, MultiTransformSettings  # noqa: E402
from dd_core.tta.transforms import boxes_from_frame, image_size, scale_batches, transform_set  # noqa: E402

Detector = Callable[..., list[dict[str, torch.Tensor]]]
WAYS: dict[str, Detector] = {"raw union": raw_detections_in_frame, "post-NMS union": detect_in_frame}


def voters(union: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], threshold: float) -> list[int]:
    """For each kept box: the boxes of the union of its class with IoU >= ``threshold`` (itself included)."""
    if not len(kept["boxes"]):
        return []
    same = kept["labels"][:, None] == union["labels"][None, :]
    close = box_iou(kept["boxes"].double(), union["boxes"].double()) >= threshold
    return (same & close).sum(1).tolist()


class CountingModel(torch.nn.Module):
    """``model`` merging one way's union per image; remembers the voters and scores of every kept box."""

    def __init__(self, model: torch.nn.Module, detector: Detector, scales: Sequence[int],
                 merge: MultiTransformSettings) -> None:
        super().__init__()
        self.model, self.detector, self.transforms, self.merge = model, detector, transform_set(scales, True), merge
        self.voters: list[int] = []
        self.scores: list[float] = []

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        model = self.model
        sizes = [image_size(image) for image in images]
        parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
        for batch in scale_batches(model, images, self.transforms):
            for (transform, i, frame), det in zip(batch.entries(), self.detector(model, batch.images, batch.features)):
                parts[i].append({**det, "boxes": boxes_from_frame(det["boxes"], transform, frame, sizes[i])})
        out = []
        for p in parts:
            kept = merge_boxes(p, nms_threshold=self.merge.nms_threshold, voting_threshold=self.merge.voting_threshold,
                               scoring=self.merge.scoring, max_detections=100)
            union = {k: torch.cat([d[k] for d in p]) for k in ("boxes", "labels")}
            self.voters += voters(union, kept, self.merge.voting_threshold)
            self.scores += kept["scores"].tolist()
            out.append(kept)
        return out


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"boxes": 0}
    return {"boxes": len(values), "mean": round(statistics.mean(values), 2), "median": statistics.median(values),
            "max": max(values)}


def measure(checkpoint: str, data_dir: str, scales: Sequence[int], images: int | None) -> list[dict[str, Any]]:
    loaded = load_detector(checkpoint)
    if loaded.task != "detection":
        raise SystemExit(f"{checkpoint}: a {loaded.task} model; box voting is measured on a detection teacher")
    data = load_coco(*resolve_dataset(data_dir, None))
    if images:
        keep = {im["id"] for im in data.images[:images]}
        data = dataclasses.replace(data, images=data.images[:images],
                                   annotations=[a for a in data.annotations if a["image_id"] in keep])
    dataset = CocoDataset(data, Compose([to_float]), None, loaded.cat_to_label)
    rows = []
    for way, detector in WAYS.items():
        fn = CountingModel(loaded.model, detector, scales, MultiTransformSettings())
        t0 = time.perf_counter()
        results = predict(fn, dataset, desc=way)
        seconds = time.perf_counter() - t0
        stats = coco_evaluate(data.to_dict(), results, "bbox")
        confident = [v for v, s in zip(fn.voters, fn.scores) if s >= 0.5]
        rows.append({"way": way, "images": len(dataset), "transforms": 2 * len(scales),
                     "voters_per_kept_box": _summary(fn.voters), "voters_per_kept_box_score_0.5": _summary(confident),
                     "box_AP": round(100 * stats["AP"], 2), "box_AP50": round(100 * stats["AP50"], 2),
                     "seconds": round(seconds, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a detection teacher checkpoint")
    p.add_argument("--data", required=True, help="labeled set: folder with annotations.json + images/, or a json")
    p.add_argument("--scales", type=int, nargs="+", default=list(DEFAULT_SCALES))
    p.add_argument("--images", type=int, help="only the first N images of the set")
    p.add_argument("--out", type=Path, help="append the rows (JSON lines) to this file")
    args = p.parse_args(argv)
    rows = measure(args.checkpoint, args.data, args.scales, args.images)
    stamp = {"checkpoint": args.checkpoint, "data": args.data, "date": time.strftime("%Y-%m-%d"),
             "torch": torch.__version__, "threads": torch.get_num_threads()}
    for row in rows:
        print(json.dumps(row))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({**row, **stamp}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
