import json
import shutil

import pytest
import torch

from dd_core.data.coco import CocoFormatError, coco_from_dict, load_coco
from dd_core.evaluate import BBOX_STATS
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from tests.conftest import write_tiny_coco

BOX, DISC = {"id": 1, "name": "box"}, {"id": 4, "name": "disc"}


def _two_category_checkpoint(path, coco) -> str:
    """A random slim detector of categories 1 (box) and 4 (disc) that detects plenty of discs."""
    from dd_core.models import ModelConfig, build_model
    from dd_core.models.checkpoint import save_checkpoint
    from dd_core.train.detector import checkpoint_meta, spec_for

    torch.manual_seed(0)
    data = coco_from_dict({**coco, "categories": [BOX, DISC]}, "train", "")
    spec = spec_for("detection", data, ModelConfig(test_size=64, min_size=(64,), max_size=96))
    model = build_model(spec)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1:] = 4.0  # labels 1 (box) and 2 (disc)
    save_checkpoint(str(path), {"model": model.state_dict(), "iteration": 0, **checkpoint_meta(spec, data)})
    return str(path)


def test_a_set_with_some_of_the_models_categories_is_scored_on_those(tmp_path):
    coco = write_tiny_coco(tmp_path / "val", num_images=2, task="detection")  # category 1 (box) only
    ckpt = _two_category_checkpoint(tmp_path / "m.pth", coco)
    data = load_coco(str(tmp_path / "val" / "annotations.json"), str(tmp_path / "val" / "images"))
    stats = evaluate_checkpoint(ckpt, data, progress=False)  # before: "category_id 4 is not in the ground truth"
    assert tuple(stats) == BBOX_STATS and all(v >= -1.0 for v in stats.values())


def test_a_set_without_categories_is_refused_before_inference(tmp_path):
    coco = write_tiny_coco(tmp_path / "val", num_images=2, task="detection")
    ckpt = _two_category_checkpoint(tmp_path / "m.pth", coco)
    path = tmp_path / "val" / "annotations.json"
    path.write_text(json.dumps({**coco, "annotations": [], "categories": []}))
    shutil.rmtree(tmp_path / "val" / "images")  # inference would fail on the first image: the check comes first
    data = load_coco(str(path), str(tmp_path / "val" / "images"))
    with pytest.raises(CocoFormatError) as refused:
        evaluate_checkpoint(ckpt, data, progress=False)
    assert str(refused.value) == (f"{path}: field 'categories' is empty; expected some of those of the checkpoint "
                                  f"{ckpt} ([1, 4])")


def test_evaluation_decodes_a_val_image_whole_whatever_its_pixel_count(tmp_path):
    """The pixel limit is the unlabeled pool's and training's: evaluation decodes val images whole
    (README). A val PNG whose header says 13000 x 12000 (156,000,000 pixels) is decoded, here to find
    it truncated, rather than refused by its size."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    coco = write_tiny_coco(tmp_path / "val", num_images=2, task="detection")
    ckpt = _two_category_checkpoint(tmp_path / "m.pth", coco)
    big = coco["images"][0]["file_name"]
    (tmp_path / "val" / "images" / big).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 12000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    data = load_coco(str(tmp_path / "val" / "annotations.json"), str(tmp_path / "val" / "images"))
    with pytest.warns(Warning, match="decompression bomb"), \
            pytest.raises(ValueError, match=rf"images/{big} \(.*annotations.json: images\[0\], id 1\): not a readable "
                                             r"image \(image file is truncated"):
        evaluate_checkpoint(ckpt, data, progress=False)  # before: "156,000,000 pixels, more than the 150,000,000"


def test_evaluation_stops_when_its_token_is_requested(tmp_path):
    from dd_core.evaluate.checkpoint_eval import evaluate_detector
    from dd_core.models.loading import load_detector
    from dd_core.ops.stop import StopRequested, StopToken

    coco = write_tiny_coco(tmp_path / "val", num_images=2, task="detection")
    detector = load_detector(_two_category_checkpoint(tmp_path / "m.pth", coco))
    data = load_coco(str(tmp_path / "val" / "annotations.json"), str(tmp_path / "val" / "images"))
    stop = StopToken()
    stop.request("asked by the test")
    with pytest.raises(StopRequested, match="stopped: asked by the test"):
        evaluate_detector(detector, data, progress=False, stop=stop)
    assert evaluate_detector(detector, data, progress=False) == evaluate_checkpoint(detector.url, data, progress=False)
