"""The settings of multi-transform inference, as one typed, frozen object.

Built from the run config in one place (:mod:`dd_core.config.adapters`), from the command line
(``omnidistill evaluate --tta``, ``omnidistill label``) or by the benchmarks, and passed whole to
whatever runs the teacher: the evaluation, the labeling of shards, the fingerprint that tells a
finished shard from one to redo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_SCALES: tuple[int, ...] = (96, 128, 160)
"""The default test scales (shorter side, px): the slim preset's test scale 128 and one step either
side. The paper's are 400..1200 in steps of 100 (``configs/coco-keypoints.yaml``)."""

Scoring = Literal["ID", "TEMP_AVG", "AVG", "IOU_AVG", "GENERALIZED_AVG", "QUASI_SUM"]
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")  # dd_core.tta.precision's (this module loads without torch)


@dataclass(frozen=True)
class BoxMergeSettings:
    """How a detection teacher's boxes from every transform become one set (Detectron's defaults)."""

    nms_threshold: float = 0.5
    voting_threshold: float = 0.8
    scoring: Scoring = "ID"


@dataclass(frozen=True)
class MultiTransformSettings:
    """Scales (shorter side, px) x horizontal flip, and, for a detection teacher, how boxes merge.

    ``boxes`` is ``None`` for a keypoint teacher: its boxes come from one pass at the model's own
    scale (paper, section 4), so box merging settings cannot change what it predicts, nor the
    fingerprint of its shards.

    ``precision`` is the float type of the model's layers: ``bfloat16`` runs them under autocast
    while heatmap averaging, argmax and box merging stay float32 (:mod:`dd_core.tta.precision`;
    off by default, for a GPU's speed). ``channels_last`` feeds the backbone channels-last images,
    on CUDA only (ignored on the CPU).
    """

    scales: tuple[int, ...] = DEFAULT_SCALES
    flip: bool = True
    boxes: BoxMergeSettings | None = None
    precision: Precision = "float32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        scales = tuple(int(s) for s in self.scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"multi-transform inference needs positive scales (px), got {list(self.scales)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"multi-transform inference: precision must be one of {list(PRECISIONS)}, "
                             f"got {self.precision!r}")
        object.__setattr__(self, "scales", scales)

    @classmethod
    def for_task(cls, task: str, scales: tuple[int, ...] | list[int] = DEFAULT_SCALES, flip: bool = True,
                 boxes: BoxMergeSettings | None = None, precision: Precision = "float32",
                 channels_last: bool = False) -> "MultiTransformSettings":
        """The settings a ``task`` teacher uses: box merging for detection (default: Detectron's), none
        for keypoints."""
        if task not in ("keypoints", "detection"):
            raise ValueError(f"task must be 'keypoints' or 'detection', got {task!r}")
        return cls(tuple(scales), flip, (boxes or BoxMergeSettings()) if task == "detection" else None,
                   precision, channels_last)

    def fitted(self, task: str) -> "MultiTransformSettings":
        """These settings for a ``task`` teacher: box merging dropped for keypoints, Detectron's
        defaults for detection when none were given (a command line that does not know the
        checkpoint's task yet builds the same settings for both)."""
        return MultiTransformSettings.for_task(task, self.scales, self.flip, self.boxes, self.precision,
                                               self.channels_last)

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> "MultiTransformSettings":
        """The settings back from :meth:`identity` (how they travel as a deployment's flow-run parameter)."""
        box_keys = {f.name for f in dataclasses.fields(BoxMergeSettings)}
        boxes = {k: v for k, v in identity.items() if k in box_keys}
        unknown = set(identity) - box_keys - {"scales", "flip", "union", "precision", "channels_last"}
        if unknown:
            raise ValueError(f"multi-transform settings: unknown fields {sorted(unknown)}")
        return cls(tuple(identity["scales"]), bool(identity["flip"]), BoxMergeSettings(**boxes) if boxes else None,
                   identity.get("precision", "float32"), bool(identity.get("channels_last", False)))

    def identity(self) -> dict[str, Any]:
        """What defines the predictions, as plain JSON values: part of every shard's fingerprint.

        The same keys as before these settings were typed (``scales``, ``flip``, and for
        detection ``nms_threshold``, ``voting_threshold``, ``scoring``, now with ``union``), so
        keypoint shards written then are still recognised as finished. ``precision`` and
        ``channels_last`` change the rounding of the predictions, so they are keys too, but only when
        not at their defaults: float32 shards keep the fingerprint they had.
        """
        out: dict[str, Any] = {"scales": list(self.scales), "flip": self.flip}
        if self.precision != "float32":
            out["precision"] = self.precision
        if self.channels_last:
            out["channels_last"] = True
        if self.boxes is not None:
            # "union": every transform's raw detections merged once (shards made when each transform's
            # NMSed detections were merged have no such key: their fingerprint differs, they are redone).
            out.update(dataclasses.asdict(self.boxes), union="raw")
        return out
