"""What a model is, as plain data: :class:`ModelSpec` (stored in every checkpoint), and the run
config's :class:`ModelConfig` and :class:`KeypointSetConfig` of it (what the configuration chooses;
the data fixes the rest). Loads without torch: the config's schema validates these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from dd_core.models.presets import MAX_LONG_SIDE, MAX_SIDE, PRESETS

TASKS = ("keypoints", "detection")
NORMS = ("batch", "frozen")


def _known_fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``d`` as keyword arguments of ``cls``; unknown keys are refused by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{what}: unknown fields {sorted(unknown)} (expected some of {sorted(known)})")
    return dict(d)  # lists (JSON) become tuples in the dataclass's __post_init__


def _tuples(obj: Any) -> None:
    """JSON (checkpoints, job files) and pydantic give lists; a frozen spec holds tuples."""
    for name in ("min_size", "flip_pairs", "oks_sigmas"):
        value = getattr(obj, name, None)
        if value is not None:
            object.__setattr__(obj, name, tuple(tuple(v) if isinstance(v, list) else v for v in value))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; saved (as a dict) in every checkpoint.

    ``num_classes`` counts the background, as torchvision does. ``min_size`` is the training
    scale range (one picked at random per batch by ``GeneralizedRCNNTransform``) and
    ``test_size`` the single inference scale; both default to the preset's.
    """

    task: str = "keypoints"
    preset: str = "slim"
    num_classes: int = 2
    num_keypoints: int = 17
    min_size: tuple[int, ...] | None = None
    test_size: int | None = None
    max_size: int | None = None
    norm: str | None = None  # "batch" | "frozen"; default: frozen with weights, batch without
    backbone_weights: str | None = None  # ImageNet classifier: a torchvision weights name, URL or path
    box_detections_per_img: int = 100
    weights: str | None = None  # a whole detector: a torchvision weights name, URL or path
    # ResNet stages trained (torchvision's trainable_backbone_layers, 0-5); default: 3 with weights, 5 without.
    trainable_backbone_layers: int | None = None
    # The keypoint set: mirror pairs of keypoint names (default: left_*/right_* names), OKS sigmas
    # for evaluation (default: COCO's for its 17 keypoints, else 0.05 each).
    flip_pairs: tuple[tuple[str, str], ...] | None = None
    oks_sigmas: tuple[float, ...] | None = None
    norm_eps: float | None = None  # frozen BatchNorm's epsilon; default: what torchvision uses with the weights

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"ModelSpec.task: expected one of {TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"ModelSpec.preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.num_classes < 2:
            raise ValueError(f"ModelSpec.num_classes: must count the background and at least one class, got {self.num_classes}")
        if self.norm not in (None, *NORMS):
            raise ValueError(f"ModelSpec.norm: expected one of {NORMS} (or None), got {self.norm!r}")
        if self.trainable_backbone_layers is not None and not 0 <= self.trainable_backbone_layers <= 5:
            raise ValueError(f"ModelSpec.trainable_backbone_layers: expected 0 to 5, got {self.trainable_backbone_layers}")
        if self.weights and self.backbone_weights:
            raise ValueError("ModelSpec: weights (a whole detector) already hold a backbone; expected no backbone_weights "
                             "beside them")
        _tuples(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_restore(self) -> "ModelSpec":
        """The same architecture without re-reading ``backbone_weights``: a checkpoint is about to
        overwrite every weight, and the weights file may not exist where the checkpoint is used."""
        return dataclasses.replace(self, norm=self.resolved_norm, backbone_weights=None, weights=None,
                                   trainable_backbone_layers=self.resolved_trainable_layers,
                                   norm_eps=self.resolved_norm_eps)

    @property
    def pretrained(self) -> bool:
        return bool(self.backbone_weights or self.weights)

    @property
    def resolved_norm(self) -> str:
        """Frozen BatchNorm over pretrained statistics, trainable BatchNorm from scratch (torchvision's choice)."""
        return self.norm or ("frozen" if self.pretrained else "batch")

    @property
    def resolved_norm_eps(self) -> float:
        """0 for the COCO detectors torchvision runs with eps 0 (they were trained so), else 1e-5."""
        from dd_core.models.weights import frozen_norm_eps

        return self.norm_eps if self.norm_eps is not None else frozen_norm_eps(self.weights)

    @property
    def resolved_trainable_layers(self) -> int:
        """ResNet stages trained: torchvision's default, 3 of 5 over pretrained weights, all from scratch."""
        if self.trainable_backbone_layers is not None:
            return self.trainable_backbone_layers
        return 3 if self.pretrained else 5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        """A spec from :meth:`to_dict`, or from a checkpoint of an earlier version.

        Earlier versions wrote an ``extra`` field, always empty: an empty one is dropped, any
        other is refused (nothing here would know what to build from it).
        """
        d = dict(d)
        extra = d.pop("extra", None)
        if extra:
            raise ValueError(f"model spec: extra {extra!r} is not supported (an earlier version's field, only "
                             f"ever empty); expected no extra settings")
        return cls(**_known_fields(cls, d, "model spec"))


Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]


class KeypointSetConfig(BaseModel):
    """A keypoint set other than COCO's 17: how it mirrors and how evaluation scores it (the run
    config's ``keypoints:`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Pairs of keypoint names swapped by a horizontal flip; default: left_<x> with right_<x>.
    flip_pairs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = None
    # OKS sigmas, one per keypoint in the data set's order; default: COCO's for its 17, else 0.05.
    sigmas: list[Annotated[float, Field(gt=0)]] | None = None


class ModelConfig(BaseModel):
    """The architecture settings a run chooses (the run config's ``model:`` section); the labeled set
    fixes the classes and keypoints. ``None`` keeps the preset's value (see :class:`ModelSpec`).

    Round-trips through JSON (the job file every torchrun rank reads) with :meth:`to_dict` /
    :meth:`from_dict`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    preset: Literal["slim", "r50-fpn", "r101-fpn", "x101-32x4d-fpn", "x101-64x4d-fpn"] = "slim"
    # torchvision weights names (ResNet50_Weights.IMAGENET1K_V1; KeypointRCNN_ResNet50_FPN_Weights.COCO_V1),
    # fetched into torch's cache ($TORCH_HOME), or a state dict's URL or path (dd_core/models/weights.py).
    backbone_weights: str | None = None  # an ImageNet classifier's backbone
    weights: str | None = None  # a whole detector; heads that do not fit the data set are made anew
    trainable_backbone_layers: int | None = Field(default=None, ge=0, le=5)  # default: 3 with weights, 5 without
    # Frozen BatchNorm's epsilon; default: 0 for torchvision's COCO v1 detectors (by name, or their file), else 1e-5.
    norm_eps: float | None = Field(default=None, ge=0, le=1)
    # Training scales (shorter side, px); default: the preset's.
    min_size: list[Side] | None = Field(default=None, min_length=1)
    test_size: Side | None = None
    max_size: int | None = Field(default=None, gt=0, le=MAX_LONG_SIDE)  # cap on the longer side

    @field_validator("min_size")
    @classmethod
    def _as_tuple(cls, v: list[int] | None) -> tuple[int, ...] | None:
        """Validated as a list (the config's errors name lists); kept as the spec's tuple."""
        return None if v is None else tuple(v)

    @field_serializer("min_size")
    def _as_list(self, v: tuple[int, ...] | None) -> list[int] | None:
        return None if v is None else list(v)

    @model_validator(mode="after")
    def _one_start(self) -> ModelConfig:
        if self.weights and self.backbone_weights:
            raise ValueError("weights (a whole detector) already hold a backbone: leave backbone_weights out")
        return self

    @model_validator(mode="after")
    def _max_size_holds_the_scales(self) -> ModelConfig:
        """A longer-side cap below a shorter-side scale would shrink every image below that scale
        (``max_size=1`` resizes images to nothing): the cap must hold the training and test scales."""
        if self.max_size is None:
            return self
        preset = PRESETS[self.preset]
        sizes = [*(self.min_size or preset.min_size), self.test_size or preset.test_size]
        if self.max_size < max(sizes):
            raise ValueError(f"max_size {self.max_size} is below the largest training or test scale "
                             f"{max(sizes)} (the longer side's cap must hold the shorter side's scale)")
        return self

    def spec(self, task: str, num_classes: int, num_keypoints: int,
             keypoints: KeypointSetConfig | None = None) -> ModelSpec:
        """The full spec of a ``task`` model with these settings and the keypoint set's flip pairs and
        OKS sigmas (``None``: left_*/right_* names, COCO's sigmas)."""
        keypoints = keypoints or KeypointSetConfig()
        return ModelSpec(task=task, preset=self.preset, num_classes=num_classes, num_keypoints=num_keypoints,
                         min_size=self.min_size, test_size=self.test_size, max_size=self.max_size,
                         backbone_weights=self.backbone_weights or None, weights=self.weights or None,
                         trainable_backbone_layers=self.trainable_backbone_layers,
                         # [] is no pairs (nothing swaps), not the left_/right_ default
                         flip_pairs=tuple(tuple(p) for p in keypoints.flip_pairs)  # type: ignore[misc]
                         if keypoints.flip_pairs is not None else None,
                         oks_sigmas=tuple(keypoints.sigmas) if keypoints.sigmas else None, norm_eps=self.norm_eps)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        return cls.model_validate(d)
