"""Bad input and damaged outputs: clear errors before anything is written, damaged shards redone."""

import pyarrow.parquet as pq
import pytest

from dd_core.config import parse_config
from dd_core.data.coco import CocoFormatError
from dd_core.data.synthetic import make_keypoints_dataset
from dd_core.storage import read_json, write_json_atomic
from flows.run import run_distillation


def _config(d, **extra):
    return parse_config({
        "run_id": "faults", "storage": {"root": f"{d}/store"},
        "labeled": {"annotations": f"{d}/labeled/annotations.json", "images": f"{d}/labeled/images"},
        "unlabeled": {"images": f"{d}/unlabeled/images"},
        "val": {"annotations": f"{d}/val/annotations.json", "images": f"{d}/val/images"},
        "model": {"test_size": 64, "min_size": [64], "max_size": 96},
        "teacher": {"iterations": 1, "batch_size": 2, "warmup_iters": 0},
        "student": {"iterations": 1, "batch_size": 2, "warmup_iters": 0},
        "tta": {"scales": [64], "flip": True}, "shards": {"size": 2}, **extra,
    })


@pytest.fixture
def data(tmp_path):
    for name, n, seed, start in (("labeled", 4, 1, 1), ("unlabeled", 4, 2, 1001), ("val", 2, 3, 2001)):
        make_keypoints_dataset(tmp_path / name, n, seed=seed, start_id=start, size=64)
    return tmp_path


def test_bad_labeled_json_fails_before_anything_is_written(data, prefect_harness):
    coco = read_json(str(data / "labeled/annotations.json"))
    coco["annotations"][1]["keypoints"] = coco["annotations"][1]["keypoints"][:-3]
    write_json_atomic(str(data / "labeled/annotations.json"), coco)
    with pytest.raises(CocoFormatError, match=r"labeled/annotations.json: annotations\[1\] .*'keypoints' must have 51"):
        run_distillation(_config(data))
    assert not (data / "store").exists()


def test_a_corrupt_or_drifted_shard_is_recomputed_on_the_next_run(data, prefect_harness):
    run_distillation(_config(data))
    inference = data / "store/runs/faults/inference"
    cut = inference / "shard-00000.parquet"
    cut.write_bytes(cut.read_bytes()[:-20])  # a torn footer
    drifted = inference / "shard-00001.parquet"
    table = pq.read_table(drifted)
    pq.write_table(table.drop_columns(["num_transforms"]), drifted)
    untouched = (data / "store/runs/faults/teacher").stat().st_mtime_ns
    run_distillation(_config(data))
    for shard in (cut, drifted):
        assert pq.read_table(shard).schema.remove_metadata().names[-1] == "num_transforms"
    manifest = read_json(str(inference / "_manifest.json"))
    assert manifest["num_images"] == 4 and len(manifest["shards"]) == 2
    assert (data / "store/runs/faults/teacher").stat().st_mtime_ns == untouched


def _tree(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_two_run_ids_share_storage_and_a_live_run_id_is_refused(data, prefect_harness):
    import os
    import socket
    import time

    from dd_core.storage.lock import RunLockedError

    run_distillation(_config(data, run_id="a"))
    a = data / "store/runs/a"
    before = _tree(a)
    run_distillation(_config(data, run_id="b"))
    assert _tree(a) == before and (data / "store/runs/b/metrics.json").exists()
    assert not (a / "_lock.json").exists()  # released at the end
    live = {"owner": "another", "host": socket.gethostname(), "pid": os.getpid(), "label": "flow run 42",
            "started": time.time(), "heartbeat": time.time()}
    write_json_atomic(str(a / "_lock.json"), live)
    with pytest.raises(RunLockedError, match=r"runs/a/_lock.json: this run id is live in another process "
                                              r"\(flow run 42 on"):
        run_distillation(_config(data, run_id="a"))
    assert {k: v for k, v in _tree(a).items() if k.name != "_lock.json"} == before
