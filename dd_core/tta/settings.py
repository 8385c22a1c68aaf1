"""The settings of multi-transform inference: the run config's ``tta:`` section, as one frozen type.

:class:`MultiTransformSettings` is what the config schema validates (``RunConfig.tta``), what the
command line builds (``omnidistill evaluate --tta``, ``omnidistill label``) and what is passed whole
to whatever runs the teacher: the evaluation, the labeling of shards, the fingerprint that tells a
finished shard from one to redo. Every default of multi-transform inference is written here once.
This module loads without torch: ``omnidistill --help`` shows the default scales.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_serializer, field_validator

from dd_core.models.presets import MAX_SIDE

DEFAULT_SCALES: tuple[int, ...] = (96, 128, 160)
"""The default test scales (shorter side, px): the slim preset's test scale 128 and one step either
side. The paper's are 400..1200 in steps of 100 (``configs/coco-keypoints.yaml``)."""

# Detectron's box merging defaults (TEST.BBOX_VOTE and TEST.NMS).
DEFAULT_NMS_THRESHOLD = 0.5
DEFAULT_VOTING_THRESHOLD = 0.8
DEFAULT_SCORING = "ID"

Scoring = Literal["ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM"]
SCORING_METHODS: tuple[str, ...] = get_args(Scoring)
"""Detectron's ``box_voting`` scoring methods (``TEST.BBOX_VOTE.SCORING_METHOD``)."""

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

TASKS = ("keypoints", "detection")
_BOX_KEYS = ("nms_threshold", "voting_threshold", "scoring")


class MultiTransformSettings(BaseModel):
    """Scales (shorter side, px) x horizontal flip, and, for a detection teacher, how boxes merge.

    Box merging (``nms_threshold``, ``voting_threshold``, ``scoring``) applies to a detection
    teacher only: a keypoint teacher's boxes come from one pass at the model's own scale (paper,
    section 4), so box merging settings cannot change what it predicts, nor the fingerprint of its
    shards. :meth:`for_task` binds the settings to the teacher's task; :attr:`merges_boxes` says
    which it was bound to (unbound settings merge no boxes, as a keypoint teacher's).

    ``precision`` is the float type of the model's layers: ``bfloat16`` runs them under autocast
    while heatmap averaging, argmax and box merging stay float32 (:mod:`dd_core.tta.precision`;
    off by default, for a GPU's speed). ``channels_last`` feeds the backbone channels-last images,
    on CUDA only (ignored on the CPU).
    """

    # allow_inf_nan=False: a threshold of .inf or nan is refused here, not found in the merged boxes.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    scales: Annotated[list[int], Field(max_length=64)] = DEFAULT_SCALES  # type: ignore[assignment]
    flip: bool = True
    nms_threshold: float = Field(default=DEFAULT_NMS_THRESHOLD, gt=0, le=1)
    voting_threshold: float = Field(default=DEFAULT_VOTING_THRESHOLD, gt=0, le=1)
    scoring: Scoring = DEFAULT_SCORING
    precision: Precision = "float32"
    channels_last: bool = False

    _merges_boxes: bool = PrivateAttr(default=False)

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: list[int]) -> tuple[int, ...]:
        """Validated as a list (the config's errors name lists); kept as a tuple, as the settings are frozen."""
        if not v:
            raise ValueError("needs at least one scale")
        if any(s <= 0 or s > MAX_SIDE for s in v):
            raise ValueError(f"scales must be pixel sizes from 1 to {MAX_SIDE}, got {v}")
        return tuple(v)

    @field_serializer("scales")
    def _scales_as_list(self, v: tuple[int, ...]) -> list[int]:
        return list(v)

    @property
    def merges_boxes(self) -> bool:
        """Whether these settings are a detection teacher's: its boxes from every transform merged."""
        return self._merges_boxes

    def for_task(self, task: str) -> MultiTransformSettings:
        """These settings for a ``task`` teacher: box merging kept for detection, dropped (reset to its
        defaults) for keypoints. A command line that does not know the checkpoint's task yet builds the
        same settings for both and binds them once the checkpoint is read."""
        if task not in TASKS:
            raise ValueError(f"task must be 'keypoints' or 'detection', got {task!r}")
        detection = task == "detection"
        out = self.model_copy(update={} if detection else {k: type(self).model_fields[k].default for k in _BOX_KEYS})
        out._merges_boxes = detection
        return out

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> MultiTransformSettings:
        """The settings back from :meth:`identity` (how they travel as a deployment's flow-run parameter)."""
        unknown = set(identity) - set(_BOX_KEYS) - {"scales", "flip", "union", "precision", "channels_last"}
        if unknown:
            raise ValueError(f"multi-transform settings: unknown fields {sorted(unknown)}")
        settings = cls.model_validate({k: v for k, v in identity.items() if k != "union"})
        return settings.for_task("detection" if any(k in identity for k in _BOX_KEYS) else "keypoints")

    def identity(self) -> dict[str, Any]:
        """What defines the predictions, as plain JSON values: part of every shard's fingerprint.

        ``scales`` and ``flip``, and for a detection teacher ``nms_threshold``, ``voting_threshold``,
        ``scoring`` and ``union`` (every transform's raw detections merged once). ``precision`` and
        ``channels_last`` change the rounding of the predictions, so they are keys too, but only when
        not at their defaults, so that float32 shards keep their fingerprint.
        """
        out: dict[str, Any] = {"scales": list(self.scales), "flip": self.flip}
        if self.precision != "float32":
            out["precision"] = self.precision
        if self.channels_last:
            out["channels_last"] = True
        if self.merges_boxes:
            out.update({k: getattr(self, k) for k in _BOX_KEYS}, union="raw")
        return out
