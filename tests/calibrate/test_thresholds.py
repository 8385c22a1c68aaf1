"""Threshold calibration: pseudo-labels per image (and keypoints per instance) match the labeled set."""

from __future__ import annotations

import numpy as np
import pytest

from dd_core.calibrate import (
    keypoint_score_threshold,
    labeled_instances_per_image,
    labeled_keypoints_per_instance,
    per_category_thresholds,
)


def _kept(scores: np.ndarray, threshold: float) -> int:
    return int(np.count_nonzero(scores >= threshold))


def test_random_scores_hit_the_target_count_per_category() -> None:
    rng = np.random.default_rng(0)
    ids = rng.choice([1, 3, 90], size=30_000)
    scores = rng.random(30_000)  # continuous float64: no ties
    targets = {1: 2.5, 3: 0.37, 90: 7.0}  # 1000 images: wanted 2500, 370, 7000
    thresholds = per_category_thresholds(scores, ids, 1000, targets)
    assert set(thresholds) == {1, 3, 90}
    for category, wanted in [(1, 2500), (3, 370), (90, 7000)]:
        assert abs(_kept(scores[ids == category], thresholds[category]) - wanted) <= 1
        assert thresholds[category] in scores[ids == category]  # thresholds are real scores


def test_huge_category_ids_give_the_same_thresholds() -> None:
    rng = np.random.default_rng(1)
    small_ids = rng.integers(0, 3, size=5000)
    scores = rng.random(5000).astype(np.float32)
    targets = {0: 1.0, 1: 2.0, 2: 0.5}
    small = per_category_thresholds(scores, small_ids, 1000, targets)
    huge_targets = {c * 10**12 - 7: t for c, t in targets.items()}  # beyond the lookup-table fast path
    huge = per_category_thresholds(scores, small_ids * 10**12 - 7, 1000, huge_targets)
    assert list(huge.values()) == list(small.values())


def test_ties_pick_the_closest_kept_count() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.5])
    ids = np.zeros(5, dtype=int)
    # wanted 2: threshold 0.8 keeps 4 (off by 2), 0.9 keeps 1 (off by 1) -> 0.9
    assert per_category_thresholds(scores, ids, 1, {0: 2.0}) == {0: 0.9}
    # wanted 3: 0.8 keeps 4 (off by 1), 0.9 keeps 1 (off by 2) -> 0.8
    assert per_category_thresholds(scores, ids, 1, {0: 3.0}) == {0: 0.8}
    # a draw keeps more: [0.9, 0.8, 0.8, 0.5], wanted 2: 0.8 keeps 3, 0.9 keeps 1 -> 0.8
    assert per_category_thresholds(scores[1:], ids[1:], 1, {0: 2.0}) == {0: 0.8}


def test_all_tied_may_keep_nothing_when_that_is_closer() -> None:
    scores = np.full(4, 0.5)
    (threshold,) = per_category_thresholds(scores, np.zeros(4, dtype=int), 1, {0: 1.0}).values()
    assert threshold > 0.5 and _kept(scores, threshold) == 0  # 0 is 1 away from wanted, 4 is 3 away
    (threshold,) = per_category_thresholds(scores, np.zeros(4, dtype=int), 1, {0: 3.0}).values()
    assert threshold == 0.5


def test_fewer_predictions_than_wanted_keep_all_and_missing_categories_get_zero() -> None:
    scores = np.array([0.2, 0.4, 0.6])
    ids = np.array([1, 1, 2])
    thresholds = per_category_thresholds(scores, ids, 10, {1: 5.0, 7: 1.0})
    assert thresholds == {1: 0.0, 7: 0.0}  # category 2 has no target: left out


def test_target_zero_keeps_nothing_even_in_float32() -> None:
    scores = np.array([0.25, 0.75, 1.0], dtype=np.float32)
    (threshold,) = per_category_thresholds(scores, np.array([4, 4, 4]), 100, {4: 0.0}).values()
    assert np.isfinite(threshold) and threshold > 1.0
    assert _kept(scores, threshold) == 0 and _kept(scores, np.float32(threshold)) == 0


def test_wanted_count_rounds_half_up() -> None:
    scores = np.array([0.9, 0.7, 0.5, 0.3])
    ids = np.zeros(4, dtype=int)
    assert per_category_thresholds(scores, ids, 2, {0: 0.75}) == {0: 0.7}  # 1.5 -> 2 kept
    assert per_category_thresholds(scores, ids, 2, {0: 0.74}) == {0: 0.9}  # 1.48 -> 1 kept


def test_empty_predictions() -> None:
    assert per_category_thresholds(np.zeros(0), np.zeros(0), 5, {1: 1.0, 2: 0.0}) == {1: 0.0, 2: 0.0}
    assert per_category_thresholds([], [], 5, {}) == {}


@pytest.mark.parametrize(
    ("scores", "ids", "num_images", "targets", "message"),
    [
        ([0.1, 0.2], [1], 1, {1: 1.0}, r"category_ids must have shape \(2,\)"),
        ([0.1, np.nan], [1, 1], 1, {1: 1.0}, "NaN or infinite"),
        ([0.1, np.inf], [1, 1], 1, {1: 1.0}, "NaN or infinite"),
        ([[0.1, 0.2]], [1, 1], 1, {1: 1.0}, "one-dimensional"),
        ([0.1, 0.2], [1.0, 1.0], 1, {1: 1.0}, "category_ids must be integers"),
        ([0.1, 0.2], [1, 1], 0, {1: 1.0}, "num_images must be a positive integer"),
        ([0.1, 0.2], [1, 1], 2.5, {1: 1.0}, "num_images must be a positive integer"),
        ([0.1, 0.2], [1, 1], 1, {1: -1.0}, r"target_per_image\[1\] must be a finite number >= 0"),
        ([0.1, 0.2], [1, 1], 1, {1: float("nan")}, r"target_per_image\[1\]"),
        ([0.1, 0.2], [1, 1], 1, {"person": 1.0}, "keys must be integer category ids"),
    ],
)
def test_validation_errors(scores, ids, num_images, targets, message) -> None:
    with pytest.raises(ValueError, match=message):
        per_category_thresholds(np.asarray(scores), np.asarray(ids), num_images, targets)


KEYPOINT_SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.05],
        [0.7, 0.6, 0.2, 0.3],
        [0.95, 0.4, 0.35, 0.01],
    ]
)


def test_keypoint_threshold_matches_average_per_instance() -> None:
    # target 2 per instance x 3 instances = 6 keypoints: .95 .9 .8 .7 .6 .4 -> threshold 0.4
    assert keypoint_score_threshold(KEYPOINT_SCORES, 2.0) == 0.4
    assert _kept(KEYPOINT_SCORES, 0.4) == 6
    # 1.5 x 3 = 4.5 -> 5 keypoints (half up): threshold 0.6
    assert keypoint_score_threshold(KEYPOINT_SCORES, 1.5) == 0.6


def test_keypoint_threshold_edges() -> None:
    assert keypoint_score_threshold(np.zeros((0, 17)), 8.0) == 0.0
    assert keypoint_score_threshold(KEYPOINT_SCORES, 4.0) == 0.0  # all 12 wanted: keep all
    logits = KEYPOINT_SCORES * 10 - 3  # torchvision keypoint scores are logits, possibly negative
    assert keypoint_score_threshold(logits, 4.0) == logits.min()
    assert _kept(KEYPOINT_SCORES, keypoint_score_threshold(KEYPOINT_SCORES, 0.0)) == 0
    with pytest.raises(ValueError, match="num_instances, K"):
        keypoint_score_threshold(np.zeros(4), 1.0)
    with pytest.raises(ValueError, match="target_per_instance"):
        keypoint_score_threshold(KEYPOINT_SCORES, -1.0)


def _kps(visibilities: list[int]) -> list[float]:
    return [coord for i, v in enumerate(visibilities) for coord in (10.0 * i, 5.0, v)]


COCO = {
    "images": [{"id": i} for i in range(1, 5)],  # image 4 has no annotations
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": _kps([2, 1, 2, 0]), "num_keypoints": 3},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": _kps([0, 0, 0, 0]), "num_keypoints": 0},
        # num_keypoints is only a cache: it says 99, the keypoints say 2
        {"id": 3, "image_id": 2, "category_id": 1, "keypoints": _kps([0, 1, 0, 2]), "num_keypoints": 99},
        {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0, "num_keypoints": 4},  # no keypoints list
        {"id": 5, "image_id": 3, "category_id": 1, "iscrowd": 1, "keypoints": _kps([2, 2, 2, 2]), "num_keypoints": 4},
        {"id": 6, "image_id": 2, "category_id": 2, "iscrowd": 0},
        {"id": 7, "image_id": 3, "category_id": 2, "iscrowd": 0},
    ],
}


def test_labeled_instances_per_image() -> None:
    # 4 non-crowd people, 2 dogs, no cat over 4 images (the crowd region does not count)
    assert labeled_instances_per_image(COCO) == {1: 1.0, 2: 0.5, 3: 0.0}
    with pytest.raises(ValueError, match="no images"):
        labeled_instances_per_image({"images": [], "annotations": [], "categories": []})


def test_labeled_keypoints_per_instance() -> None:
    # non-crowd people with keypoint fields: 3, 0, 2 and 4 labeled keypoints (dogs have none)
    assert labeled_keypoints_per_instance(COCO) == pytest.approx(9 / 4)
    assert labeled_keypoints_per_instance(COCO, include_empty=False) == pytest.approx(3.0)
    assert labeled_keypoints_per_instance({"images": [{"id": 1}], "annotations": [], "categories": []}) == 0.0


def test_targets_from_labeled_set_drive_calibration_end_to_end() -> None:
    rng = np.random.default_rng(5)
    scores, ids = rng.random(900), rng.choice([1, 2, 3], size=900)
    thresholds = per_category_thresholds(scores, ids, 100, labeled_instances_per_image(COCO))
    assert _kept(scores[ids == 1], thresholds[1]) == 100  # 1.0 per image x 100 unlabeled images
    assert _kept(scores[ids == 2], thresholds[2]) == 50
    assert _kept(scores[ids == 3], thresholds[3]) == 0  # no labeled cats: no pseudo-labeled cats
