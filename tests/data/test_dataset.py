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


# --- Large photos: decoded reduced to the model's largest training frame, targets scaled exactly ---


def _annotated_set(folder, images: dict[str, tuple[int, int]], anns: list[dict]):
    """A keypoint set over the named images (name -> (width, height)), random RGB pixels."""
    import numpy as np
    from PIL import Image

    from dd_core.data.keypoints import PERSON_CATEGORY

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i, (name, (width, height)) in enumerate(images.items(), start=1):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / "images" / name)
        records.append({"id": i, "file_name": name, "width": width, "height": height})
    return coco_from_dict({"images": records, "annotations": anns, "categories": [PERSON_CATEGORY]}, "train.json",
                          str(folder / "images"))


def _person(ann_id: int, image_id: int, bbox: list[float], points: dict[int, tuple[float, float, int]]) -> dict:
    keypoints = [0.0] * 51
    for k, (x, y, v) in points.items():
        keypoints[3 * k:3 * k + 3] = [x, y, v]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": bbox[2] * bbox[3],
            "iscrowd": 0, "keypoints": keypoints, "num_keypoints": len(points)}


def test_the_training_frame_is_the_transform_s_largest_resize():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from dd_core.data.dataset import TrainingFrame

    transform = GeneralizedRCNNTransform((112, 144, 128), 224, [0.0] * 3, [1.0] * 3)
    frame = TrainingFrame.of(transform)
    assert frame == TrainingFrame(144, 224)
    assert frame(1000, 2000) == (112, 224)  # the longer side capped: min(144 / 1000, 224 / 2000) = 0.112
    assert frame(12000, 12000) == (144, 144) and frame(100, 50) == (224, 112)  # a small image is enlarged


def test_images_under_twice_the_frame_are_read_and_targeted_exactly_as_without_a_frame(tmp_path):
    from dd_core.data.dataset import TrainingFrame
    from dd_core.data.images import read_image

    # frame (64, 85) for 768 x 1024: 127 x 170 is under twice that, 64 x 64 is enlarged by the model
    data = _annotated_set(tmp_path, {"a.png": (170, 127), "b.png": (64, 64)},
                          [_person(1, 1, [10.3, 20.7, 50.1, 40.9], {0: (15.25, 30.5, 2), 5: (40.0, 50.0, 1)}),
                           _person(2, 2, [1, 2, 30, 40], {16: (3.5, 4.5, 2)})])
    framed = CocoDataset(data, frame=TrainingFrame(64, 96))
    for i, info in enumerate(data.images):
        image, target = framed[i]
        assert torch.equal(image, read_image(framed.image_url(i)))  # the decode of before, bit for bit
        expected = annotations_to_target(data.annotations_by_image[info["id"]], category_to_label(data), 17, info["id"])
        assert target.keys() == expected.keys()
        assert all(torch.equal(target[key], expected[key]) for key in expected)


def test_a_large_photo_is_reduced_to_the_frame_and_its_targets_divided_exactly(tmp_path):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from dd_core.data.dataset import TrainingFrame, reduced_target
    from dd_core.data.images import Reduction, read_reduced

    transform = GeneralizedRCNNTransform((64,), 96, [0.0] * 3, [1.0] * 3).train()
    frame = TrainingFrame.of(transform)  # 1024 x 768 resizes to 85 x 64: reduced by 8 to 128 x 96 (16: 64 x 48)
    data = _annotated_set(tmp_path, {"big.png": (1024, 768)},
                          [_person(1, 1, [100, 200, 50, 40], {0: (112.0, 212.0, 2), 3: (1020.0, 4.0, 1)})])
    image, target = CocoDataset(data, frame=frame)[0]
    assert image.shape == (3, 96, 128)
    assert torch.equal(image, read_reduced(str(tmp_path / "images" / "big.png"), frame=frame)[0])
    assert target["boxes"].tolist() == [[12.5, 25.0, 18.75, 30.0]]
    assert target["area"].tolist() == [2000 / 64]
    kps = target["keypoints"][0]
    assert kps[0].tolist() == [14.0, 26.5, 2.0] and kps[3].tolist() == [127.5, 0.5, 1.0]
    assert kps[[1, 2, *range(4, 17)]].eq(0).all()  # unlabeled keypoints stay (0, 0, 0)
    assert target["labels"].tolist() == [1] and int(target["image_id"]) == 1
    whole, original = CocoDataset(data)[0]  # no frame: every pixel, as before
    assert whole.shape == (3, 768, 1024)
    back = Reduction(768, 1024, 8).to_original(target)
    assert torch.equal(back["boxes"], original["boxes"]) and torch.equal(back["keypoints"], original["keypoints"])
    assert reduced_target(original, 1) is original
    # the model resizes both to the same frame and the same targets: only the resampling differs
    full, full_t = transform([whole.float() / 255], [original])
    small, small_t = transform([image.float() / 255], [target])
    assert full.tensors.shape == small.tensors.shape and full.image_sizes == small.image_sizes == [(64, 85)]
    assert torch.allclose(full_t[0]["boxes"], small_t[0]["boxes"], atol=1e-4)
    assert torch.allclose(full_t[0]["keypoints"], small_t[0]["keypoints"], atol=1e-4)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, on opening a 169 MP header
def test_a_labeled_image_over_max_pixels_is_refused_naming_the_file_and_record(tmp_path):
    import struct
    import zlib

    from tests.data.test_images import _chunk

    (tmp_path / "images").mkdir()
    # 13000 x 13000: a header and no pixels (a decode would fail as truncated)
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
    (tmp_path / "images" / "huge.png").write_bytes(header + _chunk(b"IDAT", zlib.compress(b"\x00" * 100))
                                                   + _chunk(b"IEND", b""))
    data = coco_from_dict({"images": [{"id": 7, "file_name": "huge.png", "width": 13000, "height": 13000}],
                           "annotations": [], "categories": [{"id": 1, "name": "x"}]}, "train.json",
                          str(tmp_path / "images"))
    with pytest.raises(ImageDecodeError, match=r"huge.png \(train.json: images\[0\], id 7\): 13000x13000 px \(width x "
                                               r"height\) is 169,000,000 pixels, more than the 150,000,000 allowed "
                                               r"\(max_pixels\); refused before decoding$"):
        CocoDataset(data)[0]
    with pytest.raises(ImageDecodeError, match=r"huge.png \(train.json: images\[0\], id 7\): not a readable image"):
        CocoDataset(data, max_pixels=None)[0]  # no limit: decoded, and found truncated


_TRAIN_ON_BIG = """
import json, resource, sys
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from dd_core.data.coco import load_coco
from dd_core.data.dataset import CocoDataset, TrainingFrame
from dd_core.data.transforms import Compose, to_float
data = load_coco(sys.argv[1], sys.argv[2])
frame = TrainingFrame.of(GeneralizedRCNNTransform((112, 120, 128, 136, 144), 224, [0.0] * 3, [1.0] * 3))  # slim
dataset = CocoDataset(data, Compose([to_float]), frame=frame)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image, target = dataset[0]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grown_kb": grown, "shape": list(image.shape), "dtype": str(image.dtype),
                  "boxes": target["boxes"].tolist(), "area": target["area"].tolist(),
                  "keypoints": target["keypoints"][0, :2].tolist()}))
"""


def test_a_12000_px_square_training_photo_is_read_within_bounded_memory(tmp_path):
    import json
    import subprocess
    import sys

    from dd_core.data.keypoints import PERSON_CATEGORY
    from dd_core.storage import write_json_atomic
    from tests.data.test_images import write_big_png

    (tmp_path / "images").mkdir()
    write_big_png(tmp_path / "images" / "big.png", 12000, 12000, square=(6400, 3200, 7680, 4480))
    person = _person(1, 1, [6400, 3200, 1280, 1280], {0: (6432.0, 3232.0, 2), 1: (7679.0, 4479.0, 1)})
    write_json_atomic(str(tmp_path / "train.json"), {
        "images": [{"id": 1, "file_name": "big.png", "width": 12000, "height": 12000}],
        "annotations": [person], "categories": [PERSON_CATEGORY]})
    run = subprocess.run([sys.executable, "-c", _TRAIN_ON_BIG, str(tmp_path / "train.json"), str(tmp_path / "images")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    # Pillow's buffer (4 bytes per pixel: 576 MB) once; whole, as uint8 then float, it took over 3 GB
    assert found["grown_kb"] < 1.5 * 2**20, found
    # 144 x 144 is the largest frame: reduced by 64 to 187 x 187 (by 128, 93 px would be enlarged)
    assert found["shape"] == [3, 187, 187] and found["dtype"] == "torch.float32"
    assert found["boxes"] == [[100.0, 50.0, 120.0, 70.0]] and found["area"] == [400.0]
    assert found["keypoints"] == [[100.5, 50.5, 2.0], [7679 / 64, 4479 / 64, 1.0]]
