"""Inference fanned out: a local Dask cluster and flow runs of a deployment label the same shards
as the in-process thread pool."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from dd_core.config import ShardsConfig
from dd_core.method import LabeledRound
from dd_core.pseudo.infer import ShardJob
from dd_core.storage import read_json
from dd_core.storage.layout import RunLayout
from dd_core.tta.settings import MultiTransformSettings
from flows.distill import label_unlabeled
from flows.runners import labeled_next, shard_groups, shard_resources, shard_task_runner
from tests.conftest import save_random_checkpoint
from tests.flows.conftest import local_config, make_sets

ROOT = Path(__file__).resolve().parents[2]


# --- runners and groups ---------------------------------------------------------------------

def _most_at_once(runner, tasks: int) -> int:
    """How many of ``tasks`` tasks that each hold for 0.3 s a flow on ``runner`` runs at the same time."""
    import threading
    import time

    from prefect import flow, task

    lock, state = threading.Lock(), {"now": 0, "most": 0}

    @task
    def hold(i: int) -> None:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1

    @flow(task_runner=runner)
    def burst() -> None:
        for future in [hold.submit(i) for i in range(tasks)]:
            future.result()

    burst()
    return state["most"]


def test_threads_runner_bounds_concurrent_shards_by_workers(prefect_harness):
    runner = shard_task_runner(ShardsConfig(workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and _most_at_once(runner, 8) == 3


def test_dask_runner_starts_a_local_cluster_of_single_threaded_processes_or_joins_an_address():
    from prefect_dask import DaskTaskRunner

    local = shard_task_runner(ShardsConfig(runner="dask", workers=2))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True}
    gpus = shard_task_runner(ShardsConfig(runner="dask", workers=2, gpus_per_shard=1))
    assert gpus.cluster_kwargs["resources"] == {"GPU": 1}
    remote = shard_task_runner(ShardsConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_kwargs == {}


def test_deployment_runner_waits_on_every_group_at_once(prefect_harness):
    runner = shard_task_runner(ShardsConfig(runner="deployment", workers=1))
    assert isinstance(runner, ThreadPoolTaskRunner) and _most_at_once(runner, 8) == 8


def test_missing_prefect_dask_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import prefect_dask -> ImportError
    with pytest.raises(ImportError, match=r"needs prefect-dask, which is not installed: pip install -c constraints.txt -e '\.\[dask\]'"):
        shard_task_runner(ShardsConfig(runner="dask"))


def test_gpu_annotation_only_for_dask_shards_that_need_gpus():
    import dask

    with shard_resources(ShardsConfig(runner="dask", gpus_per_shard=0.5)):
        assert dask.get_annotations() == {"resources": {"GPU": 0.5}}
    assert dask.get_annotations() == {}
    with shard_resources(ShardsConfig(runner="dask")):
        assert dask.get_annotations() == {}


@pytest.mark.parametrize("settings", [{"gpus_per_shard": 1}, {"dask_address": "tcp://h:8786"},
                                      {"runner": "deployment", "gpus_per_shard": 0.5}])
def test_dask_settings_without_the_dask_runner_are_refused(settings):
    with pytest.raises(ValueError, match="needs runner 'dask'"):
        ShardsConfig(**settings)


@pytest.mark.parametrize("num_shards, per_run, groups", [
    (0, 8, []), (3, 8, [[0, 1, 2]]), (5, 2, [[0, 1], [2, 3], [4]]), (4, 2, [[0, 1], [2, 3]]), (2, 1, [[0], [1]])])
def test_shard_groups_are_consecutive_and_cover_every_shard_once(num_shards, per_run, groups):
    assert shard_groups(num_shards, per_run) == groups


@pytest.mark.parametrize("settings, expected", [
    ({}, [3, 7, 8, None]), ({"workers": 2}, [None] * 4), ({"runner": "dask"}, [None] * 4)])
def test_a_shard_reads_the_next_ones_images_ahead_only_when_one_thread_labels_them_in_order(settings, expected):
    assert labeled_next([1, 3, 7, 8], ShardsConfig(**settings)) == expected


JOB = ShardJob("s3://b/teacher.pth", "s3://b/_plan.json", "s3://b/inf", MultiTransformSettings(scales=(64,)), "fp", "cuda", 2)


def test_a_shard_group_whose_flow_run_failed_fails_naming_the_flow_run_and_its_shards(monkeypatch):
    import prefect.deployments
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed

    from tasks.fanout import ShardGroupError, label_shard_group

    sent = {}

    def run_deployment(name, parameters, flow_run_name, timeout):
        sent.update(name=name, parameters=parameters)
        return FlowRun(id=uuid.uuid4(), name=flow_run_name, flow_id=uuid.uuid4(),
                       state=Failed(message="Flow run encountered an exception: CUDA out of memory"))

    monkeypatch.setattr(prefect.deployments, "run_deployment", run_deployment)
    with pytest.raises(ShardGroupError, match=r"flow run 'shards 00002-00003' \(.*\) of label-shards/gpu for "
                                              r"shards \[2, 3\] ended Failed: .*CUDA out of memory"):
        label_shard_group.fn("label-shards/gpu", JOB, [2, 3])
    assert sent["name"] == "label-shards/gpu" and sent["parameters"] == {"job": JOB.parameters(), "indices": [2, 3]}
    assert "options" not in sent["parameters"]["job"]


def test_an_unknown_deployment_is_named_in_the_error(prefect_harness):
    from tasks.fanout import label_shard_group

    with pytest.raises(ValueError, match="no deployment 'label-shards/nowhere'"):
        label_shard_group.fn("label-shards/nowhere", JOB, [0])


# --- the same pseudo-labels whichever runner labels the shards -------------------------------

@pytest.fixture(scope="module")
def teacher_setup(tmp_path_factory):
    """Sets with 8 unlabeled images and a random-weight teacher that detects plenty."""
    d = make_sets(tmp_path_factory.mktemp("scale-out"), (4, 8, 2))
    coco = read_json(str(d / "labeled/annotations.json"))
    checkpoint = save_random_checkpoint(str(d / "teacher.pth"), coco)
    return d, checkpoint


def _label(d: Path, checkpoint: str, run_id: str, **shards) -> tuple[LabeledRound, RunLayout]:
    config = local_config(d, run_id=run_id, shards={"size": 2, **shards})
    layout = RunLayout(config.storage.root, run_id)
    runner = shard_task_runner(config.shards)
    return label_unlabeled.with_options(task_runner=runner)(config, checkpoint, layout), layout


def assert_same(actual, expected, where="") -> None:
    """Equal up to float noise: Dask workers run torch with one thread, which reorders sums."""
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def _outputs(layout: RunLayout) -> tuple[dict, dict]:
    """(pseudo-label COCO json, shard name -> rows) of a labeled run."""
    shards = {p.name: pq.read_table(p).to_pylist() for p in sorted(Path(layout.inference).glob("shard-*.parquet"))}
    return read_json(layout.pseudo_annotations), shards


@pytest.fixture(scope="module")
def in_process(teacher_setup, prefect_harness):
    d, checkpoint = teacher_setup
    labeled, layout = _label(d, checkpoint, "threads", workers=2)
    return labeled, _outputs(layout)


def test_a_local_dask_cluster_gives_the_same_pseudo_labels_as_threads(teacher_setup, in_process):
    d, checkpoint = teacher_setup
    labeled, layout = _label(d, checkpoint, "dask", runner="dask", workers=2)
    pseudo, shards = _outputs(layout)
    expected_pseudo, expected_shards = in_process[1]
    assert len(shards) == 4 and sum(len(rows) for rows in shards.values()) > 0
    assert_same(shards, expected_shards, "shards")
    assert pseudo["annotations"]
    assert_same(pseudo, expected_pseudo, "pseudo")
    assert labeled.selection.kept_per_category == in_process[0].selection.kept_per_category


# --- shard groups as flow runs of a deployment, served by a process worker -------------------

@pytest.fixture
def label_shards_deployment(prefect_harness, tmp_path):
    """``label-shards/gpu`` deployed with ``prefect deploy`` from deployments/prefect.yaml on a process
    pool ``gpu``, and a worker (2 flow runs at once) serving it; the worker is stopped at the end."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="gpu", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()),
                                overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "OMNIDISTILL_HOME": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    deploy = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
                             "deployments/prefect.yaml", "--name", "gpu"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--type",
                                   "process", "--limit", "2"], env=env, cwd=tmp_path, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield "label-shards/gpu", tmp_path / "worker.log"
        finally:
            os.killpg(worker.pid, signal.SIGTERM)  # the worker and the flow-run processes it started
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def test_shard_groups_run_as_flow_runs_of_a_deployment_and_give_the_same_pseudo_labels(
        teacher_setup, in_process, label_shards_deployment):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deployment, worker_log = label_shards_deployment
    d, checkpoint = teacher_setup
    assert ShardsConfig().deployment == deployment  # the default names the deployment in prefect.yaml
    labeled, layout = _label(d, checkpoint, "deployment", runner="deployment", per_flow_run=2)
    pseudo, shards = _outputs(layout)
    expected_pseudo, expected_shards = in_process[1]
    assert_same(shards, expected_shards, "shards")  # labeled in the flow-run processes, not here
    assert_same(pseudo, expected_pseudo, "pseudo")
    assert len(read_json(layout.manifest)["shards"]) == 4
    assert labeled.selection.kept_per_category == in_process[0].selection.kept_per_category

    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])))
    assert sorted(r.parameters["indices"] for r in runs) == [[0, 1], [2, 3]], worker_log.read_text()[-3000:]
    assert all(r.state.is_completed() and r.parent_task_run_id for r in runs)
    assert all("options" not in r.parameters for r in runs)  # credentials stay with the workers
