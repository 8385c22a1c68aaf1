"""Checking a run's inputs before anything is trained or written (files that may live on S3).

Bad input fails in seconds with an error naming the file, record and field, not hours later in
a task that would be retried on the same input.
"""

from __future__ import annotations

import logging

from dd_core.config.schema import ModelConfig, RunConfig
from dd_core.data.coco import MIN_BOX_SIDE, CocoData, CocoFormatError, check_compatible, load_coco
from dd_core.data.transforms import vanishing_scale
from dd_core.data.unlabeled import is_listing, list_unlabeled
from dd_core.models.presets import PRESETS
from dd_core.storage import exists

log = logging.getLogger(__name__)


def check_run_inputs(config: RunConfig) -> dict[str, int]:
    """Validate the labeled, validation (and upper-bound) sets and the unlabeled source of a run.

    Called before anything is trained or written, so bad input fails in seconds with an error
    naming the file, record and field. Returns image counts of the labeled sets. A ``.txt`` list
    or image-only json of unlabeled images is read and every entry checked (names, ids): cheap
    next to labeling, and an entry that could never be labeled would otherwise fail the run
    hours later. A folder or prefix is only checked to exist: listing it (120k images on COCO) is
    the shard planner's job, and names that come from the storage itself need no checking.
    """
    options = config.storage.options
    labeled = load_coco(config.labeled.annotations, config.labeled.images, options)
    reference = f"the labeled set {labeled.source}"
    check_compatible(labeled, labeled.categories, config.task, reference)
    counts = {"labeled": len(labeled.images)}
    _warn_untrainable(labeled)
    _check_image_sizes(labeled, config.model)
    for name in ("val", "upper_bound"):
        source = getattr(config, name)
        if source is not None:
            data = load_coco(source.annotations, source.images, options)
            check_compatible(data, labeled.categories, config.task, reference)
            _check_image_sizes(data, config.model)
            counts[name] = len(data.images)
            if name == "upper_bound":
                _warn_untrainable(data)
    unlabeled = config.unlabeled
    if not exists(unlabeled.images, options):
        raise FileNotFoundError(f"{unlabeled.images}: unlabeled images not found (unlabeled.images)")
    if is_listing(unlabeled.images):
        list_unlabeled(unlabeled.images, unlabeled.root, options, unlabeled.limit)
    return counts


def _check_image_sizes(data: CocoData, model: ModelConfig) -> None:
    """Refuse an image (by the size its json gives) that a training or test scale would resize to
    nothing: torchvision fails on it, mid-training, on every retry."""
    preset = PRESETS[model.preset]
    scales = sorted({*(model.min_size or preset.min_size), model.test_size or preset.test_size})
    max_size = model.max_size or preset.max_size
    for i, image in enumerate(data.images):
        if image.get("width") and image.get("height"):
            scale = vanishing_scale((image["height"], image["width"]), scales, max_size)
            if scale is not None:
                raise CocoFormatError(
                    f"{data.source}: images[{i}] (id {image['id']}): {image['width']}x{image['height']} px (width x "
                    f"height) is too thin for the model: it resizes to 0 px at scale {scale} (max_size {max_size})")


def _warn_untrainable(data: CocoData) -> None:
    untrainable = data.untrainable
    if untrainable:
        first = untrainable[0]
        log.warning("%s: %d annotation(s) have a box smaller than %s px (e.g. id %s, bbox %s): kept for "
                    "evaluation, not trained on", data.source, len(untrainable), MIN_BOX_SIDE, first["id"],
                    first["bbox"])
