"""The data distillation DAG: teacher -> shards of multi-transform inference -> pseudo-labels -> student.

Flows only orchestrate: the method is :mod:`dd_core.method`, and this flow plugs its stages in as
tasks of ``tasks/`` (each around a dd_core function) and its shard labeling as shard tasks on a task
runner or flow runs of a deployment (:mod:`flows.labelers`). Only URLs and small summaries pass between tasks. Re-running
a run id resumes it: training continues from its checkpoints and finished shards are not recomputed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import CancelledRun
from prefect.runtime import flow_run
from prefect.states import Cancelled

from dd_core import method
from dd_core.config import RunConfig
from dd_core.method import LabeledRound, Labeling, LabelingSteps, Stages
from dd_core.ops.stop import PROCESS, StopRequested
from dd_core.pseudo.pipeline import SelectionOutputs, SelectionSummary
from dd_core.storage.layout import RunLayout
from dd_core.storage.lock import RunLock
from dd_core.train.job import TrainJob
from flows.interrupts import CancelWatch, Interrupted, interruption
from flows.labelers import shard_labeler
from flows.runners import shard_task_runner
from tasks.evaluate import evaluate, record_run_settings, validate_inputs
from tasks.infer import fingerprint_teacher, plan_shards, write_inference_manifest
from tasks.report import write_report
from tasks.select import select_pseudo
from tasks.train import train_model

# Planning, fingerprinting and the manifest as Prefect tasks (retried where storage can fail).
TASK_STEPS = LabelingSteps(plan=plan_shards, fingerprint=fingerprint_teacher, write_manifest=write_inference_manifest)
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


def _label_unlabeled(config: RunConfig, checkpoint: str, layout: RunLayout) -> LabeledRound:
    PROCESS.clear()  # left by an earlier labeling in this process (a failed shard stops the others)
    options, outputs = config.storage.options, SelectionOutputs.of_run(layout)

    def select(manifest: str) -> SelectionSummary:
        return select_pseudo(manifest, config.labeled, config.task, outputs, options, config.training_images)

    labeled = method.label(checkpoint, Labeling.of_run(config, layout), shard_labeler(config),
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
