"""The complete flow on a tiny synthetic set against a real S3 endpoint (moto on loopback)."""

import json

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from dd_core.config import parse_config
from dd_core.data.synthetic import make_keypoints_dataset
from dd_core.storage import filesystem, join, read_json, write_bytes_atomic
from dd_core.storage.parquet import PREDICTIONS_SCHEMA
from flows.run import run_distillation
from tasks.cache import TEACHERS
from tests.flows.conftest import local_config, make_sets

CANARY = "omnidistill-canary-secret-7f3a9c"


def _upload(local_dir, url, options):
    fs, path = filesystem(url, options)
    fs.put(str(local_dir), path, recursive=True)


@pytest.fixture
def s3_run(tmp_path, s3, prefect_harness):
    bucket, options = s3
    for name, n, seed, start in (("labeled", 10, 1, 1), ("unlabeled", 10, 2, 1001), ("val", 4, 3, 2001)):
        make_keypoints_dataset(tmp_path / name, n, seed=seed, start_id=start, size=64)
        _upload(tmp_path / name, join(bucket, "data", name), options)
    write_bytes_atomic(join(bucket, "data/unlabeled/images/zz-empty.png"), b"", options)  # a broken upload
    options = {**options, "key": "canary-key-id", "secret": CANARY}  # moto accepts any credentials
    config = parse_config({
        "run_id": "s3-test", "storage": {"root": join(bucket, "store"), "options": options},
        "labeled": {"annotations": join(bucket, "data/labeled/annotations.json"), "images": join(bucket, "data/labeled/images")},
        "unlabeled": {"images": join(bucket, "data/unlabeled/images")},
        "val": {"annotations": join(bucket, "data/val/annotations.json"), "images": join(bucket, "data/val/images")},
        "model": {"test_size": 64, "min_size": [56, 64], "max_size": 96},
        "teacher": {"iterations": 2, "batch_size": 2, "warmup_iters": 1},
        "student": {"iterations": 2, "batch_size": 2, "warmup_iters": 1},
        "tta": {"scales": [56, 64], "flip": True}, "shards": {"size": 3},
    })
    return config, bucket, options


def _shard_write_times(fs, inference_path):
    return {p.rsplit("/", 1)[-1]: fs.info(p)["LastModified"] for p in fs.ls(inference_path) if "/shard-" in p}


def _assert_secret_nowhere(fs, run_path, captured):
    """The storage secret is in no output file, log line, artifact or flow-run parameter."""
    from prefect.client.orchestration import get_client

    for path in fs.find(run_path):
        if not path.endswith((".pth", ".png", ".parquet")):
            assert CANARY not in fs.cat_file(path).decode(), path
    assert CANARY not in captured
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        assert runs and all(CANARY not in json.dumps(r.parameters, default=str) for r in runs)
        assert all(CANARY not in json.dumps(a.model_dump(mode="json")) for a in client.read_artifacts())
        assert all(CANARY not in log.message for log in client.read_logs())


def test_complete_flow_on_s3_then_rerun_recomputes_only_the_missing_shard(s3_run, tmp_path, capfd, caplog):
    config, bucket, options = s3_run
    result = run_distillation(config)
    run = join(bucket, "store/runs/s3-test")
    assert result["run_dir"] == run
    assert TEACHERS.fingerprints() == []  # the shard tasks ran in this process; their teacher was let go

    # Parquet shards: one dataset with the declared schema; every unlabeled image in exactly one shard.
    fs, inference = filesystem(join(run, "inference"), options)
    dataset = ds.dataset(inference, format="parquet", filesystem=fs)
    assert dataset.schema.remove_metadata().equals(PREDICTIONS_SCHEMA)
    manifest = read_json(join(run, "inference/_manifest.json"), options)
    assert len(manifest["shards"]) == 4 and manifest["num_images"] == 10 and manifest["num_rejected"] == 1
    assert manifest["num_rows"] == dataset.count_rows()
    plan = read_json(join(run, "inference/_plan.json"), options)
    planned = [im["file_name"] for shard in plan["shards"] for im in shard]
    assert sorted(planned) == [f"{i:06d}.png" for i in range(1001, 1011)] + ["zz-empty.png"]
    rejected = pq.read_table(fs.open(f"{inference}/_rejected.parquet")).to_pylist()
    assert rejected == [{"image_id": 11, "file_name": "zz-empty.png", "reason": rejected[0]["reason"]}]
    assert "empty file" in rejected[0]["reason"]

    # Pseudo-labels load in pycocotools and cover every unlabeled image once.
    local = tmp_path / "pseudo.json"
    fs.get(filesystem(join(run, "pseudo/annotations.json"), options)[1], str(local))
    pseudo = COCO(str(local))
    assert sorted(pseudo.getImgIds()) == list(range(1, 11))

    # Thresholds per category, metrics for the four models, the report and its figures.
    thresholds = read_json(join(run, "thresholds.json"), options)
    assert set(thresholds["thresholds"]) == {"1"} and thresholds["num_images"] == 10
    metrics = read_json(join(run, "metrics.json"), options)
    assert set(metrics) == {"teacher", "teacher_tta", "student", "student_tta"}
    assert all(set(m) == {"AP", "AP50", "AP75", "APm", "APl"} for m in metrics.values())
    assert "(1 rejected)" in fs.cat_file(filesystem(join(run, "report.md"), options)[1]).decode()
    for name in ("report.md", "ap.png", "pseudo_labels.png", "teacher/model_0000002.pth", "student/model_0000002.pth"):
        assert fs.exists(filesystem(join(run, name), options)[1]), name

    out, err = capfd.readouterr()
    _assert_secret_nowhere(fs, filesystem(run, options)[1], out + err + caplog.text)

    # Remove one shard's output and run the same id again: only that shard is recomputed.
    before = _shard_write_times(fs, inference)
    fs.rm(f"{inference}/shard-00002.parquet")
    fs.invalidate_cache()
    run_distillation(config)
    fs.invalidate_cache()
    after = _shard_write_times(fs, inference)
    assert set(after) == set(before)
    assert {k for k in before if before[k] != after.get(k)} == {"shard-00002.parquet"}
    # The recomputed shard holds what the lost one held.
    assert read_json(join(run, "inference/_manifest.json"), options)["num_rows"] == manifest["num_rows"]
    assert json.dumps(read_json(join(run, "metrics.json"), options), sort_keys=True) == json.dumps(metrics, sort_keys=True)


def test_the_flow_s_metrics_are_a_direct_cocoeval_of_its_own_checkpoints(tmp_path, prefect_harness):
    from dd_core.data.coco import load_coco
    from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint

    make_sets(tmp_path, (4, 4, 3), task="detection")
    # Each validation image holds one object as large as the image: boxes of barely trained models
    # overlap it often enough that AP is not 0, so the comparison below can tell models apart.
    val = json.loads((tmp_path / "val/annotations.json").read_text())
    val["annotations"] = [{"id": im["id"], "image_id": im["id"], "category_id": val["categories"][0]["id"],
                           "bbox": [0, 0, im["width"], im["height"]], "area": im["width"] * im["height"], "iscrowd": 0}
                          for im in val["images"]]
    (tmp_path / "val/annotations.json").write_text(json.dumps(val))
    config = local_config(tmp_path, task="detection", run_id="direct", tta={"scales": [56, 64], "flip": True},
                          student={"iterations": 3, "batch_size": 2, "warmup_iters": 0})
    metrics = run_distillation(config)["metrics"]
    data = load_coco(config.val.annotations, config.val.images)
    run = tmp_path / "store/runs/direct"
    for name, iterations in (("teacher", 1), ("student", 3)):
        checkpoint = str(run / name / f"model_{iterations:07d}.pth")
        assert metrics[name] == evaluate_checkpoint(checkpoint, data, progress=False)
        assert metrics[f"{name}_tta"] == evaluate_checkpoint(checkpoint, data, config.tta.for_task(config.task),
                                                             progress=False)
    assert metrics["teacher"]["AP50"] > 0 and metrics["teacher"] != metrics["student"]


def test_two_rounds_with_upper_bound_on_local_storage(tmp_path, prefect_harness):
    make_sets(tmp_path, (6, 4, 3))
    d = str(tmp_path)
    config = local_config(
        f"file://{d}", run_id="two-rounds",  # every URL a file:// one
        upper_bound={"annotations": f"{d}/labeled/annotations.json", "images": f"{d}/labeled/images"},
        student={"schedule_factor": 2, "batch_size": 2, "warmup_iters": 0, "init": "teacher"},
        tta={"scales": [64], "flip": False}, shards={"size": 4}, rounds=2)
    result = run_distillation(config)
    run = tmp_path / "store" / "runs" / "two-rounds"
    assert set(result["metrics"]) == {"teacher", "teacher_tta", "student", "student_tta", "upper_bound"}
    assert (run / "pseudo" / "annotations.json").exists() and (run / "rounds" / "2" / "pseudo" / "annotations.json").exists()
    assert sorted(p.name for p in (run / "rounds" / "2" / "student").iterdir()) == ["model_0000002.pth"]
    assert sorted(p.name for p in (run / "upper_bound").iterdir()) == ["model_0000002.pth"]
    report = (run / "report.md").read_text()
    assert "## Pseudo-label selection (round 2)" in report and "upper bound (all labels)" in report


def test_detection_flow_selects_per_category_pseudo_labels(tmp_path, prefect_harness):
    make_sets(tmp_path, (8, 6, 3), task="detection")
    config = local_config(tmp_path, task="detection", run_id="det", shards={"size": 4},
                          tta={"scales": [56, 64], "flip": True, "scoring": "AVG"})
    result = run_distillation(config)
    assert set(result["metrics"]["student"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    labeled = json.loads((tmp_path / "labeled" / "annotations.json").read_text())
    thresholds = json.loads((tmp_path / "store/runs/det/thresholds.json").read_text())
    assert set(thresholds["thresholds"]) == {str(c["id"]) for c in labeled["categories"]}
    pseudo = json.loads((tmp_path / "store/runs/det/pseudo/annotations.json").read_text())
    for cat, kept in thresholds["kept_per_category"].items():
        assert kept == sum(a["category_id"] == int(cat) for a in pseudo["annotations"])


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_storage_root_inside_the_pool_is_not_labeled_and_a_changed_pool_is_refused_leaving_the_run_untouched(
        tmp_path, prefect_harness):
    import shutil

    from dd_core.data.unlabeled import PoolChanged

    make_sets(tmp_path, (4, 4, 2))
    pool = tmp_path / "unlabeled/images"
    config = local_config(tmp_path, run_id="pool", storage={"root": str(pool)})  # the storage root is the pool
    run_distillation(config)
    run = pool / "runs/pool"
    assert (run / "ap.png").exists() and (run / "pseudo_labels.png").exists()
    planned = json.loads((run / "inference/_plan.json").read_text())
    assert [im["file_name"] for shard in planned["shards"] for im in shard] == [f"{i:06d}.png" for i in range(1001, 1005)]
    plan = (run / "inference/_plan.json").read_bytes()
    run_distillation(config)  # resumed: the run's own figures are not new unlabeled images
    assert (run / "inference/_plan.json").read_bytes() == plan

    before = _files(run)
    shutil.copy(pool / "001001.png", pool / "001005.png")  # one image more in the pool
    with pytest.raises(PoolChanged, match=r"^run pool was planned on 4 unlabeled images \(plan digest [0-9a-f]{12}, "
                                          r".*\); the pool now lists 5 \('001005.png' is new\)"):
        run_distillation(config)
    assert _files(run) == before  # the finished run is untouched: report, metrics, pseudo-labels, thresholds


def test_a_teacher_that_learned_nothing_fails_the_run_at_selection_without_retries(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from dd_core.pseudo.select import NoPseudoLabels

    make_sets(tmp_path, (4, 4, 2))
    # One step at this rate blows the weights up to about 1e30: finite, but nothing scores any more.
    config = local_config(tmp_path, run_id="learned-nothing",
                          teacher={"iterations": 1, "batch_size": 2, "warmup_iters": 0, "lr": 1e30})
    with pytest.raises(NoPseudoLabels, match=r"^pseudo-label selection: 0 pseudo-labels kept on 4 unlabeled images"):
        run_distillation(config)
    run = tmp_path / "store/runs/learned-nothing"
    assert not (run / "student").exists() and not (run / "pseudo").exists() and not (run / "report.md").exists()
    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=["learned-nothing", "learned-nothing-label-round-1"])))}  # the labeling subflow: run id and round
        assert runs["learned-nothing"].state.is_failed() and runs["learned-nothing-label-round-1"].state.is_failed()
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [runs["learned-nothing-label-round-1"].id]}))
        selection = next(t for t in tasks if t.name.startswith("select pseudo-labels"))
        assert selection.state.is_failed() and selection.run_count == 1  # not retried: trying again cannot help
