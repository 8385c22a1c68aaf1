"""Train a teacher on labeled data, or a student on labeled + pseudo-labeled data (the paper's step 1 and 4)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from dd_core.data.coco import CocoData
from dd_core.data.dataset import CocoDataset, TrainingFrame, category_to_label
from dd_core.data.filtering import TrainingImageFilter, check_labeled_for_training, filter_for_training
from dd_core.data.images import FrameSize
from dd_core.data.keypoints import flip_indices
from dd_core.data.sampler import MixedBatchSampler
from dd_core.data.transforms import Compose, RandomHorizontalFlip, to_float, vanishing_scale
from dd_core.models import ModelOverrides, ModelSpec, build_model
from dd_core.models.presets import PRESETS
from dd_core.train.distributed import DistributedContext
from dd_core.train.loop import BatchSamplerFactory, TrainHooks, TrainResult, train
from dd_core.train.settings import TrainConfig

log = logging.getLogger(__name__)


def spec_for(task: str, coco: CocoData, overrides: ModelOverrides | None = None) -> ModelSpec:
    """The model spec that fits a labeled set: one class per category, its keypoint count."""
    return (overrides or ModelOverrides()).spec(task, num_classes=len(coco.categories) + 1,
                                                num_keypoints=max(len(coco.keypoint_names), 1))


def training_transforms(coco: CocoData, flip_pairs: Sequence[Sequence[str]] | None = None) -> Compose:
    """Horizontal flip (left/right keypoints swapped: ``left_*``/``right_*`` names, or ``flip_pairs``)
    then float conversion."""
    names = coco.keypoint_names
    return Compose([RandomHorizontalFlip(flip_indices(names, flip_pairs) if names else []), to_float])


def checkpoint_meta(spec: ModelSpec, coco: CocoData) -> dict[str, Any]:
    """What a checkpoint must carry to be used alone: architecture, categories and their labels.

    The frozen BatchNorm epsilon is recorded as resolved: where the checkpoint is used, the file
    that told it (a renamed copy of a published detector) may not exist."""
    if spec.pretrained and spec.norm_eps is None:
        spec = dataclasses.replace(spec, norm_eps=spec.resolved_norm_eps)
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
                       labeled_ratio: float, init_state: Mapping[str, torch.Tensor] | None,
                       image_filter: TrainingImageFilter = TrainingImageFilter()) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: model, schedule, data, the
    images trained on, mix, init."""
    schedule = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("checkpoint_every", "keep_checkpoints",
                                                                               "num_workers")}
    model = {k: v for k, v in spec.to_dict().items() if k != "oks_sigmas"}  # evaluation's, not training's
    return {"model": model, "schedule": schedule, "labeled": _digest(labeled.to_dict()),
            "pseudo": _digest(pseudo.to_dict()) if pseudo else None,
            "labeled_ratio": labeled_ratio if pseudo else None,
            "init": _state_digest(init_state) if init_state is not None else None,
            "images": image_filter.to_dict()}


def _sets_to_train_on(labeled: CocoData, pseudo: CocoData | None, image_filter: TrainingImageFilter
                      ) -> tuple[CocoData, CocoData | None, dict[str, dict[str, int]]]:
    """The labeled and pseudo-labeled sets with the images the filter leaves out removed, and the counts."""
    sets = {"labeled": check_labeled_for_training(labeled, image_filter)}
    if pseudo is not None:
        sets["pseudo"] = filter_for_training(pseudo, image_filter)
    rule = image_filter.rule(bool(labeled.keypoint_names))
    for name, filtered in sets.items():
        if filtered.left_out:
            log.info("%s set %s: %d of %d images left out of training (%s)", name, filtered.data.source,
                     filtered.left_out, filtered.total, rule)
    return (sets["labeled"].data, sets["pseudo"].data if pseudo is not None else None,
            {name: filtered.summary() for name, filtered in sets.items()})


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
                  options: Mapping[str, Any] | None = None, check_size: Callable[[int, int], str | None] | None = None,
                  flip_pairs: Sequence[Sequence[str]] | None = None, frame: FrameSize | None = None
                  ) -> tuple[Dataset, BatchSamplerFactory | None]:
    """A teacher's labeled set (default batches), or a student's labeled + pseudo-labeled sets and
    batches that mix them at ``labeled_ratio`` (:class:`MixedBatchSampler`). With ``frame`` (the
    model's :class:`~dd_core.data.dataset.TrainingFrame`) large photos are decoded reduced."""
    cat_to_label = category_to_label(labeled)
    transforms = training_transforms(labeled, flip_pairs)  # pseudo-labels have the labeled set's keypoints
    labeled_set = CocoDataset(labeled, transforms, options, cat_to_label, check_size, frame)
    if pseudo is None:
        return labeled_set, None
    # no pixel limit: labeling applied the run's (unlabeled.max_pixels) to these images already
    pseudo_set = CocoDataset(pseudo, transforms, options, cat_to_label, check_size, frame, max_pixels=None)
    n_l, n_p = len(labeled_set), len(pseudo_set)
    return (ConcatDataset([labeled_set, pseudo_set]),
            lambda start: MixedBatchSampler(n_l, n_p, cfg.batch_size, labeled_ratio, cfg.seed, start))


def train_detector(spec: ModelSpec, labeled: CocoData, cfg: TrainConfig, checkpoint_dir: str | None, *,
                   pseudo: CocoData | None = None, labeled_ratio: float = 0.6,
                   init_state: Mapping[str, torch.Tensor] | None = None,
                   options: Mapping[str, Any] | None = None, device: str = "cpu", progress: bool = True,
                   stop_after: int | None = None, world: DistributedContext | None = None,
                   hooks: TrainHooks = TrainHooks(), image_filter: TrainingImageFilter = TrainingImageFilter()
                   ) -> TrainResult:
    """Train a teacher (``pseudo=None``) or a student that mixes ``pseudo`` in at ``1 - labeled_ratio``.

    A student is retrained from the initial weights unless ``init_state`` (the teacher's) is given,
    as the paper found retraining better than fine-tuning. Both sets are trained on without the
    images ``image_filter`` leaves out (:mod:`dd_core.data.filtering`); the result counts them.
    ``world`` trains as one rank of several; ``stop_after`` and the hooks are those of
    :func:`dd_core.train.loop.train`.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(spec, options)
    if init_state is not None:
        model.load_state_dict(init_state)
    labeled_set, pseudo_set, counts = _sets_to_train_on(labeled, pseudo, image_filter)
    dataset, make_batches = training_data(labeled_set, pseudo_set, cfg, labeled_ratio, options, size_check(spec),
                                          spec.flip_pairs, TrainingFrame.of(model.transform))
    meta = {**checkpoint_meta(spec, labeled),
            "signature": training_signature(spec, cfg, labeled, pseudo, labeled_ratio, init_state, image_filter)}
    result = train(model, dataset, cfg, checkpoint_dir=checkpoint_dir, make_batches=make_batches, meta=meta,
                   options=options, device=device, progress=progress, stop_after=stop_after, world=world, hooks=hooks)
    return dataclasses.replace(result, images=counts)
