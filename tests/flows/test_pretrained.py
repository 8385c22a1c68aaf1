"""Runs started from torchvision's published weights by name: a torch cache filled with torchvision's
own randomly initialised models under the published file names (no test downloads anything, and
random weights say nothing about accuracy)."""

import json

import pytest
import torch
import yaml

from dd_core.models.weights import OFFLINE_ENV, cached_file, torchvision_weights
from dd_core.storage import read_json
from dd_core.models.checkpoint import load_checkpoint
from flows.cli import main
from flows.run import run_distillation
from tests.flows.conftest import local_config, make_sets
from tests.models.published import fill_cache

KEYPOINT_RCNN = "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1"
# A bird's five keypoints, cut from the synthetic people's: nose, shoulders, ankles.
BIRD = {"beak": 0, "wing_l": 5, "wing_r": 6, "foot_l": 15, "foot_r": 16}
PAIRS = [["wing_l", "wing_r"], ["foot_l", "foot_r"]]
SIGMAS = [0.03, 0.07, 0.07, 0.09, 0.09]


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    fill_cache(home, KEYPOINT_RCNN, seed=2, detects=True)
    return home


def _as_birds(annotations):
    coco = json.loads(annotations.read_text())
    coco["categories"] = [{"id": 1, "name": "bird", "supercategory": "animal", "keypoints": list(BIRD),
                           "skeleton": [[1, 2], [1, 3]]}]
    for ann in coco["annotations"]:
        kps = ann["keypoints"]
        ann["keypoints"] = [v for i in BIRD.values() for v in kps[3 * i:3 * i + 3]]
        ann["num_keypoints"] = sum(v > 0 for v in ann["keypoints"][2::3])
    annotations.write_text(json.dumps(coco))


def _config_file(tmp_path, **settings):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(local_config(tmp_path, **settings).model_dump(mode="json")))
    return str(path)


@pytest.mark.parametrize("override, message", [
    (f"model.weights={KEYPOINT_RCNN}", f"model.weights: {KEYPOINT_RCNN} "
     f"(https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth) is not in torch's cache and "
     f"{OFFLINE_ENV} is set; without network, download "),
    ("model.weights=KeypointRCNN_ResNet50_FPN_Weights.COCO_V9", "model.weights: 'KeypointRCNN_ResNet50_FPN_Weights."
     "COCO_V9' is not a torchvision weights name"),
    ("model.backbone_weights=ResNet50_Weights.IMAGENET1K_V1", "model.backbone_weights: ResNet50_Weights.IMAGENET1K_V1 "
     "(torchvision's resnet50) does not fit model.preset slim for keypoints"),
])
def test_weights_that_cannot_be_had_or_do_not_fit_are_one_line_before_anything_is_written(
        tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    make_sets(tmp_path, (2, 1, 1))
    config = _config_file(tmp_path, model={"preset": "r50-fpn" if "weights=Key" in override else "slim",
                                           "test_size": 64, "min_size": [64], "max_size": 96})
    assert main(["run", config, "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"omnidistill run: error: {message}"), err
    assert "Traceback" not in err and not (tmp_path / "store").exists()


def test_a_five_keypoint_set_from_the_coco_detector_trains_labels_and_evaluates_with_its_own_sigmas(
        tmp_path, torch_home, monkeypatch, prefect_harness):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    make_sets(tmp_path, (3, 2, 2))
    for name in ("labeled", "val"):
        _as_birds(tmp_path / name / "annotations.json")
    config = local_config(tmp_path, run_id="birds", model={"preset": "r50-fpn", "weights": KEYPOINT_RCNN,
                                                            "test_size": 64, "min_size": [64], "max_size": 96},
                          keypoints={"flip_pairs": PAIRS, "sigmas": SIGMAS}, shards={"size": 2},
                          # One step at a negligible rate: the new keypoint head must be trained (iterations 0
                          # is refused with a head made anew), yet the teacher stays the published detector
                          # (a random one trained further would detect nothing to pseudo-label).
                          teacher={"iterations": 1, "lr": 1e-12, "warmup_iters": 0})
    result = run_distillation(config)

    run = tmp_path / "store" / "runs" / "birds"
    cached = torch.load(cached_file(torchvision_weights(KEYPOINT_RCNN).url), weights_only=True)
    teacher = load_checkpoint(str(run / "teacher" / "model_0000001.pth"))
    assert teacher["iteration"] == 1 and teacher["spec"]["weights"] == KEYPOINT_RCNN
    assert teacher["spec"]["norm_eps"] == 0.0  # recorded as resolved: COCO_V1 runs with eps 0
    remade = {"roi_heads.keypoint_predictor.kps_score_lowres.weight", "roi_heads.keypoint_predictor.kps_score_lowres.bias"}
    assert all(teacher["model"][k].shape != cached[k].shape for k in remade)  # 5 keypoints, not 17
    for key in ("backbone.body.conv1.weight", "backbone.body.layer1.0.conv1.weight", "backbone.body.bn1.running_var"):
        assert torch.equal(teacher["model"][key], cached[key]), key  # frozen: the cached tensors

    pseudo = read_json(str(run / "pseudo" / "annotations.json"))
    assert pseudo["categories"][0]["keypoints"] == list(BIRD) and pseudo["annotations"]
    assert all(len(a["keypoints"]) == 15 for a in pseudo["annotations"])

    student = load_checkpoint(str(run / "student" / "model_0000001.pth"))
    assert student["spec"]["oks_sigmas"] == tuple(SIGMAS) and student["spec"]["flip_pairs"] == tuple(map(tuple, PAIRS))
    for key in ("backbone.body.conv1.weight", "backbone.body.layer1.2.conv3.weight", "backbone.body.bn1.running_var"):
        assert torch.equal(student["model"][key], cached[key]), key  # frozen, as torchvision's trainable layers
    assert not torch.equal(student["model"]["backbone.body.layer4.0.conv1.weight"],
                           cached["backbone.body.layer4.0.conv1.weight"])  # trained
    assert set(result["metrics"]) >= {"teacher", "teacher_tta", "student", "student_tta"}


def test_the_shipped_configs_start_as_the_paper_and_the_fine_tuning_example_say():
    from pathlib import Path

    from dd_core.config import parse_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    paper = parse_config(yaml.safe_load((configs / "coco-keypoints.yaml").read_text()))
    assert paper.model.backbone_weights == "ResNet50_Weights.IMAGENET1K_V1" and paper.model.preset == "r50-fpn"
    for stage in (paper.teacher, paper.student_stage()):  # s1x: 100k and 120k of 130k; 270k scaled alike
        assert [round(s * stage.iterations, -3) for s in stage.lr_steps] == (
            [100_000, 120_000] if stage.iterations == 130_000 else [208_000, 249_000])
    custom = parse_config(yaml.safe_load((configs / "custom-keypoints.yaml").read_text()))
    assert custom.model.weights == KEYPOINT_RCNN and custom.student.init == "teacher"
    assert len(custom.keypoints.sigmas) == 5 and custom.keypoints.flip_pairs == PAIRS
