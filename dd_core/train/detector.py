"""Train a teacher on labeled data, or a student on labeled + pseudo-labeled data (the paper's step 1 and 4)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import ConcatDataset, Dataset

from dd_core.data.coco import CocoData
from dd_core.data.dataset import CocoDataset, category_to_label
from dd_core.data.keypoints import flip_indices
from dd_core.data.sampler import MixedBatchSampler
from dd_core.data.transforms import Compose, RandomHorizontalFlip, to_float, vanishing_scale
from dd_core.models import ModelOverrides, ModelSpec, build_model
from dd_core.models.presets import PRESETS
from dd_core.train.distributed import DistributedContext
from dd_core.train.loop import BatchSamplerFactory, TrainConfig, TrainHooks, TrainResult, train


def spec_for(task: str, coco: CocoData, overrides: ModelOverrides | None = None) -> ModelSpec:
    """The model spec that fits a labeled set: one class per category, its keypoint count."""
    return (overrides or ModelOverrides()).spec(task, num_classes=len(coco.categories) + 1,
                                                num_keypoints=max(len(coco.keypoint_names), 1))


def training_transforms(coco: CocoData) -> Compose:
    """Horizontal flip (left/right keypoints swapped) then float conversion."""
    return Compose([RandomHorizontalFlip(flip_indices(coco.keypoint_names) if coco.keypoint_names else []), to_float])


def checkpoint_meta(spec: ModelSpec, coco: CocoData) -> dict[str, Any]:
    """What a checkpoint must carry to be used alone: architecture, categories and their labels."""
    return {"spec": spec.to_dict(), "categories": coco.categories,
            "cat_to_label": category_to_label(coco)}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def training_signature(spec: ModelSpec, cfg: TrainConfig, labeled: CocoData, pseudo: CocoData | None,
                       labeled_ratio: float, init_state: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: model, schedule, data, mix, init."""
    schedule = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("checkpoint_every", "keep_checkpoints",
                                                                               "num_workers")}
    return {"model": spec.to_dict(), "schedule": schedule, "labeled": _digest(labeled.to_dict()),
            "pseudo": _digest(pseudo.to_dict()) if pseudo else None,
            "labeled_ratio": labeled_ratio if pseudo else None,
            "init": _state_digest(init_state) if init_state is not None else None}


def size_check(spec: ModelSpec) -> Callable[[int, int], str | None]:
    """``(height, width) -> why not``: an image that one of the model's scales resizes to nothing."""
    preset = PRESETS[spec.preset]
    scales = sorted({*(spec.min_size or preset.min_size), spec.test_size or preset.test_size})
    max_size = spec.max_size or preset.max_size

    def check(height: int, width: int) -> str | None:
        scale = vanishing_scale((height, width), scales, max_size)
        if scale is None:
            return None
        return (f"{width}x{height} px (width x height) is too thin for the model: it resizes to 0 px at scale "
                f"{scale} (max_size {max_size})")

    return check


def training_data(labeled: CocoData, pseudo: CocoData | None, cfg: TrainConfig, labeled_ratio: float,
                  options: Mapping[str, Any] | None = None, check_size: Callable[[int, int], str | None] | None = None
                  ) -> tuple[Dataset, BatchSamplerFactory | None]:
    """A teacher's labeled set (default batches), or a student's labeled + pseudo-labeled sets and
    batches that mix them at ``labeled_ratio`` (:class:`MixedBatchSampler`)."""
    cat_to_label = category_to_label(labeled)
    transforms = training_transforms(labeled)  # pseudo-labels have the labeled set's keypoints
    labeled_set = CocoDataset(labeled, transforms, options, cat_to_label, check_size)
    if pseudo is None:
        return labeled_set, None
    pseudo_set = CocoDataset(pseudo, transforms, options, cat_to_label, check_size)
    n_l, n_p = len(labeled_set), len(pseudo_set)
    return (ConcatDataset([labeled_set, pseudo_set]),
            lambda start: MixedBatchSampler(n_l, n_p, cfg.batch_size, labeled_ratio, cfg.seed, start))


def train_detector(spec: ModelSpec, labeled: CocoData, cfg: TrainConfig, checkpoint_dir: str | None, *,
                   pseudo: CocoData | None = None, labeled_ratio: float = 0.6,
                   init_state: Mapping[str, torch.Tensor] | None = None,
                   options: Mapping[str, Any] | None = None, device: str = "cpu", progress: bool = True,
                   stop_after: int | None = None, world: DistributedContext | None = None,
                   hooks: TrainHooks = TrainHooks()) -> TrainResult:
    """Train a teacher (``pseudo=None``) or a student that mixes ``pseudo`` in at ``1 - labeled_ratio``.

    A student is retrained from the initial weights unless ``init_state`` (the teacher's) is given,
    as the paper found retraining better than fine-tuning. ``world`` trains as one rank of several;
    ``stop_after`` and the hooks are those of :func:`dd_core.train.loop.train`.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    if init_state is not None:
        model.load_state_dict(init_state)
    dataset, make_batches = training_data(labeled, pseudo, cfg, labeled_ratio, options, size_check(spec))
    meta = {**checkpoint_meta(spec, labeled),
            "signature": training_signature(spec, cfg, labeled, pseudo, labeled_ratio, init_state)}
    return train(model, dataset, cfg, checkpoint_dir=checkpoint_dir, make_batches=make_batches, meta=meta,
                 options=options, device=device, progress=progress, stop_after=stop_after, world=world, hooks=hooks)
