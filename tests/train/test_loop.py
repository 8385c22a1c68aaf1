import os

import pytest
import torch

from dd_core.data.coco import load_coco
from dd_core.models import ModelConfig
from dd_core.train import TrainConfig, load_latest_checkpoint, model_from_checkpoint, save_checkpoint, train
from dd_core.models.checkpoint import checkpoint_url, load_checkpoint
from dd_core.train.detector import TrainingInputs, spec_for, train_detector
from dd_core.train.loop import Checkpoints, Runtime, TrainHooks

CFG = dict(iterations=4, batch_size=2, lr=0.005, warmup_iters=1, checkpoint_every=2, seed=0)


def _train(tiny_coco, ckpt_dir, stop_after=None, **kw):
    coco = load_coco(*tiny_coco)
    spec = spec_for("keypoints", coco, ModelConfig(test_size=64, min_size=(56, 64, 72), max_size=96))
    return train_detector(spec, TrainingInputs(coco), TrainConfig(**{**CFG, **kw}), ckpt_dir,
                          runtime=Runtime(progress=False, stop_after=stop_after))


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


def test_a_run_of_an_earlier_version_resumes_and_its_checkpoints_load(tiny_coco, tmp_path):
    """Earlier versions wrote TrainConfig.grad_clip (always None) and ModelSpec.extra (always {})."""
    d = str(tmp_path / "c")
    _train(tiny_coco, d, stop_after=2)
    state = load_checkpoint(checkpoint_url(d, 2))
    state["spec"] = {**state["spec"], "extra": {}}
    state["signature"]["schedule"]["grad_clip"] = None
    state["signature"]["model"]["extra"] = {}
    save_checkpoint(checkpoint_url(d, 2), state)
    assert model_from_checkpoint(load_checkpoint(checkpoint_url(d, 2))).roi_heads.keypoint_predictor is not None
    assert _train(tiny_coco, d).iteration == 4


def test_spec_for_fits_the_labeled_set_and_defaults_to_the_slim_preset(tiny_coco):
    coco = load_coco(*tiny_coco)
    spec = spec_for("keypoints", coco, ModelConfig(preset="r50-fpn", test_size=64))
    assert (spec.preset, spec.num_classes, spec.num_keypoints, spec.test_size) == ("r50-fpn", 2, 17, 64)
    assert spec_for("keypoints", coco) == spec_for("keypoints", coco, ModelConfig()) == \
        ModelConfig().spec("keypoints", 2, 17)


class _Scale(torch.nn.Module):
    """A one-weight "detector": its loss is the mean squared weighted image sum."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, targets):
        return {"loss": (self.w * torch.stack([im.sum() for im in images])).pow(2).mean()}


_IMAGES = [(torch.full((1, 2, 2), 0.1 * i), {"image_id": torch.tensor(i)}) for i in range(4)]


def test_on_checkpoint_is_called_with_each_written_checkpoint(tmp_path):
    d, calls = str(tmp_path / "ck"), []

    def seen(iteration, url):
        assert os.path.exists(url) and load_checkpoint(url)["iteration"] == iteration  # written before the call
        calls.append((iteration, url))

    cfg = TrainConfig(iterations=5, batch_size=2, lr=0.01, warmup_iters=0, checkpoint_every=2)
    result = train(_Scale(), _IMAGES, cfg, checkpoints=Checkpoints(d), runtime=Runtime(progress=False, stop_after=3),
                   hooks=TrainHooks(on_checkpoint=seen))
    assert result.checkpoint == checkpoint_url(d, 3)
    assert calls == [(2, checkpoint_url(d, 2)), (3, checkpoint_url(d, 3))]  # every 2 steps, and the early stop
    calls.clear()
    assert train(_Scale(), _IMAGES, cfg, checkpoints=Checkpoints(d), runtime=Runtime(progress=False),
                 hooks=TrainHooks(on_checkpoint=seen)).iteration == 5
    assert calls == [(4, checkpoint_url(d, 4)), (5, checkpoint_url(d, 5))]  # resumed; the last step is written
    calls.clear()
    assert train(_Scale(), _IMAGES, cfg, runtime=Runtime(progress=False),
                 hooks=TrainHooks(on_checkpoint=seen)).checkpoint is None
    assert calls == []  # no folder, no checkpoints


def test_zero_iterations_writes_checkpoint_0_once_and_a_resume_leaves_it_as_it_is(tmp_path):
    """Shards are named by a hash of the teacher checkpoint's bytes: rewriting it would relabel them all."""
    d, calls = str(tmp_path / "ck"), []
    hooks = TrainHooks(on_checkpoint=lambda iteration, url: calls.append(iteration))
    cfg = TrainConfig(iterations=0, batch_size=2)
    first = train(_Scale(), _IMAGES, cfg, checkpoints=Checkpoints(d), runtime=Runtime(progress=False), hooks=hooks)
    assert first.checkpoint == checkpoint_url(d, 0) and calls == [0]
    before, data = os.stat(first.checkpoint), open(first.checkpoint, "rb").read()
    again = train(_Scale(), _IMAGES, cfg, checkpoints=Checkpoints(d), runtime=Runtime(progress=False), hooks=hooks)
    after = os.stat(again.checkpoint)
    assert again.checkpoint == first.checkpoint and calls == [0]  # not written again
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert open(again.checkpoint, "rb").read() == data


def test_train_takes_its_options_by_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        train(_Scale(), _IMAGES, TrainConfig(), None)


def test_weights_the_last_step_made_non_finite_are_never_checkpointed(tmp_path):
    # The loss is checked before each step, so only a look at the weights catches what the last step did.
    bright = [(torch.full((1, 2, 2), 10.0), {"image_id": torch.tensor(i)}) for i in range(2)]  # loss 1600 at w=1
    cfg = TrainConfig(iterations=1, batch_size=2, lr=1e38, warmup_iters=0, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"^weights are not finite after iteration 1 \('w' holds -inf\); "
                                                 r"training stopped \(lower the learning rate or check the labels\)$"):
        train(_Scale(), bright, cfg, checkpoints=Checkpoints(str(tmp_path / "ck")), runtime=Runtime(progress=False))
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
