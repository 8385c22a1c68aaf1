import copy
import json

import pytest
from pycocotools.coco import COCO

from dd_core.data.coco import CocoFormatError, coco_from_dict, load_coco, resolve_dataset, trainable_box
from dd_core.data.keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
from dd_core.storage import join, write_json_atomic

# The field layout of person_keypoints_train2017.json, written by hand (values made up).
REAL_FORMAT = {
    "info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
             "contributor": "COCO Consortium", "date_created": "2017/09/01"},
    "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"}],
    "images": [
        {"license": 4, "file_name": "000000397133.jpg", "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg",
         "height": 427, "width": 640, "date_captured": "2013-11-14 17:02:52", "flickr_url": "http://farm7.staticflickr.com/x.jpg", "id": 397133},
        {"license": 1, "file_name": "000000037777.jpg", "coco_url": "", "height": 230, "width": 352,
         "date_captured": "2013-11-14 20:55:31", "flickr_url": "", "id": 37777},
    ],
    "annotations": [
        {"segmentation": [[125.12, 539.69, 140.94, 522.43, 100.67, 496.54]], "num_keypoints": 10, "area": 47803.27955,
         "iscrowd": 0, "keypoints": [0, 0, 0, 0, 0, 0, 0, 0, 0, 142, 309, 1, 177, 320, 2, 191, 398, 2, 237, 317, 2,
                                     233, 426, 2, 306, 233, 2, 92, 452, 2, 123, 468, 2, 0, 0, 0, 251, 469, 2, 0, 0, 0,
                                     162, 551, 2, 0, 0, 0, 0, 0, 0],
         "image_id": 397133, "bbox": [73.35, 206.02, 300.58, 372.5], "category_id": 1, "id": 183126},
        {"segmentation": {"counts": [272, 2, 4, 4], "size": [427, 640]}, "num_keypoints": 0, "area": 1111.0,
         "iscrowd": 1, "keypoints": [0] * 51, "image_id": 397133, "bbox": [10.0, 20.0, 40.0, 50.0],
         "category_id": 1, "id": 900100},
    ],
    "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
                    "skeleton": [list(p) for p in COCO_PERSON_SKELETON]}],
}

# The layout of image_info_unlabeled2017.json: images and categories, no annotations.
IMAGE_ONLY = {
    "info": REAL_FORMAT["info"], "licenses": REAL_FORMAT["licenses"],
    "images": [{"license": 2, "file_name": "000000533083.jpg", "coco_url": "", "height": 640, "width": 426,
                "date_captured": "2013-11-14 10:56:14", "flickr_url": "", "id": 533083}],
    "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
}


def test_real_format_keypoints_load_unchanged(tmp_path):
    url = str(tmp_path / "person_keypoints_train2017.json")
    write_json_atomic(url, REAL_FORMAT)
    data = load_coco(url, str(tmp_path / "train2017"))
    assert [img["id"] for img in data.images] == [397133, 37777]
    assert len(data.annotations_by_image[397133]) == 2 and data.annotations_by_image[37777] == []
    assert data.keypoint_names == list(COCO_PERSON_KEYPOINT_NAMES)
    # The same file also loads in pycocotools.
    assert COCO(url).getAnnIds(imgIds=[397133]) == [183126, 900100]


def test_image_only_json_loads_without_annotations(tmp_path):
    url = str(tmp_path / "image_info_unlabeled2017.json")
    write_json_atomic(url, IMAGE_ONLY)
    data = load_coco(url, str(tmp_path), require_annotations=False)
    assert data.annotations == [] and data.images[0]["id"] == 533083
    with pytest.raises(CocoFormatError, match="missing field 'annotations'"):
        load_coco(url, str(tmp_path))


def test_fills_area_and_num_keypoints_when_absent():
    d = copy.deepcopy(REAL_FORMAT)
    del d["annotations"][0]["area"], d["annotations"][0]["num_keypoints"]
    ann = coco_from_dict(d, "x.json", "imgs").annotations[0]
    assert ann["num_keypoints"] == 10
    assert ann["area"] == pytest.approx(300.58 * 372.5)


def _broken(mutate):
    d = copy.deepcopy(REAL_FORMAT)
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("images"), r"top level: missing field 'images'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] \(id 37777\): missing field 'file_name'"),
    (lambda d: d["images"][1].update(id=397133), r"images\[1\] \(id 397133\): duplicate image id 397133"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), r"images\[0\] .*escapes the image root"),
    (lambda d: d["images"][0].update(file_name="/etc/passwd"), r"images\[0\] .*relative path inside the image root"),
    (lambda d: d["images"][0].update(width=0), r"images\[0\] .*'width' must be a positive integer"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] \(id 183126\): missing field 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"annotations\[0\] \(id 183126\): field 'bbox' must have a width and height >= 0"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, -0.5]), r"width and height >= 0, got w=3, h=-0.5"),
    # Ids are int64 in every table: 2**63 would wrap around (OverflowError or silently).
    (lambda d: d["images"][0].update(id=2**63), r"images\[0\]: field 'id' must be an integer from 0 to 2\*\*63 - 1"),
    (lambda d: d["images"][0].update(id=-1), r"images\[0\]: field 'id' must be an integer from 0 to 2\*\*63 - 1"),
    (lambda d: d["annotations"][0].update(id=2**64), r"annotations\[0\]: field 'id' must be an integer from 0"),
    (lambda d: d["annotations"][0].update(category_id=2**63), r"annotations\[0\] \(id 183126\): field 'category_id' must"),
    (lambda d: d["categories"][0].update(id=2**70), r"categories\[0\]: field 'id' must be an integer from 0"),
    (lambda d: d["images"][0].update(file_name="a\x00.jpg"), r"images\[0\] .*file_name' holds a control character"),
    (lambda d: d["images"][0].update(file_name="a\nb.jpg"), r"images\[0\] .*file_name' holds a control character"),
    (lambda d: d["images"][0].update(file_name="x" * 10_000_000), r"images\[0\] .*longer than 1024 bytes \(10,000,000 char"),
    (lambda d: d["images"][0].update(file_name="x\ud800.jpg"), r"images\[0\] .*file_name' is not valid Unicode text"),
    # Finite in JSON, not in float32 (1e39 becomes inf) or not an image at all (1e10 px).
    (lambda d: d["annotations"][0].update(bbox=[0, 0, 1e39, 1e39]), r"field 'bbox' must be pixel sizes within ±1e\+06"),
    (lambda d: d["annotations"][0].update(bbox=[-1e39, 0, 5, 5]), r"field 'bbox' must be pixel sizes within ±1e\+06"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, 1e10, 5]), r"field 'bbox' must be pixel sizes within ±1e\+06"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(9, 1e39), r"field 'keypoints' must be pixel coordinates"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"field 'bbox' must be 4 finite numbers"),
    (lambda d: d["annotations"][0].update(keypoints=[0] * 50), r"annotations\[0\] \(id 183126\): field 'keypoints' must have 51 numbers"),
    (lambda d: d["annotations"][0].pop("keypoints"), r"annotations\[0\] \(id 183126\): missing field 'keypoints'"),
    (lambda d: d["annotations"][1].update(id=183126), r"annotations\[1\] \(id 183126\): duplicate annotation id"),
    (lambda d: d["annotations"][0].update(category_id=7), r"annotations\[0\] .*unknown category 7"),
    (lambda d: d["annotations"][0].update(image_id=5), r"annotations\[0\] .*unknown image 5"),
    (lambda d: d["annotations"][0].update(image_id="397133"), r"field 'image_id' must be int, got str"),
    (lambda d: d["annotations"][0].update(iscrowd=2), r"field 'iscrowd' must be 0 or 1"),
    (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3), r"visibility flags must be 0, 1 or 2"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), r"categories\[1\] \(id 1\): duplicate category id"),
])
def test_validation_errors_name_file_record_and_field(tmp_path, mutate, message):
    url = str(tmp_path / "labeled.json")
    write_json_atomic(url, _broken(mutate))
    with pytest.raises(CocoFormatError, match=message) as info:
        load_coco(url, str(tmp_path))
    assert str(info.value).startswith(url + ": ")
    assert len(str(info.value)) < 400  # a 10 MB name is not repeated in the message


def test_degenerate_boxes_load_and_are_marked_untrainable():
    # COCO's own train2017 has a person box of height 0 (annotation 2206849): it must load unchanged.
    d = copy.deepcopy(REAL_FORMAT)
    d["annotations"][0]["bbox"] = [9.98, 188.56, 5.54, 0.0]
    d["annotations"][1]["bbox"] = [10.0, 10.0, 1e-9, 1e-9]  # crowd: never trained on anyway
    data = coco_from_dict(d, "x.json", "imgs")
    assert [a["id"] for a in data.untrainable] == [183126]
    assert trainable_box([0, 0, 0.01, 0.01]) and not trainable_box([0, 0, 0.01, 0.0099])


def test_not_json_names_file(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="a.json: not valid JSON"):
        load_coco(str(tmp_path / "a.json"), str(tmp_path))


def test_load_from_s3(s3):
    bucket, options = s3
    url = join(bucket, "coco/person_keypoints.json")
    write_json_atomic(url, REAL_FORMAT, options)
    data = load_coco(url, join(bucket, "coco/images"), options)
    assert len(data.annotations) == 2 and data.source == url


def test_resolve_dataset():
    assert resolve_dataset("runs/val") == ("runs/val/annotations.json", "runs/val/images")
    assert resolve_dataset("s3://b/x/coco.json") == ("s3://b/x/coco.json", "s3://b/x/images")
    assert resolve_dataset("coco.json", images="/data/img") == ("coco.json", "/data/img")
    assert json.loads(json.dumps(REAL_FORMAT))  # the fixture itself is plain JSON
