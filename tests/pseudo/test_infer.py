import os
from dataclasses import replace

import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

from dd_core.data.unlabeled import UnlabeledImage, list_unlabeled, plan_shards, write_plan
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
    import torch

    from dd_core.pseudo import infer

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
