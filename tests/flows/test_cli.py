import json

import pytest
from pycocotools.coco import COCO

from flows.cli import main
from tests.conftest import save_random_checkpoint, write_tiny_coco


@pytest.mark.parametrize("command", [[], ["synth"], ["run"], ["demo"], ["evaluate"], ["label"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: omnidistill" in capsys.readouterr().out


def test_synth_writes_a_coco_set_pycocotools_reads(tmp_path):
    assert main(["synth", "keypoints", str(tmp_path / "kp"), "--images", "3", "--seed", "4", "--size", "64"]) == 0
    coco = COCO(str(tmp_path / "kp" / "annotations.json"))
    assert len(coco.getImgIds()) == 3 and coco.loadCats(1)[0]["name"] == "person"
    assert main(["synth", "detection", str(tmp_path / "det"), "--images", "2", "--style", "sports"]) == 0
    assert len(COCO(str(tmp_path / "det" / "annotations.json")).getCatIds()) >= 6


def test_synth_empty_fraction_makes_images_without_objects(tmp_path, capsys):
    assert main(["synth", "keypoints", str(tmp_path / "kp"), "--images", "12", "--seed", "5",
                 "--empty-fraction", "0.5"]) == 0
    coco = json.loads((tmp_path / "kp" / "annotations.json").read_text())
    empty = len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]})
    assert 0 < empty < 12
    assert f"wrote 12 images ({empty} without objects)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "keypoints", str(tmp_path / "x"), "--empty-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "--empty-fraction" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_synth_unknown_style_is_a_clear_error(tmp_path, capsys):
    assert main(["synth", "keypoints", str(tmp_path / "x"), "--images", "1", "--style", "mars"]) == 2
    assert "unknown synthetic style 'mars'" in capsys.readouterr().err


def test_evaluate_prints_coco_stats_as_json(tmp_path, capsys):
    coco = write_tiny_coco(tmp_path / "val", num_images=3)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "val"), "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats) == {"AP", "AP50", "AP75", "APm", "APl"}
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "val" / "annotations.json"),
                 "--tta", "--scales", "56", "64", "--quiet"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(stats)


def test_evaluate_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    write_tiny_coco(tmp_path / "val", num_images=1)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(tmp_path / "val")]) == 2
    assert "none.pth: no such file" in capsys.readouterr().err


def test_label_writes_pseudo_labels_for_a_folder(tmp_path, capsys):
    coco = write_tiny_coco(tmp_path / "pile", num_images=4)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    out = tmp_path / "out" / "pseudo.json"
    assert main(["label", "--checkpoint", ckpt, "--images", str(tmp_path / "pile" / "images"), "--out", str(out),
                 "--scales", "64", "--score-threshold", "0.0", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    pseudo = COCO(str(out))
    assert summary["images"] == 4 and len(pseudo.getImgIds()) == 4
    assert summary["instances"] == len(pseudo.getAnnIds()) > 0
    capsys.readouterr()  # pycocotools printed its loading messages
    # Calibrated on a labeled set: as many instances per image as it has (1 per image here).
    assert main(["label", "--checkpoint", ckpt, "--images", str(tmp_path / "pile" / "images"), "--out",
                 str(tmp_path / "cal"), "--scales", "64", "--labeled", str(tmp_path / "pile" / "annotations.json"),
                 "--shard-size", "3", "--quiet"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["instances"] == 4 and calibrated["annotations"].endswith("cal/annotations.json")
    shards = sorted(p.name for p in (tmp_path / "cal" / "annotations.predictions").glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet", "shard-00001.parquet"]  # 4 images, shards of 3


def test_label_again_keeps_its_finished_shards_and_labels_the_missing_one(tmp_path, capsys):
    coco = write_tiny_coco(tmp_path / "pile", num_images=4)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    args = ["label", "--checkpoint", ckpt, "--images", str(tmp_path / "pile" / "images"), "--out",
            str(tmp_path / "out"), "--scales", "64", "--score-threshold", "0.0", "--shard-size", "2", "--quiet"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    shards = tmp_path / "out" / "annotations.predictions"
    kept = (shards / "shard-00000.parquet").stat()
    (shards / "shard-00001.parquet").unlink()  # as if interrupted before its last shard
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (shards / "shard-00000.parquet").stat().st_mtime_ns == kept.st_mtime_ns  # not rewritten
    assert (shards / "shard-00001.parquet").exists()
    assert (again["images"], again["instances"]) == (first["images"], first["instances"]) == (4, again["instances"])


def test_label_max_pixels_rejects_larger_images_and_another_limit_relabels(tmp_path, capsys):
    from PIL import Image

    coco = write_tiny_coco(tmp_path / "pile", num_images=3)  # 64 x 64: 4,096 pixels
    Image.new("RGB", (100, 80), "white").save(tmp_path / "pile" / "images" / "wide.png")  # 8,000 pixels
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    args = ["label", "--checkpoint", ckpt, "--images", str(tmp_path / "pile" / "images"), "--out",
            str(tmp_path / "out"), "--scales", "64", "--score-threshold", "0.0", "--quiet"]
    assert main([*args, "--max-pixels", "7999"]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert (limited["images"], limited["rejected"]) == (3, 1)
    shard = tmp_path / "out" / "annotations.predictions" / "shard-00000.parquet"
    import pyarrow.parquet as pq

    assert "more than the 7,999 allowed (max_pixels)" in str(pq.read_metadata(shard).metadata)
    assert main([*args, "--max-pixels", "8000"]) == 0  # another limit: the finished shard is labeled again
    assert json.loads(capsys.readouterr().out)["images"] == 4
    pseudo = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [(im["file_name"], im["width"], im["height"]) for im in pseudo["images"] if im["file_name"] == "wide.png"] \
        == [("wide.png", 100, 80)]


def test_detection_checkpoint_evaluates_with_box_voting_tta_and_labels(tmp_path, capsys):
    coco = write_tiny_coco(tmp_path / "val", num_images=3, task="detection")
    ckpt = save_random_checkpoint(str(tmp_path / "det.pth"), coco, task="detection")
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "val"), "--tta", "--scales", "56", "64",
                 "--quiet"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert main(["label", "--checkpoint", ckpt, "--images", str(tmp_path / "val" / "images"), "--out",
                 str(tmp_path / "det"), "--scales", "56", "64", "--labeled", str(tmp_path / "val" / "annotations.json"),
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    pseudo = COCO(summary["annotations"])
    assert summary["instances"] == 3 == len(pseudo.getAnnIds())  # the labeled set's 1 box per image
    assert all("keypoints" not in a for a in pseudo.loadAnns(pseudo.getAnnIds()))


def _run_config(tmp_path) -> str:
    import yaml

    from tests.flows.conftest import local_config, make_sets

    make_sets(tmp_path, (2, 1, 1))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(local_config(tmp_path).model_dump(mode="json")))
    return str(path)


@pytest.mark.parametrize("override, field", [
    ("run_id=*", "run_id: Value error, must be a plain name"),
    ("run_id=x::y", "run_id: Value error, must be a plain name"),
    ("device=bogus", "device: Value error, expected auto, cpu, cuda, cuda:N or mps"),
    ("teacher.lr=.inf", "teacher.lr: Input should be a finite number"),
    ("model.max_size=1", "model: Value error, max_size 1 is below"),
])
def test_bad_config_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, override, field):
    config = _run_config(tmp_path)
    assert main(["run", config, "--set", override]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and field in captured.err
    assert captured.err.startswith(f"omnidistill run: error: {config}: invalid configuration: ")
    assert "Traceback" not in captured.err + captured.out and not (tmp_path / "store").exists()


def test_bad_unlabeled_entry_is_refused_before_training(tmp_path, capsys):
    config = _run_config(tmp_path)
    (tmp_path / "list.txt").write_text("a.png\nhttp://example.com/b.png\n")
    assert main(["run", config, "--set", f"unlabeled.images={tmp_path}/list.txt"]) == 2
    err = capsys.readouterr().err
    assert err == (f"omnidistill run: error: {tmp_path}/list.txt: line 2: image path must be a relative path inside "
                   "the image root, got 'http://example.com/b.png'\n")
    assert not (tmp_path / "store").exists()


def test_verbose_shows_the_traceback_before_the_one_line(tmp_path, capsys):
    write_tiny_coco(tmp_path / "val", num_images=1)
    args = ["evaluate", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(tmp_path / "val")]
    assert main(args + ["--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].endswith("none.pth: no such file")
    assert main(["--verbose", *args]) == 2 and "Traceback" in capsys.readouterr().err
    assert main(args) == 2 and "Traceback" not in capsys.readouterr().err


def test_error_line_is_one_bounded_line_naming_unexpected_error_types():
    from flows.cli import error_line

    assert error_line(ValueError("x.json: images[0]: bad")) == "x.json: images[0]: bad"
    assert error_line(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    assert error_line(RuntimeError("torchrun exited with code 1; last output:\nTraceback ...")) == \
        "RuntimeError: torchrun exited with code 1; last output: [...]"
    long = error_line(ValueError("n" * 10_000_000))
    assert len(long) == 2006 and long.endswith(" [...]")


def test_a_run_failing_inside_the_flow_ends_with_its_error_in_one_line(tmp_path, capfd, prefect_harness, monkeypatch):
    import dd_core.config.inputs as inputs

    checked = []  # the CLI checks the inputs; the flow it starts trusts that check
    monkeypatch.setattr(inputs, "_check_unlabeled", lambda *a, check=inputs._check_unlabeled: checked.append(check(*a)))
    config = _run_config(tmp_path)
    assert main(["run", config, "--set", "teacher.lr=1e12", "--set", "teacher.iterations=3"]) == 2
    assert len(checked) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error logging to API" not in err
    assert err.splitlines()[-1].startswith("omnidistill run: error: loss is nan at iteration 1"), err[-3000:]


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "argument --batch-size: expected 1 to 1024, got 0"),
    (["--scales", "64", "5000"], "argument --scales: expected 1 to 4096, got 5000"),
    (["--score-threshold", "nan"], "argument --score-threshold: expected 0 to 1, got nan"),
    (["--shard-size", "0"], "argument --shard-size: expected 1 to 1000000, got 0"),
    (["--max-pixels", "0"], "argument --max-pixels: expected 1 to 1000000000000000, got 0"),
])
def test_label_refuses_settings_run_would_refuse(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "--checkpoint", "m.pth", "--images", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_device_is_one_line(tmp_path, capsys):
    write_tiny_coco(tmp_path / "val", num_images=1)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), json.loads((tmp_path / "val/annotations.json").read_text()))
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "val"), "--device", "bogus"]) == 2
    assert capsys.readouterr().err == ("omnidistill evaluate: error: device 'bogus': expected auto, cpu, cuda, "
                                       "cuda:N or mps\n")


HANGING_EXIT_HOOK = """
import threading
threading._register_atexit(threading.Event().wait)  # as Prefect's drain, waiting on a server that is gone
from flows.cli import exit_within
exit_within(3, 0.5)
raise SystemExit(3)
"""


def test_the_command_exits_with_its_code_even_when_an_exit_hook_hangs():
    import subprocess
    import sys
    import time
    from pathlib import Path

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HANGING_EXIT_HOOK], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stderr == ""
    assert time.monotonic() - started < 20


GARBAGE_AT_EXIT = """
import sys
import flows.cli

class Writer:  # as an interrupted stage's writer: in a cycle, finished only by its finalizer
    def __del__(self):
        open(sys.argv[1], "w").write("finished")

def main():
    writer = Writer()
    writer.me = writer
    return 4

flows.cli.main = main
flows.cli.entry()
"""


def test_the_commands_exit_still_finalizes_the_garbage_it_leaves(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", GARBAGE_AT_EXIT, str(tmp_path / "out")],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and done.stderr == ""
    assert (tmp_path / "out").read_text() == "finished"


def _tree(folder) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder): to check that nothing was written."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture
def label_inputs(tmp_path):
    """A labeled set ``lab/`` (annotations.json + images/), its checkpoint and an image-only list json."""
    coco = write_tiny_coco(tmp_path / "lab", num_images=2)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), coco)
    listing = {"info": {"description": "my list"}, "licenses": [{"id": 1, "name": "mine"}],
               "images": coco["images"]}
    (tmp_path / "lab" / "list.json").write_text(json.dumps(listing))
    (tmp_path / "link.json").symlink_to(tmp_path / "lab" / "list.json")
    return tmp_path, ckpt


@pytest.mark.parametrize("images, out, extra, message", [
    # The image list given as --out, spelled in every way that names the same file.
    ("lab/list.json", "lab/list.json", [], "pseudo-label json {out} over the --images input {images};"),
    ("lab/list.json", "./lab/../lab/list.json", [], "over the --images input"),
    ("lab/list.json", "file://{tmp}/lab/list.json", [], "over the --images input"),
    ("lab/list.json", "link.json", [], "over the --images input"),
    ("link.json", "lab/list.json", [], "over the --images input"),
    # The labeled json, as a file and as the folder whose annotations.json label would write.
    ("lab/images", "lab/annotations.json", ["--labeled", "lab/annotations.json"], "over the --labeled input"),
    ("lab/images", "lab", ["--labeled", "./lab/annotations.json"], "over the --labeled input"),
    # Inside an input: the images folder, the checkpoint (a file is no folder), the --root.
    ("lab/images", "lab/images", [], "inside the --images input"),
    ("lab/images", "lab/images/pseudo.json", [], "inside the --images input"),
    ("lab/images", "m.pth", [], "inside the --checkpoint input"),
    ("lab/list.json", "lab/images/x.json", ["--root", "lab/images"], "inside the --root input"),
    # Its thresholds over an input; an input inside its predictions folder.
    ("lab/images", "o/p.json", ["--labeled", "o/p.thresholds.json"], "its thresholds o/p.thresholds.json over the "
     "--labeled input o/p.thresholds.json;"),
    ("o/p.predictions/sub", "o/p.json", [], "the --images input o/p.predictions/sub lies inside o/p.predictions, "
     "the folder where --out keeps its predictions"),
])
def test_label_refuses_an_out_that_is_or_holds_an_input(label_inputs, capsys, monkeypatch, images, out, extra,
                                                        message):
    tmp, ckpt = label_inputs
    monkeypatch.chdir(tmp)  # relative spellings resolve from here
    (tmp / "o" / "p.predictions" / "sub").mkdir(parents=True)
    (tmp / "o" / "p.thresholds.json").write_text('{"thresholds": {}}')
    before = _tree(tmp)
    out = out.format(tmp=tmp)
    args = ["label", "--checkpoint", ckpt, "--images", images, "--out", out, "--scales", "64", "--quiet", *extra]
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 2  # --overwrite never allows replacing an input
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert err == f"{first}\n{first}\n" and first.startswith("omnidistill label: error: ")
    assert message.format(tmp=tmp, out=out, images=images) in first
    assert _tree(tmp) == before  # nothing written: no json, no thresholds, no predictions folder


def test_label_refuses_to_replace_a_json_it_did_not_write(label_inputs, capsys):
    tmp, ckpt = label_inputs
    truth = (tmp / "lab" / "annotations.json").read_bytes()
    args = ["label", "--checkpoint", ckpt, "--images", str(tmp / "lab" / "images"), "--out", str(tmp / "lab"),
            "--scales", "64", "--score-threshold", "0", "--quiet"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"omnidistill label: error: {tmp}/lab/annotations.json: exists and omnidistill label did not write it "
        f"(no info.description 'omnidistill pseudo-labels' with {tmp}/lab/annotations.thresholds.json beside it); "
        "pass --overwrite to replace it, or choose another --out\n")
    assert (tmp / "lab" / "annotations.json").read_bytes() == truth
    assert sorted(p.name for p in (tmp / "lab").iterdir()) == ["annotations.json", "images", "list.json"]
    # A thresholds file of someone else's is not replaced either.
    (tmp / "o").mkdir()
    (tmp / "o" / "annotations.thresholds.json").write_text('{"mine": 1}')
    assert main([*args[:6], str(tmp / "o"), *args[7:]]) == 2
    assert "o/annotations.thresholds.json: exists and is not the thresholds json" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp / "o").iterdir()) == ["annotations.thresholds.json"]
    # Asked to, it replaces the ground truth; what it wrote it replaces again without asking.
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((tmp / "lab" / "annotations.json").read_text())["info"] == {
        "description": "omnidistill pseudo-labels"}
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["annotations"] == f"{tmp}/lab/annotations.json"


@pytest.mark.parametrize("task, labeled_task, message", [
    ("keypoints", "detection", "{lab}/annotations.json: no category lists 'keypoints' (a detection json), but the "
     "checkpoint {ckpt} is a keypoints model (spec.task 'keypoints', 17 keypoints); expected a keypoints json"),
    ("detection", "keypoints", "{lab}/annotations.json: categories[0] (id 1) field 'name' is 'person', but in the "
     "checkpoint {ckpt} category 1 is 'box'"),
])
def test_label_refuses_a_labeled_set_of_another_task_before_inference(tmp_path, capsys, task, labeled_task, message):
    trained = write_tiny_coco(tmp_path / "train", num_images=2, task=task)
    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), trained, task=task)
    write_tiny_coco(tmp_path / "lab", num_images=2, task=labeled_task)
    assert main(["label", "--checkpoint", ckpt, "--images", str(tmp_path / "train" / "images"), "--out",
                 str(tmp_path / "out"), "--labeled", str(tmp_path / "lab" / "annotations.json"), "--scales", "64",
                 "--quiet"]) == 2
    expected = message.format(lab=tmp_path / "lab", ckpt=ckpt)
    assert capsys.readouterr().err == f"omnidistill label: error: {expected}\n"
    assert not (tmp_path / "out").exists()  # no plan, no shard, no json


@pytest.mark.parametrize("task, data_task, empty, message", [
    ("detection", "keypoints", False, "categories[0] (id 1) field 'name' is 'person', but in the checkpoint {ckpt} "
     "category 1 is 'box'"),
    ("keypoints", "detection", True, "no category lists 'keypoints' (a detection json), but the checkpoint {ckpt} "
     "is a keypoints model (spec.task 'keypoints', 17 keypoints); expected a keypoints json"),
])
def test_evaluate_refuses_a_set_of_another_task_before_inference(tmp_path, capsys, task, data_task, empty, message):
    import shutil

    ckpt = save_random_checkpoint(str(tmp_path / "m.pth"), write_tiny_coco(tmp_path / "train", 2, task=task), task=task)
    coco = write_tiny_coco(tmp_path / "val", num_images=2, task=data_task)
    if empty:  # without annotations the keypoint names were never compared
        (tmp_path / "val" / "annotations.json").write_text(json.dumps({**coco, "annotations": []}))
    shutil.rmtree(tmp_path / "val" / "images")  # inference would fail on the first image: the check comes first
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tmp_path / "val"), "--quiet"]) == 2
    expected = f"{tmp_path}/val/annotations.json: " + message.format(ckpt=ckpt)
    assert capsys.readouterr().err == f"omnidistill evaluate: error: {expected}\n"
