import numpy as np
import pytest

from dd_core.data.keypoints import PERSON_CATEGORY
from dd_core.pseudo.select import (
    Predictions,
    apply_selection,
    calibrate_selection,
    read_predictions,
    select_pseudo_labels,
)
from dd_core.storage.parquet import predictions_table, write_shard


def _predictions(scores, cats, kp_scores=None, num_images=4):
    n = len(scores)
    k = 0 if kp_scores is None else len(kp_scores[0])
    rows = {"image_id": [1 + i % num_images for i in range(n)], "file_name": [f"{1 + i % num_images}.png" for i in range(n)],
            "category_id": cats, "box": [[i, i, i + 10, i + 20] for i in range(n)], "score": scores,
            "keypoints": [[float(j) for j in range(2 * k)] for _ in range(n)],
            "keypoint_scores": kp_scores or [[] for _ in range(n)], "num_transforms": [6] * n}
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(1, num_images + 1)]
    return Predictions(predictions_table(rows, {}), images)


def _labeled(per_image: dict, num_images=4, keypoints_per_instance=None):
    anns, n = [], 0
    for cat, count in per_image.items():
        for _ in range(int(count * num_images)):
            n += 1
            ann = {"id": n, "image_id": 1, "category_id": cat, "bbox": [0, 0, 1, 1], "iscrowd": 0}
            if keypoints_per_instance is not None:
                ann["keypoints"] = [1, 1, 2] * keypoints_per_instance + [0, 0, 0] * (17 - keypoints_per_instance)
                ann["num_keypoints"] = keypoints_per_instance
            anns.append(ann)
    cats = [{"id": c, "name": f"c{c}"} for c in per_image]
    return {"images": [{"id": i, "file_name": "x", "width": 1, "height": 1} for i in range(1, num_images + 1)],
            "annotations": anns, "categories": cats}


def test_per_category_thresholds_match_labeled_density():
    # Category 1: labeled 1 instance/image on 4 images -> keep the top 4 of its 6 predictions.
    # Category 2: labeled 0.5/image -> keep the top 2.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.3, 0.2]
    cats = [1, 1, 1, 1, 1, 1, 2, 2, 2]
    coco, selection = select_pseudo_labels(_predictions(scores, cats), _labeled({1: 1.0, 2: 0.5}), "detection")
    assert selection.thresholds == {1: pytest.approx(0.6), 2: pytest.approx(0.3)}
    assert selection.kept_per_category == {1: 4, 2: 2} and selection.predicted_per_category == {1: 6, 2: 3}
    assert sorted(a["score"] for a in coco["annotations"]) == pytest.approx([0.3, 0.6, 0.7, 0.8, 0.9, 0.95])
    assert len(coco["images"]) == 4 and coco["categories"] == [{"id": 1, "name": "c1"}, {"id": 2, "name": "c2"}]
    ann = coco["annotations"][0]
    assert ann["bbox"] == [0.0, 0.0, 10.0, 20.0] and ann["area"] == 200.0 and ann["iscrowd"] == 0


def test_keypoint_threshold_matches_labeled_keypoints_per_instance():
    rng = np.random.default_rng(0)
    kp_scores = rng.uniform(0, 1, (8, 17)).round(4).tolist()
    labeled = _labeled({1: 2.0}, keypoints_per_instance=10)
    labeled["categories"] = [PERSON_CATEGORY]
    coco, selection = select_pseudo_labels(_predictions([0.9] * 8, [1] * 8, kp_scores), labeled, "keypoints")
    assert selection.target_keypoints_per_instance == {1: 10.0}
    assert abs(selection.kept_keypoints_per_instance[1] - 10.0) <= 1 / 8 + 1e-9
    for ann, scores in zip(coco["annotations"], kp_scores):
        v = np.asarray(ann["keypoints"]).reshape(17, 3)[:, 2]
        assert set(v) <= {0.0, 2.0}
        assert np.array_equal(v == 2, np.asarray(scores, np.float32) >= selection.keypoint_thresholds[1])  # float32
        assert ann["num_keypoints"] == int((v == 2).sum())
        xy = np.asarray(ann["keypoints"]).reshape(17, 3)[:, :2]
        assert np.all(xy[v == 0] == 0)


def test_each_keypoint_category_gets_its_own_keypoint_threshold():
    # Two keypoint categories: labeled people show 12 of 17 keypoints, labeled "animals" 4 of 17. One
    # pooled threshold would give each category's pseudo-labels 8 on average: too few and too many.
    rng = np.random.default_rng(1)
    kp_scores = rng.uniform(0, 1, (16, 17)).round(4).tolist()
    labeled = _labeled({1: 2.0}, keypoints_per_instance=12)
    animals = _labeled({2: 2.0}, keypoints_per_instance=4)
    for ann in animals["annotations"]:
        ann["id"] += 100
    labeled["annotations"] += animals["annotations"]
    labeled["categories"] = [PERSON_CATEGORY, {**PERSON_CATEGORY, "id": 2, "name": "animal"}]
    coco, selection = select_pseudo_labels(_predictions([0.9] * 16, [1] * 8 + [2] * 8, kp_scores, num_images=4),
                                           labeled, "keypoints")
    assert selection.target_keypoints_per_instance == {1: 12.0, 2: 4.0}
    assert selection.keypoint_thresholds[1] < selection.keypoint_thresholds[2]
    for cat, target in ((1, 12.0), (2, 4.0)):
        kept = [a["num_keypoints"] for a in coco["annotations"] if a["category_id"] == cat]
        assert len(kept) == 8 and abs(np.mean(kept) - target) <= 1 / 8 + 1e-9


def test_fixed_keypoint_thresholds_are_probability_like():
    from dd_core.pseudo.pipeline import FixedThresholds

    assert FixedThresholds(0.5, 0.5).keypoint_logit == 0.0  # a logit of 0: the former default
    assert FixedThresholds(0.5, 0.8).keypoint_logit == pytest.approx(np.log(4.0))
    assert FixedThresholds(0.5, 0.0).keypoint_logit == -np.inf and FixedThresholds(0.5, 1.0).keypoint_logit == np.inf
    with pytest.raises(ValueError, match="FixedThresholds.keypoint must be from 0 to 1, got 2.0"):
        FixedThresholds(0.5, 2.0)


def test_no_predictions_gives_images_without_annotations():
    coco, selection = select_pseudo_labels(_predictions([], []), _labeled({1: 1.0}), "detection")
    assert coco["annotations"] == [] and len(coco["images"]) == 4
    assert selection.kept_per_category == {1: 0}


def test_apply_fixed_thresholds():
    coco = apply_selection(_predictions([0.9, 0.2, 0.6], [1, 1, 2]), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                           {1: 0.5, 2: 0.7}, None)
    assert [a["score"] for a in coco["annotations"]] == pytest.approx([0.9])


def test_read_predictions_refuses_an_image_in_two_shards(tmp_path):
    rows = {"image_id": [], "file_name": [], "category_id": [], "box": [], "score": [], "keypoints": [],
            "keypoint_scores": [], "num_transforms": []}
    for i in range(2):
        write_shard(str(tmp_path / f"s{i}.parquet"),
                    predictions_table(rows, {"images": [{"id": 5, "file_name": "5.png", "width": 1, "height": 1}],
                                             "rejected": []}))
    with pytest.raises(ValueError, match="image 5 is also in"):
        read_predictions([str(tmp_path / "s0.parquet"), str(tmp_path / "s1.parquet")])
    assert calibrate_selection(read_predictions([str(tmp_path / "s0.parquet")]), _labeled({1: 1.0}), "detection").num_images == 1


def test_a_teacher_that_predicted_nothing_leaves_nothing_to_learn():
    from dd_core.data.filtering import TrainingImageFilter
    from dd_core.pseudo.select import NoPseudoLabels, Selection, check_something_to_learn

    empty = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "annotations": [],
             "categories": [{"id": 1, "name": "box"}]}
    selection = Selection({1: 0.0}, {1: 1.0}, {1: 0}, {1: 0}, 1)
    with pytest.raises(NoPseudoLabels, match=r"^pseudo-label selection: 0 pseudo-labels kept on 1 unlabeled images "
                                             r"\(the teacher predicted nothing\): a student would learn from the "
                                             r"labeled images only"):
        check_something_to_learn(empty, selection, TrainingImageFilter(keep_empty=True))
    assert issubclass(NoPseudoLabels, ValueError)  # an input-style error: Prefect does not retry it
