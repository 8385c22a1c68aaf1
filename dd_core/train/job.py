"""One training run as plain data: what the training task builds and what every torchrun rank reads."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

from dd_core.data.coco import load_coco
from dd_core.train.checkpoint import load_checkpoint
from dd_core.train.detector import spec_for, train_detector
from dd_core.train.distributed import DistributedContext
from dd_core.train.loop import StepHook, TrainConfig, TrainResult


@dataclass
class TrainJob:
    """A teacher (no ``pseudo_annotations``) or a student, by URLs and primitives (JSON round-trips).

    ``model`` holds :func:`dd_core.train.detector.spec_for` overrides (preset, sizes, weights).
    ``on_step`` names a :data:`dd_core.train.loop.StepHook` as ``"module:function"``, imported in
    every rank (monitoring, tests).
    """

    task: str
    labeled_annotations: str
    labeled_images: str
    checkpoint_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    model: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    pseudo_annotations: str | None = None
    pseudo_images: str | None = None
    labeled_ratio: float = 1.0
    init_checkpoint: str | None = None
    stop_after: int | None = None
    progress: bool = True
    on_step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainJob":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"training job: unknown fields {sorted(unknown)} (expected some of {sorted(known)})")
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        model = dict(d.get("model", {}))
        if model.get("min_size") is not None:  # JSON has lists; the spec (and its signature) has a tuple
            model["min_size"] = tuple(model["min_size"])
        d["model"] = model
        return cls(**d)


def resolve_hook(name: str | None) -> StepHook | None:
    """``"package.module:function"`` -> that function (``None`` stays ``None``)."""
    if name is None:
        return None
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"training job: on_step must be 'module:function', got {name!r}")
    hook = getattr(importlib.import_module(module), attr, None)
    if not callable(hook):
        raise ValueError(f"training job: on_step {name!r}: {module} has no function {attr!r}")
    return hook


def run_job(job: TrainJob, world: DistributedContext | None = None, on_step: StepHook | None = None) -> TrainResult:
    """Read the job's data (and the student's initial weights) and train, as one rank of ``world``."""
    coco = load_coco(job.labeled_annotations, job.labeled_images, job.options)
    pseudo = load_coco(job.pseudo_annotations, job.pseudo_images, job.options) if job.pseudo_annotations else None
    init = load_checkpoint(job.init_checkpoint, job.options)["model"] if job.init_checkpoint else None
    return train_detector(spec_for(job.task, coco, **job.model), coco, job.train, job.checkpoint_dir, pseudo=pseudo,
                          labeled_ratio=job.labeled_ratio, init_state=init, options=job.options, device=job.device,
                          progress=job.progress, stop_after=job.stop_after, world=world,
                          on_step=on_step or resolve_hook(job.on_step))
