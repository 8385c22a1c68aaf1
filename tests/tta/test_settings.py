import pytest

from dd_core.tta.settings import DEFAULT_SCALES, BoxMergeSettings, MultiTransformSettings


def test_settings_are_frozen_typed_and_checked():
    tta = MultiTransformSettings([64, 96], True)
    assert tta.scales == (64, 96) and tta.boxes is None and MultiTransformSettings().scales == DEFAULT_SCALES
    with pytest.raises(AttributeError, match="cannot assign to field .flip."):
        tta.flip = False  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"needs positive scales \(px\), got \[64, 0\]"):
        MultiTransformSettings((64, 0))
    with pytest.raises(ValueError, match=r"needs positive scales \(px\), got \[\]"):
        MultiTransformSettings(())
    with pytest.raises(ValueError, match="task must be 'keypoints' or 'detection', got 'masks'"):
        MultiTransformSettings.for_task("masks")


def test_fitted_settings_follow_the_teacher_s_task():
    tta = MultiTransformSettings((64,), False)
    assert tta.fitted("keypoints") == tta
    assert tta.fitted("detection").boxes == BoxMergeSettings(0.5, 0.8, "ID")  # Detectron's defaults
    custom = MultiTransformSettings.for_task("detection", (64,), boxes=BoxMergeSettings(scoring="AVG"))
    assert custom.fitted("detection") == custom and custom.fitted("keypoints").boxes is None


@pytest.mark.parametrize("tta", [MultiTransformSettings((96, 128), True),
                                 MultiTransformSettings.for_task("detection", (400, 1200), False,
                                                                 BoxMergeSettings(0.6, 0.7, "QUASI_SUM"))])
def test_identity_round_trips(tta):
    assert MultiTransformSettings.from_identity(tta.identity()) == tta


def test_unknown_identity_fields_are_refused():
    with pytest.raises(ValueError, match=r"unknown fields \['scale'\]"):
        MultiTransformSettings.from_identity({"scales": [64], "flip": True, "scale": 3})


def test_precision_is_checked_kept_by_fitted_and_in_the_identity_only_when_not_float32():
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'bfloat16'\], got 'float16'"):
        MultiTransformSettings((64,), precision="float16")  # type: ignore[arg-type]
    fast = MultiTransformSettings((64,), True, precision="bfloat16", channels_last=True)
    assert fast.fitted("detection").precision == "bfloat16" and fast.fitted("keypoints") == fast
    assert fast.identity() == {"scales": [64], "flip": True, "precision": "bfloat16", "channels_last": True}
    assert MultiTransformSettings.from_identity(fast.identity()) == fast
    # float32 shards keep the fingerprint they had before the setting existed.
    assert MultiTransformSettings((64,), True, precision="float32").identity() == {"scales": [64], "flip": True}
    detection = MultiTransformSettings.for_task("detection", (64,), precision="bfloat16")
    assert MultiTransformSettings.from_identity(detection.identity()) == detection


def test_run_config_precision_reaches_the_settings():
    from dd_core.config import multi_transform_settings, parse_config

    base = {"labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": "u"},
            "val": {"annotations": "v.json", "images": "v"}}
    assert multi_transform_settings(parse_config(base)).precision == "float32"
    fast = multi_transform_settings(parse_config({**base, "tta": {"precision": "bfloat16", "channels_last": True}}))
    assert (fast.precision, fast.channels_last) == ("bfloat16", True)
    with pytest.raises(Exception, match="tta.precision"):
        parse_config({**base, "tta": {"precision": "float16"}})
