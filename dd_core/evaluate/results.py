"""Checks on COCO results before pycocotools sees them.

pycocotools asserts instead of explaining, raises IndexError on an empty list and silently scores
keypoints of the wrong length: every result is checked here and an error names the record.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


class ResultsError(ValueError):
    """A detection result that COCOeval would misread."""


def _finite(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def validate_results(results: Sequence[dict[str, Any]], image_ids: set[int], category_ids: set[int],
                     num_keypoints: int | None = None) -> None:
    """Raise :class:`ResultsError` naming the first bad record (index and field)."""
    for i, r in enumerate(results):
        where = f"results[{i}]"
        for key in ("image_id", "category_id", "score", "bbox"):
            if key not in r:
                raise ResultsError(f"{where}: missing field '{key}'")
        if r["image_id"] not in image_ids:
            raise ResultsError(f"{where}: image_id {r['image_id']} is not in the ground truth")
        if r["category_id"] not in category_ids:
            raise ResultsError(f"{where}: category_id {r['category_id']} is not in the ground truth")
        if not _finite([r["score"]]):
            raise ResultsError(f"{where}: field 'score' must be a finite number, got {r['score']!r}")
        bbox = r["bbox"]
        if len(bbox) != 4 or not _finite(bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ResultsError(f"{where}: field 'bbox' must be 4 finite numbers with w, h >= 0, got {bbox!r}")
        if num_keypoints is not None:
            kps = r.get("keypoints")
            if kps is None or len(kps) != 3 * num_keypoints or not _finite(kps):
                got = "none" if kps is None else f"{len(kps)} values"
                raise ResultsError(f"{where}: field 'keypoints' must be {3 * num_keypoints} finite numbers, got {got}")
