"""The distillation pipeline as a plain loop over the same dd_core calls the Prefect flow's tasks make.

Two uses: the accuracy experiments (``bench/accuracy.py``) run it where Prefect is not installed
(a GPU machine), and ``bench/speed.py overhead`` times it against the flow to measure what
orchestration costs. One round; outputs follow the flow's run layout, and re-running resumes
(training from its checkpoints, labeling from its finished shards).
"""

from __future__ import annotations

import time
from typing import Any

from dd_core.config import RunConfig, check_run_inputs, model_overrides, resolve_device, train_config, tta_options
from dd_core.data.coco import load_coco
from dd_core.data.unlabeled import list_unlabeled, write_plan
from dd_core.evaluate.checkpoint_eval import evaluate_checkpoint
from dd_core.pseudo.infer import checkpoint_fingerprint, label_planned_shard, release_labelers
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.select import read_predictions, select_pseudo_labels
from dd_core.report import ap_bar_chart, pseudo_label_grid
from dd_core.storage import write_bytes_atomic, write_json_atomic
from dd_core.storage.layout import RunLayout
from dd_core.train.checkpoint import load_checkpoint
from dd_core.train.detector import spec_for, train_detector


def plain_distill(config: RunConfig, progress: bool = False, evaluate_teacher: bool = True) -> dict[str, Any]:
    """Teacher -> evaluate -> label shards -> select -> student -> evaluate (-> upper bound).

    Returns ``{"metrics", "seconds", "selection", "checkpoints"}``; ``seconds`` times each stage.
    """
    options, device = config.storage.options, resolve_device(config.device)
    layout = RunLayout(config.storage.root, config.run_id)
    check_run_inputs(config)
    labeled = load_coco(config.labeled.annotations, config.labeled.images, options)
    val = load_coco(config.val.annotations, config.val.images, options)
    tta = tta_options(config.tta, config.task)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    def train(stage, out_dir, data=labeled, pseudo=None, init=None) -> str:
        spec = spec_for(config.task, data, **model_overrides(config.model))
        init_state = load_checkpoint(init, options)["model"] if init else None
        return train_detector(spec, data, train_config(stage, config.seed), out_dir, pseudo=pseudo,
                              labeled_ratio=config.student.labeled_ratio, init_state=init_state, options=options,
                              device=device, progress=progress).checkpoint

    def evaluate(checkpoint: str, with_tta: bool) -> dict[str, float]:
        return evaluate_checkpoint(checkpoint, val, tta if with_tta else None, options, device, progress=progress)

    teacher = train(config.teacher, layout.teacher)
    lap("teacher")
    metrics = {"teacher": evaluate(teacher, False), "teacher_tta": evaluate(teacher, True)} if evaluate_teacher else {}
    lap("evaluate teacher")
    images = list_unlabeled(config.unlabeled.images, config.unlabeled.root, options, config.unlabeled.limit)
    num_shards = write_plan(images, config.shards.size, layout.plan, options)
    fp = checkpoint_fingerprint(teacher, tta, options)
    shards = [label_planned_shard(teacher, layout.plan, i, layout.inference, tta, fp, options, device,
                                  config.shards.batch_size).to_dict() for i in range(num_shards)]
    release_labelers()  # as the flow does, before the student trains
    write_manifest(layout.manifest, shards, fp, options)
    lap("label unlabeled")
    predictions = read_predictions([s["url"] for s in shards], options)
    pseudo, selection = select_pseudo_labels(predictions, labeled.to_dict(), config.task)
    write_json_atomic(layout.thresholds, selection.to_dict(), options, indent=1)
    write_json_atomic(layout.pseudo_annotations, pseudo, options)
    lap("select")
    pseudo_data = load_coco(layout.pseudo_annotations, images.root, options)
    init = teacher if config.student.init == "teacher" else None
    student = train(config.student_stage(), layout.student, pseudo=pseudo_data, init=init)
    lap("student")
    metrics.update(student=evaluate(student, False), student_tta=evaluate(student, True))
    lap("evaluate student")
    checkpoints = {"teacher": teacher, "student": student}
    if config.upper_bound:
        upper_data = load_coco(config.upper_bound.annotations, config.upper_bound.images, options)
        stage = config.teacher.model_copy(update={"iterations": config.student_stage().iterations})
        checkpoints["upper_bound"] = train(stage, layout.upper_bound, data=upper_data)
        metrics["upper_bound"] = evaluate(checkpoints["upper_bound"], False)
        lap("upper bound")
    write_json_atomic(layout.metrics, metrics, options, indent=1)
    _write_report(layout, config.task, metrics, pseudo, images.root, options)
    lap("report")
    return {"metrics": metrics, "seconds": seconds, "checkpoints": checkpoints,
            "selection": {"thresholds": selection.thresholds, "kept": selection.kept_per_category,
                          "keypoint_threshold": selection.keypoint_threshold, "unlabeled": len(images.images)}}


def _write_report(layout: RunLayout, task: str, metrics: dict, pseudo: dict, pseudo_root: str, options) -> None:
    """The figures of the flow's report task (the markdown itself is left out: it needs the flow's summaries)."""
    write_bytes_atomic(layout.figure("ap.png"), ap_bar_chart(metrics, f"{task} AP"), options)
    if pseudo["images"]:
        write_bytes_atomic(layout.figure("pseudo_labels.png"), pseudo_label_grid(pseudo, pseudo_root, options), options)
