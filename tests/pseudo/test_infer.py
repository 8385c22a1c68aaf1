import json
import math
import os
from dataclasses import replace

import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

from dd_core.data.unlabeled import Shard, UnlabeledImage, list_unlabeled, plan_shards, write_plan
from dd_core.pseudo import infer
from dd_core.pseudo.infer import (
    ShardColumns,
    checkpoint_fingerprint,
    finished_shards,
    label_planned_shard,
    label_shard,
    labeler_from_checkpoint,
    outputs_to_host,
)
from dd_core.storage.parquet import ShardError, predictions_table, read_shard, shard_meta
from tests.conftest import save_random_checkpoint, write_tiny_coco

TTA = {"scales": [56, 64], "flip": True}


def _setup(tmp_path, n=5):
    coco = write_tiny_coco(tmp_path / "pile", num_images=n)
    ckpt = save_random_checkpoint(str(tmp_path / "model_0000000.pth"), coco)
    return coco, ckpt, list_unlabeled(str(tmp_path / "pile" / "images"))


def test_label_shard_writes_rows_and_is_idempotent(tmp_path):
    _, ckpt, unlabeled = _setup(tmp_path)
    fp = checkpoint_fingerprint(ckpt, TTA)
    loads = []

    def make():
        loads.append(1)
        return labeler_from_checkpoint(ckpt, TTA)

    shard = plan_shards(unlabeled.images, 8)[0]
    first = label_shard(shard, unlabeled.root, str(tmp_path / "inf"), fp, make, batch_size=2)
    assert not first.skipped and first.num_images == 5 and first.num_rows > 0
    table = read_shard(first.url)
    assert set(table.column("image_id").to_pylist()) <= {im.id for im in shard.images}
    assert set(table.column("num_transforms").to_pylist()) == {4}
    assert all(len(k) == 34 and len(s) == 17 for k, s in zip(table.column("keypoints").to_pylist(),
                                                             table.column("keypoint_scores").to_pylist()))
    assert [im["id"] for im in shard_meta(table)["images"]] == [im.id for im in shard.images]
    mtime = os.stat(first.url).st_mtime_ns
    again = label_shard(shard, unlabeled.root, str(tmp_path / "inf"), fp, make)
    assert again.skipped and again.num_rows == first.num_rows and loads == [1]  # the model was not even loaded
    assert os.stat(first.url).st_mtime_ns == mtime
    other = label_shard(shard, unlabeled.root, str(tmp_path / "inf"), "another-model", make)
    assert not other.skipped and loads == [1, 1]


def test_undecodable_images_are_rejected_and_the_shard_succeeds(tmp_path):
    _, ckpt, _ = _setup(tmp_path, n=3)
    images = tmp_path / "pile" / "images"
    (images / "004.png").write_bytes(b"")
    (images / "005.png").write_bytes(b"not an image at all")
    (images / "006.png").write_bytes((images / "001.png").read_bytes()[:100])
    # A decompression bomb: 20,000 x 20,000 pixels in a few kB (PIL refuses it before decoding).
    Image.new("1", (20_000, 20_000)).save(images / "007.png", optimize=True)
    assert (images / "007.png").stat().st_size < 200_000
    unlabeled = list_unlabeled(str(images))
    write_plan(unlabeled, 10, str(tmp_path / "plan.json"))
    summary = label_planned_shard(ckpt, str(tmp_path / "plan.json"), 0, str(tmp_path / "inf"), TTA,
                                  checkpoint_fingerprint(ckpt, TTA))
    assert summary.num_images == 3 and summary.num_rejected == 4
    rejected = shard_meta(read_shard(summary.url))["rejected"]
    assert [r["file_name"] for r in rejected] == ["004.png", "005.png", "006.png", "007.png"]
    assert "empty file" in rejected[0]["reason"] and "not a readable image" in rejected[1]["reason"]
    assert "not a readable image" in rejected[2]["reason"] and "too large to decode safely" in rejected[3]["reason"]


def test_shards_form_one_dataset(tmp_path):
    _, ckpt, unlabeled = _setup(tmp_path, n=5)
    write_plan(unlabeled, 2, str(tmp_path / "plan.json"))
    fp = checkpoint_fingerprint(ckpt, TTA)
    for i in range(3):
        label_planned_shard(ckpt, str(tmp_path / "plan.json"), i, str(tmp_path / "inf"), TTA, fp)
    table = ds.dataset(str(tmp_path / "inf"), format="parquet").to_table()
    assert set(table.column("image_id").to_pylist()) <= {1, 2, 3, 4, 5}
    assert sorted(os.listdir(tmp_path / "inf")) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]


def test_a_shard_of_other_images_is_recomputed_even_with_the_same_model(tmp_path):
    _, ckpt, unlabeled = _setup(tmp_path, n=4)
    fp = checkpoint_fingerprint(ckpt, TTA)
    out = str(tmp_path / "inf")
    make = lambda: labeler_from_checkpoint(ckpt, TTA)  # noqa: E731
    first = label_shard(plan_shards(unlabeled.images, 3)[0], unlabeled.root, out, fp, make)
    # The pile grew and the plan changed: shard-00000 now holds other images.
    shifted = plan_shards(unlabeled.images[1:], 3)[0]
    again = label_shard(shifted, unlabeled.root, out, fp, make)
    assert not first.skipped and not again.skipped
    assert [im["id"] for im in shard_meta(read_shard(again.url))["images"]] == [2, 3, 4]


def test_finished_shards_reads_summaries_from_footers_and_names_every_missing_shard(tmp_path):
    _, ckpt, unlabeled = _setup(tmp_path, n=2)
    fp = checkpoint_fingerprint(ckpt, TTA)
    plan, out = str(tmp_path / "inf" / "_plan.json"), str(tmp_path / "inf")
    write_plan(unlabeled, 1, plan)
    labeled = [label_planned_shard(ckpt, plan, i, out, TTA, fp) for i in range(2)]
    assert finished_shards(plan, out, fp) == [replace(s, skipped=True) for s in labeled]
    assert [s.name for s in finished_shards(plan, out, fp, indices=[1])] == ["shard-00001"]
    with pytest.raises(ShardError, match="shard-00000.parquet, .*shard-00001.parquet"):
        finished_shards(plan, out, "another-model")
    with pytest.raises(IndexError, match="no shard 2"):
        finished_shards(plan, out, fp, indices=[2])
    os.remove(labeled[1].url)
    with pytest.raises(ShardError, match=r"1 shard\(s\) missing .*shard-00001\.parquet"):
        finished_shards(plan, out, fp)


def test_cached_labeler_loads_a_teacher_once_per_fingerprint_and_keeps_only_the_latest() -> None:
    made: list[str] = []

    def maker(name: str):
        def make() -> infer.Labeler:
            made.append(name)
            return infer.Labeler(torch.nn.Identity(), lambda model, images: [], {1: 1})
        return make

    infer._teachers.clear()
    first = infer.cached_labeler("fp-a", maker("a"))
    assert infer.cached_labeler("fp-a", maker("a-again")) is first
    second = infer.cached_labeler("fp-b", maker("b"))
    assert second is not first
    assert list(infer._teachers) == ["fp-b"]
    infer.cached_labeler("fp-a", maker("a-reloaded"))
    assert made == ["a", "b", "a-reloaded"]
    assert infer.release_labelers() == 1 and infer.release_labelers() == 0
    infer.cached_labeler("fp-a", maker("a-after-release"))
    assert made[-1] == "a-after-release"
    infer._teachers.clear()


def test_shard_columns_map_labels_flatten_keypoints_and_keep_image_order():
    columns = ShardColumns({1: 7, 2: 3})
    kps = torch.tensor([[[1.0, 2.0, 1.0], [3.0, 4.0, 1.0]], [[5.0, 6.0, 1.0], [7.0, 8.0, 1.0]]])
    columns.add({"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0]]), "labels": torch.tensor([2, 1]),
                 "scores": torch.tensor([0.5, 0.25]), "keypoints": kps,
                 "keypoints_scores": torch.tensor([[0.1, 0.2], [0.3, 0.4]]), "num_transforms": 18},
                UnlabeledImage(9, "a.png"))
    columns.add({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                 "keypoints": torch.zeros(0, 2, 3), "keypoints_scores": torch.zeros(0, 2)}, UnlabeledImage(10, "b.png"))
    columns.add({"boxes": torch.tensor([[2.0, 2.0, 3.0, 3.0]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([1.0]),
                 "keypoints": kps[:1], "keypoints_scores": torch.tensor([[0.5, 0.5]]), "num_transforms": 18},
                UnlabeledImage(11, "c.png"))
    rows = predictions_table(columns.columns(), {}).to_pydict()
    assert rows["image_id"] == [9, 9, 11] and rows["file_name"] == ["a.png", "a.png", "c.png"]
    assert rows["category_id"] == [3, 7, 7] and rows["box"][1] == [1.0, 1.0, 2.0, 2.0]
    assert rows["keypoints"] == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]]
    assert rows["keypoint_scores"][1] == pytest.approx([0.3, 0.4]) and rows["num_transforms"] == [18, 18, 18]


def test_shard_columns_of_boxes_have_empty_keypoints_and_unknown_labels_name_the_image():
    columns = ShardColumns({1: 5})
    columns.add({"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 1]), "scores": torch.ones(2)},
                UnlabeledImage(1, "a.png"))
    rows = predictions_table(columns.columns(), {}).to_pydict()
    assert rows["keypoints"] == [[], []] and rows["keypoint_scores"] == [[], []] and rows["num_transforms"] == [1, 1]
    assert predictions_table(ShardColumns({1: 5}).columns(), {}).num_rows == 0
    with pytest.raises(KeyError, match="b.png: the model predicted label 4, which maps to no category"):
        columns.add({"boxes": torch.ones(1, 4), "labels": torch.tensor([4]), "scores": torch.ones(1)},
                    UnlabeledImage(2, "b.png"))


def test_outputs_to_host_keeps_each_image_s_rows_and_non_tensors() -> None:
    outputs = [
        {"boxes": torch.arange(8.0).reshape(2, 4), "keypoints": torch.ones(2, 17, 3), "num_transforms": 18,
         "flag": torch.tensor(True)},
        {"boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 17, 3), "num_transforms": 18,
         "flag": torch.tensor(False)},
        {"boxes": torch.full((1, 4), 9.0), "keypoints": torch.full((1, 17, 3), 2.0), "num_transforms": 18,
         "flag": torch.tensor(True)},
    ]
    host = outputs_to_host(outputs)
    assert [h["boxes"].shape for h in host] == [(2, 4), (0, 4), (1, 4)]
    assert [h["keypoints"].shape for h in host] == [(2, 17, 3), (0, 17, 3), (1, 17, 3)]
    for h, o in zip(host, outputs):
        assert torch.equal(h["boxes"], o["boxes"]) and torch.equal(h["keypoints"], o["keypoints"])
        assert h["num_transforms"] == 18 and h["flag"].item() == o["flag"].item()
    assert outputs_to_host([]) == []


# --- hardening: one odd image is rejected, never fails its shard ---------------------------------


def _stub_labeler(predict_fn=None) -> infer.Labeler:
    """A labeler without a model: every image gets no predictions (or what ``predict_fn`` says)."""

    def nothing(model, images):
        return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
                for _ in images]

    return infer.Labeler(torch.nn.Identity(), predict_fn or nothing, {1: 1})


def _save(path, height: int, width: int, seed: int = 0) -> None:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


def _shard_of(folder, names) -> tuple[str, Shard]:
    """(images root, the one shard) of a .txt list of ``names`` in ``folder``: ids 1.. in name order."""
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    unlabeled = list_unlabeled(str(folder / "list.txt"))
    return unlabeled.root, Shard(0, unlabeled.images)


def test_too_thin_images_are_rejected_before_inference_saying_why(tmp_path):
    _, ckpt, _ = _setup(tmp_path, n=2)
    images = tmp_path / "pile" / "images"
    _save(images / "thin.png", 1, 2000)     # 0 px high at every scale: interpolate raised
    _save(images / "tall.png", 2000, 1)
    _save(images / "narrow.png", 1, 40)     # 2 px high at scale 56: labeled
    root, shard = _shard_of(images, ["001.png", "002.png", "narrow.png", "tall.png", "thin.png"])
    summary = label_shard(shard, root, str(tmp_path / "inf"), checkpoint_fingerprint(ckpt, TTA),
                          lambda: labeler_from_checkpoint(ckpt, TTA), batch_size=5)
    meta = shard_meta(read_shard(summary.url))
    assert [im["file_name"] for im in meta["images"]] == ["001.png", "002.png", "narrow.png"]
    assert meta["images"][2]["height"] == 1 and meta["images"][2]["width"] == 40
    assert meta["rejected"] == [
        {"image_id": 4, "file_name": "tall.png",
         "reason": f"{images}/tall.png: 1x2000 px (width x height): too thin for the test-time transforms "
                   f"(its shorter side resizes to 0 px at scale 56; at least 1 px needed)"},
        {"image_id": 5, "file_name": "thin.png",
         "reason": f"{images}/thin.png: 2000x1 px (width x height): too thin for the test-time transforms "
                   f"(its shorter side resizes to 0 px at scale 56; at least 1 px needed)"},
    ]


ODD_SIZES = [(1, 2000), (2000, 1), (1, 40), (40, 1), (2, 300), (3, 600), (7, 1000), (1, 120), (1, 96), (3, 3), (1, 1),
             (5, 5000), (333, 1), (17, 4001)]


@pytest.mark.parametrize("scale", [56, 64, 96])
def test_the_frame_check_refuses_exactly_what_torchvision_s_resize_cannot_do(tmp_path, scale):
    from dd_core.pseudo.infer import frame_check
    from dd_core.tta.transforms import resize_transform

    coco = write_tiny_coco(tmp_path / "pile", num_images=1)
    model = labeler_from_checkpoint(save_random_checkpoint(str(tmp_path / "m.pth"), coco), TTA).model.eval()
    check, resize = frame_check(model, [scale]), resize_transform(model, scale)
    for height, width in ODD_SIZES:
        try:
            resized, _ = resize([torch.zeros(3, height, width)])
        except RuntimeError as exc:
            assert "sizes should be greater than 0" in str(exc)
            assert "resizes to 0 px at scale" in check(height, width), (height, width)
        else:
            assert check(height, width) is None, (height, width)
            assert min(resized.image_sizes[0]) >= 1


def test_teachers_also_check_the_model_s_own_scale(tmp_path):
    """Outside the transform set, the model's test scale (64 here) resizes every accepted image too:
    for a keypoint teacher's boxes, and for the student, which trains on it capped at the same max_size."""
    from dd_core.pseudo.infer import checked_scales, frame_check

    tta = {"scales": [96], "flip": False}
    kp_coco = write_tiny_coco(tmp_path / "kp", num_images=1)
    keypoints = labeler_from_checkpoint(save_random_checkpoint(str(tmp_path / "kp.pth"), kp_coco), tta)
    box_coco = write_tiny_coco(tmp_path / "box", num_images=1, task="detection")
    boxes = labeler_from_checkpoint(save_random_checkpoint(str(tmp_path / "box.pth"), box_coco, "detection"), tta)
    assert checked_scales(keypoints.model, tta) == checked_scales(boxes.model, tta) == [96, 64]
    image = torch.rand(3, 1, 120)  # 1 px high at scale 96 (longer side capped at 144 px), 0 px at 64 (96 px)
    assert frame_check(keypoints.model, [96])(1, 120) is None
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="sizes should be greater than 0"):
            keypoints.predict_fn(keypoints.model.eval(), [image])
        assert len(boxes.predict_fn(boxes.model.eval(), [image])) == 1  # the box teacher could label it, but
    with pytest.raises(RuntimeError, match="sizes should be greater than 0"):
        boxes.model.transform.train()([image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    for labeler in (keypoints, boxes):
        assert "its shorter side resizes to 0 px at scale 64" in labeler.check_image(1, 120)


@pytest.mark.parametrize("task", ["keypoints", "detection"])
def test_images_with_a_one_pixel_frame_side_label_fine(tmp_path, task):
    """Why the minimum frame side is 1 px: thinner fails, 1 px runs and gives finite predictions."""
    coco = write_tiny_coco(tmp_path / "pile", num_images=1, task=task)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco, task)
    tta = {"scales": [64, 96], "flip": True}
    labeler = labeler_from_checkpoint(ckpt, tta)
    images = tmp_path / "pile" / "images"
    sizes = {"a.png": (1, 96), "b.png": (1, 40), "c.png": (40, 1), "d.png": (3, 3), "e.png": (2, 150)}
    for i, (name, (height, width)) in enumerate(sizes.items()):
        _save(images / name, height, width, seed=i)
        assert labeler.check_image(height, width) is None
    root, shard = _shard_of(images, list(sizes))
    summary = label_shard(shard, root, str(tmp_path / "inf"), "fp", lambda: labeler, batch_size=5)
    table = read_shard(summary.url)
    assert summary.num_images == 5 and summary.num_rejected == 0 and table.num_rows > 0
    assert all(all(map(math.isfinite, box)) for box in table.column("box").to_pylist())
    assert all(map(math.isfinite, table.column("keypoints").combine_chunks().flatten().to_pylist()))


def test_a_folder_a_missing_file_and_a_forbidden_file_are_rejected_naming_the_url(tmp_path, monkeypatch):
    images = tmp_path / "pile"
    images.mkdir()
    for name in ("a.png", "forbidden.png"):
        _save(images / name, 8, 8)
    (images / "folder.png").mkdir()
    read = infer.read_image

    def read_image(url, options=None):
        if url.endswith("forbidden.png"):  # the tests run as root, for whom chmod 000 forbids nothing
            raise PermissionError(13, "Permission denied", url)
        return read(url, options)

    monkeypatch.setattr(infer, "read_image", read_image)
    root, shard = _shard_of(images, ["a.png", "folder.png", "forbidden.png", "missing.png", "a.png/b.png"])
    summary = label_shard(shard, root, str(tmp_path / "inf"), "fp", _stub_labeler)
    meta = shard_meta(read_shard(summary.url))
    assert [im["file_name"] for im in meta["images"]] == ["a.png"]
    reasons = {r["file_name"]: r["reason"] for r in meta["rejected"]}
    assert list(reasons) == ["a.png/b.png", "folder.png", "forbidden.png", "missing.png"]
    assert reasons["folder.png"].startswith(f"{images}/folder.png: a folder, not an image file (")
    assert reasons["forbidden.png"].startswith(f"{images}/forbidden.png: not allowed to read it (")
    assert reasons["missing.png"] == f"{images}/missing.png: no such file"
    assert reasons["a.png/b.png"].startswith(f"{images}/a.png/b.png: no such file")


def test_unreachable_storage_or_every_image_forbidden_fails_the_shard(tmp_path, monkeypatch):
    from dd_core.storage import StorageError

    images = tmp_path / "pile"
    images.mkdir()
    for name in ("a.png", "b.png"):
        _save(images / name, 8, 8)
    root, shard = _shard_of(images, ["a.png", "b.png"])
    read = infer.read_image

    def unreachable(url, options=None):
        if url.endswith("b.png"):
            raise StorageError(f"{url}: storage unreachable (connection refused)")
        return read(url, options)

    monkeypatch.setattr(infer, "read_image", unreachable)
    with pytest.raises(StorageError, match="b.png: storage unreachable"):
        label_shard(shard, root, str(tmp_path / "inf"), "fp", _stub_labeler)

    def expired_credentials(url, options=None):
        raise PermissionError(13, "ExpiredToken", url)

    monkeypatch.setattr(infer, "read_image", expired_credentials)
    with pytest.raises(PermissionError, match="shard-00000: the storage refused to read every one of its 2 images"):
        label_shard(shard, root, str(tmp_path / "inf"), "fp", _stub_labeler)
    assert not (tmp_path / "inf").exists()


def _fails_on_width(width: int, calls: list[int]):
    """A predict_fn that raises as torch would for images ``width`` px wide, and records batch sizes."""
    def predict(model, images):
        calls.append(len(images))
        if any(im.shape[-1] == width for im in images):
            raise RuntimeError(f"no layer takes a {width}-px-wide input")
        return _stub_labeler().predict_fn(model, images)
    return predict


def test_an_image_the_model_fails_on_alone_is_rejected_and_its_batch_labeled_one_by_one(tmp_path):
    images = tmp_path / "pile"
    images.mkdir()
    for i, name in enumerate(["a.png", "b.png", "odd.png", "c.png", "d.png"]):
        _save(images / name, 8, 50 if name == "odd.png" else 8, seed=i)
    root, shard = _shard_of(images, ["a.png", "b.png", "c.png", "d.png", "odd.png"])
    calls: list[int] = []
    summary = label_shard(shard, root, str(tmp_path / "inf"), "fp",
                          lambda: _stub_labeler(_fails_on_width(50, calls)), batch_size=3)
    meta = shard_meta(read_shard(summary.url))
    assert [im["file_name"] for im in meta["images"]] == ["a.png", "b.png", "c.png", "d.png"]
    assert meta["rejected"] == [{"image_id": 5, "file_name": "odd.png",
                                 "reason": f"{images}/odd.png: multi-transform inference failed on this image alone "
                                           f"(RuntimeError: no layer takes a 50-px-wide input)"}]
    assert calls == [3, 2, 1, 1]  # the batch without odd.png ran whole; odd.png's batch, one by one


def test_a_model_that_fails_on_every_image_fails_the_shard(tmp_path):
    images = tmp_path / "pile"
    images.mkdir()
    for name in ("a.png", "b.png"):
        _save(images / name, 8, 8)
    (images / "empty.png").write_bytes(b"")
    root, shard = _shard_of(images, ["a.png", "b.png", "empty.png"])
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="no layer takes a 8-px-wide input") as failure:
        label_shard(shard, root, str(tmp_path / "inf"), "fp", lambda: _stub_labeler(_fails_on_width(8, calls)))
    assert "failed on each of the 2 image(s) it was given" in "".join(failure.value.__notes__)
    assert calls == [2, 1, 1] and not (tmp_path / "inf").exists()


def test_a_category_id_of_2_to_the_40_reads_back_unchanged(tmp_path):
    """int32 wrapped it to 0: no pseudo-label survived, and the run still exited 0."""
    coco = write_tiny_coco(tmp_path / "pile", num_images=2, task="detection")
    coco["categories"][0]["id"] = 2**40
    for ann in coco["annotations"]:
        ann["category_id"] = 2**40
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco, "detection")
    unlabeled = list_unlabeled(str(tmp_path / "pile" / "images"))
    summary = label_shard(plan_shards(unlabeled.images, 2)[0], unlabeled.root, str(tmp_path / "inf"), "fp",
                          lambda: labeler_from_checkpoint(ckpt, TTA))
    categories = read_shard(summary.url).column("category_id").to_pylist()
    assert categories and set(categories) == {2**40}


def test_a_version_1_shard_is_recomputed(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dd_core.pseudo.infer import existing_output, shard_fingerprint

    images = tmp_path / "pile"
    images.mkdir()
    _save(images / "a.png", 8, 8)
    root, shard = _shard_of(images, ["a.png"])
    out = str(tmp_path / "inf")
    first = label_shard(shard, root, out, "fp", _stub_labeler)
    # The same shard as version 1 wrote it: same fingerprint, int32 category ids, schema_version 1.
    table = pq.read_table(first.url)
    meta = {**shard_meta(table), "schema_version": 1}
    v1 = table.set_column(2, pa.field("category_id", pa.int32(), nullable=False), table.column(2).cast(pa.int32()))
    pq.write_table(v1.replace_schema_metadata({b"omnidistill": json.dumps(meta).encode()}), first.url)
    assert existing_output(first.url, shard_fingerprint("fp", root, shard), None) is None
    assert "predictions schema version 1, expected 2" in caplog.text
    again = label_shard(shard, root, out, "fp", _stub_labeler)
    assert not again.skipped and shard_meta(read_shard(again.url))["schema_version"] == 2


def test_an_image_id_beyond_int64_is_a_clear_error_before_the_model_loads(tmp_path):
    loads: list[int] = []
    shard = Shard(0, [UnlabeledImage(1, "a.png"), UnlabeledImage(2**63, "b.png")])
    with pytest.raises(ValueError, match=r"b.png: image id 9223372036854775808 does not fit the int64 image_id"):
        label_shard(shard, str(tmp_path), str(tmp_path / "inf"), "fp", lambda: loads.append(1))
    assert not loads
    with pytest.raises(ValueError, match=r"label 1 maps to category id 9223372036854775808"):
        ShardColumns({1: 2**63})
