"""Pseudo-labeling a folder or bucket on its own (``omnidistill label``), without the rest of the flow."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from dd_core.data.coco import load_coco
from dd_core.data.unlabeled import list_unlabeled, plan_shards
from dd_core.pseudo.infer import checkpoint_fingerprint, label_shard, labeler_from_checkpoint
from dd_core.pseudo.manifest import remove_unplanned_shards
from dd_core.pseudo.select import apply_selection, calibrate_selection, read_predictions
from dd_core.storage import join, write_json_atomic
from dd_core.train.checkpoint import load_checkpoint


def _output_paths(out: str) -> tuple[str, str]:
    """(json URL, its predictions folder) for ``--out`` given as a json or as a folder.

    ``a/pseudo.json`` keeps its shards in ``a/pseudo.predictions/``, so two outputs in one folder
    never share (and wrongly reuse) shards.
    """
    json_url = out if out.endswith(".json") else join(out, "annotations.json")
    return json_url, json_url.removesuffix(".json") + ".predictions"


def label_images(checkpoint: str, images: str, out: str, root: str | None = None, labeled: str | None = None,
                 labeled_images: str | None = None, score_threshold: float = 0.5, keypoint_threshold: float = 0.0,
                 scales: Sequence[int] = (96, 128, 160), flip: bool = True, device: str = "cpu",
                 batch_size: int = 4, shard_size: int = 256, options: Mapping[str, Any] | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Label every image under ``images`` with multi-transform inference and write a COCO json.

    With ``labeled`` (a COCO json) thresholds follow the paper: per category, as many instances
    per image as the labeled set, and as many keypoints per instance. Otherwise the fixed
    ``score_threshold`` / ``keypoint_threshold`` apply. Predictions are kept as Parquet shards
    beside the json, so an interrupted call resumes where it stopped.
    """
    json_url, predictions_dir = _output_paths(out)
    state = load_checkpoint(checkpoint, options)
    task = state["spec"]["task"]
    tta = {"scales": list(scales), "flip": flip}
    unlabeled = list_unlabeled(images, root, options)
    fp = checkpoint_fingerprint(checkpoint, tta, options)
    shards = plan_shards(unlabeled.images, shard_size)
    remove_unplanned_shards(predictions_dir, len(shards), options)
    summaries = [label_shard(shard, unlabeled.root, predictions_dir, fp,
                             lambda: labeler_from_checkpoint(checkpoint, tta, options), options, device, batch_size,
                             progress)
                 for shard in shards]
    predictions = read_predictions([s.url for s in summaries], options)
    if labeled:
        coco = load_coco(labeled, labeled_images or "", options).to_dict()
        selection = calibrate_selection(predictions, coco, task)
        thresholds, kp_threshold = selection.thresholds, selection.keypoint_threshold
    else:
        thresholds = {c["id"]: score_threshold for c in state["categories"]}
        kp_threshold = keypoint_threshold if task == "keypoints" else None
    pseudo = apply_selection(predictions, state["categories"], thresholds, kp_threshold)
    write_json_atomic(json_url, pseudo, options)
    return {"annotations": json_url, "images_root": unlabeled.root, "images": len(pseudo["images"]),
            "instances": len(pseudo["annotations"]), "rejected": len(predictions.rejected),
            "thresholds": {str(k): v for k, v in thresholds.items()}, "keypoint_threshold": kp_threshold}
