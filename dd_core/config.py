"""The run configuration: one YAML file, validated by pydantic, turned into typed arguments here.

Unknown keys are errors; ``--set a.b=value`` overrides any field (the value is parsed as YAML).
Errors name the field's path, e.g. ``student.labeled_ratio``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dd_core.data.coco import MIN_BOX_SIDE

if TYPE_CHECKING:
    from dd_core.data.coco import CocoData
    from dd_core.train import TrainConfig

log = logging.getLogger(__name__)

# Bounds that turn a typo into an error at once instead of hours later. Checkpoints are named
# model_<7 digits>.pth, so no schedule may pass 9,999,999 iterations; no image side (training or
# test scale) may pass 4,096 px, nor its longer-side cap 8,192 px (the paper's largest is 1,200).
MAX_ITERATIONS = 9_999_999
MAX_SIDE = 4096
MAX_LONG_SIDE = 8192
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")

Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]
Iterations = Annotated[int, Field(gt=0, le=MAX_ITERATIONS)]


class _Strict(BaseModel):
    # allow_inf_nan=False: lr=.inf or nan is refused here, not found as a diverged loss later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class StorageConfig(_Strict):
    root: str = "./runs"
    # Passed to fsspec (endpoint_url, key, secret, client_kwargs, ...). Never logged or reported.
    # exclude=True: they stay out of every serialisation, so out of Prefect's flow-run parameters.
    options: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)


class LabeledConfig(_Strict):
    annotations: str
    images: str


class UnlabeledConfig(_Strict):
    # A folder or prefix of images, a .txt file with one relative image path per line, or an
    # image-only COCO json (e.g. image_info_unlabeled2017.json).
    images: str
    # Where the names of a .txt list or json live (default: the list's folder; images/ beside a json).
    root: str | None = None
    limit: int | None = Field(default=None, gt=0)


class ModelConfig(_Strict):
    preset: Literal["slim", "r50-fpn", "r101-fpn", "x101-32x4d-fpn", "x101-64x4d-fpn"] = "slim"
    backbone_weights: str | None = None  # a local/URL torchvision ImageNet state dict; never downloaded
    min_size: list[Side] | None = Field(default=None, min_length=1)  # training scales (shorter side); default: the preset's
    test_size: Side | None = None
    max_size: int | None = Field(default=None, gt=0, le=MAX_LONG_SIDE)

    @model_validator(mode="after")
    def _max_size_holds_the_scales(self) -> ModelConfig:
        """A longer-side cap below a shorter-side scale would shrink every image below that scale
        (``max_size=1`` resizes images to nothing): the cap must hold the training and test scales."""
        if self.max_size is None:
            return self
        from dd_core.models.presets import PRESETS

        preset = PRESETS[self.preset]
        sizes = [*(self.min_size or preset.min_size), self.test_size or preset.test_size]
        if self.max_size < max(sizes):
            raise ValueError(f"max_size {self.max_size} is below the largest training or test scale "
                             f"{max(sizes)} (the longer side's cap must hold the shorter side's scale)")
        return self


class TrainStageConfig(_Strict):
    iterations: Iterations = 2000
    batch_size: int = Field(default=8, gt=0, le=4096)
    lr: float = Field(default=0.02, gt=0)
    warmup_iters: int = Field(default=100, ge=0, le=MAX_ITERATIONS)
    checkpoint_every: Iterations = 500
    num_workers: int = Field(default=0, ge=0, le=256)


class StudentConfig(TrainStageConfig):
    iterations: Iterations = 4000
    # When set, the student trains schedule_factor x the teacher's iterations instead (the paper
    # lengthens the schedule for the extra data: 2x-3x in its Table 2).
    schedule_factor: float | None = Field(default=None, gt=0)
    labeled_ratio: float = Field(default=0.6, gt=0, le=1)
    init: Literal["scratch", "teacher"] = "scratch"


class TTAConfig(_Strict):
    scales: list[int] = Field(default_factory=lambda: [96, 128, 160], max_length=64)
    flip: bool = True
    nms_threshold: float = Field(default=0.5, gt=0, le=1)
    voting_threshold: float = Field(default=0.8, gt=0, le=1)
    scoring: Literal["ID", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM"] = "ID"

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one scale")
        if any(s <= 0 or s > MAX_SIDE for s in v):
            raise ValueError(f"scales must be pixel sizes from 1 to {MAX_SIDE}, got {v}")
        return v


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
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TrainStageConfig = Field(default_factory=TrainStageConfig)
    tta: TTAConfig = Field(default_factory=TTAConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
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
    def _student_schedule(self) -> RunConfig:
        iterations = self.student_stage().iterations
        if iterations > MAX_ITERATIONS:
            raise ValueError(f"student.schedule_factor {self.student.schedule_factor} x teacher.iterations "
                             f"{self.teacher.iterations} = {iterations} iterations, more than {MAX_ITERATIONS:,}")
        return self


class ConfigError(ValueError):
    """A run configuration that does not validate; the message lists each field's path."""


def _format(exc: ValidationError, source: str) -> str:
    """One line: ``run.yaml: invalid configuration: teacher.lr: Input should be greater than 0; ...``."""
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{path}: {err['msg']}")
    return f"{source}: invalid configuration: " + "; ".join(problems)


def _override_value(raw: str) -> Any:
    """A ``--set`` value parsed as YAML (3, 0.5, [1,2], true); text YAML cannot read (``*``, ``[1,``)
    stays text, so the field's own check names what is wrong with it."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict (values parsed as YAML: 3, 0.5, [1,2], true)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. teacher.iterations=100")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _override_value(raw)
    return data


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides, validate."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(apply_overrides(data, overrides or []), str(path))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- config -> typed arguments of dd_core functions (the one place where this happens) ---

def train_config(stage: TrainStageConfig, seed: int) -> "TrainConfig":
    from dd_core.train import TrainConfig

    return TrainConfig(iterations=stage.iterations, batch_size=stage.batch_size, lr=stage.lr,
                       warmup_iters=min(stage.warmup_iters, stage.iterations),
                       checkpoint_every=min(stage.checkpoint_every, stage.iterations),
                       num_workers=stage.num_workers, seed=seed)


def model_overrides(model: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`dd_core.train.detector.spec_for`."""
    out: dict[str, Any] = {"preset": model.preset}
    if model.backbone_weights:
        out["backbone_weights"] = model.backbone_weights
    if model.min_size:
        out["min_size"] = tuple(model.min_size)
    if model.test_size:
        out["test_size"] = model.test_size
    if model.max_size:
        out["max_size"] = model.max_size
    return out


def tta_options(tta: TTAConfig, task: str) -> dict[str, Any]:
    """Keyword arguments for :func:`dd_core.evaluate.checkpoint_eval.tta_predict_fn`.

    Only what the task uses: box merging settings do not change keypoint shards (whose
    fingerprint these options are part of), so they are left out for keypoints.
    """
    options: dict[str, Any] = {"scales": list(tta.scales), "flip": tta.flip}
    if task == "detection":
        options.update(nms_threshold=tta.nms_threshold, voting_threshold=tta.voting_threshold, scoring=tta.scoring)
    return options


def check_run_inputs(config: RunConfig) -> dict[str, int]:
    """Validate the labeled, validation (and upper-bound) sets and the unlabeled source of a run.

    Called before anything is trained or written, so bad input fails in seconds with an error
    naming the file, record and field. Returns image counts of the labeled sets. A ``.txt`` list
    or image-only json of unlabeled images is read and every entry checked (names, ids): cheap
    next to labeling, and an entry that could never be labeled would otherwise fail the run
    hours later. A folder or prefix is only checked to exist: listing it (120k images on COCO) is
    the shard planner's job, and names that come from the storage itself need no checking.
    """
    from dd_core.data.coco import check_compatible, load_coco
    from dd_core.data.unlabeled import is_listing, list_unlabeled
    from dd_core.storage import exists

    options = config.storage.options
    labeled = load_coco(config.labeled.annotations, config.labeled.images, options)
    reference = f"the labeled set {labeled.source}"
    check_compatible(labeled, labeled.categories, config.task, reference)
    counts = {"labeled": len(labeled.images)}
    _warn_untrainable(labeled)
    _check_image_sizes(labeled, config.model)
    for name in ("val", "upper_bound"):
        source = getattr(config, name)
        if source is not None:
            data = load_coco(source.annotations, source.images, options)
            check_compatible(data, labeled.categories, config.task, reference)
            _check_image_sizes(data, config.model)
            counts[name] = len(data.images)
            if name == "upper_bound":
                _warn_untrainable(data)
    unlabeled = config.unlabeled
    if not exists(unlabeled.images, options):
        raise FileNotFoundError(f"{unlabeled.images}: unlabeled images not found (unlabeled.images)")
    if is_listing(unlabeled.images):
        list_unlabeled(unlabeled.images, unlabeled.root, options, unlabeled.limit)
    return counts


def _check_image_sizes(data: "CocoData", model: ModelConfig) -> None:
    """Refuse an image (by the size its json gives) that a training or test scale would resize to
    nothing: torchvision fails on it, mid-training, on every retry."""
    from dd_core.data.coco import CocoFormatError
    from dd_core.data.transforms import vanishing_scale
    from dd_core.models.presets import PRESETS

    preset = PRESETS[model.preset]
    scales = sorted({*(model.min_size or preset.min_size), model.test_size or preset.test_size})
    max_size = model.max_size or preset.max_size
    for i, image in enumerate(data.images):
        if image.get("width") and image.get("height"):
            scale = vanishing_scale((image["height"], image["width"]), scales, max_size)
            if scale is not None:
                raise CocoFormatError(
                    f"{data.source}: images[{i}] (id {image['id']}): {image['width']}x{image['height']} px (width x "
                    f"height) is too thin for the model: it resizes to 0 px at scale {scale} (max_size {max_size})")


def _warn_untrainable(data: "CocoData") -> None:
    untrainable = data.untrainable
    if untrainable:
        first = untrainable[0]
        log.warning("%s: %d annotation(s) have a box smaller than %s px (e.g. id %s, bbox %s): kept for "
                    "evaluation, not trained on", data.source, len(untrainable), MIN_BOX_SIDE, first["id"],
                    first["bbox"])
