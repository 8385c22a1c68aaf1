"""The run config turned into the typed arguments of dd_core's functions: the one place this happens.

Flows, the plain benchmark loop and the CLI call these; dd_core's functions never see a config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dd_core.config.schema import KeypointSetConfig, LabeledConfig, ModelConfig, RunConfig, TrainStageConfig
from dd_core.tta.settings import BoxMergeSettings, MultiTransformSettings

if TYPE_CHECKING:
    from dd_core.data.filtering import TrainingImageFilter
    from dd_core.models import ModelOverrides
    from dd_core.train import TrainConfig
    from dd_core.train.job import TrainJob


def multi_transform_settings(config: RunConfig) -> MultiTransformSettings:
    """The teacher's (and evaluation's) multi-transform inference settings of a run."""
    tta = config.tta
    boxes = BoxMergeSettings(tta.nms_threshold, tta.voting_threshold, tta.scoring)
    return MultiTransformSettings.for_task(config.task, tta.scales, tta.flip, boxes, tta.precision, tta.channels_last)


def train_config(stage: TrainStageConfig, seed: int) -> "TrainConfig":
    """One training stage's schedule; warmup and checkpoint interval never exceed its length."""
    from dd_core.train import TrainConfig

    return TrainConfig(iterations=stage.iterations, batch_size=stage.batch_size, lr=stage.lr,
                       warmup_iters=min(stage.warmup_iters, stage.iterations),
                       checkpoint_every=max(1, min(stage.checkpoint_every, stage.iterations)),
                       num_workers=stage.num_workers, seed=seed,
                       lr_steps=tuple(stage.lr_steps) if stage.lr_steps is not None else None)


def model_overrides(model: ModelConfig, keypoints: KeypointSetConfig | None = None) -> "ModelOverrides":
    """The run's architecture settings for :func:`dd_core.train.detector.spec_for` (``None``: the preset's),
    its starting weights, and its keypoint set's flip pairs and OKS sigmas."""
    from dd_core.models import ModelOverrides

    keypoints = keypoints or KeypointSetConfig()
    return ModelOverrides(preset=model.preset, backbone_weights=model.backbone_weights or None,
                          min_size=tuple(model.min_size) if model.min_size else None,
                          test_size=model.test_size, max_size=model.max_size, weights=model.weights or None,
                          trainable_backbone_layers=model.trainable_backbone_layers,
                          norm_eps=model.norm_eps,
                          # [] is no pairs (nothing swaps), not the left_/right_ default
                          flip_pairs=tuple(tuple(p) for p in keypoints.flip_pairs) if keypoints.flip_pairs is not None
                          else None,
                          oks_sigmas=tuple(keypoints.sigmas) if keypoints.sigmas else None)


def train_job(config: RunConfig, *, checkpoint_dir: str, stage: TrainStageConfig, labeled: LabeledConfig | None = None,
              pseudo_annotations: str | None = None, pseudo_images: str | None = None,
              init_checkpoint: str | None = None) -> "TrainJob":
    """One training of a run: the teacher (labeled data only), a student (with ``pseudo_annotations``,
    mixed in at ``student.labeled_ratio``) or the upper bound (``labeled``: its fully labeled set).

    ``device`` stays as configured (``auto``): the training task resolves it where it runs.
    """
    from dd_core.train.job import TrainJob

    labeled = labeled or config.labeled
    mix = {"pseudo_annotations": pseudo_annotations, "pseudo_images": pseudo_images,
           "labeled_ratio": config.student.labeled_ratio} if pseudo_annotations else {}
    return TrainJob(task=config.task, labeled_annotations=labeled.annotations, labeled_images=labeled.images,
                    checkpoint_dir=checkpoint_dir, train=train_config(stage, config.seed),
                    model=model_overrides(config.model, config.keypoints), device=config.device, options=config.storage.options,
                    init_checkpoint=init_checkpoint, report_every=stage.report_every,
                    images=training_image_filter(config), **mix)


def training_image_filter(config: RunConfig) -> "TrainingImageFilter":
    """Which images the run's trainings learn from (``training_images``)."""
    from dd_core.data.filtering import TrainingImageFilter

    rule = config.training_images
    return TrainingImageFilter(keep_empty=rule.keep_empty, min_visible_keypoints=rule.min_visible_keypoints)
