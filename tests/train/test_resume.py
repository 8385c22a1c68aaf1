from dd_core.train.resume import differences


def test_settings_are_compared_key_by_key():
    old = {"schedule": {"lr": 0.01, "seed": 0}, "pseudo": "ab12"}
    new = {"schedule": {"lr": 0.02, "seed": 0}, "pseudo": None}
    assert differences(old, new) == ["pseudo: ab12 -> None", "schedule.lr: 0.01 -> 0.02"]
    assert differences(old, old) == []


def test_a_removed_setting_that_held_none_or_nothing_is_no_difference():
    old = {"schedule": {"lr": 0.01, "grad_clip": None}, "model": {"preset": "slim", "extra": {}}}
    new = {"schedule": {"lr": 0.01}, "model": {"preset": "slim"}}
    assert differences(old, new) == [] and differences(new, old) == []
    assert differences({"model": {"extra": {"depth": 3}}}, {"model": {}}) == ["model.extra: {'depth': 3} -> None"]
    assert differences({"schedule": {"grad_clip": 1.0}}, {"schedule": {}}) == ["schedule.grad_clip: 1.0 -> None"]
