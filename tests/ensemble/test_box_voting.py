"""Box voting against hand-computed numbers and against a loop-for-loop port of Detectron's code."""

from __future__ import annotations

import numpy as np
import pytest

from dd_core.ensemble import SCORING_METHODS, batched_box_voting, box_voting

# One kept (top) box and four candidate voters of the same class:
#   A = the top box itself                      IoU 1.0    -> votes
#   B = [0, 0, 10, 8]: 80 / 100                 IoU 0.8    -> votes (exactly at the threshold)
#   C = [0, 0, 10, 7.9]: 79 / 100               IoU 0.79   -> excluded (just below)
#   D = far away                                IoU 0      -> excluded
TOP = np.array([[0.0, 0.0, 10.0, 10.0]])
TOP_SCORE = np.array([0.9])
ALL = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 7.9], [20.0, 20.0, 30.0, 30.0]])
ALL_SCORES = np.array([0.9, 0.6, 0.5, 0.95])
# Voted box: (0.9 * [0, 0, 10, 10] + 0.6 * [0, 0, 10, 8]) / 1.5 = [0, 0, 10, 13.8 / 1.5] = [0, 0, 10, 9.2]
VOTED_BOX = np.array([[0.0, 0.0, 10.0, 9.2]])


@pytest.mark.parametrize(
    ("scoring", "beta", "expected"),
    [
        ("ID", 1.0, 0.9),  # the top box keeps its score
        ("AVG", 1.0, 0.75),  # (0.9 + 0.6) / 2
        ("IOU_AVG", 1.0, 1.38 / 1.8),  # (1.0 * 0.9 + 0.8 * 0.6) / (1.0 + 0.8) = 0.7666...
        ("GENERALIZED_AVG", 1.0, 0.75),  # power mean with beta 1 is the mean
        ("GENERALIZED_AVG", 2.0, np.sqrt(0.585)),  # sqrt((0.81 + 0.36) / 2) = 0.76485...
        ("QUASI_SUM", 1.0, 0.75),  # 1.5 / 2 ** 1
        ("QUASI_SUM", 0.5, 1.5 / np.sqrt(2.0)),  # 1.5 / 2 ** 0.5 = 1.0607 (can exceed 1)
        ("QUASI_SUM", 0.0, 1.5),  # beta 0: the plain sum of voter scores
        ("TEMP_AVG", 1.0, 0.75),  # temperature 1 gives the scores back: their mean
        # beta 0.5: p^2 / (p^2 + (1 - p)^2): 0.81 / 0.82 and 0.36 / 0.52, averaged
        ("TEMP_AVG", 0.5, (0.81 / 0.82 + 0.36 / 0.52) / 2),
    ],
)
def test_scoring_methods_hand_computed(scoring: str, beta: float, expected: float) -> None:
    boxes, scores = box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, iou_threshold=0.8, scoring=scoring, beta=beta)
    np.testing.assert_allclose(boxes, VOTED_BOX, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, [expected], rtol=0, atol=1e-12)


def test_voter_just_below_threshold_is_excluded_and_lower_threshold_includes_it() -> None:
    # At 0.79, C ([0, 0, 10, 7.9], score 0.5, IoU 0.79) votes too:
    # y2 = (0.9 * 10 + 0.6 * 8 + 0.5 * 7.9) / 2.0 = (9 + 4.8 + 3.95) / 2 = 8.875
    boxes, scores = box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, iou_threshold=0.79, scoring="AVG")
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 10.0, 8.875]], atol=1e-12)
    np.testing.assert_allclose(scores, [2.0 / 3.0], atol=1e-12)  # (0.9 + 0.6 + 0.5) / 3


def test_top_box_without_voters_is_unchanged() -> None:
    top = np.array([[100.0, 100.0, 110.0, 110.0]])
    boxes, scores = box_voting(top, [0.4], ALL, ALL_SCORES, scoring="AVG")
    np.testing.assert_array_equal(boxes, top)
    np.testing.assert_array_equal(scores, [0.4])


def test_each_top_box_gets_its_own_voters() -> None:
    top = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes, scores = box_voting(top, [0.9, 0.95], ALL, ALL_SCORES, scoring="AVG")
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 10.0, 9.2], [20.0, 20.0, 30.0, 30.0]], atol=1e-12)
    np.testing.assert_allclose(scores, [0.75, 0.95], atol=1e-12)


def test_zero_score_voters_do_not_divide_by_zero() -> None:
    boxes, scores = box_voting(TOP, [0.0], TOP, [0.0], scoring="AVG")
    np.testing.assert_array_equal(boxes, TOP)
    np.testing.assert_array_equal(scores, [0.0])


def test_empty_inputs() -> None:
    boxes, scores = box_voting(np.zeros((0, 4)), np.zeros(0), ALL, ALL_SCORES)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, scores = box_voting([], [], [], [])
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    boxes, scores = box_voting(TOP, TOP_SCORE, np.zeros((0, 4)), np.zeros(0), scoring="AVG")
    np.testing.assert_array_equal(boxes, TOP)
    np.testing.assert_array_equal(scores, TOP_SCORE)


def test_dtype_of_top_arrays_is_kept() -> None:
    boxes, scores = box_voting(TOP.astype(np.float32), TOP_SCORE.astype(np.float32), ALL, ALL_SCORES)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    boxes, scores = box_voting(TOP.astype(np.int64), np.array([1]), ALL, ALL_SCORES)
    assert boxes.dtype == np.float64 and scores.dtype == np.float64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((2, 5)), np.zeros(2), ALL, ALL_SCORES), r"top_boxes must have shape \(N, 4\)"),
        ((TOP, np.zeros(2), ALL, ALL_SCORES), r"top_scores must have shape \(1,\)"),
        ((TOP, TOP_SCORE, ALL[:, :3], ALL_SCORES), r"all_boxes must have shape \(N, 4\)"),
        ((TOP, TOP_SCORE, ALL, ALL_SCORES[:2]), r"all_scores must have shape \(4,\)"),
        ((TOP, [np.nan], ALL, ALL_SCORES), "non-finite"),
        ((np.array([[0.0, 0.0, np.inf, 10.0]]), TOP_SCORE, ALL, ALL_SCORES), "non-finite"),
    ],
)
def test_shape_and_value_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_voting(*args)


def test_unknown_scoring_lists_valid_methods() -> None:
    with pytest.raises(ValueError, match="unknown box voting scoring method 'MAX'.*ID.*AVG.*IOU_AVG.*QUASI_SUM"):
        box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, scoring="MAX")
    with pytest.raises(ValueError, match="unknown"):  # checked even when there is nothing to vote on
        box_voting([], [], [], [], scoring="max")


def test_beta_that_would_divide_by_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="beta"):
        box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, scoring="GENERALIZED_AVG", beta=0.0)
    with pytest.raises(ValueError, match="temperature"):
        box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, scoring="TEMP_AVG", beta=-1.0)
    with pytest.raises(ValueError, match="finite"):
        box_voting(TOP, TOP_SCORE, ALL, ALL_SCORES, scoring="QUASI_SUM", beta=np.inf)


def test_negative_beta_edge_cases_stay_finite() -> None:
    # Harmonic mean (beta -1) of scores 1.0 and 0.0 is 0; QUASI_SUM with a voterless top box keeps it.
    top = np.array([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    voters = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]])
    _, scores = box_voting(top, [0.9, 0.3], voters, [1.0, 0.0], scoring="GENERALIZED_AVG", beta=-1.0)
    np.testing.assert_array_equal(scores, [0.0, 0.3])
    _, scores = box_voting(top, [0.9, 0.3], voters, [1.0, 0.0], scoring="QUASI_SUM", beta=-1.0)
    np.testing.assert_array_equal(scores, [2.0, 0.3])  # 1.0 / 2 ** -1


def test_iou_is_continuous_without_detectrons_plus_one() -> None:
    # IoU([0, 0, 10, 10], [5, 0, 15, 10]) = 50 / (100 + 100 - 50) = 1/3; Detectron's +1 would give
    # 66 / 176 = 0.375, so the voter would count at 0.35 there. Here it counts at 1/3 but not above.
    top, voter = np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([[5.0, 0.0, 15.0, 10.0]])
    boxes, _ = box_voting(top, [0.9], voter, [0.5], iou_threshold=0.35, scoring="AVG")
    np.testing.assert_array_equal(boxes, top)  # no voter
    boxes, scores = box_voting(top, [0.9], voter, [0.5], iou_threshold=1.0 / 3.0, scoring="AVG")
    np.testing.assert_array_equal(boxes, voter)
    np.testing.assert_array_equal(scores, [0.5])


def test_degenerate_pair_has_iou_zero_not_nan() -> None:
    # Two identical points: torchvision's box_iou gives 0 / 0 = NaN. Box voting treats the pair like
    # any disjoint pair (IoU 0): no vote at a positive threshold, a vote at threshold 0 as every
    # other same-class detection, and never a NaN in a weight or a score.
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    point = np.array([[3.0, 3.0, 3.0, 3.0]])
    assert torch.isnan(ops.box_iou(torch.from_numpy(point), torch.from_numpy(point))).all()
    voters = np.array([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 10.0, 10.0]])
    for scoring in SCORING_METHODS:
        boxes, scores = box_voting(point, [0.4], voters, [0.8, 0.2], iou_threshold=0.5, scoring=scoring)
        np.testing.assert_array_equal(boxes, point)
        np.testing.assert_array_equal(scores, [0.4])
    # threshold 0: both vote (IoU 0 >= 0); box (0.8 * [3, 3, 3, 3] + 0.2 * [0, 0, 10, 10]) / 1.0
    boxes, scores = box_voting(point, [0.4], voters, [0.8, 0.2], iou_threshold=0.0, scoring="IOU_AVG")
    np.testing.assert_allclose(boxes, [[2.4, 2.4, 4.4, 4.4]], atol=1e-12)
    np.testing.assert_array_equal(scores, [0.4])  # IoU weights sum to 0: the score is kept


def test_oracle_iou_matches_torchvision() -> None:
    """The reference loop below computes its own IoU; it must be torchvision's, bit for bit."""
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    a, b = _random_boxes(np.random.default_rng(0), 30), _random_boxes(np.random.default_rng(1), 40)
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(_loop_iou(a, b), expected)


@pytest.mark.parametrize("chunk", [0, 1, 5])  # 12 top boxes: one chunk, twelve, three (the last one short)
@pytest.mark.parametrize("scoring", SCORING_METHODS)
def test_batched_box_voting_is_box_voting_class_by_class(scoring: str, chunk: int) -> None:
    """One call with labels gives what ``box_voting`` gives with each class's detections alone,
    however many top boxes are voted at a time."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    all_boxes = np.repeat(_random_boxes(rng, 6), 8, axis=0) + rng.normal(0.0, 1.5, size=(48, 4))
    all_scores = rng.uniform(0.05, 0.99, size=48)
    labels = rng.integers(0, 3, size=48)  # clusters mix classes: only same-class boxes may vote
    top = np.argsort(-all_scores)[::4]
    arrays = (all_boxes[top], all_scores[top], labels[top], all_boxes, all_scores, labels)
    boxes, scores = batched_box_voting(*map(torch.from_numpy, arrays), iou_threshold=0.7, scoring=scoring, beta=0.5,
                                       chunk=chunk)
    assert len(top) == 12
    for k, i in enumerate(top):
        same = labels == labels[i]
        ref_boxes, ref_scores = box_voting(
            all_boxes[i : i + 1], all_scores[i : i + 1], all_boxes[same], all_scores[same], 0.7, scoring, 0.5
        )
        np.testing.assert_allclose(boxes[k].numpy(), ref_boxes[0], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(scores[k].numpy(), ref_scores[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="top_labels and all_labels must be given together"):
        batched_box_voting(*map(torch.from_numpy, arrays[:2]), None, *map(torch.from_numpy, arrays[3:]))


@pytest.mark.parametrize("scoring", SCORING_METHODS)
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_matches_detectron_loop_on_random_clusters(scoring: str, beta: float) -> None:
    rng = np.random.default_rng(42)
    centers = _random_boxes(rng, 6)
    all_boxes = np.repeat(centers, 8, axis=0) + rng.normal(0.0, 1.5, size=(48, 4))
    all_scores = rng.uniform(0.05, 0.99, size=48)
    top = np.argsort(-all_scores)[::5]  # every box whose IoU with some voter is < 1
    boxes, scores = box_voting(all_boxes[top], all_scores[top], all_boxes, all_scores, 0.7, scoring, beta)
    ref_boxes, ref_scores = _detectron_box_voting(
        all_boxes[top], all_scores[top], all_boxes, all_scores, 0.7, scoring, beta
    )
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-12, atol=1e-12)


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0.0, 80.0, size=(n, 2))
    wh = rng.uniform(5.0, 40.0, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _detectron_box_voting(top_boxes, top_scores, all_boxes, all_scores, thresh, method, beta):
    """Detectron's ``box_voting`` loop (detectron/utils/boxes.py), minus its ``+ 1``, as an oracle."""
    out_boxes, out_scores = top_boxes.copy(), top_scores.copy()
    overlaps = _loop_iou(top_boxes, all_boxes)
    for k in range(len(top_boxes)):
        inds = np.where(overlaps[k] >= thresh)[0]
        ws = all_scores[inds]
        out_boxes[k] = np.average(all_boxes[inds], axis=0, weights=ws)
        if method == "TEMP_AVG":
            probs = np.vstack((ws, 1.0 - ws))
            tempered = np.exp(np.log(probs / probs.max(axis=0)) / beta)
            out_scores[k] = (tempered / tempered.sum(axis=0))[0].mean()
        elif method == "AVG":
            out_scores[k] = ws.mean()
        elif method == "IOU_AVG":
            out_scores[k] = np.average(ws, weights=overlaps[k, inds])
        elif method == "GENERALIZED_AVG":
            out_scores[k] = np.mean(ws**beta) ** (1.0 / beta)
        elif method == "QUASI_SUM":
            out_scores[k] = ws.sum() / float(len(ws)) ** beta
    return out_boxes, out_scores


def _loop_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Detectron's ``bbox_overlaps`` loop, minus its ``+ 1``: 0 for pairs that do not overlap."""
    out = np.zeros((len(a), len(b)))
    for n, box in enumerate(a):
        for k, query in enumerate(b):
            iw = min(box[2], query[2]) - max(box[0], query[0])
            ih = min(box[3], query[3]) - max(box[1], query[1])
            if iw > 0 and ih > 0:
                area = (box[2] - box[0]) * (box[3] - box[1])
                query_area = (query[2] - query[0]) * (query[3] - query[1])
                out[n, k] = iw * ih / (area + query_area - iw * ih)
    return out
