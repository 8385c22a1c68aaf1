"""Steps 2-3 of data distillation on one shard: multi-transform inference, ensembled, to Parquet.

A shard is idempotent: its Parquet file records the fingerprint of the model and transform set
that produced it, and :func:`label_shard` leaves a matching file untouched (without even loading
the model).

One odd image must not fail its shard (a failed shard is retried, and fails again on the same
image): an image that cannot be read (missing, a folder, forbidden), decoded, or resized by every
test-time transform, or on which the model raises when it runs alone, is skipped and listed with
the reason in the shard's metadata (``rejected``). The shard fails only for what concerns every
image: storage that cannot be reached (:class:`~dd_core.storage.StorageError`), a model that
fails on every image, credentials refused for every image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dd_core.data.images import ImageDecodeError, read_image
from dd_core.data.unlabeled import Shard, UnlabeledImage, read_plan
from dd_core.evaluate.predict import PredictFn
from dd_core.storage import StorageError, join, read_bytes
from dd_core.storage.parquet import PREDICTIONS_SCHEMA, ShardError, predictions_table, read_shard_footer, write_shard
from dd_core.tta.transforms import base_scale, frame_size, transform_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSummary:
    """What a shard task reports back to the flow: where its output is and how much it holds."""

    name: str
    url: str
    num_images: int
    num_rows: int
    num_rejected: int
    skipped: bool  # True when a valid output already existed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ImageCheck = Callable[[int, int], "str | None"]
"""``(height, width) -> None`` for an image the labeler can take, else why not (without the URL)."""


def any_size(height: int, width: int) -> str | None:
    """The :data:`ImageCheck` of a labeler that takes every image (one that resizes nothing)."""
    return None


@dataclass
class Labeler:
    """A teacher ready to label: the model, its multi-transform predict function, label -> category
    id, and which image sizes its transforms can take (checked before inference)."""

    model: torch.nn.Module
    predict_fn: PredictFn
    label_to_category: Mapping[int, int]
    check_image: ImageCheck = any_size


MIN_FRAME_SIDE = 1
"""The thinnest frame side (px) a test-time transform may give. A side of 0 px is what breaks:
``interpolate`` refuses it ("Input and output sizes should be greater than 0"). Frames with a 1-px
side (at scale 64: an image 1 px high and 96 px wide, or 2 px high and 150 px wide) go through the
slim keypoint and box teachers' multi-transform inference with finite predictions (see
tests/pseudo/test_infer.py), so nothing larger is needed to keep inference from failing."""


def frame_check(model: torch.nn.Module, scales: Sequence[int], min_side: int = MIN_FRAME_SIDE) -> ImageCheck:
    """An :data:`ImageCheck` refusing an image that one of ``scales`` would resize to a frame with a side
    under ``min_side`` px: a very thin image, whose longer side hits the scale's cap first.

    Frame sizes come from :func:`dd_core.tta.transforms.frame_size`, the arithmetic of torchvision's
    own resize, so the check refuses exactly the images the resize would fail on.
    """
    ordered = sorted(set(int(s) for s in scales))

    def check(height: int, width: int) -> str | None:
        if min(height, width) < 1:
            return f"{width}x{height} px (width x height): an empty image"
        for scale in ordered:
            side = min(frame_size(model, scale, (height, width)))
            if side < min_side:
                return (f"{width}x{height} px (width x height): too thin for the test-time transforms "
                        f"(its shorter side resizes to {side} px at scale {scale}; at least {min_side} px needed)")
        return None

    return check


def checked_scales(model: torch.nn.Module, tta: Mapping[str, Any]) -> list[int]:
    """The scales an image the teacher accepts must survive: the transform set's, and the model's own
    test scale. A keypoint teacher's boxes come from one pass at that scale (see
    :func:`dd_core.tta.keypoints.multi_transform_keypoints`); and every labeled image becomes a
    training image of the student, whose resize caps the longer side at the same ``max_size`` at
    every training scale, so that a thin image gets the frame it gets at the model's test scale.
    """
    return [t.scale for t in transform_set(tta["scales"], tta["flip"])] + [base_scale(model)]


def fingerprint(checkpoint_digest: str, tta: Mapping[str, Any]) -> str:
    """Identity of 'this model under these transforms': shards with another fingerprint are redone."""
    blob = json.dumps({"model": checkpoint_digest, "tta": dict(tta)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_fingerprint(checkpoint: str, tta: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> str:
    """:func:`fingerprint` of the checkpoint file's bytes and the transform set."""
    return fingerprint(hashlib.sha256(read_bytes(checkpoint, options)).hexdigest(), tta)


def labeler_from_checkpoint(checkpoint: str, tta: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Labeler:
    """The teacher in ``checkpoint`` under the transform set ``tta``, refusing images too thin for its scales."""
    from dd_core.evaluate.checkpoint_eval import tta_predict_fn
    from dd_core.train.checkpoint import (
        checkpoint_keypoint_names,
        checkpoint_label_to_category,
        load_checkpoint,
        model_from_checkpoint,
    )

    state = load_checkpoint(checkpoint, options)
    task = state["spec"]["task"]
    predict_fn = tta_predict_fn(task, keypoint_names=checkpoint_keypoint_names(state), **tta)
    model = model_from_checkpoint(state)
    return Labeler(model, predict_fn, checkpoint_label_to_category(state),
                   frame_check(model, checked_scales(model, tta)))


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

    def add(self, output: Mapping[str, Any], image: UnlabeledImage) -> None:
        """Append the ensembled predictions on ``image`` (tensors or arrays, on the host)."""
        boxes = np.asarray(output["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        labels = np.asarray(output["labels"], dtype=np.int64).reshape(n)
        known = (labels >= 0) & (labels < len(self._lookup))
        categories = np.where(known, self._lookup[np.where(known, labels, 0)], -1)
        if (categories < 0).any():
            label = int(labels[categories < 0][0])
            raise KeyError(f"{image.file_name}: the model predicted label {label}, which maps to no category "
                           f"(known labels: {sorted(self.label_to_category)})")
        kps, kps_scores = output.get("keypoints"), output.get("keypoints_scores")
        check_image_id(image)
        b = self._blocks
        b["image_id"].append(np.full(n, image.id, dtype=np.int64))
        b["file_name"].append(np.full(n, image.file_name, dtype=object))
        b["category_id"].append(categories)
        b["box"].append(boxes)
        b["score"].append(np.asarray(output["scores"], dtype=np.float32).reshape(n))
        b["keypoints"].append(_per_row(None if kps is None else np.asarray(kps)[..., :2], n))
        b["keypoint_scores"].append(_per_row(kps_scores, n))
        b["num_transforms"].append(np.full(n, int(output.get("num_transforms", 1)), dtype=np.int16))

    def columns(self) -> dict[str, np.ndarray]:
        """Every column of :data:`PREDICTIONS_SCHEMA`, all images so far, in order."""
        out = {}
        for name, blocks in self._blocks.items():
            if name in ("keypoints", "keypoint_scores"):
                widths = {blk.shape[1] for blk in blocks if len(blk)}
                if len(widths) > 1:
                    raise ValueError(f"column {name}: images with {sorted(widths)} values per prediction")
                width = widths.pop() if widths else 0
                blocks = [blk if len(blk) else np.zeros((0, width), np.float32) for blk in blocks]
            out[name] = np.concatenate(blocks) if blocks else _EMPTY[name]
        return out


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def check_image_id(image: UnlabeledImage) -> None:
    """Refuse an image id the shard's int64 ``image_id`` column (and ``_rejected.parquet``'s) cannot
    hold: NumPy would raise an unexplained OverflowError. The image list should have refused it."""
    if not _INT64_MIN <= image.id <= _INT64_MAX:
        raise ValueError(f"{image.file_name}: image id {image.id} does not fit the int64 image_id of the "
                         f"predictions (ids must be below 2**63)")


def _per_row(values: Any, n: int) -> np.ndarray:
    """``values`` as float32 rows x width (keypoints: x0, y0, x1, y1, ...; None: width 0)."""
    if values is None or n == 0:
        return np.zeros((n, 0), np.float32)
    return np.asarray(values, dtype=np.float32).reshape(n, -1)


_EMPTY = {"image_id": np.zeros(0, np.int64), "file_name": np.zeros(0, object), "category_id": np.zeros(0, np.int64),
          "box": np.zeros((0, 4), np.float32), "score": np.zeros(0, np.float32),
          "keypoints": np.zeros((0, 0), np.float32), "keypoint_scores": np.zeros((0, 0), np.float32),
          "num_transforms": np.zeros(0, np.int16)}


def shard_fingerprint(fp: str, root: str, shard: Shard) -> str:
    """:func:`fingerprint` narrowed to one shard: the same model and transforms on the same images."""
    images = [(im.id, im.file_name) for im in shard.images]
    return hashlib.sha256(json.dumps([fp, root, images]).encode()).hexdigest()[:16]


def existing_output(url: str, shard_fp: str, options: Mapping[str, Any] | None) -> tuple[dict, int] | None:
    """(metadata, rows) of a finished shard made by the same model and transforms on the same
    images; None when it must be (re)computed. Only the Parquet footer is read."""
    try:
        meta, num_rows = read_shard_footer(url, options)
    except FileNotFoundError:
        return None
    except ShardError as exc:
        log.warning("recomputing %s: %s", url, exc)
        return None
    return (meta, num_rows) if meta.get("fingerprint") == shard_fp else None


class ImageRejected(Exception):
    """An image that cannot be labeled, for a reason that concerns it alone (the message, naming its URL)."""


# How reading one image fails for reasons of its own. StorageError (an OSError as well: the endpoint
# cannot be reached) is not among them: it concerns every image, and the shard task is retried.
_UNREADABLE: dict[type[OSError], str] = {
    FileNotFoundError: "no such file",
    IsADirectoryError: "a folder, not an image file",
    NotADirectoryError: "no such file (a folder on its path is a file)",
    PermissionError: "not allowed to read it",
}


def load_image(url: str, options: Mapping[str, Any] | None, check_image: ImageCheck, device: str) -> torch.Tensor:
    """The image at ``url`` as multi-transform inference takes it: float CHW in [0, 1] on ``device``.

    Raises :class:`ImageRejected` for an image that cannot be read, decoded, or resized by the
    labeler's transforms (``check_image``); :class:`~dd_core.storage.StorageError` goes through.
    """
    try:
        pixels = read_image(url, options)
    except StorageError:
        raise
    except ImageDecodeError as exc:
        raise ImageRejected(str(exc)) from exc
    except tuple(_UNREADABLE) as exc:
        raise ImageRejected(_unreadable(url, exc)) from exc
    reason = check_image(int(pixels.shape[-2]), int(pixels.shape[-1]))
    if reason is not None:
        raise ImageRejected(f"{url}: {reason}")
    return pixels.to(device).float().div_(255.0)


def _unreadable(url: str, exc: OSError) -> str:
    detail = str(exc)
    if detail.startswith(url):  # read_bytes' FileNotFoundError names the URL already
        return detail
    what = next(text for kind, text in _UNREADABLE.items() if isinstance(exc, kind))
    return f"{url}: {what} ({detail})"


def _decode_batch(batch: list[UnlabeledImage], root: str, options: Mapping[str, Any] | None, device: str,
                  check_image: ImageCheck = any_size
                  ) -> tuple[list[torch.Tensor], list[UnlabeledImage], list[tuple[UnlabeledImage, ImageRejected]]]:
    """(tensors, their images, the images rejected and why) of one batch."""
    images, kept, refused = [], [], []
    for image in batch:
        try:
            images.append(load_image(join(root, image.file_name), options, check_image, device))
        except ImageRejected as exc:
            refused.append((image, exc))
            continue
        kept.append(image)
    return images, kept, refused


# What torch raises for one image a model cannot take (a size ``interpolate`` refuses, a shape no
# layer accepts). Anything else (an unknown label, host memory exhausted, ...) fails the shard.
_IMAGE_ERRORS = (RuntimeError, ValueError)


def predict_each(labeler: Labeler, images: list[torch.Tensor]) -> list[dict[str, Any] | Exception]:
    """Host outputs of multi-transform inference on ``images``: one batch, or, when the batch raises,
    one image at a time, so that an image the model cannot take costs only itself. The exception of an
    image that fails alone stands in for its output (without its traceback: its frames hold tensors)."""
    try:
        return outputs_to_host(labeler.predict_fn(labeler.model, images))
    except _IMAGE_ERRORS as exc:
        if len(images) == 1:
            return [exc.with_traceback(None)]
        log.warning("a batch of %d images failed (%s: %s): labeling them one at a time", len(images),
                    type(exc).__name__, exc)
    return [predict_each(labeler, [image])[0] for image in images]


@dataclass
class ShardOutcome:
    """The images of a shard labeled and rejected so far, and the rejections that, together, say
    the shard itself failed."""

    done: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    denied: int = 0  # images the storage refused to read (PermissionError)
    failed: list[Exception] = field(default_factory=list)  # what the model raised on images alone

    def reject(self, image: UnlabeledImage, reason: str, cause: BaseException | None = None) -> None:
        self.rejected.append({"image_id": image.id, "file_name": image.file_name, "reason": reason})
        self.denied += isinstance(cause, PermissionError)

    def fail(self, image: UnlabeledImage, url: str, exc: Exception) -> None:
        """``image`` made the model raise ``exc`` on its own."""
        reason = f"{url}: multi-transform inference failed on this image alone ({type(exc).__name__}: {exc})"
        log.warning("rejected %s", reason)
        self.reject(image, reason)
        self.failed.append(exc)

    def check(self, shard: Shard) -> None:
        """Raise when the rejections concern every image: the model failed on each image it was
        given (and labeled none), or the storage refused every image of the shard (expired or wrong
        credentials look like that, and must not leave a finished, empty shard behind)."""
        if self.failed and not self.done:
            first = self.failed[0]
            first.add_note(f"{shard.name}: multi-transform inference failed on each of the {len(self.failed)} "
                           f"image(s) it was given, one at a time: the model fails, not the images")
            raise first
        if self.denied and self.denied == len(shard.images):
            raise PermissionError(f"{shard.name}: the storage refused to read every one of its "
                                  f"{len(shard.images)} images (first: {self.rejected[0]['reason']})")


@torch.inference_mode()
def label_shard(shard: Shard, root: str, out_dir: str, fp: str, make_labeler: Callable[[], Labeler],
                options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 4,
                progress: bool = False) -> ShardSummary:
    """Multi-transform inference on every image of ``shard``, written to ``<out_dir>/<shard>.parquet``.

    Images that cannot be labeled are listed in the shard's ``rejected`` (see the module docstring).
    """
    url = join(out_dir, f"{shard.name}.parquet")
    shard_fp = shard_fingerprint(fp, root, shard)
    found = existing_output(url, shard_fp, options)
    if found is not None:
        meta, num_rows = found
        return ShardSummary(shard.name, url, len(meta["images"]), num_rows, len(meta["rejected"]), True)
    for image in shard.images:
        check_image_id(image)
    labeler = make_labeler()
    labeler.model.to(device).eval()
    columns = ShardColumns(labeler.label_to_category)
    outcome = ShardOutcome()
    batches = [shard.images[i:i + batch_size] for i in range(0, len(shard.images), batch_size)]
    for batch in tqdm(batches, desc=shard.name, disable=not progress, unit="batch"):
        images, kept, refused = _decode_batch(batch, root, options, device, labeler.check_image)
        for image, exc in refused:
            outcome.reject(image, str(exc), exc.__cause__)
        if not images:
            continue
        for output, image, tensor in zip(predict_each(labeler, images), kept, images):
            if isinstance(output, Exception):
                outcome.fail(image, join(root, image.file_name), output)
                continue
            columns.add(output, image)
            outcome.done.append({"id": image.id, "file_name": image.file_name,
                                 "height": int(tensor.shape[-2]), "width": int(tensor.shape[-1])})
    outcome.check(shard)
    meta = {"fingerprint": shard_fp, "shard": shard.name, "images": outcome.done, "rejected": outcome.rejected}
    table = predictions_table(columns.columns(), meta)
    write_shard(url, table, options)
    return ShardSummary(shard.name, url, len(outcome.done), table.num_rows, len(outcome.rejected), False)


_teachers: dict[str, Labeler] = {}
_teachers_lock = threading.Lock()


def cached_labeler(fp: str, make_labeler: Callable[[], Labeler]) -> Labeler:
    """The teacher of fingerprint ``fp``, loaded once per process and shared by its shard tasks.

    A worker labels shard after shard with one teacher: loading it per shard costs a checkpoint
    read each time and, on a GPU, left several copies allocated at once (peak memory grew with
    the number of shards). Only the latest teacher is kept. Its forward passes do not change it,
    so threads may share it.
    """
    with _teachers_lock:
        if fp not in _teachers:
            _teachers.clear()
            _teachers[fp] = make_labeler()
        return _teachers[fp]


def release_labelers() -> int:
    """Forget the teachers :func:`cached_labeler` holds in this process; returns how many.

    For when labeling is over: the student trains next, in the same process on a single machine,
    and a cached teacher would keep its weights (and on a GPU, their memory) alive all along.
    """
    with _teachers_lock:
        count = len(_teachers)
        _teachers.clear()
        return count


def label_planned_shard(checkpoint: str, plan_url: str, index: int, out_dir: str, tta: Mapping[str, Any], fp: str,
                        options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 4,
                        progress: bool = False) -> ShardSummary:
    """Label shard ``index`` of a plan with the teacher in ``checkpoint`` (what one pipeline task does)."""
    root, shards = read_plan(plan_url, options)
    if not 0 <= index < len(shards):
        raise IndexError(f"{plan_url}: no shard {index} (the plan has {len(shards)})")
    return label_shard(shards[index], root, out_dir, fp,
                       lambda: cached_labeler(fp, lambda: labeler_from_checkpoint(checkpoint, tta, options)),
                       options, device, batch_size, progress)


def finished_shards(plan_url: str, out_dir: str, fp: str, options: Mapping[str, Any] | None = None,
                    indices: Sequence[int] | None = None) -> list[ShardSummary]:
    """Summaries of planned shards labeled elsewhere (other workers, other machines), from their
    Parquet footers alone; raises :class:`ShardError` naming every shard missing or made by
    another model or transform set."""
    root, shards = read_plan(plan_url, options)
    wanted = range(len(shards)) if indices is None else indices
    summaries, missing = [], []
    for index in wanted:
        if not 0 <= index < len(shards):
            raise IndexError(f"{plan_url}: no shard {index} (the plan has {len(shards)})")
        shard = shards[index]
        url = join(out_dir, f"{shard.name}.parquet")
        found = existing_output(url, shard_fingerprint(fp, root, shard), options)
        if found is None:
            missing.append(url)
            continue
        meta, num_rows = found
        summaries.append(ShardSummary(shard.name, url, len(meta["images"]), num_rows, len(meta["rejected"]), True))
    if missing:
        raise ShardError(f"{len(missing)} shard(s) missing or labeled by another teacher/transform set "
                         f"(fingerprint {fp}): {', '.join(missing)}")
    return summaries
