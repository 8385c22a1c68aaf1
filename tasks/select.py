"""Selecting pseudo-labels: calibrate per-category thresholds, write the pseudo-label json."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from dd_core.config import LabeledConfig
from dd_core.data.coco import load_coco
from dd_core.data.filtering import TrainingImageFilter
from dd_core.pseudo.manifest import read_manifest
from dd_core.pseudo.pipeline import SelectionOutputs, SelectionSummary, select
from dd_core.pseudo.select import Selection
from tasks import TASK_DEFAULTS


@task(name="select pseudo-labels", retries=2, retry_delay_seconds=[2, 10], **TASK_DEFAULTS)
def select_pseudo(manifest_url: str, labeled: LabeledConfig, task: str, outputs: SelectionOutputs,
                  options: dict[str, Any], trained_with: TrainingImageFilter) -> SelectionSummary:
    """Thresholds chosen to match the labeled set's instances per image; writes the pseudo-label json,
    ``thresholds.json`` and the table of unlabeled images that could not be read. Pseudo-labels that
    would teach the student (trained ``trained_with``) nothing fail the run (not retried: a ValueError)."""
    manifest = read_manifest(manifest_url, options)
    coco = load_coco(labeled.annotations, labeled.images, options).to_dict()
    pseudo, selection, predictions = select([s["url"] for s in manifest["shards"]], coco["categories"], task, outputs,
                                       labeled=coco, options=options, trained_with=trained_with)
    _threshold_artifact(selection, {c["id"]: c["name"] for c in coco["categories"]})
    return SelectionSummary.of(pseudo, selection, predictions, outputs.annotations)


def _threshold_artifact(selection: Selection, names: dict[int, str]) -> None:
    rows = [{"category": names.get(c, c), "threshold": round(t, 4),
             "labeled per image": round(selection.target_per_image[c], 3),
             "predicted": selection.predicted_per_category[c], "kept": selection.kept_per_category[c],
             **({"keypoint threshold (logit)": round(selection.keypoint_thresholds[c], 4)}
                if c in selection.keypoint_thresholds else {})}
            for c, t in selection.thresholds.items()]
    create_table_artifact(rows, key="pseudo-label-thresholds",
                          description="Per-category score thresholds and what they kept")
