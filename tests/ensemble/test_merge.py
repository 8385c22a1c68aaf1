"""Union of transforms -> per-class NMS -> box voting -> top-k, on small hand-checked images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import ops

from dd_core.ensemble import merge_detections


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


# A voting threshold above 1 lets no detection vote, so the NMS survivors come back unchanged.
NO_VOTING = 2.0


def test_per_class_suppression_hand_built_matches_batched_nms() -> None:
    boxes = np.array([
        [0.0, 0.0, 10.0, 10.0],  # 0, class 1, 0.9: kept
        [1.0, 0.0, 11.0, 10.0],  # 1, class 1, 0.8: IoU with 0 = 90 / 110 = 0.82 > 0.5, suppressed
        [1.0, 0.0, 11.0, 10.0],  # 2, class 2, 0.7: same box as 1, other class: kept
        [5.0, 0.0, 15.0, 10.0],  # 3, class 1, 0.6: IoU with 0 = 50 / 150; 1 is gone: kept
        [1.0, 0.0, 11.0, 5.0],  # 4, class 2, 0.5: IoU with 2 = 50 / 100 = 0.5, not > 0.5: kept
        [1.0, 0.0, 11.0, 6.0],  # 5, class 2, 0.4: IoU with 2 = 0.6 > 0.5, suppressed
    ])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 2, 1, 2, 2])
    out_boxes, out_scores, out_labels = merge_detections(boxes, scores, labels, voting_threshold=NO_VOTING)
    np.testing.assert_array_equal(out_boxes, boxes[[0, 2, 3, 4]])
    np.testing.assert_array_equal(out_scores, [0.9, 0.7, 0.6, 0.5])
    np.testing.assert_array_equal(out_labels, [1, 2, 1, 2])
    expected = ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    assert expected.tolist() == [0, 2, 3, 4]


def test_per_class_suppression_matches_batched_nms_on_random_boxes() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0.0, 60.0, size=(300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10.0, 40.0, size=(300, 2))], axis=1)
    scores = rng.permutation(300) / 300.0  # distinct scores: no tie-order ambiguity
    labels = rng.choice([3, 7, 11, 90], size=300)
    for threshold in (0.3, 0.5, 0.7):
        keep = ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), threshold)
        out_boxes, out_scores, out_labels = merge_detections(
            boxes, scores, labels, nms_threshold=threshold, voting_threshold=NO_VOTING, max_detections=None
        )
        np.testing.assert_array_equal(out_boxes, boxes[keep.numpy()])
        np.testing.assert_array_equal(out_scores, scores[keep.numpy()])
        np.testing.assert_array_equal(out_labels, labels[keep.numpy()])


def test_equal_scores_keep_input_order() -> None:
    # 40 boxes of one class, equal scores, shifted by 0.1 px: all overlap the first by IoU > 0.5
    # up to a shift of 10 / 3, so the first in input order survives, then the first past that.
    boxes = np.array([[i * 0.1, 0.0, 10.0 + i * 0.1, 10.0] for i in range(40)])
    scores, labels = np.full(40, 0.5), np.ones(40, dtype=int)
    out_boxes, _, _ = merge_detections(boxes, scores, labels, voting_threshold=NO_VOTING)
    np.testing.assert_array_equal(out_boxes, boxes[[0, 34]])
    out_boxes, _, _ = merge_detections(boxes[::-1], scores, labels, voting_threshold=NO_VOTING)  # last box first
    np.testing.assert_array_equal(out_boxes, boxes[[39, 5]])
    # Equal final scores: class order, then NMS order (input order within a class).
    disjoint = np.array([[i * 20.0, 0.0, i * 20.0 + 10.0, 10.0] for i in range(4)])
    _, _, out_labels = merge_detections(disjoint, np.full(4, 0.5), np.array([2, 1, 2, 1]))
    np.testing.assert_array_equal(out_labels, [1, 1, 2, 2])
    out_boxes, _, _ = merge_detections(disjoint, np.full(4, 0.5), np.array([2, 1, 2, 1]))
    np.testing.assert_array_equal(out_boxes, disjoint[[1, 3, 0, 2]])


def test_classes_stay_apart_for_negative_coordinates_and_large_ids() -> None:
    # batched_nms offsets each class by id * (max coordinate + 1), which overlaps a box of class 1
    # at [-11, -11, -1, -1] with one of class 0 at [0, 0, 10, 10]: merge shifts boxes first.
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [-11.0, -11.0, -1.0, -1.0]])
    scores, labels = np.array([0.9, 0.8]), np.array([0, 1])
    assert len(ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)) == 1
    out_boxes, _, out_labels = merge_detections(boxes, scores, labels)
    np.testing.assert_array_equal(out_boxes, boxes)
    np.testing.assert_array_equal(out_labels, [0, 1])
    # Class ids are made dense first: an id of 2 ** 52 gives what an id of 1 gives, where
    # batched_nms's float64 offset (2 ** 52 * 99) rounds the coordinates to multiples of 64.
    rng = np.random.default_rng(5)
    xy = rng.uniform(0.0, 60.0, size=(50, 2))
    many = np.concatenate([xy, xy + rng.uniform(10.0, 40.0, size=(50, 2))], axis=1)
    many_scores = rng.uniform(size=50)
    ones, large = np.ones(50, dtype=np.int64), np.full(50, 2**52)
    raw = [ops.batched_nms(torch.from_numpy(many), torch.from_numpy(many_scores), torch.from_numpy(ids), 0.5)
           for ids in (ones, large)]
    assert raw[0].tolist() != raw[1].tolist()
    for ids in (ones, large):
        out_boxes, _, _ = merge_detections(many, many_scores, ids, voting_threshold=NO_VOTING, max_detections=None)
        np.testing.assert_array_equal(out_boxes, many[raw[0].numpy()])


def test_tensors_in_tensors_out() -> None:
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [11.0, 10.0, 51.0, 50.0], [90.0, 0.0, 99.0, 9.0]], np.float32)
    scores, labels = np.array([0.9, 0.6, 0.3], np.float32), np.array([1, 1, 2])
    expected = merge_detections(boxes, scores, labels, scoring="AVG")
    got = merge_detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), scoring="AVG")
    assert all(isinstance(t, torch.Tensor) for t in got)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.int64]
    for ours, theirs in zip(got, expected):
        np.testing.assert_array_equal(ours.numpy(), theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_stay_on_their_device() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0.0, 60.0, size=(200, 2))
    boxes = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(10.0, 40.0, size=(200, 2))], axis=1)).float()
    scores, labels = torch.from_numpy(rng.permutation(200) / 200.0).float(), torch.from_numpy(rng.choice(3, 200))
    cpu = merge_detections(boxes, scores, labels, scoring="IOU_AVG")
    cuda = merge_detections(boxes.cuda(), scores.cuda(), labels.cuda(), scoring="IOU_AVG")
    assert all(t.device.type == "cuda" for t in cuda)
    torch.testing.assert_close(cuda[0].cpu(), cpu[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(cuda[1].cpu(), cpu[1], rtol=0, atol=1e-6)
    assert torch.equal(cuda[2].cpu(), cpu[2])


def test_tensor_validation_names_the_argument() -> None:
    boxes = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="scores must be on cpu like the boxes, got meta"):
        merge_detections(boxes, torch.zeros(2, device="meta"), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be integer"):
        merge_detections(boxes, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="boxes must have shape"):
        merge_detections(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="nms_threshold must be finite"):
        merge_detections(boxes, torch.zeros(2), torch.zeros(2, dtype=torch.int64), nms_threshold=float("nan"))
