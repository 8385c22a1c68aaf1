import contextlib
import json
import math
import os
import time
from dataclasses import replace

import pyarrow.dataset as ds
import pytest
from PIL import Image

from dd_core.data.unlabeled import Shard, UnlabeledImage, list_unlabeled, plan_shards, write_plan
from dd_core.ops.caches import TeacherCache
from dd_core.ops.clock import StageClock
from dd_core.ops.labeling import LabelingOps
from dd_core.pseudo import reading
from dd_core.pseudo.fingerprint import checkpoint_fingerprint, shard_fingerprint
from dd_core.pseudo.infer import (
    ShardJob,
    ShardRun,
    done_shards,
    existing_output,
    finished_shards,
    pseudo_label_planned_shard,
    pseudo_label_shard,
)
from dd_core.pseudo.teacher import teacher_from_checkpoint
from dd_core.storage.parquet import ShardError, read_shard, shard_meta
from dd_core.tta.settings import MultiTransformSettings
from tests.conftest import save_random_checkpoint, write_tiny_coco
from tests.pseudo.helpers import TTA, TTA_BOXES, planned, save_image, setup_pile, shard_of, stub_teacher


def test_label_shard_writes_rows_and_is_idempotent(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path)
    fp = checkpoint_fingerprint(ckpt, TTA)
    loads = []

    def make():
        loads.append(1)
        return teacher_from_checkpoint(ckpt, TTA)

    shard = plan_shards(unlabeled.images, 8)[0]
    first = pseudo_label_shard(shard, unlabeled.root, str(tmp_path / "inf"), fp, ShardRun(make, batch_size=2))
    assert not first.skipped and first.num_images == 5 and first.num_rows > 0
    table = read_shard(first.url)
    assert set(table.column("image_id").to_pylist()) <= {im.id for im in shard.images}
    assert set(table.column("num_transforms").to_pylist()) == {4}
    assert all(len(k) == 34 and len(s) == 17 for k, s in zip(table.column("keypoints").to_pylist(),
                                                             table.column("keypoint_scores").to_pylist()))
    assert [im["id"] for im in shard_meta(table)["images"]] == [im.id for im in shard.images]
    mtime = os.stat(first.url).st_mtime_ns
    again = pseudo_label_shard(shard, unlabeled.root, str(tmp_path / "inf"), fp, ShardRun(make))
    assert again.skipped and again.num_rows == first.num_rows and loads == [1]  # the model was not even loaded
    assert os.stat(first.url).st_mtime_ns == mtime
    other = pseudo_label_shard(shard, unlabeled.root, str(tmp_path / "inf"), "another-model", ShardRun(make))
    assert not other.skipped and loads == [1, 1]
    # A caller that has just found the shard not done (the flow's listing) skips the look: it computes.
    redone = pseudo_label_shard(shard, unlabeled.root, str(tmp_path / "inf"), "another-model", ShardRun(make),
                                check_done=False)
    assert not redone.skipped and loads == [1, 1, 1] and redone.num_rows == other.num_rows


def test_undecodable_images_are_rejected_and_the_shard_succeeds(tmp_path):
    _, ckpt, _ = setup_pile(tmp_path, n=3)
    images = tmp_path / "pile" / "images"
    (images / "004.png").write_bytes(b"")
    (images / "005.png").write_bytes(b"not an image at all")
    (images / "006.png").write_bytes((images / "001.png").read_bytes()[:100])
    # A decompression bomb: 20,000 x 20,000 pixels in a few kB (PIL refuses it before decoding).
    Image.new("1", (20_000, 20_000)).save(images / "007.png", optimize=True)
    assert (images / "007.png").stat().st_size < 200_000
    unlabeled = list_unlabeled(str(images))
    write_plan(unlabeled, 10, str(tmp_path / "plan.json"))
    summary = planned(ckpt, str(tmp_path / "plan.json"), str(tmp_path / "inf"), checkpoint_fingerprint(ckpt, TTA), 0)
    assert summary.num_images == 3 and summary.num_rejected == 4
    rejected = shard_meta(read_shard(summary.url))["rejected"]
    assert [r["file_name"] for r in rejected] == ["004.png", "005.png", "006.png", "007.png"]
    assert "empty file" in rejected[0]["reason"] and "not a readable image" in rejected[1]["reason"]
    assert "not a readable image" in rejected[2]["reason"]
    assert rejected[3]["reason"] == (f"{images}/007.png: 400,000,000 pixels, more than the 150,000,000 allowed "
                                     f"(max_pixels); refused before decoding")


def test_shards_form_one_dataset(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=5)
    write_plan(unlabeled, 2, str(tmp_path / "plan.json"))
    fp = checkpoint_fingerprint(ckpt, TTA)
    for i in range(3):
        planned(ckpt, str(tmp_path / "plan.json"), str(tmp_path / "inf"), fp, i)
    table = ds.dataset(str(tmp_path / "inf"), format="parquet").to_table()
    assert set(table.column("image_id").to_pylist()) <= {1, 2, 3, 4, 5}
    assert sorted(os.listdir(tmp_path / "inf")) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]


def test_a_shard_of_other_images_is_recomputed_even_with_the_same_model(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=4)
    fp = checkpoint_fingerprint(ckpt, TTA)
    out = str(tmp_path / "inf")
    make = lambda: teacher_from_checkpoint(ckpt, TTA)  # noqa: E731
    first = pseudo_label_shard(plan_shards(unlabeled.images, 3)[0], unlabeled.root, out, fp, ShardRun(make))
    # The pile grew and the plan changed: shard-00000 now holds other images.
    shifted = plan_shards(unlabeled.images[1:], 3)[0]
    again = pseudo_label_shard(shifted, unlabeled.root, out, fp, ShardRun(make))
    assert not first.skipped and not again.skipped
    assert [im["id"] for im in shard_meta(read_shard(again.url))["images"]] == [2, 3, 4]


def test_finished_shards_reads_summaries_from_footers_and_names_every_missing_shard(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=2)
    fp = checkpoint_fingerprint(ckpt, TTA)
    plan, out = str(tmp_path / "inf" / "_plan.json"), str(tmp_path / "inf")
    write_plan(unlabeled, 1, plan)
    labeled = [planned(ckpt, plan, out, fp, i) for i in range(2)]
    assert finished_shards(plan, out, fp) == [replace(s, skipped=True) for s in labeled]
    assert [s.name for s in finished_shards(plan, out, fp, indices=[1])] == ["shard-00001"]
    with pytest.raises(ShardError, match="shard-00000.parquet, .*shard-00001.parquet"):
        finished_shards(plan, out, "another-model")
    with pytest.raises(IndexError, match="no shard 2"):
        finished_shards(plan, out, fp, indices=[2])
    os.remove(labeled[1].url)
    with pytest.raises(ShardError, match=r"1 shard\(s\) missing .*shard-00001\.parquet"):
        finished_shards(plan, out, fp)


def test_done_shards_are_the_planned_ones_of_this_fingerprint_found_in_one_listing(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=4)
    fp = checkpoint_fingerprint(ckpt, TTA)
    plan, out = str(tmp_path / "inf" / "_plan.json"), str(tmp_path / "inf")
    write_plan(unlabeled, 1, plan)
    assert done_shards(plan, out, fp) == {}  # nothing labeled yet (no folder even)
    labeled = {i: planned(ckpt, plan, out, fp, i) for i in (0, 2, 3)}
    (tmp_path / "inf" / "shard-00003.parquet").write_bytes(b"cut short")  # a torn write is not done
    (tmp_path / "inf" / "shard-00099.parquet").write_bytes(b"not planned")  # ignored, never opened
    done = done_shards(plan, out, fp, threads=3)
    assert done == {0: replace(labeled[0], skipped=True), 2: replace(labeled[2], skipped=True)}
    assert done_shards(plan, out, "another-model") == {}


def test_shard_tasks_read_their_plan_once_and_a_re_plan_again(tmp_path, monkeypatch):
    from dd_core.data.unlabeled import read_plan
    from dd_core.ops import plans as plans_module
    from dd_core.ops.caches import TeacherCache
    from dd_core.ops.plans import PlanCache
    from dd_core.pseudo.infer import pseudo_label_planned_shard

    _, ckpt, unlabeled = setup_pile(tmp_path, n=4)
    plan, out = str(tmp_path / "inf" / "_plan.json"), str(tmp_path / "inf")
    reads = []
    monkeypatch.setattr(plans_module, "read_plan", lambda url, opts=None: reads.append(url) or read_plan(url, opts))
    job = ShardJob(ckpt, plan, out, TTA, checkpoint_fingerprint(ckpt, TTA))
    teachers, plans = TeacherCache(), PlanCache()
    ops = LabelingOps(teachers=teachers, plans=plans)
    label = lambda i: pseudo_label_planned_shard(job, i, device="cpu", ops=ops)  # noqa: E731
    write_plan(unlabeled, 1, plan)
    assert [label(i).num_images for i in range(4)] == [1, 1, 1, 1] and reads == [plan]
    write_plan(unlabeled, 3, plan)  # the next run re-plans: shards of 3
    assert [label(i).num_images for i in range(2)] == [3, 1] and reads == [plan, plan]


def test_a_finished_shard_returns_without_taking_what_hold_guards(tmp_path):
    _, ckpt, unlabeled = setup_pile(tmp_path, n=2)
    fp, held = checkpoint_fingerprint(ckpt, TTA), []

    @contextlib.contextmanager
    def hold():
        held.append("taken")
        yield
        held.append("released")

    shard = plan_shards(unlabeled.images, 8)[0]
    label = lambda: pseudo_label_shard(shard, unlabeled.root, str(tmp_path / "inf"), fp,  # noqa: E731
                                       ShardRun(lambda: teacher_from_checkpoint(ckpt, TTA)), ops=LabelingOps(hold=hold))
    assert not label().skipped and held == ["taken", "released"]
    assert label().skipped and held == ["taken", "released"]  # done: neither the slot nor the model


# --- hardening: one odd image is rejected, never fails its shard ---------------------------------


def test_too_thin_images_are_rejected_before_inference_saying_why(tmp_path):
    _, ckpt, _ = setup_pile(tmp_path, n=2)
    images = tmp_path / "pile" / "images"
    save_image(images / "thin.png", 1, 2000)     # 0 px high at every scale: interpolate raised
    save_image(images / "tall.png", 2000, 1)
    save_image(images / "narrow.png", 1, 40)     # 2 px high at scale 56: labeled
    root, shard = shard_of(images, ["001.png", "002.png", "narrow.png", "tall.png", "thin.png"])
    summary = pseudo_label_shard(shard, root, str(tmp_path / "inf"), checkpoint_fingerprint(ckpt, TTA),
                                 ShardRun(lambda: teacher_from_checkpoint(ckpt, TTA), batch_size=5))
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


@pytest.mark.parametrize("task", ["keypoints", "detection"])
def test_images_with_a_one_pixel_frame_side_label_fine(tmp_path, task):
    """Why the minimum frame side is 1 px: thinner fails, 1 px runs and gives finite predictions."""
    coco = write_tiny_coco(tmp_path / "pile", num_images=1, task=task)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco, task)
    tta = MultiTransformSettings(scales=(64, 96)).for_task(task)
    teacher = teacher_from_checkpoint(ckpt, tta)
    images = tmp_path / "pile" / "images"
    sizes = {"a.png": (1, 96), "b.png": (1, 40), "c.png": (40, 1), "d.png": (3, 3), "e.png": (2, 150)}
    for i, (name, (height, width)) in enumerate(sizes.items()):
        save_image(images / name, height, width, seed=i)
        assert teacher.check_image(height, width) is None
    root, shard = shard_of(images, list(sizes))
    summary = pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(lambda: teacher, batch_size=5))
    table = read_shard(summary.url)
    assert summary.num_images == 5 and summary.num_rejected == 0 and table.num_rows > 0
    assert all(all(map(math.isfinite, box)) for box in table.column("box").to_pylist())
    assert all(map(math.isfinite, table.column("keypoints").combine_chunks().flatten().to_pylist()))


def test_a_folder_a_missing_file_and_a_forbidden_file_are_rejected_naming_the_url(tmp_path, monkeypatch):
    images = tmp_path / "pile"
    images.mkdir()
    for name in ("a.png", "forbidden.png"):
        save_image(images / name, 8, 8)
    (images / "folder.png").mkdir()
    read = reading.read_reduced

    def read_reduced(url, options=None, *limits):
        if url.endswith("forbidden.png"):  # the tests run as root, for whom chmod 000 forbids nothing
            raise PermissionError(13, "Permission denied", url)
        return read(url, options, *limits)

    monkeypatch.setattr(reading, "read_reduced", read_reduced)
    root, shard = shard_of(images, ["a.png", "folder.png", "forbidden.png", "missing.png", "a.png/b.png"])
    summary = pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(stub_teacher))
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
        save_image(images / name, 8, 8)
    root, shard = shard_of(images, ["a.png", "b.png"])
    read = reading.read_reduced

    def unreachable(url, options=None, *limits):
        if url.endswith("b.png"):
            raise StorageError(f"{url}: storage unreachable (connection refused)")
        return read(url, options, *limits)

    monkeypatch.setattr(reading, "read_reduced", unreachable)
    with pytest.raises(StorageError, match="b.png: storage unreachable"):
        pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(stub_teacher))

    def expired_credentials(url, options=None, *limits):
        raise PermissionError(13, "ExpiredToken", url)

    monkeypatch.setattr(reading, "read_reduced", expired_credentials)
    with pytest.raises(PermissionError, match="shard-00000: the storage refused to read every one of its 2 images"):
        pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(stub_teacher))
    assert not (tmp_path / "inf").exists()


def _fails_on_width(width: int, calls: list[int]):
    """A prediction that raises as torch would for images ``width`` px wide, and records batch sizes."""
    def predict(images):
        calls.append(len(images))
        if any(im.shape[-1] == width for im in images):
            raise RuntimeError(f"no layer takes a {width}-px-wide input")
        return stub_teacher().model(images)
    return predict


def test_an_image_the_model_fails_on_alone_is_rejected_and_its_batch_labeled_one_by_one(tmp_path):
    images = tmp_path / "pile"
    images.mkdir()
    for i, name in enumerate(["a.png", "b.png", "odd.png", "c.png", "d.png"]):
        save_image(images / name, 8, 50 if name == "odd.png" else 8, seed=i)
    root, shard = shard_of(images, ["a.png", "b.png", "c.png", "d.png", "odd.png"])
    calls: list[int] = []
    summary = pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp",
                                 ShardRun(lambda: stub_teacher(_fails_on_width(50, calls)), batch_size=3))
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
        save_image(images / name, 8, 8)
    (images / "empty.png").write_bytes(b"")
    root, shard = shard_of(images, ["a.png", "b.png", "empty.png"])
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="no layer takes a 8-px-wide input") as failure:
        pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp",
                           ShardRun(lambda: stub_teacher(_fails_on_width(8, calls))))
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
    summary = pseudo_label_shard(plan_shards(unlabeled.images, 2)[0], unlabeled.root, str(tmp_path / "inf"), "fp",
                                 ShardRun(lambda: teacher_from_checkpoint(ckpt, TTA_BOXES)))
    categories = read_shard(summary.url).column("category_id").to_pylist()
    assert categories and set(categories) == {2**40}


def test_a_version_1_shard_is_recomputed(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tmp_path / "pile"
    images.mkdir()
    save_image(images / "a.png", 8, 8)
    root, shard = shard_of(images, ["a.png"])
    out = str(tmp_path / "inf")
    first = pseudo_label_shard(shard, root, out, "fp", ShardRun(stub_teacher))
    # The same shard as version 1 wrote it: same fingerprint, int32 category ids, schema_version 1.
    table = pq.read_table(first.url)
    meta = {**shard_meta(table), "schema_version": 1}
    v1 = table.set_column(2, pa.field("category_id", pa.int32(), nullable=False), table.column(2).cast(pa.int32()))
    pq.write_table(v1.replace_schema_metadata({b"omnidistill": json.dumps(meta).encode()}), first.url)
    assert existing_output(first.url, shard_fingerprint("fp", root, shard), None) is None
    assert "predictions schema version 1, expected 2" in caplog.text
    again = pseudo_label_shard(shard, root, out, "fp", ShardRun(stub_teacher))
    assert not again.skipped and shard_meta(read_shard(again.url))["schema_version"] == 2


def test_an_image_id_beyond_int64_is_a_clear_error_before_the_model_loads(tmp_path):
    loads: list[int] = []
    shard = Shard(0, [UnlabeledImage(1, "a.png"), UnlabeledImage(2**63, "b.png")])
    with pytest.raises(ValueError, match=r"b.png: image id 9223372036854775808 does not fit the int64 image_id"):
        pseudo_label_shard(shard, str(tmp_path), str(tmp_path / "inf"), "fp", ShardRun(lambda: loads.append(1)))
    assert not loads


def test_a_stage_clock_times_reading_and_inference_where_they_happen(tmp_path):
    images = tmp_path / "pile"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        save_image(images / name, 8, 8)
    root, shard = shard_of(images, ["a.png", "b.png", "c.png"])
    edges: list[str] = []

    def slow(batch):
        time.sleep(0.05)
        return stub_teacher().model(batch)

    clock = StageClock(sync=lambda: edges.append("sync"))
    pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(lambda: stub_teacher(slow), batch_size=2),
                       ops=LabelingOps(clock=clock))
    assert set(clock.seconds) == {"read", "infer"}
    assert clock.seconds["infer"] >= 0.1 > clock.seconds["read"]  # two batches, 50 ms each
    assert len(edges) == 2 * 4  # each of the 2 batches: read and infer, synchronised at both edges


def test_a_shard_job_travels_as_json_parameters_and_back():
    job = ShardJob("s3://b/teacher.pth", "s3://b/inference/_plan.json", "s3://b/inference", TTA_BOXES, "fp", "cuda", 2)
    parameters = job.parameters()
    assert json.loads(json.dumps(parameters)) == parameters
    assert parameters["tta"] == {"scales": [56, 64], "flip": True, "nms_threshold": 0.5, "voting_threshold": 0.8,
                                 "scoring": "ID", "union": "raw"}
    assert ShardJob.from_parameters(parameters) == job


def test_a_fifo_a_device_and_a_name_too_long_are_rejected_not_a_hang_or_a_failed_shard(tmp_path):
    images = tmp_path / "pile"
    images.mkdir()
    save_image(images / "a.png", 8, 8)
    os.mkfifo(images / "fifo.png")
    (images / "zero.png").symlink_to("/dev/zero")
    long_name = "d" * 300 + "/x.png"  # under the 1,024-byte limit, but no file system takes a 300-byte name
    root, shard = shard_of(images, ["a.png", "fifo.png", "zero.png", long_name])
    summary = pseudo_label_shard(shard, root, str(tmp_path / "inf"), "fp", ShardRun(stub_teacher))
    meta = shard_meta(read_shard(summary.url))
    assert [im["file_name"] for im in meta["images"]] == ["a.png"]
    reasons = {r["file_name"]: r["reason"] for r in meta["rejected"]}
    assert reasons["fifo.png"].endswith("fifo.png: not a regular file (a FIFO, socket or device)")
    assert reasons["zero.png"].endswith("zero.png: not a regular file (a FIFO, socket or device)")
    assert reasons[long_name].startswith(f"{images}/{long_name}: not readable (") and "too long" in reasons[long_name]


def test_a_teacher_on_its_device_already_is_not_moved_again_shard_after_shard():
    import torch

    from dd_core.pseudo.infer import _on_device

    class Counted(torch.nn.Linear):
        moves = 0

        def _apply(self, fn, recurse=True):
            Counted.moves += 1
            return super()._apply(fn, recurse)

    model = Counted(2, 2).to(torch.float64)  # .to(dtype) walks the module: one move
    assert _on_device(model, "cpu") is model and Counted.moves == 1
    assert _on_device(torch.nn.Module(), "cpu") is not None  # no parameters: moved, as before
    if torch.cuda.is_available():
        assert next(_on_device(model, "cuda").parameters()).is_cuda and Counted.moves == 2


def test_a_shard_gets_the_same_rows_whichever_shard_a_fresh_teacher_labels_first(tmp_path):
    """A worker or a resumed run may start at any shard. torchvision's RoI poolers would take their
    feature scales from the first batch they see, and a 66-px high image (padded to 96 px) makes them
    twice too large for the rest of the model's life: shard 1 labeled first came out as garbage."""
    coco = write_tiny_coco(tmp_path / "coco", num_images=2)
    ckpt = save_random_checkpoint(str(tmp_path / "model_0000000.pth"), coco)
    (tmp_path / "pile").mkdir()
    for i, height in enumerate([64, 64, 66, 64]):  # shard 0: two 64x64 images; shard 1 starts 66 px high
        save_image(tmp_path / "pile" / f"{i:02d}.png", height, 64, seed=i)
    plan, fp = str(tmp_path / "plan.json"), checkpoint_fingerprint(ckpt, TTA)
    write_plan(list_unlabeled(str(tmp_path / "pile")), 2, plan)
    job = ShardJob(ckpt, plan, str(tmp_path / "in-order"), TTA, fp)
    in_order = LabelingOps(teachers=TeacherCache())
    for i in (0, 1):
        pseudo_label_planned_shard(job, i, device="cpu", ops=in_order)
    alone = pseudo_label_planned_shard(replace(job, out_dir=str(tmp_path / "alone")), 1, device="cpu",
                                       ops=LabelingOps(teachers=TeacherCache()))  # a fresh teacher
    expected = read_shard(str(tmp_path / "in-order" / "shard-00001.parquet"))
    assert expected.num_rows > 0 and read_shard(alone.url).equals(expected)
