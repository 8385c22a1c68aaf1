import pytest
import torch

from dd_core.data.coco import load_coco
from dd_core.train import TrainConfig, load_latest_checkpoint
from dd_core.train.detector import spec_for, train_detector

CFG = dict(iterations=4, batch_size=2, lr=0.005, warmup_iters=1, checkpoint_every=2, seed=0)


def _train(tiny_coco, ckpt_dir, stop_after=None, **kw):
    coco = load_coco(*tiny_coco)
    spec = spec_for("keypoints", coco, test_size=64, min_size=(56, 64, 72), max_size=96)
    return train_detector(spec, coco, TrainConfig(**{**CFG, **kw}), ckpt_dir, progress=False, stop_after=stop_after)


def test_interrupted_training_resumes_to_the_same_step_and_weights(tiny_coco, tmp_path):
    full = _train(tiny_coco, str(tmp_path / "full"))
    assert full.iteration == 4
    part = _train(tiny_coco, str(tmp_path / "resumed"), stop_after=3)  # killed after step 3
    assert part.iteration == 3
    assert load_latest_checkpoint(str(tmp_path / "resumed"))["iteration"] == 3
    done = _train(tiny_coco, str(tmp_path / "resumed"))
    assert done.iteration == 4
    a = load_latest_checkpoint(str(tmp_path / "full"))
    b = load_latest_checkpoint(str(tmp_path / "resumed"))
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k


def test_finished_run_is_not_trained_again(tiny_coco, tmp_path):
    _train(tiny_coco, str(tmp_path / "c"))
    again = _train(tiny_coco, str(tmp_path / "c"))
    assert again.iteration == 4 and again.seconds == 0.0


def test_non_finite_loss_stops_training(tiny_coco, tmp_path):
    with pytest.raises(FloatingPointError, match="at iteration"):
        _train(tiny_coco, str(tmp_path / "nan"), lr=1e12, warmup_iters=0)


def test_checkpoint_holds_what_evaluation_needs(tiny_coco, tmp_path):
    _train(tiny_coco, str(tmp_path / "m"))
    state = load_latest_checkpoint(str(tmp_path / "m"))
    assert state["spec"]["task"] == "keypoints" and state["cat_to_label"] == {1: 1}
    assert state["categories"][0]["name"] == "person"


def test_resuming_with_other_settings_is_refused(tiny_coco, tmp_path):
    _train(tiny_coco, str(tmp_path / "c"), stop_after=2)
    with pytest.raises(ValueError, match=r"other settings or data \(schedule.lr: 0.005 -> 0.01\); start a new run id"):
        _train(tiny_coco, str(tmp_path / "c"), lr=0.01)
    _train(tiny_coco, str(tmp_path / "c"))  # the same settings resume fine
