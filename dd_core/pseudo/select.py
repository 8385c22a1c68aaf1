"""Selecting predictions (paper, section 4 and 6.1): from ensembled predictions to pseudo-labels.

Per category, a score threshold is chosen so that the pseudo-labeled images hold, on average, as
many instances of that category as the labeled images do; for keypoints, one keypoint-score
threshold so that kept keypoints per instance match the labeled set. What passes becomes a COCO
json that trains like any other; generated annotations are treated as complete, as in the paper.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
from dd_core.data.filtering import TrainingImageFilter
from dd_core.storage.parquet import arrow_array, column_values, list_rows, numpy_view, read_shard, shard_meta


@dataclass
class Predictions:
    """All ensembled predictions of a run, with the images they cover and those rejected."""

    table: pa.Table
    images: list[dict[str, Any]]
    rejected: list[dict[str, Any]] = field(default_factory=list)


PSEUDO_LABEL_MARK = "omnidistill pseudo-labels"
"""The ``info.description`` of every pseudo-label json (:func:`apply_selection`): ``label`` replaces
an existing json only if it bears it (:mod:`dd_core.pseudo.outputs`)."""

# Shards read at once by the selection: on S3 a read mostly waits for its first byte, so one after
# another the waits add up.
SHARD_READERS = 8


def read_predictions(urls: Sequence[str], options: Mapping[str, Any] | None = None) -> Predictions:
    """Read (and schema-check) every shard, :data:`SHARD_READERS` at once; images must not appear
    in two shards."""
    tables, images, rejected, seen = [], [], [], {}
    with ThreadPoolExecutor(SHARD_READERS, thread_name_prefix="omnidistill-select") as pool:
        read = list(pool.map(lambda url: read_shard(url, options), urls))
    for url, table in zip(urls, read):
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
    # Per keypoint category (one threshold each: categories differ in how many keypoints they show).
    keypoint_thresholds: dict[int, float] = field(default_factory=dict)
    target_keypoints_per_instance: dict[int, float] = field(default_factory=dict)
    kept_keypoints_per_instance: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: ({str(c): v for c, v in val.items()} if isinstance(val, dict) else val)
                for k, val in self.__dict__.items()}


def _annotation(ann_id: int, image_id: int, category_id: int, bbox: list[float], area: float, score: float,
                keypoints: np.ndarray | None, visible: np.ndarray | None) -> dict[str, Any]:
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": area,
           "iscrowd": 0, "score": score}
    if keypoints is not None:
        xyv = np.zeros((len(visible), 3))
        xyv[visible, :2] = keypoints.reshape(-1, 2)[visible]
        xyv[visible, 2] = 2  # kept keypoints are labeled and visible; dropped ones unlabeled (v=0)
        ann["keypoints"] = [round(float(v), 2) for v in xyv.ravel()]
        ann["num_keypoints"] = int(visible.sum())
    return ann


def _coco_boxes(table: pa.Table, idx: np.ndarray) -> tuple[list[list[float]], list[float]]:
    """COCO ``bbox`` (x, y, width, height) and ``area`` of rows ``idx``, from their xyxy ``box``:
    only those rows leave Arrow, and the arithmetic is in float64, as Python's on each float."""
    kept = table.column("box").take(arrow_array(idx, pa.int64())).combine_chunks()
    xyxy = numpy_view(kept.flatten()).reshape(len(idx), 4).astype(np.float64)
    x1, y1, x2, y2 = xyxy.T
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite box gives nan, as Python's arithmetic does
        width, height = x2 - x1, y2 - y1
        area = width * height
    return np.stack([x1, y1, width, height], axis=1).tolist(), area.tolist()


def _columns(predictions: Predictions) -> tuple[np.ndarray, np.ndarray]:
    t = predictions.table
    if t is None or not t.num_rows:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return column_values(t, "score"), column_values(t, "category_id")


def _kept(scores: np.ndarray, cats: np.ndarray, thresholds: Mapping[int, float]) -> np.ndarray:
    keep = np.zeros(len(scores), bool)
    for cat, thr in thresholds.items():
        keep |= (cats == cat) & (scores >= thr)
    return np.flatnonzero(keep)


def _keypoint_columns(predictions: Predictions, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    take = arrow_array(idx, pa.int64())
    return (list_rows(predictions.table.column("keypoints").take(take)),
            list_rows(predictions.table.column("keypoint_scores").take(take)))


def _selection(predictions: Predictions, thresholds: dict[int, float], targets: dict[int, float]) -> Selection:
    scores, cats = _columns(predictions)
    idx = _kept(scores, cats, thresholds)
    return Selection(thresholds, targets, {c: int((cats[idx] == c).sum()) for c in thresholds},
                     {c: int((cats == c).sum()) for c in thresholds}, len(predictions.images))


def _keypoint_categories(categories: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(c["id"]) for c in categories if c.get("keypoints")]


def _keep_keypoints(selection: Selection, predictions: Predictions, category: int, threshold: float | None,
                    target: float | None) -> None:
    """Fill in ``category``'s keypoint threshold (``None``: calibrated to ``target`` keypoints per instance)."""
    scores, cats = _columns(predictions)
    idx = _kept(scores, cats, {category: selection.thresholds.get(category, np.inf)})
    if not len(idx):
        if threshold is not None:
            selection.keypoint_thresholds[category] = threshold
        return
    _, kp_scores = _keypoint_columns(predictions, idx)
    if threshold is None:
        threshold = keypoint_score_threshold(kp_scores, target)
        selection.target_keypoints_per_instance[category] = target
    selection.keypoint_thresholds[category] = threshold
    selection.kept_keypoints_per_instance[category] = float((kp_scores >= threshold).sum(1).mean())


def calibrate_selection(predictions: Predictions, labeled: Mapping[str, Any], task: str) -> Selection:
    """Thresholds that make pseudo-labels as dense as the labeled set: per category, instances per image
    and keypoints per instance."""
    scores, cats = _columns(predictions)
    targets = labeled_instances_per_image(labeled)
    thresholds = per_category_thresholds(scores, cats, max(len(predictions.images), 1), targets)
    selection = _selection(predictions, thresholds, targets)
    if task == "keypoints":
        for category in _keypoint_categories(labeled["categories"]):
            of_category = [a for a in labeled.get("annotations") or [] if a["category_id"] == category]
            target = labeled_keypoints_per_instance({"annotations": of_category})
            _keep_keypoints(selection, predictions, category, None, target)
    return selection


def fixed_selection(predictions: Predictions, categories: list[dict[str, Any]], task: str, score_threshold: float,
                    keypoint_threshold: float | None) -> Selection:
    """The same score threshold for every category (and one keypoint threshold): no labeled set to match."""
    selection = _selection(predictions, {int(c["id"]): score_threshold for c in categories}, {})
    if task == "keypoints":
        for category in _keypoint_categories(categories):
            _keep_keypoints(selection, predictions, category, keypoint_threshold, None)
    return selection


def apply_selection(predictions: Predictions, categories: list[dict[str, Any]], thresholds: Mapping[int, float],
                    keypoint_thresholds: Mapping[int, float] | None = None) -> dict[str, Any]:
    """The pseudo-label COCO dict: instances above their category's threshold; keypoints above their
    category's ``keypoint_thresholds`` get v=2, the others v=0. Every labeled-by-teacher image is listed."""
    scores, cats = _columns(predictions)
    idx = _kept(scores, cats, thresholds)
    anns = []
    if len(idx):
        t = predictions.table
        kps, vis = None, None
        if keypoint_thresholds:
            kps, kp_scores = _keypoint_columns(predictions, idx)
            per_row = np.array([keypoint_thresholds.get(int(c), np.inf) for c in cats[idx]], dtype=np.float64)
            vis = kp_scores >= per_row[:, None]
        bboxes, areas = _coco_boxes(t, idx)
        image_ids, kept_cats = column_values(t, "image_id")[idx].tolist(), cats[idx].tolist()
        kept_scores = scores[idx].astype(np.float64).tolist()
        anns = [_annotation(n + 1, image_ids[n], kept_cats[n], bboxes[n], areas[n], kept_scores[n],
                            None if kps is None else kps[n], None if vis is None else vis[n])
                for n in range(len(idx))]
    images = [{"id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"]}
              for im in predictions.images]
    return {"info": {"description": PSEUDO_LABEL_MARK}, "images": images, "annotations": anns,
            "categories": list(categories)}


def select_pseudo_labels(predictions: Predictions, labeled: Mapping[str, Any], task: str
                         ) -> tuple[dict[str, Any], Selection]:
    """Calibrate on the labeled set, then select: the pseudo-label COCO dict and the selection report."""
    selection = calibrate_selection(predictions, labeled, task)
    coco = apply_selection(predictions, labeled["categories"], selection.thresholds, selection.keypoint_thresholds)
    return coco, selection


class NoPseudoLabels(ValueError):
    """A selection that leaves a student nothing to learn from: no pseudo-label kept, or no
    pseudo-labeled image that training would use. Trained anyway, the "student" would learn from
    the labeled images alone and be reported as data distillation."""


def check_something_to_learn(coco: Mapping[str, Any], selection: Selection, image_filter: TrainingImageFilter) -> None:
    """Refuse (:class:`NoPseudoLabels`) pseudo-labels of which a student trained with ``image_filter``
    would use no image: none kept at all (a teacher that predicts nothing, e.g. weights a huge
    learning rate blew up), or none on an image the filter keeps (keypoints too few to count)."""
    predicted, kept = sum(selection.predicted_per_category.values()), len(coco["annotations"])
    thresholds = ", ".join(f"{c}: {t:.3g}" for c, t in selection.thresholds.items())
    if not kept:
        teacher = ("the teacher predicted nothing" if not predicted else
                   f"none of the teacher's {predicted:,} predictions passed the thresholds ({thresholds})")
        raise NoPseudoLabels(
            f"pseudo-label selection: 0 pseudo-labels kept on {selection.num_images:,} unlabeled images ({teacher}): "
            f"a student would learn from the labeled images only. Check the teacher: its loss and AP in this run's "
            f"log, teacher.lr, teacher.iterations")
    keypoints = any(c.get("keypoints") for c in coco["categories"])
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    if not any(image_filter.keeps(anns, keypoints) for anns in by_image.values()):
        raise NoPseudoLabels(
            f"pseudo-label selection: {kept:,} pseudo-labels kept on {len(by_image):,} of {selection.num_images:,} "
            f"unlabeled images, but training would leave every one of those images out "
            f"({image_filter.rule(keypoints)}): a student would learn from the labeled images only. Check the "
            f"teacher's training, and the keypoint thresholds {selection.keypoint_thresholds} against "
            f"training_images.min_visible_keypoints ({image_filter.min_visible_keypoints})")

