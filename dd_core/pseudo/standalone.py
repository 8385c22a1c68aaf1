"""Pseudo-labeling a folder or bucket on its own (``omnidistill label``), without the rest of the flow.

The same steps as the flow's (:mod:`dd_core.pseudo.pipeline`), one after another in this process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dd_core.data.coco import load_coco
from dd_core.data.images import MAX_PIXELS
from dd_core.data.unlabeled import PlanCache
from dd_core.models.data_fit import check_data_fits_model
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob, done_shards, labeled_after, pseudo_label_planned_shard
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.outputs import LabelOutputs, check_not_inputs, check_replaceable
from dd_core.pseudo.pipeline import MANIFEST, FixedThresholds, SelectionOutputs, plan, select
from dd_core.pseudo.reading import ReadAhead
from dd_core.pseudo.teacher import TeacherCache
from dd_core.storage import join
from dd_core.train.checkpoint import load_checkpoint
from dd_core.tta.settings import MultiTransformSettings


def pseudo_label_images(checkpoint: str, images: str, out: str, tta: MultiTransformSettings, *,
                        root: str | None = None, labeled: str | None = None, labeled_images: str | None = None,
                        fixed: FixedThresholds | None = None, device: str = "cpu", batch_size: int = 4,
                        shard_size: int = 256, options: Mapping[str, Any] | None = None,
                        progress: bool = True, overwrite: bool = False, max_pixels: int | None = MAX_PIXELS
                        ) -> dict[str, Any]:
    """Pseudo-label every image under ``images`` with multi-transform inference and write a COCO json.

    With ``labeled`` (a COCO json) thresholds follow the paper (see
    :func:`dd_core.pseudo.pipeline.select`); otherwise ``fixed``. Predictions are kept as Parquet
    shards beside the json, so an interrupted call resumes where it stopped.

    Refused before anything is written: an ``out`` that is or holds an input (see
    :mod:`dd_core.pseudo.outputs`), an existing json ``label`` did not write (unless ``overwrite``), and a
    ``labeled`` set whose task or categories are not the checkpoint's. An image of more than
    ``max_pixels`` pixels is rejected before it is decoded; shards labeled with another limit are redone.
    """
    outputs = LabelOutputs.of(out)
    check_not_inputs(outputs, {"--checkpoint": checkpoint, "--images": images, "--labeled": labeled, "--root": root},
                     options)
    check_replaceable(outputs, overwrite, options)
    json_url, predictions_dir = outputs.annotations, outputs.predictions
    state = load_checkpoint(checkpoint, options)
    task = state["spec"]["task"]
    calibration = None
    if labeled:
        labeled_set = load_coco(labeled, labeled_images or "", options)
        check_data_fits_model(labeled_set, state["categories"], task, f"the checkpoint {checkpoint}",
                              same_categories=True)
        calibration = labeled_set.to_dict()
    tta = tta.fitted(task)
    plan_url = join(predictions_dir, "_plan.json")
    planned = plan(images, plan_url, shard_size, root=root, options=options)
    job = ShardJob(checkpoint, plan_url, predictions_dir, tta,
                   checkpoint_fingerprint(checkpoint, tta, options, max_pixels),
                   device, batch_size, planned.digest, max_pixels)
    # The shards done already (an interrupted call) are found in one listing, as the flow's resume
    # does; the others are not looked for one by one (on S3, two requests each).
    done = done_shards(plan_url, predictions_dir, job.fingerprint, options)
    to_label = [i for i in range(planned.num_shards) if i not in done]
    cache, plans, ahead = TeacherCache(), PlanCache(), ReadAhead()
    try:
        for i, following in zip(to_label, labeled_after(to_label)):
            done[i] = pseudo_label_planned_shard(job, i, cache=cache, device=device, options=options,
                                                 progress=progress, plans=plans, read_ahead=ahead,
                                                 next_index=following, check_done=False)
    finally:
        cache.clear()
        plans.clear()
        ahead.clear()
    summaries = [done[i].to_dict() for i in range(planned.num_shards)]
    write_manifest(join(predictions_dir, MANIFEST), summaries, job.fingerprint, options)
    pseudo, selection, predictions = select(
        [s["url"] for s in summaries], state["categories"], task,
        SelectionOutputs.beside(json_url, predictions_dir), labeled=calibration,
        fixed=None if labeled else (fixed or FixedThresholds(0.5, 0.5)), options=options)
    return {"annotations": json_url, "images_root": planned.root, "images": len(pseudo["images"]),
            "instances": len(pseudo["annotations"]), "rejected": len(predictions.rejected),
            "thresholds": {str(k): v for k, v in selection.thresholds.items()},
            "keypoint_thresholds": {str(k): v for k, v in selection.keypoint_thresholds.items()}}
