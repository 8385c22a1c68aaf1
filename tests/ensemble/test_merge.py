"""Union of transforms -> per-class NMS -> box voting -> top-k, on small hand-checked images."""

from __future__ import annotations

import numpy as np
import pytest

from dd_core.ensemble import merge_detections, nms


def test_nearly_identical_boxes_from_two_transforms_merge_into_one_voted_box() -> None:
    # The same object seen at two scales: IoU = 39 * 40 / (1600 + 1600 - 1560) = 0.951 >= 0.8.
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0]])
    out_boxes, out_scores, out_labels = merge_detections(boxes, np.array([0.9, 0.6]), np.array([1, 1]))
    # (0.9 * [10, 10, 50, 50] + 0.6 * [11, 10, 51, 50]) / 1.5 = [10.4, 10, 50.4, 50]
    np.testing.assert_allclose(out_boxes, [[10.4, 10.0, 50.4, 50.0]], atol=1e-12)
    np.testing.assert_allclose(out_scores, [0.9])  # scoring "ID"
    np.testing.assert_array_equal(out_labels, [1])


def test_scoring_is_passed_through() -> None:
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0]])
    _, scores, _ = merge_detections(boxes, np.array([0.9, 0.6]), np.array([1, 1]), scoring="AVG")
    np.testing.assert_allclose(scores, [0.75])


def test_different_classes_never_merge() -> None:
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.0]])
    out_boxes, out_scores, out_labels = merge_detections(boxes, np.array([0.7, 0.8]), np.array([3, 1]))
    np.testing.assert_array_equal(out_boxes, boxes)
    np.testing.assert_array_equal(out_scores, [0.8, 0.7])  # sorted by score, not by input order
    np.testing.assert_array_equal(out_labels, [1, 3])


def test_suppressed_box_below_voting_threshold_neither_survives_nor_votes() -> None:
    # IoU = 30 * 40 / (1600 + 1600 - 1200) = 0.6: above NMS's 0.5, below voting's 0.8.
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [20.0, 10.0, 60.0, 50.0], [100.0, 100.0, 120.0, 120.0]])
    out_boxes, out_scores, _ = merge_detections(boxes, np.array([0.9, 0.7, 0.3]), np.array([1, 1, 1]))
    np.testing.assert_array_equal(out_boxes, boxes[[0, 2]])
    np.testing.assert_array_equal(out_scores, [0.9, 0.3])


def test_max_detections_keeps_the_highest_scores() -> None:
    boxes = np.array([[i * 20.0, 0.0, i * 20.0 + 10.0, 10.0] for i in range(5)])
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    labels = np.array([1, 2, 1, 2, 1])
    out_boxes, out_scores, out_labels = merge_detections(boxes, scores, labels, max_detections=3)
    np.testing.assert_array_equal(out_scores, [0.9, 0.7, 0.5])
    np.testing.assert_array_equal(out_boxes, boxes[[3, 4, 1]])
    np.testing.assert_array_equal(out_labels, [2, 1, 2])
    assert len(merge_detections(boxes, scores, np.ones(5, dtype=int), max_detections=None)[0]) == 5


def test_empty_input() -> None:
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    boxes, scores, labels = merge_detections(*empty)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    boxes, scores, labels = merge_detections([], [], [])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_dtypes_are_kept() -> None:
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0]], dtype=np.float32)
    out = merge_detections(boxes, np.array([0.9, 0.6], np.float32), np.array([1, 1], np.int32))
    assert [a.dtype for a in out] == [np.float32, np.float32, np.int32]


def test_validation() -> None:
    boxes = np.zeros((2, 4))
    with pytest.raises(ValueError, match="labels must have shape"):
        merge_detections(boxes, np.zeros(2), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="labels must be integer"):
        merge_detections(boxes, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="unknown box voting scoring"):
        merge_detections(boxes, np.zeros(2), np.zeros(2, dtype=int), scoring="nope")
    with pytest.raises(ValueError, match="max_detections"):
        merge_detections(boxes, np.zeros(2), np.zeros(2, dtype=int), max_detections=-1)


def test_nms_matches_torchvision() -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(3)
    xy = rng.uniform(0.0, 60.0, size=(200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10.0, 40.0, size=(200, 2))], axis=1)
    scores = rng.permutation(200) / 200.0  # distinct scores: no tie-order ambiguity
    for threshold in (0.3, 0.5, 0.7):
        expected = ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)
