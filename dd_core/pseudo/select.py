"""Selecting predictions (paper, section 4 and 6.1): from ensembled predictions to pseudo-labels.

Per category, a score threshold is chosen so that the pseudo-labeled images hold, on average, as
many instances of that category as the labeled images do; for keypoints, one keypoint-score
threshold so that kept keypoints per instance match the labeled set. What passes becomes a COCO
json that trains like any other; generated annotations are treated as complete, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from dd_core.calibrate import (
    keypoint_score_threshold,
    labeled_instances_per_image,
    labeled_keypoints_per_instance,
    per_category_thresholds,
)
from dd_core.storage.parquet import read_shard, shard_meta


@dataclass
class Predictions:
    """All ensembled predictions of a run, with the images they cover and those rejected."""

    table: pa.Table
    images: list[dict[str, Any]]
    rejected: list[dict[str, Any]] = field(default_factory=list)


def read_predictions(urls: Sequence[str], options: Mapping[str, Any] | None = None) -> Predictions:
    """Read (and schema-check) every shard; images must not appear in two shards."""
    tables, images, rejected, seen = [], [], [], {}
    for url in urls:
        table = read_shard(url, options)
        meta = shard_meta(table)
        for image in meta["images"]:
            if image["id"] in seen:
                raise ValueError(f"{url}: image {image['id']} is also in {seen[image['id']]}")
            seen[image["id"]] = url
        tables.append(table.replace_schema_metadata(None))
        images.extend(meta["images"])
        rejected.extend(meta["rejected"])
    table = pa.concat_tables(tables) if tables else None
    return Predictions(table, sorted(images, key=lambda im: im["id"]), rejected)


@dataclass
class Selection:
    """The chosen thresholds and what they kept: for the report and the Prefect UI."""

    thresholds: dict[int, float]
    target_per_image: dict[int, float]
    kept_per_category: dict[int, int]
    predicted_per_category: dict[int, int]
    num_images: int
    keypoint_threshold: float | None = None
    target_keypoints_per_instance: float | None = None
    kept_keypoints_per_instance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: ({str(c): v for c, v in val.items()} if isinstance(val, dict) else val)
                for k, val in self.__dict__.items()}


def _annotation(ann_id: int, image_id: int, category_id: int, box: Sequence[float], score: float,
                keypoints: np.ndarray | None, visible: np.ndarray | None) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
           "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "score": score}
    if keypoints is not None:
        xyv = np.zeros((len(visible), 3))
        xyv[visible, :2] = keypoints.reshape(-1, 2)[visible]
        xyv[visible, 2] = 2  # kept keypoints are labeled and visible; dropped ones unlabeled (v=0)
        ann["keypoints"] = [round(float(v), 2) for v in xyv.ravel()]
        ann["num_keypoints"] = int(visible.sum())
    return ann


def select_pseudo_labels(predictions: Predictions, labeled: Mapping[str, Any], task: str
                         ) -> tuple[dict[str, Any], Selection]:
    """Pseudo-label COCO dict (images = every labeled-by-teacher image) and the selection report."""
    t = predictions.table
    n_images = len(predictions.images)
    scores = t.column("score").to_numpy() if t is not None and t.num_rows else np.zeros(0, np.float32)
    cats = t.column("category_id").to_numpy() if t is not None and t.num_rows else np.zeros(0, np.int32)
    targets = labeled_instances_per_image(labeled)
    thresholds = per_category_thresholds(scores, cats, max(n_images, 1), targets)
    keep = np.zeros(len(scores), bool)
    for cat, thr in thresholds.items():
        keep |= (cats == cat) & (scores >= thr)
    idx = np.flatnonzero(keep)
    selection = Selection(thresholds, targets, {c: int(((cats == c) & keep).sum()) for c in thresholds},
                          {c: int((cats == c).sum()) for c in thresholds}, n_images)
    kps = vis = None
    if task == "keypoints" and len(idx):
        kps = np.asarray(t.column("keypoints").take(pa.array(idx)).to_pylist(), dtype=np.float32)
        kp_scores = np.asarray(t.column("keypoint_scores").take(pa.array(idx)).to_pylist(), dtype=np.float32)
        target_kps = labeled_keypoints_per_instance(labeled)
        selection.keypoint_threshold = keypoint_score_threshold(kp_scores, target_kps)
        selection.target_keypoints_per_instance = target_kps
        vis = kp_scores >= selection.keypoint_threshold
        selection.kept_keypoints_per_instance = float(vis.sum(1).mean())
    image_ids = t.column("image_id").to_numpy() if t is not None and t.num_rows else np.zeros(0, np.int64)
    boxes = t.column("box").to_pylist() if len(idx) else []
    anns = [_annotation(n + 1, int(image_ids[i]), int(cats[i]), boxes[i], float(scores[i]),
                        None if kps is None else kps[n], None if vis is None else vis[n])
            for n, i in enumerate(idx)]
    images = [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
              for im in predictions.images]
    coco = {"info": {"description": "omnidistill pseudo-labels"}, "images": images, "annotations": anns,
            "categories": list(labeled["categories"])}
    return coco, selection
