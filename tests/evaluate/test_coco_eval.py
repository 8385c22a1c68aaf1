import copy

import numpy as np
import pytest

from dd_core.data.keypoints import PERSON_CATEGORY
from dd_core.evaluate import BBOX_STATS, KEYPOINT_STATS, ResultsError, coco_evaluate


def gt_as_results(gt: dict, score: float = 1.0) -> list[dict]:
    """Ground truth written as detections (non-crowd only): scoring it against itself gives AP 1."""
    out = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        r = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": list(ann["bbox"]), "score": score}
        if "keypoints" in ann:
            r["keypoints"] = list(ann["keypoints"])
        out.append(r)
    return out


def _gt(num_images=4, per_image=3, seed=0):
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for _ in range(per_image):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(40, 90, 2)
            kps = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], 1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "keypoints": kps.ravel().tolist(), "num_keypoints": 17})
    return {"images": images, "annotations": anns, "categories": [PERSON_CATEGORY]}


@pytest.mark.parametrize("iou_type, names", [("keypoints", KEYPOINT_STATS), ("bbox", BBOX_STATS)])
def test_ground_truth_against_itself_scores_one(iou_type, names):
    gt = _gt()
    stats = coco_evaluate(gt, gt_as_results(gt), iou_type)
    assert tuple(stats) == names
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize("iou_type", ["keypoints", "bbox"])
def test_shifted_copy_scores_less(iou_type):
    gt = _gt()
    shifted = gt_as_results(gt)
    for r in shifted:
        r["bbox"][0] += 12
        if "keypoints" in r:
            r["keypoints"] = [v + 6 if j % 3 == 0 else v for j, v in enumerate(r["keypoints"])]
    stats = coco_evaluate(gt, shifted, iou_type)
    assert 0.0 < stats["AP"] < 0.9


def test_missing_detections_lower_recall_based_ap():
    gt = _gt()
    half = gt_as_results(gt)[::2]
    assert coco_evaluate(gt, half, "bbox")["AP"] < 0.7


def test_empty_results_score_zero_without_pycocotools_crash():
    assert coco_evaluate(_gt(), [], "keypoints") == {name: 0.0 for name in KEYPOINT_STATS}


def test_crowd_regions_are_ignored_not_missed():
    gt = _gt()
    crowd = copy.deepcopy(gt["annotations"][0])
    crowd.update(id=999, iscrowd=1, num_keypoints=0, keypoints=[0] * 51)
    gt["annotations"].append(crowd)
    assert coco_evaluate(gt, gt_as_results(gt), "bbox")["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(image_id=77), r"results\[0\]: image_id 77 is not in the ground truth"),
    (lambda r: r.update(category_id=5), r"results\[0\]: category_id 5"),
    (lambda r: r.update(score=float("nan")), r"results\[0\]: field 'score'"),
    (lambda r: r.update(bbox=[1, 2, 3]), r"results\[0\]: field 'bbox'"),
    (lambda r: r.update(keypoints=[1.0] * 50), r"results\[0\]: field 'keypoints' must be 51 finite numbers, got 50 values"),
    (lambda r: r.pop("score"), r"results\[0\]: missing field 'score'"),
])
def test_bad_results_are_refused_before_pycocotools(mutate, message):
    gt = _gt()
    results = gt_as_results(gt)
    mutate(results[0])
    with pytest.raises(ResultsError, match=message):
        coco_evaluate(gt, results, "keypoints")


def test_unknown_iou_type():
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(_gt(), [], "segm")


def _five_keypoint_gt():
    """_gt's people with 5 of their keypoints, named as no COCO set is."""
    gt = _gt()
    names = ["beak", "wing_l", "wing_r", "foot_l", "foot_r"]
    gt["categories"] = [{"id": 1, "name": "bird", "keypoints": names, "skeleton": []}]
    for ann in gt["annotations"]:
        ann["keypoints"] = ann["keypoints"][:15]
        ann["num_keypoints"] = 5
    return gt


def test_oks_sigmas_come_from_the_caller_for_a_keypoint_set_of_its_own():
    gt = _five_keypoint_gt()
    shifted = gt_as_results(gt)
    for r in shifted:
        r["keypoints"] = [v + 3 if j % 3 == 0 else v for j, v in enumerate(r["keypoints"])]
    default = coco_evaluate(gt, shifted, "keypoints")  # 0.05 for each keypoint of a set not COCO's
    assert coco_evaluate(gt, shifted, "keypoints", sigmas=[0.05] * 5) == default
    wide, narrow = (coco_evaluate(gt, shifted, "keypoints", sigmas=[s] * 5)["AP"] for s in (0.5, 0.01))
    assert narrow < default["AP"] < wide  # a larger sigma forgives the same error more
    with pytest.raises(ValueError, match=r"OKS sigmas: expected 5 positive numbers \(one per keypoint: \['beak'"):
        coco_evaluate(gt, shifted, "keypoints", sigmas=[0.05] * 17)
