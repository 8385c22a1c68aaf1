"""A shard's ensembled predictions, from the teacher's output tensors to NumPy columns for Parquet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dd_core.data.unlabeled import UnlabeledImage
from dd_core.storage.parquet import PREDICTIONS_SCHEMA, empty_columns

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def outputs_to_host(outputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A batch's per-image outputs on the host, copied once per key for the whole batch.

    Copying each image's tensors on their own costs one device-to-host transfer (and wait) per
    image and key; tensors of one key share their trailing shape, so they travel concatenated.
    Values that are not tensors are kept as they are.
    """
    host: list[dict[str, Any]] = [dict(output) for output in outputs]
    if not host:
        return host
    for key, value in outputs[0].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            parts = [output[key] for output in outputs]
            for output, part in zip(host, torch.cat(parts).cpu().split([len(p) for p in parts])):
                output[key] = part
        elif isinstance(value, torch.Tensor):
            for output in host:
                output[key] = output[key].cpu()
    return host


def check_image_id(image: UnlabeledImage) -> None:
    """Refuse an image id the shard's int64 ``image_id`` column (and ``_rejected.parquet``'s) cannot
    hold: NumPy would raise an unexplained OverflowError. The image list should have refused it."""
    if not _INT64_MIN <= image.id <= _INT64_MAX:
        raise ValueError(f"{image.file_name}: image id {image.id} does not fit the int64 image_id of the "
                         f"predictions (ids must be below 2**63)")


class ShardColumns:
    """A shard's predictions gathered as NumPy columns, one block per image, for one Arrow table.

    Python lists would hold one object per value: 57 per keypoint prediction.
    """

    def __init__(self, label_to_category: Mapping[int, int]) -> None:
        self.label_to_category = dict(label_to_category)
        for label, category in self.label_to_category.items():
            if not 0 <= category <= _INT64_MAX:
                raise ValueError(f"label {label} maps to category id {category}: the shard's category_id column "
                                 f"holds ids 0..2**63 - 1")
        size = max(self.label_to_category, default=-1) + 1
        self._lookup = np.full(size, -1, dtype=np.int64)
        for label, category in self.label_to_category.items():
            self._lookup[label] = category
        self._blocks: dict[str, list[np.ndarray]] = {name: [] for name in PREDICTIONS_SCHEMA.names}

    def _categories(self, labels: np.ndarray, image: UnlabeledImage) -> np.ndarray:
        known = (labels >= 0) & (labels < len(self._lookup))
        categories = np.where(known, self._lookup[np.where(known, labels, 0)], -1)
        if (categories < 0).any():
            label = int(labels[categories < 0][0])
            raise KeyError(f"{image.file_name}: the model predicted label {label}, which maps to no category "
                           f"(known labels: {sorted(self.label_to_category)})")
        return categories

    def add(self, output: Mapping[str, Any], image: UnlabeledImage) -> None:
        """Append the ensembled predictions on ``image`` (tensors or arrays, on the host)."""
        check_image_id(image)
        boxes = np.asarray(output["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        kps, kps_scores = output.get("keypoints"), output.get("keypoints_scores")
        b = self._blocks
        b["image_id"].append(np.full(n, image.id, dtype=np.int64))
        b["file_name"].append(np.full(n, image.file_name, dtype=object))
        b["category_id"].append(self._categories(np.asarray(output["labels"], dtype=np.int64).reshape(n), image))
        b["box"].append(boxes)
        b["score"].append(np.asarray(output["scores"], dtype=np.float32).reshape(n))
        b["keypoints"].append(_per_row(None if kps is None else np.asarray(kps)[..., :2], n))
        b["keypoint_scores"].append(_per_row(kps_scores, n))
        b["num_transforms"].append(np.full(n, int(output.get("num_transforms", 1)), dtype=np.int16))

    def columns(self) -> dict[str, np.ndarray]:
        """Every column of :data:`PREDICTIONS_SCHEMA`, all images so far, in order."""
        out = empty_columns()
        for name, blocks in self._blocks.items():
            if name in ("keypoints", "keypoint_scores"):
                widths = {blk.shape[1] for blk in blocks if len(blk)}
                if len(widths) > 1:
                    raise ValueError(f"column {name}: images with {sorted(widths)} values per prediction")
                width = widths.pop() if widths else 0
                blocks = [blk if len(blk) else np.zeros((0, width), np.float32) for blk in blocks]
            if blocks:
                out[name] = np.concatenate(blocks)
        return out


def _per_row(values: Any, n: int) -> np.ndarray:
    """``values`` as float32 rows x width (keypoints: x0, y0, x1, y1, ...; None: width 0)."""
    if values is None or n == 0:
        return np.zeros((n, 0), np.float32)
    return np.asarray(values, dtype=np.float32).reshape(n, -1)
