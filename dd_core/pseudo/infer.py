"""Steps 2-3 of data distillation on one shard: multi-transform inference, ensembled, to Parquet.

A shard is idempotent: its Parquet file records the fingerprint of the model and transform set
that produced it, and :func:`label_shard` leaves a matching file untouched (without even loading
the model). Images that cannot be decoded are skipped and listed, with the reason, in the
shard's metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dd_core.data.images import ImageDecodeError, read_image
from dd_core.data.unlabeled import Shard, UnlabeledImage, read_plan
from dd_core.evaluate.predict import PredictFn
from dd_core.storage import join, read_bytes
from dd_core.storage.parquet import PREDICTIONS_SCHEMA, ShardError, predictions_table, read_shard_footer, write_shard

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


@dataclass
class Labeler:
    """A teacher ready to label: the model, its multi-transform predict function, label -> category id."""

    model: torch.nn.Module
    predict_fn: PredictFn
    label_to_category: Mapping[int, int]


def fingerprint(checkpoint_digest: str, tta: Mapping[str, Any]) -> str:
    """Identity of 'this model under these transforms': shards with another fingerprint are redone."""
    blob = json.dumps({"model": checkpoint_digest, "tta": dict(tta)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_fingerprint(checkpoint: str, tta: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> str:
    """:func:`fingerprint` of the checkpoint file's bytes and the transform set."""
    return fingerprint(hashlib.sha256(read_bytes(checkpoint, options)).hexdigest(), tta)


def labeler_from_checkpoint(checkpoint: str, tta: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Labeler:
    from dd_core.evaluate.checkpoint_eval import tta_predict_fn
    from dd_core.train.checkpoint import (
        checkpoint_keypoint_names,
        checkpoint_label_to_category,
        load_checkpoint,
        model_from_checkpoint,
    )

    state = load_checkpoint(checkpoint, options)
    predict_fn = tta_predict_fn(state["spec"]["task"], keypoint_names=checkpoint_keypoint_names(state), **tta)
    return Labeler(model_from_checkpoint(state), predict_fn, checkpoint_label_to_category(state))


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
        b = self._blocks
        b["image_id"].append(np.full(n, image.id, dtype=np.int64))
        b["file_name"].append(np.full(n, image.file_name, dtype=object))
        b["category_id"].append(categories.astype(np.int32))
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


def _per_row(values: Any, n: int) -> np.ndarray:
    """``values`` as float32 rows x width (keypoints: x0, y0, x1, y1, ...; None: width 0)."""
    if values is None or n == 0:
        return np.zeros((n, 0), np.float32)
    return np.asarray(values, dtype=np.float32).reshape(n, -1)


_EMPTY = {"image_id": np.zeros(0, np.int64), "file_name": np.zeros(0, object), "category_id": np.zeros(0, np.int32),
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


def _decode_batch(batch: list[UnlabeledImage], root: str, options: Mapping[str, Any] | None, device: str,
                  rejected: list[dict[str, Any]]) -> tuple[list[torch.Tensor], list[UnlabeledImage]]:
    images, kept = [], []
    for image in batch:
        try:
            tensor = read_image(join(root, image.file_name), options)
        except (ImageDecodeError, FileNotFoundError) as exc:
            rejected.append({"image_id": image.id, "file_name": image.file_name, "reason": str(exc)})
            continue
        images.append(tensor.to(device).float().div_(255.0))
        kept.append(image)
    return images, kept


@torch.inference_mode()
def label_shard(shard: Shard, root: str, out_dir: str, fp: str, make_labeler: Callable[[], Labeler],
                options: Mapping[str, Any] | None = None, device: str = "cpu", batch_size: int = 4,
                progress: bool = False) -> ShardSummary:
    """Multi-transform inference on every image of ``shard``, written to ``<out_dir>/<shard>.parquet``."""
    url = join(out_dir, f"{shard.name}.parquet")
    shard_fp = shard_fingerprint(fp, root, shard)
    found = existing_output(url, shard_fp, options)
    if found is not None:
        meta, num_rows = found
        return ShardSummary(shard.name, url, len(meta["images"]), num_rows, len(meta["rejected"]), True)
    labeler = make_labeler()
    labeler.model.to(device).eval()
    columns = ShardColumns(labeler.label_to_category)
    done: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    batches = [shard.images[i:i + batch_size] for i in range(0, len(shard.images), batch_size)]
    for batch in tqdm(batches, desc=shard.name, disable=not progress, unit="batch"):
        images, kept = _decode_batch(batch, root, options, device, rejected)
        if not images:
            continue
        for output, image, tensor in zip(outputs_to_host(labeler.predict_fn(labeler.model, images)), kept, images):
            columns.add(output, image)
            done.append({"id": image.id, "file_name": image.file_name,
                         "height": int(tensor.shape[-2]), "width": int(tensor.shape[-1])})
    meta = {"fingerprint": shard_fp, "shard": shard.name, "images": done, "rejected": rejected}
    table = predictions_table(columns.columns(), meta)
    write_shard(url, table, options)
    return ShardSummary(shard.name, url, len(done), table.num_rows, len(rejected), False)


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
