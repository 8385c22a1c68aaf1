"""Pseudo-labeling a folder or bucket on its own (``omnidistill label``), without the rest of the flow.

The flow's labeling stage (:func:`dd_core.method.label`), its shards one after another in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dd_core.data.coco import load_coco
from dd_core.data.images import MAX_PIXELS
from dd_core.method import Labeling, label, label_here
from dd_core.models.data_fit import check_data_fits_model
from dd_core.models.loading import load_detector
from dd_core.ops.stop import NEVER, StopToken
from dd_core.pseudo.outputs import LabelOutputs, check_not_inputs, check_replaceable
from dd_core.pseudo.pipeline import FixedThresholds, SelectionOutputs, SelectionSummary, select_listed
from dd_core.pseudo.teacher import teacher_of
from dd_core.tta.settings import MultiTransformSettings


@dataclass(frozen=True)
class LabelRequest:
    """What ``omnidistill label`` is asked: the teacher, the images, where the json goes, how to label."""

    checkpoint: str
    images: str
    out: str  # the pseudo-label json, or a folder for ``annotations.json``; the shards go beside it
    tta: MultiTransformSettings  # bound to the checkpoint's task once it is read
    root: str | None = None  # the images' names are relative to it
    labeled: str | None = None  # a COCO json to calibrate the thresholds on (the paper's way)
    labeled_images: str | None = None
    fixed: FixedThresholds | None = None  # without ``labeled`` (default: 0.5 and 0.5)
    device: str = "cpu"
    batch_size: int = 4
    shard_size: int = 256
    overwrite: bool = False  # replace a json ``label`` did not write
    max_pixels: int | None = MAX_PIXELS  # larger images are rejected before decoding


def pseudo_label_images(request: LabelRequest, options: Mapping[str, Any] | None = None, progress: bool = True,
                        stop: StopToken = NEVER) -> dict[str, Any]:
    """Pseudo-label every image under ``request.images`` with multi-transform inference and write a COCO json.

    With ``labeled`` (a COCO json) thresholds follow the paper (see
    :func:`dd_core.pseudo.pipeline.select`); otherwise ``fixed``. Predictions are kept as Parquet
    shards beside the json, so an interrupted call resumes where it stopped.

    Refused before anything is written: an ``out`` that is or holds an input (see
    :mod:`dd_core.pseudo.outputs`), an existing json ``label`` did not write (unless ``overwrite``), and a
    ``labeled`` set whose task or categories are not the checkpoint's. An image of more than
    ``max_pixels`` pixels is rejected before it is decoded; shards labeled with another limit are redone.
    ``stop`` is checked before each batch: a stopped call resumes from its finished shards.
    """
    outputs = LabelOutputs.of(request.out)
    check_not_inputs(outputs, {"--checkpoint": request.checkpoint, "--images": request.images,
                               "--labeled": request.labeled, "--root": request.root}, options)
    check_replaceable(outputs, request.overwrite, options)
    detector = load_detector(request.checkpoint, options)
    tta = request.tta.for_task(detector.task)
    labeling = Labeling(request.images, outputs.predictions, tta, request.shard_size, request.batch_size,
                        request.device, request.root, max_pixels=request.max_pixels)
    # The shards' teacher is the model read above: the checkpoint is not read again.
    label_shards = label_here(options, progress, lambda: teacher_of(detector, tta), stop)
    labeled = label(request.checkpoint, labeling, label_shards, _selector(request, detector, outputs, options), options)
    selection = labeled.selection
    return {"annotations": outputs.annotations, "images_root": labeled.plan.root, "images": selection.num_images,
            "instances": selection.num_instances, "rejected": selection.num_rejected,
            "thresholds": selection.thresholds, "keypoint_thresholds": selection.keypoint_thresholds}


def _selector(request: LabelRequest, detector: Any, outputs: LabelOutputs,
              options: Mapping[str, Any] | None) -> Callable[[str], SelectionSummary]:
    """Selection from the shards a manifest lists: calibrated on ``request.labeled`` (checked against the
    checkpoint's task and categories at once, before anything is labeled), or with fixed thresholds."""
    calibration = None
    if request.labeled:
        labeled_set = load_coco(request.labeled, request.labeled_images or "", options)
        check_data_fits_model(labeled_set, detector.categories, detector.task, f"the checkpoint {request.checkpoint}",
                              same_categories=True)
        calibration = labeled_set.to_dict()
    fixed = None if calibration is not None else (request.fixed or FixedThresholds(0.5, 0.5))

    def select_from(manifest_url: str) -> SelectionSummary:
        return select_listed(manifest_url, list(detector.categories), detector.task,
                             SelectionOutputs.beside(outputs.annotations, outputs.predictions), labeled=calibration,
                             fixed=fixed, options=options)

    return select_from
