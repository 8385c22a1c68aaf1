import hashlib
import json

from dd_core.data.unlabeled import Shard, UnlabeledImage
from dd_core.pseudo.fingerprint import fingerprint, shard_fingerprint
from dd_core.tta.settings import MultiTransformSettings


def _before(digest: str, tta: dict) -> str:
    """The fingerprint as it was computed from the untyped TTA dict, before the settings were typed."""
    return hashlib.sha256(json.dumps({"model": digest, "tta": tta}, sort_keys=True).encode()).hexdigest()[:16]


def test_keypoint_shards_of_earlier_versions_stay_finished_detection_ones_are_redone():
    keypoints = MultiTransformSettings(scales=(96, 128, 160), flip=True)
    assert fingerprint("abc", keypoints) == _before("abc", {"scales": [96, 128, 160], "flip": True})
    # Detection shards were made by merging each transform's NMSed detections: now the raw union is.
    boxes = MultiTransformSettings(scales=[64], flip=False, nms_threshold=0.5, voting_threshold=0.7, scoring="AVG").for_task("detection")
    earlier = {"scales": [64], "flip": False, "nms_threshold": 0.5, "voting_threshold": 0.7, "scoring": "AVG"}
    assert fingerprint("abc", boxes) == _before("abc", {**earlier, "union": "raw"}) != _before("abc", earlier)


def test_box_merging_changes_a_detection_teacher_s_fingerprint_only():
    base = MultiTransformSettings(scales=[64]).for_task("detection")
    other = MultiTransformSettings(scales=[64], voting_threshold=0.9).for_task("detection")
    assert fingerprint("abc", base) != fingerprint("abc", other)
    assert MultiTransformSettings(scales=[64], voting_threshold=0.9).for_task("keypoints") == \
        MultiTransformSettings(scales=[64]).for_task("keypoints")
    assert fingerprint("abc", base) != fingerprint("abd", base)


def test_a_shard_s_fingerprint_covers_its_images_and_root():
    shard = Shard(0, [UnlabeledImage(1, "a.png"), UnlabeledImage(2, "b.png")])
    same = shard_fingerprint("fp", "s3://b/pile", shard)
    assert same == shard_fingerprint("fp", "s3://b/pile", Shard(7, list(shard.images)))  # the index is not identity
    assert same != shard_fingerprint("fp", "s3://b/other", shard)
    assert same != shard_fingerprint("fp", "s3://b/pile", Shard(0, shard.images[:1]))
    assert same != shard_fingerprint("fq", "s3://b/pile", shard)


def test_the_pixel_limit_is_part_of_the_fingerprint_and_its_default_changes_nothing(tmp_path):
    from dd_core.data.images import MAX_PIXELS
    from dd_core.pseudo.fingerprint import checkpoint_fingerprint

    tta = MultiTransformSettings(scales=(96, 128), flip=True)
    before = _before("abc", {"scales": [96, 128], "flip": True})
    assert fingerprint("abc", tta) == fingerprint("abc", tta, MAX_PIXELS) == before  # shards of before stay done
    others = [fingerprint("abc", tta, n) for n in (MAX_PIXELS - 1, 4_096, None)]
    assert len({before, *others}) == 4  # another limit (or none): the shards are relabeled
    (tmp_path / "m.pth").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert checkpoint_fingerprint(str(tmp_path / "m.pth"), tta) == fingerprint(digest, tta)
    assert checkpoint_fingerprint(str(tmp_path / "m.pth"), tta, max_pixels=4_096) == fingerprint(digest, tta, 4_096)
