"""Data distillation (Radosavovic et al., 2018), the method in the paper's order, written once.

1. Train a teacher on the labeled images.
2. Label the unlabeled images: multi-transform inference of the teacher, ensembled, shard by shard
   (:func:`label`: plan -> label every shard -> manifest -> select).
3. Select pseudo-labels: per category, thresholds that keep as many instances per image as the
   labeled set has (:func:`dd_core.pseudo.pipeline.select`).
4. Train a student on the labeled images and the pseudo-labels (then, with ``rounds`` > 1, it
   labels the next round as the teacher did).
5. Evaluate teacher and student, with and without multi-transform inference.

What differs between callers is passed in. How shards get labeled is a :class:`ShardLabeler`: the
flow's are Prefect tasks on a task runner or flow runs of a deployment; ``omnidistill label``'s and
the benchmarks' is :func:`label_here`, a plain loop in this process. How each stage runs is a
:class:`Stages` (and :class:`LabelingSteps`): plain calls, or the flow's Prefect tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dd_core.config import RunConfig, runs_folder
from dd_core.data.images import MAX_PIXELS
from dd_core.device import resolve_device
from dd_core.ops.caches import TeacherCache
from dd_core.ops.labeling import LabelingOps
from dd_core.ops.plans import PlanCache
from dd_core.ops.read_ahead import ReadAhead
from dd_core.ops.stop import NEVER, StopToken
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob, ShardSummary, done_shards, labeled_after, pseudo_label_planned_shard
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.pipeline import MANIFEST, PlanSummary, SelectionSummary, plan
from dd_core.pseudo.reading import read_one
from dd_core.storage import join
from dd_core.storage.layout import RunLayout
from dd_core.train.job import TrainJob
from dd_core.tta.settings import MultiTransformSettings

Options = Mapping[str, Any]


class ShardLabeler(Protocol):
    """Labels the ``num_shards`` planned shards of ``job`` not labeled yet; returns the summaries of
    all of them, done before or now."""

    def __call__(self, job: ShardJob, num_shards: int) -> list[ShardSummary]: ...


def label_here(options: Options | None = None, progress: bool = False,
               teacher: Callable[[], Any] | None = None, stop: StopToken = NEVER) -> ShardLabeler:
    """Shards one after another in this process, on ``job.device``: ``omnidistill label`` and the benchmarks.
    ``teacher``: gives the job's teacher (:func:`dd_core.pseudo.teacher.teacher_of`) from a model the
    caller has loaded already, instead of reading the checkpoint again. ``stop``: checked before each batch.

    The shards done already (an interrupted call) are found in one listing, as the flow's resume
    does; the others are not looked for one by one (on S3, two requests each).
    """

    def label_shards(job: ShardJob, num_shards: int) -> list[ShardSummary]:
        done = done_shards(job.plan_url, job.out_dir, job.fingerprint, options)
        to_label = [i for i in range(num_shards) if i not in done]
        cache, plans, ahead = TeacherCache(), PlanCache(), ReadAhead(read_one)
        if teacher is not None:
            cache.get(job.fingerprint, teacher)
        ops = LabelingOps(read_ahead=ahead, stop=stop, teachers=cache, plans=plans)
        try:
            for i, following in zip(to_label, labeled_after(to_label)):
                done[i] = pseudo_label_planned_shard(job, i, device=resolve_device(job.device), options=options,
                                                     progress=progress, check_done=False, next_index=following,
                                                     ops=ops)
        finally:  # the teacher's memory is the student's next
            cache.clear()
            plans.clear()
            ahead.clear()
        return [done[i] for i in range(num_shards)]

    return label_shards


@dataclass(frozen=True)
class Labeling:
    """Which unlabeled images one teacher labels, where the shards go, and how inference runs."""

    images: str  # a folder or prefix of images, a list of paths, or an image-only COCO json
    out_dir: str  # the shards, with the plan and the manifest beside them
    tta: MultiTransformSettings
    shard_size: int
    batch_size: int = 4
    device: str = "auto"  # resolved where a shard is labeled
    root: str | None = None  # the images' names are relative to it
    limit: int | None = None  # the first ``limit`` images only
    # Larger images are rejected before decoding; part of the shards' fingerprint.
    max_pixels: int | None = MAX_PIXELS
    exclude: tuple[str, ...] = ()  # folders never listed as input (a storage root inside the unlabeled folder)

    @property
    def plan_url(self) -> str:
        return join(self.out_dir, "_plan.json")

    @property
    def manifest_url(self) -> str:
        return join(self.out_dir, MANIFEST)

    @classmethod
    def of_run(cls, config: RunConfig, layout: RunLayout) -> "Labeling":
        """One round of a run: ``layout.inference`` (a round's layout)."""
        unlabeled = config.unlabeled
        return cls(unlabeled.images, layout.inference, config.tta.for_task(config.task), config.shards.size,
                   config.shards.batch_size, config.device, unlabeled.root, unlabeled.limit, unlabeled.max_pixels,
                   (runs_folder(config),))


def plan_labeling(labeling: Labeling, options: Options | None = None) -> PlanSummary:
    """List the unlabeled images and write the shard plan (:func:`dd_core.pseudo.pipeline.plan`)."""
    return plan(labeling.images, labeling.plan_url, labeling.shard_size, root=labeling.root, limit=labeling.limit,
                options=options, exclude=labeling.exclude)


@dataclass(frozen=True)
class LabelingSteps:
    """How each step of :func:`label` runs: these plain calls, or the flow's Prefect tasks."""

    plan: Callable[[Labeling, Options], PlanSummary] = plan_labeling
    fingerprint: Callable[[str, MultiTransformSettings, Options, int | None], str] = checkpoint_fingerprint
    write_manifest: Callable[[str, list[ShardSummary], str, Options], Any] = write_manifest


@dataclass(frozen=True)
class LabeledRound:
    """What :func:`label` planned and selected: the flow's summary of a round."""

    plan: PlanSummary
    selection: SelectionSummary


def label(teacher: str, labeling: Labeling, label_shards: ShardLabeler, select: Callable[[str], SelectionSummary],
          options: Options | None = None, steps: LabelingSteps = LabelingSteps()) -> LabeledRound:
    """Steps 2-3 for one teacher: plan the shards, label each (resumable: a shard done by this teacher
    and transform set is kept), list them in the manifest, then ``select`` pseudo-labels from it."""
    planned = steps.plan(labeling, options)
    fingerprint = steps.fingerprint(teacher, labeling.tta, options, labeling.max_pixels)
    job = ShardJob(teacher, labeling.plan_url, labeling.out_dir, labeling.tta, fingerprint, labeling.device,
                   labeling.batch_size, planned.digest, labeling.max_pixels)
    shards = label_shards(job, planned.num_shards)
    steps.write_manifest(labeling.manifest_url, shards, fingerprint, options)
    return LabeledRound(planned, select(labeling.manifest_url))


@dataclass(frozen=True)
class Stages:
    """How each stage of :func:`distill` runs: plain calls (the benchmarks) or Prefect tasks (the flow)."""

    train: Callable[[str, TrainJob], str]  # (role, job) -> the final checkpoint's URL
    evaluate: Callable[[str, str, bool], dict[str, float]]  # (name, checkpoint, with TTA) -> COCO stats
    label: Callable[[str, RunLayout], LabeledRound]  # (teacher checkpoint, the round's layout)


@dataclass(frozen=True)
class Distilled:
    """The method's results: metrics (as metrics.json), each round's labeling, the checkpoints by role."""

    metrics: dict[str, dict[str, float]]
    rounds: tuple[LabeledRound, ...]
    checkpoints: dict[str, str] = field(default_factory=dict)


def student_role(round_: int) -> str:
    return "student" if round_ == 1 else f"student round {round_}"


def evaluate_pair(name: str, checkpoint: str, stages: Stages) -> dict[str, dict[str, float]]:
    """``name`` without and ``name_tta`` with multi-transform inference."""
    return {name: stages.evaluate(name, checkpoint, False), f"{name}_tta": stages.evaluate(f"{name}_tta", checkpoint, True)}


def distill(config: RunConfig, layout: RunLayout, stages: Stages, evaluate_teacher: bool = True) -> Distilled:
    """Teacher, then per round: label the unlabeled images and train a student on them; then evaluate
    (and, with ``upper_bound``, train and evaluate a model on that fully labeled set)."""
    teacher = stages.train("teacher", TrainJob.from_config(config, checkpoint_dir=layout.teacher, stage=config.teacher))
    metrics = evaluate_pair("teacher", teacher, stages) if evaluate_teacher else {}
    rounds, current = [], teacher
    for r in range(1, config.rounds + 1):
        round_layout = layout.for_round(r)
        labeled = stages.label(current, round_layout)
        rounds.append(labeled)
        student = TrainJob.from_config(config, checkpoint_dir=round_layout.student, stage=config.student_stage(),
                                       pseudo_annotations=round_layout.pseudo_annotations,
                                       pseudo_images=labeled.plan.root,
                                       init_checkpoint=current if config.student.init == "teacher" else None)
        current = stages.train(student_role(r), student)
    metrics.update(evaluate_pair("student", current, stages))
    checkpoints = {"teacher": teacher, "student": current}
    if config.upper_bound:
        stage = config.teacher.model_copy(update={"iterations": config.student_stage().iterations})
        upper = stages.train("upper bound", TrainJob.from_config(config, checkpoint_dir=layout.upper_bound,
                                                                 stage=stage, labeled=config.upper_bound))
        checkpoints["upper_bound"] = upper
        metrics["upper_bound"] = stages.evaluate("upper_bound", upper, False)
    return Distilled(metrics, tuple(rounds), checkpoints)
