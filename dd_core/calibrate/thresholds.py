"""Score thresholds that turn the teacher's ensembled predictions into pseudo-labels.

The teacher's predictions on unlabeled images contain false positives; the paper keeps only those
above a score threshold, chosen so that the pseudo-labels look like the labeled data in number:

- instances (section 6.1, per category for detection): "We choose a threshold for each category
  such that its average number of annotated instances per image in the unlabeled dataset matches
  the average number of instances [per image] in the labeled dataset";
- keypoints (section 4): "we choose a threshold such that the average numbers of keypoints are
  approximately equal in the supervised and generated sets".

Every threshold here is used as ``keep = score >= threshold``. The selection rule is shared: keep
the count of predictions closest to the wanted count, where wanted is ``round(target * units)``
rounded half up. Ties in the scores can make the exact count impossible; then the rule compares
the two candidates around the wanted count — keep every prediction tied at the wanted-th highest
score, or drop them all — and takes the one whose kept count is nearer (on a draw, the one keeping
more). Thresholds are always one of the scores, ``0.0`` (or the lowest score if that is below 0)
to keep everything, or the float just above the highest score (``np.nextafter``, in the scores'
own dtype, still finite so it survives JSON) to keep nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

_LUT_MAX_RANGE = 1 << 22
"""Category ids spanning at most this range are mapped through a lookup table (fast path)."""


def per_category_thresholds(
    scores: np.ndarray, category_ids: np.ndarray, num_images: int, target_per_image: Mapping[int, float]
) -> dict[int, float]:
    """Per-category score thresholds so that pseudo-labels per image match the labeled set.

    ``scores`` and ``category_ids`` hold every prediction of the teacher on the ``num_images``
    unlabeled images; ``target_per_image[c]`` is the labeled set's average number of instances
    of category ``c`` per image (see ``labeled_instances_per_image``). For each target category
    the threshold keeps as close to ``round(target * num_images)`` predictions as the scores allow
    (rules in the module docstring). A category with no predictions, or fewer than wanted, gets
    ``0.0`` (keep all); a wanted count of 0 gets a threshold above its highest score (keep none).
    Categories that have predictions but no target are left out of the result: with no labeled
    statistic there is nothing to match, and the caller decides (typically: no pseudo-labels).

    Cost: one radix sort of small category codes plus one partition per category, linear in the
    number of predictions.
    """
    score_arr = _as_finite_1d("scores", scores)
    ids = _as_int_1d("category_ids", category_ids, len(score_arr))
    _check_positive_int("num_images", num_images)
    targets = _checked_targets(target_per_image)
    result: dict[int, float] = {}
    for category, segment in _segments_by_category(score_arr, ids, list(targets)):
        result[category] = _threshold_for_count(segment, _round_half_up(targets[category] * num_images))
    return result


def keypoint_score_threshold(keypoint_scores: np.ndarray, target_per_instance: float) -> float:
    """One keypoint score threshold so pseudo-labeled instances carry as many keypoints as labeled ones.

    ``keypoint_scores`` is ``(num_instances, K)``: the per-keypoint scores of the instances already
    selected as pseudo-labels. The threshold keeps as close to ``round(target_per_instance *
    num_instances)`` keypoints in total as the scores allow, i.e. the average number of kept
    keypoints per instance matches ``target_per_instance`` (see ``labeled_keypoints_per_instance``).
    Keypoint scores may be heatmap logits (torchvision's are) and so negative: "keep all" is then
    the lowest score rather than ``0.0``. No instances: ``0.0``.
    """
    arr = np.asarray(keypoint_scores)
    if arr.ndim != 2:
        raise ValueError(f"keypoint_scores must have shape (num_instances, K), got {arr.shape}")
    _check_non_negative("target_per_instance", target_per_instance)
    values = _as_finite_1d("keypoint_scores", arr.reshape(-1))
    if values.size == 0:
        return 0.0
    return _threshold_for_count(values, _round_half_up(target_per_instance * arr.shape[0]))


def labeled_instances_per_image(coco: Mapping[str, Any]) -> dict[int, float]:
    """Average number of labeled instances per image, per category: the targets of calibration.

    Counts non-crowd annotations (``iscrowd`` missing means 0: crowd regions are never
    pseudo-labeled, so they must not inflate the target) and divides by the number of images,
    including images without annotations (unlabeled images can be empty too). Every category in
    ``coco["categories"]`` is present, with 0.0 when it has no annotations (its pseudo-labels are
    then dropped), as is any category id that appears only in annotations.
    """
    images = coco.get("images") or []
    if not images:
        raise ValueError("the labeled COCO dict has no images; cannot compute instances per image")
    counts = {int(cat["id"]): 0 for cat in coco.get("categories") or []}
    for ann in coco.get("annotations") or []:
        if not ann.get("iscrowd", 0):
            category = int(ann["category_id"])
            counts[category] = counts.get(category, 0) + 1
    return {category: count / len(images) for category, count in counts.items()}


def labeled_keypoints_per_instance(coco: Mapping[str, Any], include_empty: bool = True) -> float:
    """Average number of labeled keypoints (visibility ``v > 0``) per labeled instance.

    The population is the non-crowd annotations that carry keypoints (a ``keypoints`` list or a
    ``num_keypoints`` field). By default it includes instances with zero labeled keypoints (small or
    occluded people in COCO): the instance threshold matches *all* non-crowd instances per image,
    so the pseudo-labeled instances that ``keypoint_score_threshold`` averages over stand for that
    same population, empty ones included. ``include_empty=False`` averages over instances with at
    least one labeled keypoint instead. The count is recomputed from ``keypoints`` when present
    (``num_keypoints`` is only a cache). 0.0 when there are no such instances.
    """
    counts = [
        n
        for ann in coco.get("annotations") or []
        if not ann.get("iscrowd", 0) and (n := _labeled_keypoint_count(ann)) is not None
    ]
    if not include_empty:
        counts = [n for n in counts if n > 0]
    return float(np.mean(counts)) if counts else 0.0


def _labeled_keypoint_count(ann: Mapping[str, Any]) -> int | None:
    """Keypoints with ``v > 0`` in one annotation; ``None`` if it has no keypoint fields."""
    keypoints = ann.get("keypoints")
    if keypoints:
        return int(np.count_nonzero(np.asarray(keypoints, dtype=np.float64)[2::3] > 0))
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return None


def _threshold_for_count(values: np.ndarray, wanted: int) -> float:
    """The threshold whose kept count (``values >= t``) is closest to ``wanted`` (module docstring)."""
    n = values.size
    if n == 0:
        return 0.0
    if wanted >= n:
        return min(0.0, float(values.min()))
    if wanted <= 0:
        return _just_above(values.max())
    cut = values.dtype.type(np.partition(values, n - wanted)[n - wanted])  # the wanted-th highest
    kept_at_cut = int(np.count_nonzero(values >= cut))
    if kept_at_cut == wanted:
        return float(cut)
    higher = values[values > cut]
    kept_above = higher.size
    if kept_at_cut - wanted <= wanted - kept_above:
        return float(cut)
    return float(higher.min()) if kept_above else _just_above(cut)


def _just_above(value: np.floating) -> float:
    """The next representable value above ``value`` in its own dtype (so a float32 cast keeps it above)."""
    return float(np.nextafter(value, value.dtype.type(np.inf)))


def _segments_by_category(
    scores: np.ndarray, ids: np.ndarray, categories: list[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(category, its scores)`` for each wanted category, grouping with one radix sort.

    Category ids are mapped to small codes (0..T-1 for the wanted categories, T for the rest) so
    that numpy's stable argsort uses radix sort on 8- or 16-bit keys, several times faster than
    sorting int64 ids or a lexsort on (category, score).
    """
    codes = _category_codes(ids, categories)
    num = len(categories)
    order = np.argsort(codes, kind="stable")
    sorted_scores = scores[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=num + 1))])
    for code, category in enumerate(categories):
        yield category, sorted_scores[bounds[code] : bounds[code + 1]]


def _category_codes(ids: np.ndarray, categories: list[int]) -> np.ndarray:
    """Code of each id: its index in ``categories``, or ``len(categories)`` for any other id."""
    num = len(categories)
    code_dtype = np.uint8 if num < 255 else np.uint16 if num < 65535 else np.int64
    if ids.size == 0 or num == 0:
        return np.full(ids.size, num, dtype=code_dtype)
    wanted = np.asarray(categories, dtype=np.int64)
    low = min(int(ids.min()), int(wanted.min()))
    high = max(int(ids.max()), int(wanted.max()))
    if high - low <= _LUT_MAX_RANGE:
        table = np.full(high - low + 1, num, dtype=code_dtype)
        table[wanted - low] = np.arange(num, dtype=code_dtype)
        return table[ids - low]
    order = np.argsort(wanted)
    pos = np.clip(np.searchsorted(wanted, ids, sorter=order), 0, num - 1)
    found = wanted[order[pos]] == ids
    return np.where(found, order[pos], num).astype(code_dtype)


def _checked_targets(target_per_image: Mapping[int, float]) -> dict[int, float]:
    targets: dict[int, float] = {}
    for category, target in target_per_image.items():
        if not isinstance(category, numbers.Integral):
            raise ValueError(f"target_per_image keys must be integer category ids, got {category!r}")
        _check_non_negative(f"target_per_image[{category}]", target)
        targets[int(category)] = float(target)
    return targets


def _as_finite_1d(name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_int_1d(name: str, values: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match scores, got {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))
