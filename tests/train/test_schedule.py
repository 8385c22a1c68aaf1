import pytest
import torch

from dd_core.train.schedule import lr_factor


def test_paper_schedule_divides_by_ten_at_two_thirds_and_eight_ninths():
    total = 900
    assert lr_factor(599, total, 0) == 1.0
    assert lr_factor(600, total, 0) == pytest.approx(0.1)
    assert lr_factor(799, total, 0) == pytest.approx(0.1)
    assert lr_factor(800, total, 0) == pytest.approx(0.01)
    assert lr_factor(899, total, 0) == pytest.approx(0.01)


def test_linear_warmup_from_factor_to_one():
    assert lr_factor(0, 900, 100, warmup_factor=0.25) == pytest.approx(0.25)
    assert lr_factor(50, 900, 100, warmup_factor=0.25) == pytest.approx(0.625)
    assert lr_factor(100, 900, 100, warmup_factor=0.25) == 1.0


def test_step_points_are_a_setting_detectron_s_s1x_at_100k_and_120k_of_130k():
    from dd_core.train.schedule import S1X_STEPS, make_scheduler

    total = 130_000
    assert lr_factor(99_999, total, 0, steps=S1X_STEPS) == 1.0
    assert lr_factor(100_000, total, 0, steps=S1X_STEPS) == pytest.approx(0.1)
    assert lr_factor(119_999, total, 0, steps=S1X_STEPS) == pytest.approx(0.1)
    assert lr_factor(120_000, total, 0, steps=S1X_STEPS) == pytest.approx(0.01)
    # The student's 270k at the same fractions; the scheduler uses the steps it is given.
    assert lr_factor(207_691, 270_000, 0, steps=S1X_STEPS) == 1.0
    assert lr_factor(207_692, 270_000, 0, steps=S1X_STEPS) == pytest.approx(0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, 10, 0, steps=(0.5,))
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0] * 5 + [0.1] * 5)


def test_the_run_config_carries_the_step_points_to_training():
    from dd_core.config.schema import TrainStageConfig
    from dd_core.train.settings import TrainConfig

    assert TrainConfig.from_config(TrainStageConfig(lr_steps=[0.769, 0.923]), seed=0).lr_steps == (0.769, 0.923)
    assert TrainConfig.from_config(TrainStageConfig(), seed=0).lr_steps is None  # the paper's 2/3 and 8/9
    with pytest.raises(ValueError, match="lr_steps"):
        TrainStageConfig(lr_steps=[0.9, 0.5])
    with pytest.raises(ValueError, match=r"lr_steps.1\n  Input should be less than or equal to 1 "):
        TrainConfig(lr_steps=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"lr_steps\n  Value error, must be strictly increasing fractions .* "
                                         r"got \[0.9, 0.5\]"):
        TrainConfig(lr_steps=(0.9, 0.5))
