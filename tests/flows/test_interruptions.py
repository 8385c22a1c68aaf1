"""Shards that fail and processes that die: the run still ends with every image labeled once."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import fsspec
import pytest
import yaml
from fsspec.implementations.local import LocalFileSystem

from dd_core.storage import read_json
from flows.run import run_distillation
from tests.flows.conftest import local_config, make_sets


class FlakyFileSystem(LocalFileSystem):
    """The local disk, except that chosen files fail once with a connection error (a flaky bucket)."""

    protocol = ("flaky",)
    fail_once: set[str] = set()
    failures: list[str] = []
    _lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("flaky://"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        name = os.path.basename(path)
        with self._lock:
            if name in self.fail_once:
                self.fail_once.discard(name)
                self.failures.append(name)
                raise ConnectionError(f"flaky://{path}: connection reset by peer")
        return super().cat_file(path, start, end, **kwargs)


@pytest.fixture
def data(tmp_path):
    return make_sets(tmp_path, (4, 10, 2))


def test_three_of_ten_shards_fail_once_and_the_flow_completes_through_retries(data, prefect_harness):
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.fail_once = {"001002.png", "001005.png", "001009.png"}  # in shards 1, 4 and 8
    FlakyFileSystem.failures = []
    config = local_config(data, run_id="flaky", shards={"size": 1},
                     unlabeled={"images": f"flaky://{data}/unlabeled/images"})
    run_distillation(config)
    assert sorted(FlakyFileSystem.failures) == ["001002.png", "001005.png", "001009.png"]
    pseudo = read_json(str(data / "store/runs/flaky/pseudo/annotations.json"))
    assert sorted(im["id"] for im in pseudo["images"]) == list(range(1, 11))  # every image, once
    manifest = read_json(str(data / "store/runs/flaky/inference/_manifest.json"))
    assert len(manifest["shards"]) == 10 and manifest["num_rejected"] == 0


def _start_run(config_path, run_id, api_url):
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config_path), "--set", f"run_id={run_id}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())


def _wait_for(predicate, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, f"the run ended (code {process.returncode}) before the moment to kill it"
        time.sleep(0.05)
    raise TimeoutError("the run never reached the moment to kill it")


def test_a_run_killed_during_inference_finishes_without_redoing_finished_shards(data, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    config = local_config(data, shards={"size": 1}, tta={"scales": [56, 64, 72, 80], "flip": True})
    path = data / "run.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    inference = data / "store/runs/killed/inference"
    process = _start_run(path, "killed", PREFECT_API_URL.value())
    _wait_for(lambda: len(list(inference.glob("shard-*.parquet"))) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in inference.glob("shard-*.parquet")}
    assert 2 <= len(done) < 10 and not (inference / "_manifest.json").exists()

    run_distillation(config.model_copy(update={"run_id": "killed"}))  # the same run, started again
    after = {p.name: p.stat().st_mtime_ns for p in inference.glob("shard-*.parquet")}
    assert len(after) == 10
    assert {name: after[name] for name in done} == done  # no finished shard was recomputed
    assert read_json(str(inference / "_manifest.json"))["num_images"] == 10


def test_training_killed_midway_resumes_and_reaches_its_iterations(data, prefect_harness, caplog):
    from prefect.settings import PREFECT_API_URL

    config = local_config(data, teacher={"iterations": 40, "batch_size": 2, "warmup_iters": 0, "checkpoint_every": 4})
    path = data / "run.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    teacher = data / "store/runs/train-killed/teacher"
    process = _start_run(path, "train-killed", PREFECT_API_URL.value())
    _wait_for(lambda: any(int(p.stem.split("_")[1]) >= 8 for p in teacher.glob("model_*.pth")), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = max(int(p.stem.split("_")[1]) for p in teacher.glob("model_*.pth"))
    assert 8 <= at_kill < 40
    # Prefect's logging set-up replaces the root handlers, caplog's among them: listen on dd_core itself.
    logger = logging.getLogger("dd_core")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="dd_core.train.resume"):
            run_distillation(config.model_copy(update={"run_id": "train-killed"}))
    finally:
        logger.removeHandler(caplog.handler)
    assert f"resumed from iteration {at_kill} in {teacher}" in caplog.text  # not started over
    assert (teacher / "model_0000040.pth").exists()


def test_s3_going_away_mid_run_fails_clearly_and_leaves_no_partial_output(tmp_path, prefect_harness):
    import threading

    import s3fs
    from moto.server import ThreadedMotoServer
    from prefect.client.orchestration import get_client

    from dd_core.storage import StorageError
    from dd_core.storage.parquet import read_shard, shard_meta
    from tests.conftest import _free_port
    from tests.flows.test_distill import _upload

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    # Fail fast: one connection attempt of 1 s per call, so the task retries are what is exercised.
    options = {"endpoint_url": endpoint, "key": "k", "secret": "s", "skip_instance_cache": True,
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("outage")
    make_sets(tmp_path, (4, 6, 2))
    for name in ("labeled", "unlabeled", "val"):
        _upload(tmp_path / name, f"s3://outage/data/{name}", options)
    b = "s3://outage"
    config = local_config(tmp_path, run_id="outage", shards={"size": 3}, tta={"scales": [56, 64, 72, 80], "flip": True},
                     storage={"root": f"{b}/store", "options": options},
                     labeled={"annotations": f"{b}/data/labeled/annotations.json", "images": f"{b}/data/labeled/images"},
                     unlabeled={"images": f"{b}/data/unlabeled/images"},
                     val={"annotations": f"{b}/data/val/annotations.json", "images": f"{b}/data/val/images"})
    inference = "outage/store/runs/outage/inference"

    def stop_after_first_shard():
        watcher = s3fs.S3FileSystem(**options)
        while not watcher.glob(f"{inference}/shard-*.parquet"):
            time.sleep(0.05)
            watcher.invalidate_cache()
        server.stop()

    threading.Thread(target=stop_after_first_shard, daemon=True).start()
    try:
        with pytest.raises(StorageError, match=r"s3://outage/.*: storage unreachable \(Could not connect"):
            run_distillation(config)
    finally:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # the same bucket comes back
        server.start()
    try:
        fs = s3fs.S3FileSystem(**options)
        shards = fs.glob(f"{inference}/shard-*.parquet")
        assert shards and len(shards) < 2 and not fs.exists(f"{inference}/_manifest.json")
        for shard in shards:  # what was written is whole: footer, schema and all its images
            assert len(shard_meta(read_shard(f"s3://{shard}", options))["images"]) == 3
        with get_client(sync_client=True) as client:  # the failing stage was retried before giving up
            runs = [r for r in client.read_task_runs() if r.name == "infer shard-00001"]
            assert runs and max(r.run_count for r in runs) == 4  # 1 attempt + 3 retries
    finally:
        server.stop()


def test_ctrl_c_while_labeling_ends_the_run_and_its_labeling_subflow_cancelled_not_crashed(
        data, prefect_harness, monkeypatch, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL

    from dd_core.ops.stop import PROCESS
    from flows.run import run_and_report

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # run_and_report's API: the test server
    monkeypatch.setenv("PYTHONWARNINGS", os.environ.get("PYTHONWARNINGS", ""))  # restored after the test
    config = local_config(data, run_id="ctrl-c", shards={"size": 1}, tta={"scales": [56, 64, 72, 80], "flip": True})
    inference = data / "store/runs/ctrl-c/inference"

    def press_ctrl_c():  # as a user's Ctrl-C: SIGINT to this process, once labeling is under way
        while not any(inference.glob("shard-*.parquet")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        code = run_and_report(config, "run.yaml", verbose=True)
    finally:
        PROCESS.clear()
    assert code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("omnidistill: run ctrl-c stopped (interrupted by SIGINT); resume it with: omnidistill run "
                    "run.yaml --set run_id=ctrl-c")
    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=["ctrl-c", "ctrl-c-label-round-1"])))}
    assert runs["ctrl-c"].state.is_cancelled(), runs["ctrl-c"].state
    assert runs["ctrl-c"].state.message == "run ctrl-c stopped (interrupted by SIGINT); the same run id resumes it"
    assert runs["ctrl-c-label-round-1"].state.is_cancelled(), runs["ctrl-c-label-round-1"].state
