import pytest

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
