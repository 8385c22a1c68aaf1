"""The training task in a flow: the device resolved where it runs, torchrun for several processes,
progress in the Prefect UI (an artifact kept up to date, a log line now and then)."""

import json
import time
from pathlib import Path

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, LogFilter, LogFilterFlowRunId

from dd_core.config import DistributedConfig
from dd_core.models import ModelConfig
from dd_core.train import TrainConfig
from dd_core.train.job import TrainJob
from tasks.train import Trained, train_model
from tests.tasks import probe


def _job(tiny_coco, tmp_path, name, iterations, report_every=180.0, **extra) -> TrainJob:
    annotations, images = tiny_coco
    return TrainJob(task="keypoints", labeled_annotations=annotations, labeled_images=images,
                    checkpoint_dir=str(tmp_path / name), device="auto", progress=False,
                    train=TrainConfig(iterations=iterations, batch_size=2, lr=0.005, warmup_iters=1,
                                      checkpoint_every=iterations, report_every=report_every),
                    model=ModelConfig(test_size=64, min_size=(64,), max_size=96), **extra)


def _log_lines(client, flow_run_id, prefix: str, last: str) -> list[str]:
    """The run's log lines starting with ``prefix``, once the one starting with ``last`` has arrived
    (logs reach the API in batches, a moment after they are written)."""
    deadline = time.monotonic() + 20
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        lines = [log.message for log in logs if log.message.startswith(prefix)]
        if any(line.startswith(last) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def _artifact(client, key: str):
    found = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found[0] if found else None


def test_training_shows_its_progress_in_the_ui_while_it_trains(tiny_coco, tmp_path, prefect_harness):
    probe.READINGS.clear()
    job = _job(tiny_coco, tmp_path, "teacher", 12, report_every=1e-6,
               on_step="tests.tasks.probe:read_progress_artifact")

    @flow
    def teach() -> Trained:
        return train_model("teacher", job)

    state = teach(return_state=True)
    n = len(json.loads(Path(job.labeled_annotations).read_text())["images"])
    assert state.result() == Trained(checkpoint=str(tmp_path / "teacher" / "model_0000012.pth"),  # "auto": CPU
                                     images={"labeled": {"images": n, "left_out": 0, "trained_on": n}})
    # Read through the API at step 8: the artifact had moved (step 1 of 12), training had not ended.
    assert len(probe.READINGS) == 1 and 0 < probe.READINGS[0][1] < 100
    with get_client(sync_client=True) as client:
        assert float(_artifact(client, "teacher-training").data) == 100.0
        lines = _log_lines(client, state.state_details.flow_run_id, "teacher: iteration", "teacher: iteration 12/")
    assert lines[0].startswith("teacher: iteration 1/12 (8.3%) loss ") and lines[-1].startswith(
        "teacher: iteration 12/12 (100.0%)")
    assert " s/it, " in lines[-1] and lines[-1].endswith("0m00s left")


def test_several_processes_train_through_torchrun_and_rank_0_reports(tiny_coco, tmp_path, prefect_harness):
    job = _job(tiny_coco, tmp_path, "student", 4, report_every=1e-6)

    @flow
    def teach() -> Trained:
        return train_model("student round 2", job, DistributedConfig(nproc_per_node=2, backend="gloo"))

    state = teach(return_state=True)
    assert state.result().checkpoint == str(tmp_path / "student" / "model_0000004.pth")
    n = len(json.loads(Path(job.labeled_annotations).read_text())["images"])
    assert state.result().images == {"labeled": {"images": n, "left_out": 0, "trained_on": n}}  # from rank 0
    with get_client(sync_client=True) as client:
        assert float(_artifact(client, "student-round-2-training").data) == 100.0
        lines = _log_lines(client, state.state_details.flow_run_id, "student round 2: iteration",
                           "student round 2: iteration 4/")
    assert lines and lines[-1].startswith("student round 2: iteration 4/4 (100.0%)")


def test_training_goes_on_when_its_progress_artifact_can_no_longer_be_updated(prefect_harness):
    from dd_core.train.progress import Progress, ReportPacing
    from tasks.progress import TrainingProgress

    def at(iteration: int) -> Progress:
        return Progress(iteration=iteration, total=4, losses={"loss": 1.0}, lr=0.01, seconds_per_iteration=0.1)

    @flow
    def teach() -> list[bool]:
        report = TrainingProgress("teacher", ReportPacing(log_every=1e9, update_every=0.0))
        report(at(1))
        with get_client(sync_client=True) as client:
            client.delete_artifact(report.artifact.artifact)  # the next update is refused: 404
        shown = [report.artifact.shown]
        for iteration in (2, 3, 4):
            report(at(iteration))  # does not raise
            shown.append(report.artifact.shown)
        return shown

    state = teach(return_state=True)
    assert state.result() == [True, False, False, False]
    with get_client(sync_client=True) as client:
        lines = _log_lines(client, state.state_details.flow_run_id, "teacher-training: no", "teacher-training: no")
    assert len(lines) == 1 and lines[0].startswith(
        "teacher-training: no longer updated (PrefectHTTPStatusError: Client error '404 Not Found'")
