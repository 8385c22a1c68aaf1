import json

import pytest

from dd_core.tta.settings import DEFAULT_SCALES, MultiTransformSettings


def _detection(scales=(64,), flip=True, **kw):
    return MultiTransformSettings(scales=scales, flip=flip, **kw).for_task("detection")


def test_settings_are_frozen_typed_and_checked():
    tta = MultiTransformSettings(scales=[64, 96], flip=True)
    assert tta.scales == (64, 96) and not tta.merges_boxes and MultiTransformSettings().scales == DEFAULT_SCALES
    with pytest.raises(ValueError, match="Instance is frozen"):
        tta.flip = False  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"scales must be pixel sizes from 1 to 4096, got \[64, 0\]"):
        MultiTransformSettings(scales=(64, 0))
    with pytest.raises(ValueError, match=r"needs at least one scale"):
        MultiTransformSettings(scales=())
    with pytest.raises(ValueError, match="task must be 'keypoints' or 'detection', got 'masks'"):
        MultiTransformSettings().for_task("masks")
    with pytest.raises(ValueError, match="voting_threshold"):
        MultiTransformSettings(voting_threshold=float("nan"))


def test_settings_for_a_task_follow_the_teacher_s_task():
    tta = MultiTransformSettings(scales=(64,), flip=False)
    assert tta.for_task("keypoints") == tta
    detection = tta.for_task("detection")  # Detectron's defaults
    assert detection.merges_boxes and (detection.nms_threshold, detection.voting_threshold, detection.scoring) == \
        (0.5, 0.8, "ID")
    custom = _detection(scoring="AVG")
    assert custom.for_task("detection") == custom and not custom.for_task("keypoints").merges_boxes
    # box merging cannot tell two keypoint teachers' settings apart
    assert _detection(voting_threshold=0.9).for_task("keypoints") == _detection().for_task("keypoints")


def test_temp_avg_scoring_is_accepted():
    assert _detection(scoring="TEMP_AVG").identity()["scoring"] == "TEMP_AVG"


@pytest.mark.parametrize("tta", [MultiTransformSettings(scales=(96, 128), flip=True),
                                 _detection((400, 1200), False, nms_threshold=0.6, voting_threshold=0.7,
                                            scoring="QUASI_SUM")])
def test_identity_round_trips(tta):
    assert MultiTransformSettings.from_identity(tta.identity()) == tta


def test_unknown_identity_fields_are_refused():
    with pytest.raises(ValueError, match=r"unknown fields \['scale'\]"):
        MultiTransformSettings.from_identity({"scales": [64], "flip": True, "scale": 3})


def test_precision_is_checked_kept_by_for_task_and_in_the_identity_only_when_not_float32():
    with pytest.raises(ValueError, match=r"precision\n  Input should be 'float32' or 'bfloat16'"):
        MultiTransformSettings(scales=(64,), precision="float16")  # type: ignore[arg-type]
    fast = MultiTransformSettings(scales=(64,), flip=True, precision="bfloat16", channels_last=True)
    assert fast.for_task("detection").precision == "bfloat16" and fast.for_task("keypoints") == fast
    assert fast.identity() == {"scales": [64], "flip": True, "precision": "bfloat16", "channels_last": True}
    assert MultiTransformSettings.from_identity(fast.identity()) == fast
    # float32 shards keep the fingerprint they had before the setting existed.
    assert MultiTransformSettings(scales=(64,), flip=True, precision="float32").identity() == \
        {"scales": [64], "flip": True}
    detection = _detection(precision="bfloat16")
    assert MultiTransformSettings.from_identity(detection.identity()) == detection


def test_run_config_precision_reaches_the_settings():
    from dd_core.config import parse_config

    base = {"labeled": {"annotations": "l.json", "images": "l"}, "unlabeled": {"images": "u"},
            "val": {"annotations": "v.json", "images": "v"}}
    assert parse_config(base).tta.precision == "float32"
    fast = parse_config({**base, "tta": {"precision": "bfloat16", "channels_last": True}}).tta
    assert (fast.precision, fast.channels_last) == ("bfloat16", True)
    assert isinstance(fast, MultiTransformSettings)
    with pytest.raises(Exception, match="tta.precision"):
        parse_config({**base, "tta": {"precision": "float16"}})
    assert parse_config({**base, "tta": {"scoring": "TEMP_AVG"}}).tta.scoring == "TEMP_AVG"


# Shard fingerprints hash these dicts: they must stay as they are, key order included (ShardJob
# parameters carry them), for a keypoint and a detection teacher at every precision.
PINNED_IDENTITIES = {
    ("keypoints", "float32", False): {"scales": [96, 128, 160], "flip": True},
    ("keypoints", "bfloat16", True): {"scales": [96, 128, 160], "flip": True, "precision": "bfloat16",
                                      "channels_last": True},
    ("detection", "float32", False): {"scales": [64, 96], "flip": False, "nms_threshold": 0.5,
                                      "voting_threshold": 0.7, "scoring": "AVG", "union": "raw"},
    ("detection", "bfloat16", False): {"scales": [64, 96], "flip": False, "precision": "bfloat16",
                                       "nms_threshold": 0.5, "voting_threshold": 0.7, "scoring": "AVG",
                                       "union": "raw"},
}


@pytest.mark.parametrize("key", sorted(PINNED_IDENTITIES))
def test_identity_is_pinned(key):
    task, precision, channels_last = key
    if task == "keypoints":
        tta = MultiTransformSettings(scales=(96, 128, 160), flip=True, nms_threshold=0.6, voting_threshold=0.7,
                                     scoring="AVG", precision=precision, channels_last=channels_last)
    else:
        tta = MultiTransformSettings(scales=[64, 96], flip=False, voting_threshold=0.7, scoring="AVG",
                                     precision=precision, channels_last=channels_last)
    tta = tta.for_task(task)
    identity = tta.identity()
    assert identity == PINNED_IDENTITIES[key]
    assert list(identity) == list(PINNED_IDENTITIES[key])
    assert json.dumps(identity) == json.dumps(PINNED_IDENTITIES[key])
