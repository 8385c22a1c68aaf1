"""The run configuration's schema: one pydantic model per section, every value bounded.

Unknown keys are errors; errors name the field's path, e.g. ``student.labeled_ratio``. Sections
that one part of dd_core reads are that part's own settings type, defined beside its code and
passed down as is: ``tta`` (:mod:`dd_core.tta.settings`), ``model`` and ``keypoints``
(:mod:`dd_core.models.spec`), ``training_images`` (:mod:`dd_core.data.filtering`); ``teacher`` and
``student`` extend the training stage of :mod:`dd_core.train.settings` with what only a run's stage
has. A training stage becomes a job by :meth:`dd_core.train.job.TrainJob.from_config`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from dd_core.data.filtering import TrainingImageFilter
from dd_core.models.spec import KeypointSetConfig, ModelConfig
from dd_core.storage import canonical_url
from dd_core.train.settings import MAX_ITERATIONS, Iterations, IterationsOrZero, TrainStageConfig
from dd_core.tta.settings import MultiTransformSettings

# Bounds that turn a typo into an error at once instead of hours later (iterations: dd_core/train/settings.py,
# image sides: dd_core/models/presets.py).
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


class _Strict(BaseModel):
    # allow_inf_nan=False: lr=.inf or nan is refused here, not found as a diverged loss later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _names_something(value: str) -> str:
    if not value.strip() or re.fullmatch(r"\w+://", value.strip()):
        raise ValueError(f"needs a path or URL that names something, got {value!r}")
    return value


def _canonical(value: str) -> str:
    """An object-store URL written one way only (:func:`dd_core.storage.canonical_url`): s3fs writes
    ``s3://b//y/k`` under the key ``/y/k`` but lists it as ``y/k`` (a run there failed at its first
    checkpoint, after retries), and ``.``/``..`` segments name keys other than the folder meant, so
    those are refused. A trailing slash is taken
    away (``s3://b/pool/`` is ``s3://b/pool``): runs were started with it before, and resume as they
    are. Local paths (plain or ``file://``) are left to the operating system, which reads them all
    one way, and other file systems (``memory://``) to themselves."""
    canonical = canonical_url(value)
    if canonical not in (value, value.removesuffix("/")):
        raise ValueError(f"{value!r:.200} is not a canonical URL (empty, '.' or '..' path segments): "
                         f"write {canonical!r:.200}")
    return _names_something(canonical)


Location = Annotated[str, AfterValidator(_names_something), AfterValidator(_canonical)]
"""A path or URL that names something: not empty, not a bare ``file://`` or ``s3://``; an object-store
URL in its canonical form (``s3://bucket/a/b``: no empty, ``.`` or ``..`` segments; a trailing slash
is taken away)."""


class StorageConfig(_Strict):
    root: Location = "./runs"
    # Passed to fsspec (endpoint_url, key, secret, client_kwargs, ...). Never logged or reported.
    # exclude=True: they stay out of every serialisation, so out of Prefect's flow-run parameters.
    options: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)


class LabeledConfig(_Strict):
    annotations: Location
    images: Location


class UnlabeledConfig(_Strict):
    # A folder or prefix of images, a .txt file with one relative image path per line, or an
    # image-only COCO json (e.g. image_info_unlabeled2017.json).
    images: Location
    # Where the names of a .txt list or json live (default: the list's folder; images/ beside a json).
    root: Location | None = None
    limit: int | None = Field(default=None, gt=0)
    # An image of more pixels (width x height, read from its header) is rejected before it is decoded;
    # larger ones below it are decoded reduced to what the teacher uses (dd_core.data.images.MAX_PIXELS).
    max_pixels: int = Field(default=150_000_000, gt=0)


class TeacherConfig(TrainStageConfig):
    # 0: no training; the detector of model.weights is the teacher as published.
    iterations: IterationsOrZero = 2000


class StudentConfig(TrainStageConfig):
    iterations: Iterations = 4000
    # When set, the student trains schedule_factor x the teacher's iterations instead (the paper
    # lengthens the schedule for the extra data: 2x-3x in its Table 2).
    schedule_factor: float | None = Field(default=None, gt=0)
    labeled_ratio: float = Field(default=0.6, gt=0, le=1)
    init: Literal["scratch", "teacher"] = "scratch"


class ShardsConfig(_Strict):
    size: int = Field(default=64, gt=0, le=1_000_000)
    workers: int = Field(default=1, gt=0, le=1024)  # shard tasks run at once (threads, or local Dask workers)
    batch_size: int = Field(default=4, gt=0, le=1024)  # images per multi-transform inference call
    # Where shard tasks run: "threads" in the flow's process; "dask" on a Dask cluster (a local one
    # with `workers` workers, or `dask_address`); "deployment": groups of `per_flow_run` shards
    # submitted as flow runs of `deployment` (e.g. on the gpu work pool, one worker per GPU).
    runner: Literal["threads", "dask", "deployment"] = "threads"
    dask_address: str | None = None          # tcp://scheduler:8786; None starts a local cluster
    # Dask resource "GPU" each shard task needs: start each Dask worker with `--resources GPU=1` (one
    # worker per GPU) so it runs one shard at a time; a local cluster gives each worker GPU=1.
    gpus_per_shard: float = Field(default=0, ge=0)
    # flow-name/deployment-name for runner "deployment". Its workers read storage credentials from
    # their environment: `storage.options` are never sent to them as flow-run parameters.
    deployment: str = "label-shards/gpu"
    per_flow_run: int = Field(default=8, gt=0, le=1_000_000)  # shards per flow run for runner "deployment"

    @model_validator(mode="after")
    def _dask_only(self) -> ShardsConfig:
        for name in ("dask_address", "gpus_per_shard"):
            if getattr(self, name) and self.runner != "dask":
                raise ValueError(f"{name}={getattr(self, name)!r} is a Dask setting: it needs runner 'dask', "
                                 f"got runner {self.runner!r}")
        return self


class DistributedConfig(_Strict):
    """Training across processes with torch.distributed (DDP), launched by torchrun."""

    nproc_per_node: int = Field(default=1, gt=0, le=1024)  # > 1: the training task launches torchrun
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU


class RunConfig(_Strict):
    """One distillation run. ``student_stage()`` is the student's schedule after ``schedule_factor``."""

    task: Literal["keypoints", "detection"] = "keypoints"
    run_id: str | None = None  # letters, digits, '.', '_', '-'; starts with a letter or digit; at most 100
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    storage: StorageConfig = Field(default_factory=StorageConfig)
    labeled: LabeledConfig
    unlabeled: UnlabeledConfig
    val: LabeledConfig
    model: ModelConfig = Field(default_factory=ModelConfig)  # dd_core/models/spec.py
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    tta: MultiTransformSettings = Field(default_factory=MultiTransformSettings)  # dd_core/tta/settings.py
    student: StudentConfig = Field(default_factory=StudentConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    training_images: TrainingImageFilter = Field(default_factory=TrainingImageFilter)  # dd_core/data/filtering.py
    keypoints: KeypointSetConfig = Field(default_factory=KeypointSetConfig)
    rounds: int = Field(default=1, gt=0, le=100)
    upper_bound: LabeledConfig | None = None  # optionally also train on this fully-labeled set

    def student_stage(self) -> StudentConfig:
        if self.student.schedule_factor is None:
            return self.student
        iterations = max(1, round(self.teacher.iterations * self.student.schedule_factor))
        return self.student.model_copy(update={"iterations": iterations})

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        """A run id names a folder and a flow run: a plain name, never a pattern (``*``, ``[12]``),
        a path (``/``, ``..``) or a chain of file systems (``::``)."""
        if v is not None and not RUN_ID.fullmatch(v):
            raise ValueError(f"must be a plain name of at most 100 letters, digits, '.', '_' or '-', starting "
                             f"with a letter or digit, got {v!r:.120}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {v!r:.60}")
        return v

    @model_validator(mode="after")
    def _teacher_to_train(self) -> RunConfig:
        if self.teacher.iterations == 0 and not self.model.weights:
            raise ValueError("teacher.iterations 0 keeps the teacher as it starts: it needs model.weights (a "
                             "published detector such as KeypointRCNN_ResNet50_FPN_Weights.COCO_V1)")
        if self.teacher.iterations == 0 and self.student.schedule_factor is not None:
            raise ValueError("student.schedule_factor scales teacher.iterations, which is 0: set student.iterations")
        return self

    @model_validator(mode="after")
    def _student_schedule(self) -> RunConfig:
        iterations = self.student_stage().iterations
        if iterations > MAX_ITERATIONS:
            raise ValueError(f"student.schedule_factor {self.student.schedule_factor} x teacher.iterations "
                             f"{self.teacher.iterations} = {iterations} iterations, more than {MAX_ITERATIONS:,}")
        return self
