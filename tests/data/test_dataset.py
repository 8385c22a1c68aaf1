import pytest
import torch

from dd_core.data.coco import coco_from_dict, load_coco
from dd_core.data.dataset import CocoDataset, annotations_to_target, category_to_label, collate
from dd_core.data.images import ImageDecodeError, decode_image
from dd_core.data.transforms import Compose, to_float


def test_dataset_yields_torchvision_targets(tiny_coco):
    data = load_coco(*tiny_coco)
    ds = CocoDataset(data, Compose([to_float]))
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    x, y, w, h = data.annotations[0]["bbox"]
    assert torch.allclose(target["boxes"], torch.tensor([[x, y, x + w, y + h]]))
    assert target["labels"].tolist() == [1] and target["keypoints"].shape == (1, 17, 3)
    assert int(target["image_id"]) == 1 and ds.aspect_ratios() == [1.0] * 6
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and len(targets) == 2


def test_crowd_regions_are_not_training_targets_and_labels_are_contiguous():
    anns = [{"id": 1, "image_id": 1, "category_id": 90, "bbox": [0, 0, 2, 2], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 1, 1], "iscrowd": 0}]
    data = coco_from_dict({"images": [{"id": 1, "file_name": "a.png"}], "annotations": anns,
                           "categories": [{"id": 90, "name": "b"}, {"id": 7, "name": "a"}]}, "x.json", "")
    cat_to_label = category_to_label(data)
    assert cat_to_label == {7: 1, 90: 2}
    target = annotations_to_target(anns, cat_to_label, 0, 1)
    assert target["labels"].tolist() == [2, 1] and "keypoints" not in target
    empty = annotations_to_target([], cat_to_label, 17, 1)
    assert empty["boxes"].shape == (0, 4) and empty["keypoints"].shape == (0, 17, 3)


def test_boxes_too_small_to_train_on_are_not_targets():
    # torchvision refuses a target box without width or height ("All bounding boxes should have
    # positive height and width"): [10, 10, 1e-9, 1e-9] is [10, 10, 10, 10] in float32.
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 1e-9, 1e-9], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [9.98, 188.56, 5.54, 0.0], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0}]
    target = annotations_to_target(anns, {1: 1}, 0, 1)
    assert target["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]] and target["labels"].tolist() == [1]


@pytest.mark.parametrize("data, reason", [(b"", "empty file"), (b"GIF89a....", "not a readable image")])
def test_undecodable_images_name_the_url(data, reason):
    with pytest.raises(ImageDecodeError, match=f"s3://b/x.png: {reason}"):
        decode_image(data, "s3://b/x.png")


def test_decompression_bomb_is_refused(monkeypatch):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # anything over 2x this is a "bomb"
    with pytest.raises(ImageDecodeError, match="too large to decode safely"):
        decode_image(buffer.getvalue(), "big.png")


def test_an_image_whose_json_size_is_wrong_or_too_thin_for_the_model_is_named(tmp_path):
    from PIL import Image

    from dd_core.data.coco import coco_from_dict
    from dd_core.data.dataset import CocoDataset
    from dd_core.data.transforms import vanishing_scale

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (2000, 1)).save(tmp_path / "images" / "thin.png")
    images = [{"id": 1, "file_name": "a.png", "width": 30, "height": 40},  # width and height swapped
              {"id": 2, "file_name": "thin.png"}]                          # no size in the json
    data = coco_from_dict({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]},
                          "train.json", str(tmp_path / "images"))

    def check(h, w):
        scale = vanishing_scale((h, w), [64], 96)
        return None if scale is None else f"too thin at scale {scale}"

    dataset = CocoDataset(data, check_size=check)
    with pytest.raises(ValueError, match=r"a.png \(train.json: images\[0\], id 1\): the file is 40x30 px \(width x "
                                         r"height\) but the json says 30x40: its annotations would be misplaced"):
        dataset[0]
    with pytest.raises(ValueError, match=r"thin.png \(train.json: images\[1\], id 2\): too thin at scale 64"):
        dataset[1]
