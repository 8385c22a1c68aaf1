"""Checking a run's inputs before anything is trained or written (files that may live on S3).

Bad input fails in seconds with an error naming the file, record and field, not hours later in
a task that would be retried on the same input.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dd_core.config.resume import check_resume
from dd_core.config.schema import LabeledConfig, ModelConfig, RunConfig, UnlabeledConfig
from dd_core.data.coco import MIN_BOX_SIDE, CocoData, CocoFormatError, load_coco
from dd_core.data.filtering import check_labeled_for_training
from dd_core.data.images import IMAGE_SUFFIXES
from dd_core.data.transforms import vanishing_scale
from dd_core.data.unlabeled import check_outside, check_planned_pool, has_image, is_listing, list_unlabeled
from dd_core.device import resolve_device
from dd_core.models.data_fit import check_data_fits_model
from dd_core.models.presets import PRESETS
from dd_core.storage import exists, join
from dd_core.storage.fs import Options
from dd_core.storage.layout import RunLayout

log = logging.getLogger(__name__)

_CHECKED: dict[str, dict[str, int]] = {}  # configs this process checked just before their flow: digest -> counts


def check_run_inputs(config: RunConfig) -> dict[str, int]:
    """Validate the labeled, validation (and upper-bound) sets and the unlabeled source of a run.

    Called before anything is trained or written, so bad input fails in seconds with an error
    naming the file, record and field. Returns image counts of the labeled sets. A ``.txt`` list
    or image-only json of unlabeled images is read and every entry checked (names, ids): cheap
    next to labeling, and an entry that could never be labeled would otherwise fail the run
    hours later. A folder or prefix is only looked into until its first image: listing it (120k
    images on COCO) is the shard planner's job, and names that come from the storage itself need
    no checking.
    """
    options = config.storage.options
    resolve_device(config.device)  # a GPU asked for on a machine without one: now, not after retries
    labeled = _load_set(config.labeled, "labeled", options)
    reference = f"the labeled set {labeled.source}"
    if config.task == "keypoints" and not labeled.keypoint_names:
        raise CocoFormatError(f"{reference}: task is keypoints but no category lists 'keypoints'")
    counts = {"labeled": len(labeled.images)}
    _warn_untrainable(labeled)
    check_labeled_for_training(labeled, config.training_images)  # all background: now, not at training
    _check_image_sizes(labeled, config.model)
    _check_start(config, labeled)
    for name in ("val", "upper_bound"):
        source = getattr(config, name)
        if source is not None:
            data = _load_set(source, name, options)
            check_data_fits_model(data, labeled.categories, config.task, reference)  # the model it trains
            _check_image_sizes(data, config.model)
            counts[name] = len(data.images)
            if name == "upper_bound":
                _warn_untrainable(data)
    if config.run_id:  # a run id again: the same result settings, or nothing happens
        check_resume(config, RunLayout(config.storage.root, config.run_id).settings, options)
    _check_unlabeled(config.unlabeled, runs_folder(config), options)
    if config.run_id:  # and the same unlabeled pool as it planned, or nothing happens
        _check_planned_pool(config, options)
    return counts


def _digest(config: RunConfig) -> str:
    """The config's settings and storage options (which reach the inputs; never kept themselves)."""
    options = json.dumps(config.storage.options, sort_keys=True, default=str)
    return hashlib.sha256(f"{config.model_dump_json()}\n{options}".encode()).hexdigest()


@contextmanager
def inputs_checked(config: RunConfig, counts: Mapping[str, int]) -> Iterator[None]:
    """Within the block, the next :func:`run_input_counts` of this same config trusts ``counts``, what
    :func:`check_run_inputs` returned for it seconds before.

    The CLI checks a run's inputs before a flow run (or a local Prefect server) exists, so bad input
    fails in seconds with nothing written; the flow it then starts need not read every json again
    (nor list a resumed run's pool again)."""
    key = _digest(config)
    _CHECKED[key] = dict(counts)
    try:
        yield
    finally:
        _CHECKED.pop(key, None)


def run_input_counts(config: RunConfig) -> dict[str, int]:
    """:func:`check_run_inputs`, unless this process checked this same config just before starting its
    flow (:func:`inputs_checked`; trusted once). A run not started by the CLI (a scheduled deployment's)
    is checked here."""
    counts = _CHECKED.pop(_digest(config), None)
    return dict(counts) if counts is not None else check_run_inputs(config)


def runs_folder(config: RunConfig) -> str:
    """Where runs write their outputs (``<storage.root>/runs``): never a source of input."""
    return join(config.storage.root, "runs")


def _check_start(config: RunConfig, labeled: CocoData) -> None:
    """The keypoint set's flip pairs and sigmas fit the labeled set; the weights the model starts from
    fit the preset and the data set and are at hand (downloaded now, or a one-line error naming the
    file to place in torch's cache)."""
    from dd_core.data.keypoints import flip_indices, oks_sigmas
    from dd_core.models.weights import check_start_weights
    from dd_core.train.detector import spec_for

    names = labeled.keypoint_names
    for field, value, check in (("flip_pairs", config.keypoints.flip_pairs, flip_indices),
                                ("sigmas", config.keypoints.sigmas, oks_sigmas)):
        if value is not None:
            if not names:
                raise ValueError(f"keypoints.{field}: the labeled set {labeled.source} has no keypoints")
            try:
                check(names, value)
            except ValueError as exc:
                raise ValueError(f"keypoints.{field}: {exc} (the labeled set {labeled.source})") from None
    spec = spec_for(config.task, labeled, config.model, config.keypoints)
    remade = check_start_weights(spec, options=config.storage.options)
    if remade and config.teacher.iterations == 0:  # a random head would label the pool
        raise ValueError(f"teacher.iterations 0 keeps the teacher as published, but model.weights {spec.weights} "
                         f"has no {', '.join(remade)} for the labeled set's {spec.num_classes - 1} categories and "
                         f"{len(names)} keypoints (made anew: random); train them (teacher.iterations > 0)")
    if remade:
        log.info("model.weights %s: %s will be made anew for the labeled set's %d categories and %d keypoints; "
                 "the rest is loaded", spec.weights, ", ".join(remade), spec.num_classes - 1,
                 len(names))


def _load_set(source: LabeledConfig, name: str, options: Options) -> CocoData:
    """A labeled-style set: its json valid, not empty, and its first image where the json says."""
    data = load_coco(source.annotations, source.images, options)
    if not data.images:
        raise CocoFormatError(f"{data.source}: no images ({name}.annotations)")
    first = join(source.images, data.images[0]["file_name"])
    if not exists(first, options):
        raise FileNotFoundError(f"{first}: no such file: the first image of {data.source} is not under "
                                f"{name}.images ({source.images})")
    return data


def _check_unlabeled(unlabeled: UnlabeledConfig, runs: str, options: Options) -> None:
    if not exists(unlabeled.images, options):
        raise FileNotFoundError(f"{unlabeled.images}: unlabeled images not found (unlabeled.images)")
    try:
        check_outside(unlabeled.images, unlabeled.root, [runs])
    except ValueError as exc:
        raise ValueError(f"{exc} (unlabeled.images, unlabeled.root; storage.root)") from None
    if is_listing(unlabeled.images):
        list_unlabeled(unlabeled.images, unlabeled.root, options, unlabeled.limit)
    elif not has_image(unlabeled.images, options):
        raise ValueError(f"{unlabeled.images}: no images in this folder (expected {', '.join(IMAGE_SUFFIXES)} "
                         f"files; unlabeled.images)")


def _check_planned_pool(config: RunConfig, options: Options) -> None:
    """A resumed run whose rounds planned shards already: refuse (before anything is written) an
    unlabeled pool that is not the one planned (:func:`~dd_core.data.unlabeled.check_planned_pool`).
    A new run, or one stopped before labeling, plans whatever pool it finds."""
    layout = RunLayout(config.storage.root, config.run_id)
    plans = [layout.for_round(r).plan for r in range(1, config.rounds + 1)]
    plans = [url for url in plans if exists(url, options)]
    if not plans:
        return
    source = config.unlabeled
    pool = list_unlabeled(source.images, source.root, options, source.limit, exclude=[runs_folder(config)])
    for url in plans:
        check_planned_pool(pool, config.shards.size, url, config.run_id, options)


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
