"""The data distillation DAG: teacher -> shards of multi-transform inference -> pseudo-labels -> student.

Flows only orchestrate: the method is :mod:`dd_core.method`, and this flow plugs its stages in as
tasks of ``tasks/`` (each around a dd_core function) and its shard labeling as shard tasks on a task
runner or flow runs of a deployment. Only URLs and small summaries pass between tasks. Re-running
a run id resumes it: training continues from its checkpoints and finished shards are not recomputed.
"""

from __future__ import annotations

import functools
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import flow_run
from prefect.states import Cancelled

from dd_core import method
from dd_core.config import RunConfig
from dd_core.ops.stop import PROCESS, StopRequested
from dd_core.method import LabeledRound, Labeling, LabelingSteps, Stages
from dd_core.pseudo.infer import ShardJob
from dd_core.pseudo.pipeline import SelectionOutputs, SelectionSummary
from dd_core.storage.layout import RunLayout
from dd_core.storage.lock import RunLock
from dd_core.train.job import TrainJob
from flows.interrupts import CancelWatch, Interrupted, interruption
from flows.runners import labeled_next, shard_groups, shard_resources, shard_task_runner
from tasks import cache
from tasks.evaluate import evaluate, record_run_settings, validate_inputs
from tasks.fanout import label_shard_group
from tasks.infer import (
    collect_shards,
    find_done_shards,
    fingerprint_teacher,
    infer_shard,
    plan_shards,
    write_inference_manifest,
)
from tasks.progress import ProgressArtifact
from tasks.report import write_report
from tasks.select import select_pseudo
from tasks.train import train_model

# Planning, fingerprinting and the manifest as Prefect tasks (retried where storage can fail).
TASK_STEPS = LabelingSteps(plan=plan_shards, fingerprint=fingerprint_teacher, write_manifest=write_inference_manifest)
PROGRESS_EVERY = 5.0  # seconds between updates of the labeling progress artifact (one API call each)


def _wait_with_progress(futures: list[PrefectFuture], shards_per_future: list[int], done: int = 0) -> list[Any]:
    """Results in completion order, with a progress artifact counting labeled shards (``done`` of
    them were labeled before).

    Leaving early (a failed shard, Ctrl-C, SIGTERM) asks the other shard threads to stop, so
    the task runner does not wait for each to finish its shard.
    """
    progress = ProgressArtifact("inference-progress", "Unlabeled shards labeled", every=PROGRESS_EVERY)
    weight = {future.task_run_id: n for future, n in zip(futures, shards_per_future)}
    total, results = done + sum(shards_per_future), []
    progress.show(100.0 * done / total if total else 100.0)
    try:
        for future in as_completed(futures):
            results.append(future.result())
            done += weight[future.task_run_id]
            progress.show(100.0 * done / total)
    except BaseException as exc:
        _stop_the_others(futures, exc)
        raise
    return results


def _stop_the_others(futures: list[PrefectFuture], exc: BaseException) -> None:
    """One shard failed (or the run was interrupted): the other shard tasks stop at their next batch.

    A shard's failure stops this labeling only: once its tasks have wound down (a batch each) the
    request is withdrawn, so that whatever runs next in this process is not stopped too. A signal or
    a cancel stops the whole run, and its request stays.
    """
    PROCESS.request(f"labeling stopped ({type(exc).__name__})")
    if isinstance(exc, Exception) and not isinstance(exc, StopRequested):
        wait(futures)
        PROCESS.clear()


def _label_on_task_runner(config: RunConfig, job: ShardJob, num_shards: int) -> list[dict[str, Any]]:
    """One ``infer_shard`` task per shard not done yet on this flow's task runner (threads or Dask).

    The shards done already (a resumed run) are found at once, without a task run each: at 2,000
    shards their task runs alone took a minute of a resume. The others were just found not done, so
    their tasks do not look again (another worker writing one meanwhile would only be redone).
    """
    done = {i: s for i, s in find_done_shards(job, config.storage.options).items() if i < num_shards}
    to_label = [i for i in range(num_shards) if i not in done]
    following = labeled_next(to_label, config.shards)
    with shard_resources(config.shards):
        futures = [infer_shard.submit(job, i, config.storage.options, check_done=False, next_index=after)
                   for i, after in zip(to_label, following)]
    shards = [*done.values(), *_wait_with_progress(futures, [1] * len(to_label), done=len(done))]
    get_run_logger().info("shards: %d (%d already done)", len(shards), sum(s["skipped"] for s in shards))
    return shards


def _label_by_deployment(config: RunConfig, job: ShardJob, num_shards: int) -> list[dict[str, Any]]:
    """Groups of shards as flow runs of ``shards.deployment``; their output is read back from storage."""
    groups = shard_groups(num_shards, config.shards.per_flow_run)
    futures = [label_shard_group.submit(config.shards.deployment, job, group) for group in groups]
    runs = _wait_with_progress(futures, [len(group) for group in groups])
    get_run_logger().info("shards: %d, labeled by %d flow run(s) of %s", num_shards, len(runs),
                          config.shards.deployment)
    return collect_shards(job.plan_url, job.out_dir, job.fingerprint, config.storage.options)


# A stop the user asked for (Ctrl-C): the flow run ends Cancelled, as a cancel from the UI does, not Crashed.
USER_STOPS = (Interrupted, KeyboardInterrupt)


@flow(name="label-unlabeled", flow_run_name="{layout.run_id}-label-round-{layout.round}")
def label_unlabeled(config: RunConfig, checkpoint: str, layout: RunLayout) -> LabeledRound:
    """Steps 2-3 for one teacher: plan shards, label each shard (retried, idempotent), select pseudo-labels."""
    try:
        return _label_unlabeled(config, checkpoint, layout)
    except USER_STOPS as exc:
        return Cancelled(message=f"labeling of run {layout.run_id} (round {layout.round}) {_stopped(exc)}")


def _stopped(exc: BaseException) -> str:
    found = interruption(exc)
    return f"stopped ({found[1] if found else str(exc) or type(exc).__name__})"


def _label_shards(config: RunConfig, job: ShardJob, num_shards: int) -> list[dict[str, Any]]:
    """The flow's :class:`~dd_core.method.ShardLabeler`: shard tasks, or flow runs of a deployment."""
    label = _label_by_deployment if config.shards.runner == "deployment" else _label_on_task_runner
    try:
        return label(config, job, num_shards)
    finally:  # shard tasks in this process cached the teacher (the student trains next), the plan, images read ahead
        cache.TEACHERS.clear()
        cache.PLANS.clear()
        cache.READ_AHEAD.clear()


def _label_unlabeled(config: RunConfig, checkpoint: str, layout: RunLayout) -> LabeledRound:
    PROCESS.clear()  # left by an earlier labeling in this process (a failed shard stops the others)
    options, outputs = config.storage.options, SelectionOutputs.of_run(layout)

    def select(manifest: str) -> SelectionSummary:
        return select_pseudo(manifest, config.labeled, config.task, outputs, options, config.training_images)

    labeled = method.label(checkpoint, Labeling.of_run(config, layout), functools.partial(_label_shards, config),
                           select, options, TASK_STEPS)
    get_run_logger().info("pseudo-labels kept: %s", labeled.selection.kept_per_category)
    return labeled


def _stages(config: RunConfig, trained: dict[str, Any]) -> Stages:
    """The method's stages as this flow's tasks (and the labeling subflow); ``trained`` collects, per
    training, the images it learned from."""

    def train(role: str, job: TrainJob) -> str:
        result = train_model(role, job, config.distributed)
        trained[role] = result.images
        return result.checkpoint

    def evaluate_on_val(name: str, checkpoint: str, with_tta: bool) -> dict[str, float]:
        tta = config.tta.for_task(config.task) if with_tta else None
        return evaluate(name, checkpoint, config.val, tta, config.device, config.storage.options)

    def label_round(teacher: str, layout: RunLayout) -> LabeledRound:
        # A subflow gets its own task runner: threads, Dask, or threads waiting on flow runs of a deployment.
        return label_unlabeled.with_options(task_runner=shard_task_runner(config.shards))(config, teacher, layout)

    return Stages(train, evaluate_on_val, label_round)


def _flow_run_name() -> str:
    """The run id: given by the CLI, or ``flow-<flow run id>`` for a scheduled deployment."""
    config = flow_run.get_parameters().get("config")
    run_id = config.run_id if isinstance(config, RunConfig) else (config or {}).get("run_id")
    return run_id or f"flow-{flow_run.get_id()}"


@flow(name="data-distillation", flow_run_name=_flow_run_name)
def distill(config: RunConfig) -> dict[str, Any]:
    """The whole method; returns ``{"run_dir", "metrics", "report"}``.

    Start it with a ``run_id`` (the CLI and :func:`flows.run.run_distillation` generate one) so the
    flow run is named after it; the same id again resumes that run.
    """
    if not config.run_id:  # a scheduled deployment: name the run after the flow run, stable across retries
        config = config.model_copy(update={"run_id": f"flow-{flow_run.get_id()}"})
    PROCESS.clear()  # a run that stopped earlier in this process does not stop this one
    layout = RunLayout(config.storage.root, config.run_id)
    counts = validate_inputs(config)  # before anything is written under the run
    try:
        with CancelWatch(flow_run.get_id()), RunLock(layout.lock, config.storage.options,
                                                     holder=f"flow run {flow_run.get_id()}", stop=PROCESS):
            record_run_settings(config, layout.settings)
            trained: dict[str, Any] = {}
            distilled = method.distill(config, layout, _stages(config, trained))
            last = distilled.rounds[-1]
            counts.update(unlabeled=last.plan.num_images, rejected=last.selection.num_rejected,
                          shards=last.plan.num_shards, trained_on=trained)
            report = write_report(layout, config.task, distilled.metrics, [r.selection for r in distilled.rounds],
                                  last.plan.root, counts, config.storage.options)
    except StopRequested as exc:  # cancelled from the UI: finished checkpoints and shards stay for a resume
        return Cancelled(message=f"run {config.run_id} {exc}; the same run id resumes it")
    except (*USER_STOPS, CancelledRun) as exc:  # Ctrl-C here or in the labeling subflow (which ended Cancelled)
        return Cancelled(message=f"run {config.run_id} {_stopped(exc)}; the same run id resumes it")
    return {"run_dir": layout.run_dir, "metrics": distilled.metrics, "report": report}
