"""Bad input and damaged outputs: clear errors before anything is written, damaged shards redone."""

import pyarrow.parquet as pq
import pytest

from dd_core.data.coco import CocoFormatError
from dd_core.storage import read_json, write_json_atomic
from flows.run import run_distillation
from tests.flows.conftest import local_config, make_sets


@pytest.fixture
def data(tmp_path):
    return make_sets(tmp_path, (4, 4, 2))


def test_bad_labeled_json_fails_before_anything_is_written(data, prefect_harness):
    coco = read_json(str(data / "labeled/annotations.json"))
    coco["annotations"][1]["keypoints"] = coco["annotations"][1]["keypoints"][:-3]
    write_json_atomic(str(data / "labeled/annotations.json"), coco)
    with pytest.raises(CocoFormatError, match=r"labeled/annotations.json: annotations\[1\] .*'keypoints' must have 51"):
        run_distillation(local_config(data, run_id="faults"))
    assert not (data / "store").exists()


def test_a_corrupt_or_drifted_shard_is_recomputed_on_the_next_run(data, prefect_harness):
    run_distillation(local_config(data, run_id="faults"))
    inference = data / "store/runs/faults/inference"
    cut = inference / "shard-00000.parquet"
    cut.write_bytes(cut.read_bytes()[:-20])  # a torn footer
    drifted = inference / "shard-00001.parquet"
    table = pq.read_table(drifted)
    pq.write_table(table.drop_columns(["num_transforms"]), drifted)
    untouched = (data / "store/runs/faults/teacher").stat().st_mtime_ns
    run_distillation(local_config(data, run_id="faults"))
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

    run_distillation(local_config(data, run_id="a"))
    a = data / "store/runs/a"
    before = _tree(a)
    run_distillation(local_config(data, run_id="b"))
    assert _tree(a) == before and (data / "store/runs/b/metrics.json").exists()
    assert not (a / "_lock.json").exists()  # released at the end
    live = {"owner": "another", "host": socket.gethostname(), "pid": os.getpid(), "holder": "flow run 42",
            "started": time.time(), "heartbeat": time.time()}
    write_json_atomic(str(a / "_lock.json"), live)
    with pytest.raises(RunLockedError, match=r"runs/a/_lock.json: this run id is live in another process "
                                              r"\(flow run 42 on"):
        run_distillation(local_config(data, run_id="a"))
    assert {k: v for k, v in _tree(a).items() if k.name != "_lock.json"} == before


def test_relabeling_with_another_shard_size_reads_as_the_manifest_s_dataset(tmp_path, prefect_harness):
    import pyarrow.dataset as ds

    from dd_core.storage.layout import RunLayout
    from flows.distill import label_unlabeled
    from tests.conftest import save_random_checkpoint

    d = make_sets(tmp_path, (2, 5, 1))
    checkpoint = save_random_checkpoint(str(tmp_path / "teacher.pth"), read_json(str(d / "labeled/annotations.json")))
    layout = RunLayout(str(d / "store"), "stale")
    inference = d / "store/runs/stale/inference"
    for size, shards in ((1, 5), (2, 3)):
        label_unlabeled(local_config(d, run_id="stale", shards={"size": size}), checkpoint, layout)
        manifest = read_json(str(inference / "_manifest.json"))
        assert sorted(p.name for p in inference.glob("shard-*")) == [f"shard-{i:05d}.parquet" for i in range(shards)]
        assert ds.dataset(str(inference)).count_rows() == manifest["num_rows"] > 0
        assert manifest["num_images"] == 5


def test_a_resumed_labeling_starts_tasks_for_the_missing_shards_only(tmp_path, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from dd_core.storage.layout import RunLayout
    from flows.distill import label_unlabeled
    from tests.conftest import save_random_checkpoint

    d = make_sets(tmp_path, (2, 5, 1))
    checkpoint = save_random_checkpoint(str(tmp_path / "teacher.pth"), read_json(str(d / "labeled/annotations.json")))
    config, layout = local_config(d, run_id="resume", shards={"size": 1}), RunLayout(str(d / "store"), "resume")
    label_unlabeled(config, checkpoint, layout)
    inference = d / "store/runs/resume/inference"
    kept = {p.name: p.stat().st_mtime_ns for p in inference.glob("shard-*") if p.name != "shard-00003.parquet"}
    (inference / "shard-00003.parquet").unlink()  # the run was killed before this shard was written
    state = label_unlabeled(config, checkpoint, layout, return_state=True)
    assert state.is_completed()

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert sorted(r.name for r in runs if r.name.startswith("infer shard")) == ["infer shard-00003"]
    assert {p.name: p.stat().st_mtime_ns for p in inference.glob("shard-*") if p.name in kept} == kept
    manifest = read_json(str(inference / "_manifest.json"))
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:05d}" for i in range(5)]
    assert manifest["num_images"] == 5
