import pytest

from dd_core.data.coco import coco_from_dict
from dd_core.data.filtering import TrainingImageFilter, filter_for_training
from dd_core.data.keypoints import PERSON_CATEGORY


def _person(ann_id, image_id, visible, bbox=(0, 0, 10, 10), iscrowd=0):
    keypoints = [5, 5, 2] * visible + [0, 0, 0] * (17 - visible)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), "iscrowd": iscrowd,
            "keypoints": keypoints, "num_keypoints": visible}


def _people():
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(1, 7)]
    anns = [_person(1, 1, 12),                      # 1: a person with 12 visible keypoints
            _person(2, 2, 0),                       # 2: a person, no keypoint visible
            _person(3, 3, 5, iscrowd=1),            # 3: a crowd region only
            _person(4, 4, 7, bbox=(3, 3, 0, 10)),   # 4: a box of width 0 only (COCO has them)
            _person(5, 5, 3), _person(6, 5, 4)]     # 5: two people, 7 visible keypoints together
    return coco_from_dict({"images": images, "annotations": anns, "categories": [PERSON_CATEGORY]}, "kp.json", "")


def test_keypoint_images_without_a_visible_keypoint_are_left_out_as_detectron_does():
    filtered = filter_for_training(_people(), TrainingImageFilter())
    assert [im["id"] for im in filtered.data.images] == [1, 5]  # image 6 holds nothing at all
    assert (filtered.total, filtered.left_out) == (6, 4)
    assert sorted(a["id"] for a in filtered.data.annotations) == [1, 5, 6]
    assert filtered.summary() == {"images": 6, "left_out": 4, "trained_on": 2}


def test_torchvision_s_ten_keypoint_rule_and_keeping_everything():
    assert [im["id"] for im in filter_for_training(_people(), TrainingImageFilter(min_visible_keypoints=10)).data.images] \
        == [1]
    kept = filter_for_training(_people(), TrainingImageFilter(keep_empty=True))
    assert kept.left_out == 0 and kept.data is not None and len(kept.data.images) == 6
    # min_visible_keypoints 0: an instance is enough, as for boxes.
    assert [im["id"] for im in filter_for_training(_people(), TrainingImageFilter(min_visible_keypoints=0)).data.images] \
        == [1, 2, 5]


def test_box_images_need_one_trainable_instance_as_torchvision_s_references_do():
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(1, 4)]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}]
    data = coco_from_dict({"images": images, "annotations": anns, "categories": [{"id": 3, "name": "box"}]}, "b.json", "")
    filtered = filter_for_training(data, TrainingImageFilter())
    assert [im["id"] for im in filtered.data.images] == [1] and filtered.left_out == 2
    assert TrainingImageFilter().rule(keypoints=False) == (
        "images without an instance to train on left out; crowd regions and tiny boxes are not such instances")
    assert TrainingImageFilter().rule(keypoints=True) == (
        "images with fewer than 1 visible keypoint(s) on instances to train on left out; crowd regions and tiny "
        "boxes are not such instances")


def test_a_negative_minimum_is_refused():
    with pytest.raises(ValueError, match="min_visible_keypoints\n  Input should be greater than or equal to 0"):
        TrainingImageFilter(min_visible_keypoints=-1)


def test_the_run_config_s_training_images_section_is_the_filter():
    from dd_core.config import parse_config

    base = {"labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": "u"},
            "val": {"annotations": "v.json", "images": "v"}}
    rule = parse_config({**base, "training_images": {"min_visible_keypoints": 10}}).training_images
    assert rule == TrainingImageFilter(min_visible_keypoints=10) and rule.to_dict() == \
        {"keep_empty": False, "min_visible_keypoints": 10}
    with pytest.raises(Exception, match="training_images.min_visible_keypoints: Input should be greater than or equal"):
        parse_config({**base, "training_images": {"min_visible_keypoints": -1}})
