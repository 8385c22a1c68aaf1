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
                 "--quiet"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["instances"] == 4 and calibrated["annotations"].endswith("cal/annotations.json")


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
