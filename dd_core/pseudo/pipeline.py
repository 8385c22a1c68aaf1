"""The pseudo-labeling pipeline, one function per step: plan -> label shards -> manifest -> select.

The Prefect tasks (``tasks/infer.py``, ``tasks/select.py``), ``omnidistill label``
(:mod:`dd_core.standalone`) and the benchmarks' plain loop (``bench/pipeline.py``) all
call these, so each step is written once:

1. :func:`plan` lists the unlabeled images, writes the shard plan and removes shards of an
   earlier plan;
2. :func:`~dd_core.pseudo.infer.pseudo_label_planned_shard` labels one shard (one task each);
3. :func:`~dd_core.pseudo.manifest.write_manifest` lists the finished shards, last;
4. :func:`select` reads the shards, chooses the thresholds (calibrated on the labeled set, or
   fixed) and writes ``thresholds.json``, the pseudo-label json and the rejected-images table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dd_core.data.filtering import TrainingImageFilter
from dd_core.data.unlabeled import list_unlabeled, planned_pool, write_plan
from dd_core.pseudo.manifest import remove_unplanned_shards
from dd_core.pseudo.select import (
    Predictions,
    Selection,
    apply_selection,
    calibrate_selection,
    check_something_to_learn,
    fixed_selection,
    read_predictions,
)
from dd_core.storage import join, parent, read_json, remove, write_json_atomic
from dd_core.storage.layout import RunLayout
from dd_core.storage.parquet import write_rejected

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"  # beside the plan and the shards (see dd_core.storage.layout.RunLayout)


@dataclass(frozen=True)
class PlanSummary:
    """What :func:`plan` wrote: how many shards and images, and where the images' names are rooted."""

    num_shards: int
    num_images: int
    root: str
    digest: str | None = None  # the plan's (WrittenPlan.digest): shard jobs carry it (see PlanCache.read)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(images: str, plan_url: str, shard_size: int, *, root: str | None = None, limit: int | None = None,
         options: Mapping[str, Any] | None = None, exclude: Sequence[str] = ()) -> PlanSummary:
    """List the unlabeled images, write the shard plan beside the shards (``plan_url``'s folder)
    and remove the shard files of an earlier plan that this one does not have.

    An earlier manifest goes first: until labeling writes the new one, no manifest can list a
    shard that this plan removes or rewrites. ``exclude``: folders never listed as input (a run's
    storage root's ``runs`` folder; see :func:`~dd_core.data.unlabeled.list_unlabeled`).
    """
    # A run resumed plans the images it planned (a folder planned before GIFs were images: without them).
    unlabeled = planned_pool(list_unlabeled(images, root, options, limit, exclude), shard_size, plan_url, options)
    remove(join(parent(plan_url), MANIFEST), options)
    written = write_plan(unlabeled, shard_size, plan_url, options)
    remove_unplanned_shards(parent(plan_url), written.num_shards, options)
    return PlanSummary(written.num_shards, len(unlabeled.images), unlabeled.root, written.digest)


@dataclass(frozen=True)
class SelectionOutputs:
    """Where :func:`select` writes: the pseudo-label json, the thresholds, the rejected images."""

    annotations: str
    thresholds: str
    rejected: str

    @classmethod
    def of_run(cls, layout: RunLayout) -> "SelectionOutputs":
        return cls(layout.pseudo_annotations, layout.thresholds, layout.rejected)

    @classmethod
    def beside(cls, annotations: str, predictions_dir: str) -> "SelectionOutputs":
        """``a/pseudo.json`` -> ``a/pseudo.thresholds.json`` and ``<predictions_dir>/_rejected.parquet``."""
        return cls(annotations, annotations.removesuffix(".json") + ".thresholds.json",
                   join(predictions_dir, "_rejected.parquet"))


@dataclass(frozen=True)
class SelectionSummary:
    """What :func:`select` chose and kept, for the report and the flow: :class:`~dd_core.pseudo.select.Selection`
    as JSON values (category ids as strings), what was rejected, and where the pseudo-labels are."""

    thresholds: dict[str, float]
    target_per_image: dict[str, float]
    kept_per_category: dict[str, int]
    predicted_per_category: dict[str, int]
    num_images: int  # unlabeled images read (every one in the pseudo-label json, with or without instances)
    keypoint_thresholds: dict[str, float]
    target_keypoints_per_instance: dict[str, float]
    kept_keypoints_per_instance: dict[str, float]
    num_instances: int  # pseudo-labeled instances kept
    num_rejected: int  # unlabeled images that could not be read
    pseudo_annotations: str  # the pseudo-label json's URL

    @classmethod
    def of(cls, coco: Mapping[str, Any], selection: Selection, predictions: Predictions,
           annotations: str) -> "SelectionSummary":
        return cls(**selection.to_dict(), num_instances=len(coco["annotations"]),
                   num_rejected=len(predictions.rejected), pseudo_annotations=annotations)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_rejections(predictions: Predictions) -> None:
    """Warn about rejected images; refuse a pile where every image was rejected (a wrong root,
    missing files): a student trained without a single pseudo-label is not what was asked for."""
    rejected, total = len(predictions.rejected), len(predictions.rejected) + len(predictions.images)
    if not rejected:
        return
    first = predictions.rejected[0]["reason"]
    if rejected == total:
        raise ValueError(f"every one of the {total} unlabeled images was rejected, e.g. {first} (check "
                         f"unlabeled.images and unlabeled.root; the reasons are in inference/_rejected.parquet)")
    log.warning("%d of %d unlabeled images rejected (listed in _rejected.parquet), e.g. %s", rejected, total, first)


@dataclass(frozen=True)
class FixedThresholds:
    """Thresholds given by hand, for when no labeled set says how dense pseudo-labels should be.

    ``score`` is an instance's score (a probability). ``keypoint`` is a probability-like score too,
    from 0 to 1, compared with the sigmoid of a keypoint's heatmap logit (torchvision's keypoint
    score is that logit, which has no calibrated meaning of its own); 0.5 is a logit of 0.
    """

    score: float
    keypoint: float | None = None

    def __post_init__(self) -> None:
        for name in ("score", "keypoint"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"FixedThresholds.{name} must be from 0 to 1, got {value}")

    @property
    def keypoint_logit(self) -> float | None:
        """The keypoint threshold as a heatmap logit (the inverse of the sigmoid)."""
        p = self.keypoint
        if p is None:
            return None
        return -math.inf if p == 0.0 else math.inf if p == 1.0 else math.log(p / (1.0 - p))


def select(shard_urls: Sequence[str], categories: list[dict[str, Any]], task: str, outputs: SelectionOutputs, *,
           labeled: Mapping[str, Any] | None = None, fixed: FixedThresholds | None = None,
           options: Mapping[str, Any] | None = None, trained_with: TrainingImageFilter | None = None
           ) -> tuple[dict[str, Any], Selection, Predictions]:
    """Read every shard, choose thresholds, write the three outputs; (pseudo-label COCO dict, selection,
    predictions read). Every image rejected is an error (after the rejected table is written).

    With ``labeled`` (a COCO dict) thresholds follow the paper: per category, as many instances
    per image as the labeled set, and as many keypoints per instance. Otherwise ``fixed`` applies.
    With ``trained_with`` (the filter of the student's training) pseudo-labels that would teach
    that student nothing are an error, :class:`~dd_core.pseudo.select.NoPseudoLabels`, raised before
    the thresholds and the pseudo-label json are written.
    """
    if (labeled is None) == (fixed is None):
        raise ValueError("select needs either a labeled set to calibrate on or fixed thresholds, not both")
    if fixed is not None and task == "keypoints" and fixed.keypoint is None:
        raise ValueError("fixed thresholds for keypoints need a keypoint threshold too")
    predictions = read_predictions(shard_urls, options)
    write_rejected(outputs.rejected, predictions.rejected, options)
    _check_rejections(predictions)
    if labeled is not None:
        selection = calibrate_selection(predictions, labeled, task)
    else:
        selection = fixed_selection(predictions, categories, task, fixed.score, fixed.keypoint_logit)
    coco = apply_selection(predictions, categories, selection.thresholds, selection.keypoint_thresholds)
    if trained_with is not None:
        check_something_to_learn(coco, selection, trained_with)
    write_json_atomic(outputs.thresholds, selection.to_dict(), options, indent=1)
    write_json_atomic(outputs.annotations, coco, options)
    return coco, selection, predictions


def select_listed(manifest_url: str, categories: list[dict[str, Any]], task: str, outputs: SelectionOutputs, *,
                  labeled: Mapping[str, Any] | None = None, fixed: FixedThresholds | None = None,
                  options: Mapping[str, Any] | None = None) -> SelectionSummary:
    """:func:`select` over the shards the manifest at ``manifest_url`` lists, summarized. For shards
    this process has just written: they are not looked for one by one (the flow's task does, as
    its shards may come from other machines)."""
    urls = [s["url"] for s in read_json(manifest_url, options)["shards"]]
    coco, selection, predictions = select(urls, categories, task, outputs, labeled=labeled, fixed=fixed,
                                          options=options)
    return SelectionSummary.of(coco, selection, predictions, outputs.annotations)
