"""One training run as plain data: what the training task builds and what every torchrun rank reads."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dd_core.data.coco import load_coco
from dd_core.data.filtering import TrainingImageFilter
from dd_core.models.checkpoint import load_checkpoint
from dd_core.models.spec import KeypointSetConfig, ModelConfig
from dd_core.ops.stop import NEVER, StopToken
from dd_core.train.detector import TrainingInputs, spec_for, train_detector
from dd_core.train.distributed import DistributedContext
from dd_core.train.loop import Runtime, TrainHooks, TrainResult
from dd_core.train.settings import TrainConfig, TrainStageConfig

if TYPE_CHECKING:
    from dd_core.config.schema import LabeledConfig, RunConfig


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """A teacher (no ``pseudo_annotations``) or a student, by URLs and primitives (JSON round-trips).

    ``model`` and ``keypoints`` are the run config's sections of those names
    (:func:`dd_core.train.detector.spec_for`).
    ``on_step`` and ``on_checkpoint`` name a :data:`~dd_core.train.loop.StepHook` and a
    :data:`~dd_core.train.loop.CheckpointHook` as ``"module:function"``, imported in every rank
    (monitoring, tests). ``options`` (storage credentials) stay out of its repr.
    """

    task: str
    labeled_annotations: str
    labeled_images: str
    checkpoint_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    keypoints: KeypointSetConfig = field(default_factory=KeypointSetConfig)
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    pseudo_annotations: str | None = None
    pseudo_images: str | None = None
    labeled_ratio: float = 1.0
    init_checkpoint: str | None = None
    stop_after: int | None = None
    progress: bool = True
    images: TrainingImageFilter = field(default_factory=TrainingImageFilter)  # which images are trained on
    on_step: str | None = None
    on_checkpoint: str | None = None

    def __post_init__(self) -> None:
        for name, kind in (("train", TrainConfig), ("model", ModelConfig), ("keypoints", KeypointSetConfig),
                           ("images", TrainingImageFilter)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise TypeError(f"TrainJob.{name}: expected a {kind.__name__}, got {type(value).__name__} "
                                f"{value!r:.80}")

    def to_dict(self) -> dict[str, Any]:
        sections = {"train": self.train.model_dump(), "model": self.model.to_dict(),
                    "keypoints": self.keypoints.model_dump(), "images": self.images.to_dict()}
        return {**dataclasses.asdict(self), **sections}

    @classmethod
    def from_config(cls, config: RunConfig, *, checkpoint_dir: str, stage: TrainStageConfig,
                    labeled: LabeledConfig | None = None, pseudo_annotations: str | None = None,
                    pseudo_images: str | None = None, init_checkpoint: str | None = None) -> TrainJob:
        """One training of a run: the teacher (labeled data only), a student (with ``pseudo_annotations``,
        mixed in at ``student.labeled_ratio``) or the upper bound (``labeled``: its fully labeled set).

        ``device`` stays as configured (``auto``): the training task resolves it where it runs.
        """
        labeled = labeled or config.labeled
        mix = {"pseudo_annotations": pseudo_annotations, "pseudo_images": pseudo_images,
               "labeled_ratio": config.student.labeled_ratio} if pseudo_annotations else {}
        return cls(task=config.task, labeled_annotations=labeled.annotations, labeled_images=labeled.images,
                   checkpoint_dir=checkpoint_dir, train=TrainConfig.from_config(stage, config.seed),
                   model=config.model, keypoints=config.keypoints, device=config.device,
                   options=config.storage.options, init_checkpoint=init_checkpoint,
                   images=config.training_images, **mix)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainJob":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"training job: unknown fields {sorted(unknown)} (expected some of {sorted(known)})")
        return cls(**{**d, "train": TrainConfig.model_validate(d.get("train", {})),
                      "model": ModelConfig.from_dict(d.get("model", {})),
                      "keypoints": KeypointSetConfig.model_validate(d.get("keypoints", {})),
                      "images": TrainingImageFilter(**d.get("images", {}))})


def resolve_hook(name: str | None, field_name: str = "on_step") -> Callable[..., None] | None:
    """``"package.module:function"`` (the job's ``field_name``) -> that function; ``None`` stays ``None``."""
    if name is None:
        return None
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"training job: {field_name} must be 'module:function', got {name!r}")
    hook = getattr(importlib.import_module(module), attr, None)
    if not callable(hook):
        raise ValueError(f"training job: {field_name} {name!r}: {module} has no function {attr!r}")
    return hook


def job_hooks(job: TrainJob, given: TrainHooks = TrainHooks()) -> TrainHooks:
    """The hooks of a run: those ``given`` (functions of this process), else the job's named ones."""
    return TrainHooks(on_step=given.on_step or resolve_hook(job.on_step, "on_step"),
                      on_checkpoint=given.on_checkpoint or resolve_hook(job.on_checkpoint, "on_checkpoint"),
                      on_progress=given.on_progress)


def run_job(job: TrainJob, *, world: DistributedContext | None = None, hooks: TrainHooks = TrainHooks(),
            stop: StopToken = NEVER) -> TrainResult:
    """Read the job's data (and the student's initial weights) and train, as one rank of ``world``.

    ``hooks`` (functions of this process) replace the job's named ones; ``stop`` ends the training
    between two steps.
    """
    coco = load_coco(job.labeled_annotations, job.labeled_images, job.options)
    pseudo = load_coco(job.pseudo_annotations, job.pseudo_images, job.options) if job.pseudo_annotations else None
    init = load_checkpoint(job.init_checkpoint, job.options)["model"] if job.init_checkpoint else None
    inputs = TrainingInputs(coco, pseudo=pseudo, labeled_ratio=job.labeled_ratio, init_state=init,
                            image_filter=job.images)
    runtime = Runtime(device=job.device, world=world, progress=job.progress, stop_after=job.stop_after)
    return train_detector(spec_for(job.task, coco, job.model, job.keypoints), inputs, job.train, job.checkpoint_dir,
                          options=job.options, runtime=runtime, hooks=job_hooks(job, hooks), stop=stop)
