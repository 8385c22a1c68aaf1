"""Train a teacher on labeled data, or a student on labeled + pseudo-labeled data (the paper's step 1 and 4)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
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
from dd_core.models import ModelSpec, build_model
from dd_core.models.spec import KeypointSetConfig, ModelConfig
from dd_core.models.presets import PRESETS
from dd_core.ops.stop import NEVER, StopToken
from dd_core.train.loop import BatchSamplerFactory, Checkpoints, Runtime, TrainHooks, TrainResult, train
from dd_core.train.settings import TrainConfig

log = logging.getLogger(__name__)


def spec_for(task: str, coco: CocoData, model: ModelConfig | None = None,
             keypoints: KeypointSetConfig | None = None) -> ModelSpec:
    """The model spec that fits a labeled set: one class per category, its keypoint count."""
    return (model or ModelConfig()).spec(task, num_classes=len(coco.categories) + 1,
                                         num_keypoints=max(len(coco.keypoint_names), 1), keypoints=keypoints)


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
    model = {k: v for k, v in spec.to_dict().items() if k != "oks_sigmas"}  # evaluation's, not training's
    return {"model": model, "schedule": cfg.schedule(), "labeled": _digest(labeled.to_dict()),
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


@dataclass(frozen=True)
class TrainingInputs:
    """What a teacher (``pseudo=None``) or a student is trained from: the labeled set, a student's
    pseudo-labeled set mixed in at ``1 - labeled_ratio`` and its initial weights (``init_state``,
    the teacher's; ``None``: retrained from the initial weights, as the paper found retraining better
    than fine-tuning), and which images both sets are trained without (``image_filter``)."""

    labeled: CocoData
    pseudo: CocoData | None = None
    labeled_ratio: float = 0.6
    init_state: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)
    image_filter: TrainingImageFilter = field(default_factory=TrainingImageFilter)


def train_detector(spec: ModelSpec, inputs: TrainingInputs, cfg: TrainConfig, checkpoint_dir: str | None, *,
                   options: Mapping[str, Any] | None = None, runtime: Runtime = Runtime(),
                   hooks: TrainHooks = TrainHooks(), stop: StopToken = NEVER) -> TrainResult:
    """Train the model of ``spec`` on ``inputs`` (:func:`dd_core.train.loop.train`, checkpoints in
    ``checkpoint_dir``); the result counts the images left out (:mod:`dd_core.data.filtering`)."""
    torch.manual_seed(cfg.seed)
    model = build_model(spec, options)
    if inputs.init_state is not None:
        model.load_state_dict(inputs.init_state)
    labeled, pseudo = inputs.labeled, inputs.pseudo
    labeled_set, pseudo_set, counts = _sets_to_train_on(labeled, pseudo, inputs.image_filter)
    dataset, make_batches = training_data(labeled_set, pseudo_set, cfg, inputs.labeled_ratio, options,
                                          size_check(spec), spec.flip_pairs, TrainingFrame.of(model.transform))
    signature = training_signature(spec, cfg, labeled, pseudo, inputs.labeled_ratio, inputs.init_state,
                                   inputs.image_filter)
    checkpoints = Checkpoints(checkpoint_dir, {**checkpoint_meta(spec, labeled), "signature": signature}, options)
    result = train(model, dataset, cfg, checkpoints=checkpoints, make_batches=make_batches, runtime=runtime,
                   hooks=hooks, stop=stop)
    return dataclasses.replace(result, images=counts)
