"""The distillation pipeline as a plain loop over the same dd_core calls the Prefect flow's tasks make.

Two uses: the accuracy experiments (``bench/accuracy.py``) run it where Prefect is not installed
(a GPU machine), and ``bench/speed.py overhead`` times it against the flow to measure what
orchestration costs. One round; outputs follow the flow's run layout, and re-running resumes
(training from its checkpoints, labeling from its finished shards).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from dd_core import method
from dd_core.config import RunConfig, check_run_inputs
from dd_core.data.coco import load_coco
from dd_core.device import resolve_device
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.method import LabeledRound, Labeling, Stages, label_here
from dd_core.pseudo.pipeline import SelectionOutputs, SelectionSummary, select_listed
from dd_core.report import ap_bar_chart, pseudo_label_grid
from dd_core.storage import read_json, write_bytes_atomic, write_json_atomic
from dd_core.storage.layout import RunLayout
from dd_core.train.job import TrainJob, run_job


class Laps:
    """Seconds spent in each stage, by name, in the order the stages first ran."""

    def __init__(self, names: list[str]) -> None:
        self.seconds = dict.fromkeys(names, 0.0)

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return run

    def rounded(self) -> dict[str, float]:
        return {name: round(s, 1) for name, s in self.seconds.items()}


def plain_distill(config: RunConfig, progress: bool = False, evaluate_teacher: bool = True) -> dict[str, Any]:
    """Teacher -> evaluate -> label shards -> select -> student -> evaluate (-> upper bound): the stages of
    :func:`dd_core.method.distill`, as plain calls in this process.

    Returns ``{"metrics", "seconds", "selection", "checkpoints", "trained_on"}``; ``seconds`` times each
    stage, ``trained_on`` counts each training's images (per set: images, left out, trained on).
    """
    options, device = config.storage.options, resolve_device(config.device)
    layout = RunLayout(config.storage.root, config.run_id)
    check_run_inputs(config)
    labeled = load_coco(config.labeled.annotations, config.labeled.images, options)
    val = load_coco(config.val.annotations, config.val.images, options)
    tta = config.tta.for_task(config.task)
    laps = Laps(["teacher", "evaluate teacher", "label unlabeled", "select", "student", "evaluate student"])
    trained_on: dict[str, Any] = {}

    def train(role: str, job: TrainJob) -> str:
        result = run_job(dataclasses.replace(job, device=device, progress=progress))
        trained_on[str(job.checkpoint_dir).rstrip("/").rsplit("/", 1)[-1]] = result.images
        return result.checkpoint

    def evaluate(name: str, checkpoint: str, with_tta: bool) -> dict[str, float]:
        return evaluate_checkpoint(checkpoint, val, tta if with_tta else None, options=options, device=device,
                                   progress=progress)

    def label(teacher: str, round_layout: RunLayout) -> LabeledRound:
        def select(manifest: str) -> SelectionSummary:
            return select_listed(manifest, labeled.categories, config.task, SelectionOutputs.of_run(round_layout),
                                 labeled=labeled.to_dict(), options=options)

        return method.label(teacher, Labeling.of_run(config, round_layout), label_here(options),
                            laps.timed("select", select), options)

    stages = Stages(lambda role, job: laps.timed(_training_lap(role), train)(role, job),
                    lambda name, *a: laps.timed(_evaluation_lap(name), evaluate)(name, *a),
                    laps.timed("label unlabeled", label))
    distilled = method.distill(config, layout, stages, evaluate_teacher)
    last = distilled.rounds[-1]
    laps.seconds["label unlabeled"] -= laps.seconds["select"]  # the selection is timed on its own
    laps.timed("report", _write_report)(layout, config.task, distilled.metrics, last, options)
    selection = last.selection
    return {"metrics": distilled.metrics, "seconds": laps.rounded(), "checkpoints": distilled.checkpoints,
            "trained_on": trained_on,
            "selection": {"thresholds": selection.thresholds, "kept": selection.kept_per_category,
                          "keypoint_thresholds": selection.keypoint_thresholds, "unlabeled": last.plan.num_images}}


def _training_lap(role: str) -> str:
    return role if role in ("teacher", "upper bound") else "student"


def _evaluation_lap(name: str) -> str:
    return "upper bound" if name == "upper_bound" else f"evaluate {name.removesuffix('_tta')}"


def _write_report(layout: RunLayout, task: str, metrics: dict, last: LabeledRound, options) -> None:
    """metrics.json and the figures of the flow's report task (the markdown itself is left out: it needs
    the flow's summaries)."""
    write_json_atomic(layout.metrics, metrics, options, indent=1)
    write_bytes_atomic(layout.figure("ap.png"), ap_bar_chart(metrics, f"{task} AP"), options)
    pseudo = read_json(last.selection.pseudo_annotations, options)
    if pseudo["images"]:
        write_bytes_atomic(layout.figure("pseudo_labels.png"), pseudo_label_grid(pseudo, last.plan.root, options),
                           options)
