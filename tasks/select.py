"""Selecting pseudo-labels: calibrate per-category thresholds, write the pseudo-label json."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from dd_core.data.coco import load_coco
from dd_core.pseudo.manifest import read_manifest
from dd_core.pseudo.select import read_predictions, select_pseudo_labels
from dd_core.storage import write_json_atomic
from dd_core.storage.parquet import write_rejected
from tasks import TASK_DEFAULTS


@task(name="select pseudo-labels", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def select_pseudo(manifest_url: str, labeled_annotations: str, labeled_images: str, task_type: str,
                  thresholds_url: str, pseudo_url: str, rejected_url: str, options: dict[str, Any]) -> dict[str, Any]:
    """Thresholds chosen to match the labeled set's instances per image; writes both jsons and the
    table of unlabeled images that could not be read."""
    manifest = read_manifest(manifest_url, options)
    labeled = load_coco(labeled_annotations, labeled_images, options).to_dict()
    predictions = read_predictions([s["url"] for s in manifest["shards"]], options)
    coco, selection = select_pseudo_labels(predictions, labeled, task_type)
    summary = selection.to_dict()
    write_json_atomic(thresholds_url, summary, options, indent=1)
    write_json_atomic(pseudo_url, coco, options)
    write_rejected(rejected_url, predictions.rejected, options)
    names = {c["id"]: c["name"] for c in labeled["categories"]}
    rows = [{"category": names.get(c, c), "threshold": round(t, 4),
             "labeled per image": round(selection.target_per_image[c], 3),
             "predicted": selection.predicted_per_category[c], "kept": selection.kept_per_category[c]}
            for c, t in selection.thresholds.items()]
    create_table_artifact(
        rows,
        key="pseudo-label-thresholds", description="Per-category score thresholds and what they kept")
    return {**summary, "num_rejected": len(predictions.rejected), "pseudo_annotations": pseudo_url}
