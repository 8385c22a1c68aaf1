"""Pseudo-labeling a folder or bucket on its own (``omnidistill label``), without the rest of the flow.

The same steps as the flow's (:mod:`dd_core.pseudo.pipeline`), one after another in this process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dd_core.data.coco import load_coco
from dd_core.data.unlabeled import PlanCache
from dd_core.pseudo.fingerprint import checkpoint_fingerprint
from dd_core.pseudo.infer import ShardJob, done_shards, labeled_after, pseudo_label_planned_shard
from dd_core.pseudo.manifest import write_manifest
from dd_core.pseudo.pipeline import MANIFEST, FixedThresholds, SelectionOutputs, plan, select
from dd_core.pseudo.reading import ReadAhead
from dd_core.pseudo.teacher import TeacherCache
from dd_core.storage import join
from dd_core.train.checkpoint import load_checkpoint
from dd_core.tta.settings import MultiTransformSettings


def output_paths(out: str) -> tuple[str, str]:
    """(json URL, its predictions folder) for ``--out`` given as a json or as a folder.

    ``a/pseudo.json`` keeps its shards in ``a/pseudo.predictions/``, so two outputs in one folder
    never share (and wrongly reuse) shards.
    """
    json_url = out if out.endswith(".json") else join(out, "annotations.json")
    return json_url, json_url.removesuffix(".json") + ".predictions"


def pseudo_label_images(checkpoint: str, images: str, out: str, tta: MultiTransformSettings, *,
                        root: str | None = None, labeled: str | None = None, labeled_images: str | None = None,
                        fixed: FixedThresholds | None = None, device: str = "cpu", batch_size: int = 4,
                        shard_size: int = 256, options: Mapping[str, Any] | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Pseudo-label every image under ``images`` with multi-transform inference and write a COCO json.

    With ``labeled`` (a COCO json) thresholds follow the paper (see
    :func:`dd_core.pseudo.pipeline.select`); otherwise ``fixed``. Predictions are kept as Parquet
    shards beside the json, so an interrupted call resumes where it stopped.
    """
    json_url, predictions_dir = output_paths(out)
    state = load_checkpoint(checkpoint, options)
    tta = tta.fitted(state["spec"]["task"])
    plan_url = join(predictions_dir, "_plan.json")
    planned = plan(images, plan_url, shard_size, root=root, options=options)
    job = ShardJob(checkpoint, plan_url, predictions_dir, tta, checkpoint_fingerprint(checkpoint, tta, options),
                   device, batch_size, planned.digest)
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
    calibration = load_coco(labeled, labeled_images or "", options).to_dict() if labeled else None
    pseudo, selection, predictions = select(
        [s["url"] for s in summaries], state["categories"], state["spec"]["task"],
        SelectionOutputs.beside(json_url, predictions_dir), labeled=calibration,
        fixed=None if labeled else (fixed or FixedThresholds(0.5, 0.5)), options=options)
    return {"annotations": json_url, "images_root": planned.root, "images": len(pseudo["images"]),
            "instances": len(pseudo["annotations"]), "rejected": len(predictions.rejected),
            "thresholds": {str(k): v for k, v in selection.thresholds.items()},
            "keypoint_thresholds": {str(k): v for k, v in selection.keypoint_thresholds.items()}}
