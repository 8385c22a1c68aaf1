"""COCO json in, validated: labeled sets (boxes, keypoints, crowd regions) and image-only lists.

Everything a later stage relies on is checked here, at the boundary, so that pycocotools and
torchvision never see a malformed record: an error names the file, the record and the field.
The real COCO files (``person_keypoints_train2017.json``, ``image_info_unlabeled2017.json``)
load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from dd_core.storage import join, parent, read_json


class CocoFormatError(ValueError):
    """A COCO json that omnidistill cannot use; the message names file, record and field."""


# Ids are stored as int64 (Parquet shards, NumPy columns): larger ones would wrap around.
MAX_ID = 2**63 - 1
# S3 keys hold at most 1,024 bytes; no real image name comes near it.
MAX_FILE_NAME_BYTES = 1024
# Pixel coordinates beyond this are a unit mistake, not an image: float32 (torch) turns 1e39 into
# inf, and 1e10 into a box no RoIAlign can sample.
MAX_COORDINATE = 1e6
# Boxes narrower or lower than this (COCO writes boxes to 0.01 px) are kept for evaluation but
# left out of training, as Detectron and torchvision's references drop degenerate boxes: COCO's
# own train2017 holds two boxes of height 0, one of them a person.
MIN_BOX_SIDE = 0.01


@dataclass
class CocoData:
    """A parsed, validated COCO data set (labeled, or image-only when ``annotations`` is empty)."""

    source: str
    images_root: str
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.annotations_by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in self.images}
        for ann in self.annotations:
            self.annotations_by_image[ann["image_id"]].append(ann)

    @property
    def untrainable(self) -> list[dict[str, Any]]:
        """Non-crowd annotations whose box is too small to train on (kept for evaluation)."""
        return [a for a in self.annotations if not a.get("iscrowd", 0) and not trainable_box(a["bbox"])]

    @property
    def category_ids(self) -> list[int]:
        return sorted(c["id"] for c in self.categories)

    @property
    def keypoint_names(self) -> list[str]:
        for cat in self.categories:
            if cat.get("keypoints"):
                return list(cat["keypoints"])
        return []

    def to_dict(self) -> dict[str, Any]:
        """The COCO json this data set was read from (validated records, as pycocotools wants them)."""
        return {"info": self.info, "images": self.images, "annotations": self.annotations,
                "categories": self.categories}


def trainable_box(bbox: list[float]) -> bool:
    """Whether a validated ``[x, y, w, h]`` box is large enough to train on (see :data:`MIN_BOX_SIDE`)."""
    return bbox[2] >= MIN_BOX_SIDE and bbox[3] >= MIN_BOX_SIDE


def _fail(source: str, where: str, message: str) -> CocoFormatError:
    return CocoFormatError(f"{source}: {where}: {message}")


def _require(record: Mapping[str, Any], key: str, types: type | tuple[type, ...], source: str, where: str) -> Any:
    if key not in record:
        raise _fail(source, where, f"missing field '{key}'")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise _fail(source, where, f"field '{key}' must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _require_id(record: Mapping[str, Any], key: str, source: str, where: str) -> int:
    value = _require(record, key, int, source, where)
    if not 0 <= value <= MAX_ID:
        raise _fail(source, where, f"field '{key}' must be an integer from 0 to 2**63 - 1, got {value!r:.40}")
    return value


def check_file_name(file_name: str, source: str, where: str, field: str = "field 'file_name'") -> None:
    """Refuse names that would escape the image root (absolute paths, ``..`` segments, URLs) or that
    no storage can hold (control characters such as NUL, more than 1,024 bytes)."""
    if not file_name or file_name.startswith(("/", "\\")) or "://" in file_name or (len(file_name) > 1 and file_name[1] == ":"):
        raise _fail(source, where, f"{field} must be a relative path inside the image root, got {file_name!r:.120}")
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no storage can take it as a name
        raise _fail(source, where, f"{field} is not valid Unicode text: {file_name!r:.120}") from None
    if len(file_name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise _fail(source, where, f"{field} is longer than {MAX_FILE_NAME_BYTES} bytes "
                                   f"({len(file_name):,} characters, starting {file_name[:40]!r:.60})")
    if any(ord(c) < 32 or ord(c) == 127 for c in file_name):
        raise _fail(source, where, f"{field} holds a control character (NUL, newline, ...): {file_name!r:.120}")
    segments = file_name.replace("\\", "/").split("/")
    if ".." in segments:
        raise _fail(source, where, f"{field} escapes the image root with '..': {file_name!r:.120}")
    if "." in segments or "" in segments:
        raise _fail(source, where, f"{field} must name a file: no '.' or empty path segments, got {file_name!r:.120}")


def _validate_images(images: Any, source: str) -> None:
    if not isinstance(images, list):
        raise _fail(source, "top level", "field 'images' must be a list")
    seen: set[int] = set()
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise _fail(source, where, "must be an object")
        image_id = _require_id(img, "id", source, where)
        where = f"images[{i}] (id {image_id})"
        if image_id in seen:
            raise _fail(source, where, f"duplicate image id {image_id}")
        seen.add(image_id)
        check_file_name(_require(img, "file_name", str, source, where), source, where)
        for key in ("width", "height"):
            if key in img and (isinstance(img[key], bool) or not isinstance(img[key], int) or img[key] <= 0):
                raise _fail(source, where, f"field '{key}' must be a positive integer, got {img[key]!r:.60}")


def _validate_categories(categories: Any, source: str) -> dict[int, int]:
    """Returns category id -> number of keypoints (0 for box-only categories)."""
    if not isinstance(categories, list):
        raise _fail(source, "top level", "field 'categories' must be a list")
    out: dict[int, int] = {}
    for i, cat in enumerate(categories):
        where = f"categories[{i}]"
        if not isinstance(cat, dict):
            raise _fail(source, where, "must be an object")
        cat_id = _require_id(cat, "id", source, where)
        _require(cat, "name", str, source, f"{where} (id {cat_id})")
        if cat_id in out:
            raise _fail(source, f"{where} (id {cat_id})", f"duplicate category id {cat_id}")
        names = cat.get("keypoints") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _fail(source, f"{where} (id {cat_id})", "field 'keypoints' must be a list of names")
        out[cat_id] = len(names)
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate_annotation(ann: Any, i: int, image_ids: set[int], num_keypoints: dict[int, int], source: str) -> None:
    where = f"annotations[{i}]"
    if not isinstance(ann, dict):
        raise _fail(source, where, "must be an object")
    ann_id = _require_id(ann, "id", source, where)
    where = f"annotations[{i}] (id {ann_id})"
    image_id = _require_id(ann, "image_id", source, where)
    if image_id not in image_ids:
        raise _fail(source, where, f"field 'image_id' refers to unknown image {image_id}")
    cat_id = _require_id(ann, "category_id", source, where)
    if cat_id not in num_keypoints:
        raise _fail(source, where, f"field 'category_id' refers to unknown category {cat_id} (known: {sorted(num_keypoints)})")
    bbox = _require(ann, "bbox", list, source, where)
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _fail(source, where, f"field 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r:.80}")
    if any(abs(v) > MAX_COORDINATE for v in bbox):
        raise _fail(source, where, f"field 'bbox' must be pixel sizes within ±{MAX_COORDINATE:g}, got {bbox!r:.80}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise _fail(source, where, f"field 'bbox' must have a width and height >= 0, got w={bbox[2]}, h={bbox[3]}")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise _fail(source, where, f"field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r:.60}")
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        raise _fail(source, where, f"field 'area' must be a non-negative number, got {ann['area']!r:.60}")
    k = num_keypoints[cat_id]
    if k:
        kps = _require(ann, "keypoints", list, source, where)
        if len(kps) != 3 * k:
            raise _fail(source, where, f"field 'keypoints' must have {3 * k} numbers (x, y, v for {k} keypoints), got {len(kps)}")
        if not all(_is_number(v) for v in kps):
            raise _fail(source, where, "field 'keypoints' must hold finite numbers")
        if any(abs(v) > MAX_COORDINATE for v in kps):
            raise _fail(source, where, f"field 'keypoints' must be pixel coordinates within ±{MAX_COORDINATE:g}")
        if any(v not in (0, 1, 2) for v in kps[2::3]):
            raise _fail(source, where, "field 'keypoints' visibility flags must be 0, 1 or 2")


def validate_coco(d: Any, source: str, require_annotations: bool = True) -> None:
    """Raise :class:`CocoFormatError` for the first problem found in the COCO dict ``d``."""
    if not isinstance(d, dict):
        raise _fail(source, "top level", "must be a JSON object with 'images'")
    if "images" not in d:
        raise _fail(source, "top level", "missing field 'images'")
    _validate_images(d["images"], source)
    if not require_annotations and "annotations" not in d:
        return
    for key in ("annotations", "categories"):
        if key not in d:
            raise _fail(source, "top level", f"missing field '{key}'")
    num_keypoints = _validate_categories(d["categories"], source)
    if not isinstance(d["annotations"], list):
        raise _fail(source, "top level", "field 'annotations' must be a list")
    image_ids = {img["id"] for img in d["images"]}
    seen: set[int] = set()
    for i, ann in enumerate(d["annotations"]):
        _validate_annotation(ann, i, image_ids, num_keypoints, source)
        if ann["id"] in seen:
            raise _fail(source, f"annotations[{i}] (id {ann['id']})", f"duplicate annotation id {ann['id']}")
        seen.add(ann["id"])


def coco_from_dict(d: dict[str, Any], source: str, images_root: str, require_annotations: bool = True) -> CocoData:
    """Validate a COCO dict and wrap it; fills ``area`` and ``num_keypoints`` where absent."""
    validate_coco(d, source, require_annotations)
    annotations = [dict(a) for a in d.get("annotations", [])]
    for ann in annotations:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        if "keypoints" in ann:
            ann.setdefault("num_keypoints", sum(1 for v in ann["keypoints"][2::3] if v > 0))
    return CocoData(source=source, images_root=images_root, images=list(d["images"]), annotations=annotations,
                    categories=list(d.get("categories", [])), info=dict(d.get("info") or {}))


def load_coco(annotations: str, images_root: str, options: Mapping[str, Any] | None = None,
              require_annotations: bool = True) -> CocoData:
    """Read and validate the COCO json at ``annotations`` (any fsspec URL).

    ``require_annotations=False`` also accepts image-only files such as
    ``image_info_unlabeled2017.json``.
    """
    return coco_from_dict(read_json(annotations, options), annotations, images_root, require_annotations)


def resolve_dataset(url: str, images: str | None = None) -> tuple[str, str]:
    """(annotations json, images root) for a data set given as a folder or as its json.

    A folder means ``<folder>/annotations.json`` with images in ``<folder>/images`` (the layout
    ``omnidistill synth`` writes); a json means its images are in ``images`` if given, else in
    ``images/`` beside it.
    """
    base = url.rstrip("/")
    if base.endswith(".json"):
        return base, images or join(parent(base), "images")
    return f"{base}/annotations.json", images or f"{base}/images"

