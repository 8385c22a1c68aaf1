import json

import pytest

from dd_core.data.coco import load_coco
from dd_core.models import ModelConfig
from dd_core.ops.stop import NEVER, StopRequested, StopToken
from dd_core.train import TrainConfig
from dd_core.train.detector import TrainingInputs, spec_for, train_detector
from dd_core.train.loop import Runtime, TrainHooks
from dd_core.train.progress import MARK, Progress, ReportPacing, parse_progress_line, progress_line


def _progress(iteration: int, total: int = 100) -> Progress:
    return Progress(iteration, total, {"loss_classifier": 0.25, "loss_box_reg": 0.5}, 0.02, 1.5, start=0)


def test_a_report_says_how_far_how_fast_and_how_long_still():
    p = _progress(40)
    assert p.fraction == 0.4 and p.seconds_left == 90.0
    assert p.summary() == ("iteration 40/100 (40.0%) loss 0.750 (loss_classifier 0.250, loss_box_reg 0.500) lr 0.02 "
                           "1.50 s/it, 1m30s left")
    assert Progress(1, 90_001, {"loss": 1.0}, 0.02, 2.0).summary().endswith("2.00 s/it, 50h00m left")


def test_pacing_logs_at_the_first_step_every_interval_and_at_the_last():
    now = [0.0]
    pacing = ReportPacing(log_every=180.0, update_every=5.0, clock=lambda: now[0])
    logged, updated = [], []
    for step in range(1, 1001):  # one step a second
        now[0] = float(step)
        logged += [step] if pacing.log(_progress(step, 1000)) else []
        updated += [step] if pacing.update(_progress(step, 1000)) else []
    assert logged == [1, 181, 361, 541, 721, 901, 1000]
    assert updated[:4] == [1, 6, 11, 16] and updated[-1] == 1000 and len(updated) == 201


def test_a_report_travels_as_one_line_of_a_rank_s_output():
    line = progress_line(_progress(7))
    assert line.startswith(MARK) and "\n" not in line and parse_progress_line(line) == _progress(7)
    assert parse_progress_line("train:  3%|") is None and parse_progress_line(MARK + "{not json") is None
    assert json.loads(line[len(MARK):])["losses"] == {"loss_classifier": 0.25, "loss_box_reg": 0.5}


def _train(tiny_coco, tmp_path, hooks, iterations=4, stop=NEVER):
    coco = load_coco(*tiny_coco)
    spec = spec_for("keypoints", coco, ModelConfig(test_size=64, min_size=(64,), max_size=96))
    cfg = TrainConfig(iterations=iterations, batch_size=2, lr=0.005, warmup_iters=1, checkpoint_every=2)
    return train_detector(spec, TrainingInputs(coco), cfg, str(tmp_path / "ckpt"), runtime=Runtime(progress=False),
                          hooks=hooks, stop=stop)


def test_training_reports_progress_after_every_step(tiny_coco, tmp_path):
    seen: list[Progress] = []
    result = _train(tiny_coco, tmp_path, TrainHooks(on_progress=seen.append))
    assert [p.iteration for p in seen] == [1, 2, 3, 4] and {p.total for p in seen} == {4}
    assert seen[-1].losses == result.last_losses and seen[0].lr == pytest.approx(0.005 / 3)
    assert all(p.seconds_per_iteration > 0 for p in seen)


def test_a_stop_request_ends_training_between_two_steps(tiny_coco, tmp_path):
    steps: list[int] = []
    stop = StopToken()

    def stop_at_two(iteration, model, targets):
        steps.append(iteration)
        if iteration == 2:
            stop.request("a test asked")

    with pytest.raises(StopRequested, match="stopped: a test asked"):
        _train(tiny_coco, tmp_path, TrainHooks(on_step=stop_at_two), stop=stop)
    assert steps == [1, 2]  # step 3 never started
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model_0000002.pth"]
    assert _train(tiny_coco, tmp_path, TrainHooks()).iteration == 4  # and the run resumes from step 2
