"""The distillation pipeline as a plain loop over the same dd_core calls the Prefect flow's tasks make.

Two uses: the accuracy experiments (``bench/accuracy.py``) run it where Prefect is not installed
(a GPU machine), and ``bench/speed.py overhead`` times it against the flow to measure what
orchestration costs. One round; outputs follow the flow's run layout, and re-running resumes
(training from its checkpoints, labeling from its finished shards).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from dd_core.config import RunConfig, check_run_inputs, multi_transform_settings, train_job
from dd_core.data.coco import load_coco
from dd_core.device import resolve_device
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob, pseudo_label_planned_shard
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.pipeline import SelectionOutputs, plan, select
from dd_core.pseudo.teacher import TeacherCache
from dd_core.report import ap_bar_chart, pseudo_label_grid
from dd_core.storage import write_bytes_atomic, write_json_atomic
from dd_core.storage.layout import RunLayout
from dd_core.train.job import run_job


def plain_distill(config: RunConfig, progress: bool = False, evaluate_teacher: bool = True) -> dict[str, Any]:
    """Teacher -> evaluate -> label shards -> select -> student -> evaluate (-> upper bound).

    Returns ``{"metrics", "seconds", "selection", "checkpoints", "trained_on"}``; ``seconds`` times each
    stage, ``trained_on`` counts each training's images (per set: images, left out, trained on).
    """
    options, device = config.storage.options, resolve_device(config.device)
    layout = RunLayout(config.storage.root, config.run_id)
    check_run_inputs(config)
    labeled = load_coco(config.labeled.annotations, config.labeled.images, options)
    val = load_coco(config.val.annotations, config.val.images, options)
    tta = multi_transform_settings(config)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    trained_on: dict[str, Any] = {}

    def train(stage, out_dir, data=None, pseudo=None, init=None) -> str:
        job = train_job(config, checkpoint_dir=out_dir, stage=stage, labeled=data, pseudo_annotations=pseudo,
                        pseudo_images=planned.root if pseudo else None, init_checkpoint=init)
        result = run_job(dataclasses.replace(job, device=device, progress=progress))
        trained_on[str(out_dir).rstrip("/").rsplit("/", 1)[-1]] = result.images
        return result.checkpoint

    def evaluate(checkpoint: str, with_tta: bool) -> dict[str, float]:
        return evaluate_checkpoint(checkpoint, val, tta if with_tta else None, options=options, device=device,
                                   progress=progress)

    teacher = train(config.teacher, layout.teacher)
    lap("teacher")
    metrics = {"teacher": evaluate(teacher, False), "teacher_tta": evaluate(teacher, True)} if evaluate_teacher else {}
    lap("evaluate teacher")
    planned = plan(config.unlabeled.images, layout.plan, config.shards.size, root=config.unlabeled.root,
                   limit=config.unlabeled.limit, options=options)
    job = ShardJob(teacher, layout.plan, layout.inference, tta, checkpoint_fingerprint(teacher, tta, options),
                   device, config.shards.batch_size)
    teachers = TeacherCache()
    shards = [pseudo_label_planned_shard(job, i, cache=teachers, device=device, options=options).to_dict()
              for i in range(planned.num_shards)]
    teachers.clear()  # as the flow does, before the student trains
    write_manifest(layout.manifest, shards, job.fingerprint, options)
    lap("label unlabeled")
    pseudo, selection, _ = select([s["url"] for s in shards], labeled.categories, config.task,
                                  SelectionOutputs.of_run(layout), labeled=labeled.to_dict(), options=options)
    lap("select")
    init = teacher if config.student.init == "teacher" else None
    student = train(config.student_stage(), layout.student, pseudo=layout.pseudo_annotations, init=init)
    lap("student")
    metrics.update(student=evaluate(student, False), student_tta=evaluate(student, True))
    lap("evaluate student")
    checkpoints = {"teacher": teacher, "student": student}
    if config.upper_bound:
        stage = config.teacher.model_copy(update={"iterations": config.student_stage().iterations})
        checkpoints["upper_bound"] = train(stage, layout.upper_bound, data=config.upper_bound)
        metrics["upper_bound"] = evaluate(checkpoints["upper_bound"], False)
        lap("upper bound")
    write_json_atomic(layout.metrics, metrics, options, indent=1)
    _write_report(layout, config.task, metrics, pseudo, planned.root, options)
    lap("report")
    return {"metrics": metrics, "seconds": seconds, "checkpoints": checkpoints, "trained_on": trained_on,
            "selection": {"thresholds": selection.thresholds, "kept": selection.kept_per_category,
                          "keypoint_thresholds": selection.keypoint_thresholds, "unlabeled": planned.num_images}}


def _write_report(layout: RunLayout, task: str, metrics: dict, pseudo: dict, pseudo_root: str, options) -> None:
    """The figures of the flow's report task (the markdown itself is left out: it needs the flow's summaries)."""
    write_bytes_atomic(layout.figure("ap.png"), ap_bar_chart(metrics, f"{task} AP"), options)
    if pseudo["images"]:
        write_bytes_atomic(layout.figure("pseudo_labels.png"), pseudo_label_grid(pseudo, pseudo_root, options), options)
