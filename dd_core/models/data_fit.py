"""Whether a COCO json fits a trained model: its task, its category ids and names, its keypoints.

A checkpoint records the categories of the set it was trained on and its task (``spec.task``);
``evaluate`` and ``label --labeled`` compare a json with them before any inference, so that a
keypoint model given a detection json is refused in a second, not after an hour of inference (or
never: calibrated on the wrong set, ``label`` wrote a keypoint category whose annotations had none).
A run compares its validation and upper-bound sets with its labeled set, whose categories the
models it trains will have (:func:`dd_core.config.check_run_inputs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dd_core.data.coco import CocoData, CocoFormatError


def check_data_fits_model(data: CocoData, categories: Sequence[Mapping[str, Any]], task: str, model: str, *,
                          same_categories: bool = False) -> None:
    """Refuse ``data`` unless the model of ``categories`` and ``task`` (named ``model`` in errors) fits it.

    ``data`` must list a category, and every one must be one of the model's, with the same name; with
    ``same_categories`` (a labeled set to calibrate on) the ids must be exactly the model's. A
    keypoints model needs a json that lists keypoints, the same names in the same order.
    """
    ours = {int(c["id"]): c for c in categories}
    if not data.categories:  # nothing to score: every prediction would be of a category it lacks
        raise CocoFormatError(f"{data.source}: field 'categories' is empty; expected some of those of {model} "
                              f"({sorted(ours)})")
    if task == "keypoints" and not data.keypoint_names:
        count = next((len(c["keypoints"]) for c in categories if c.get("keypoints")), 0)
        raise CocoFormatError(f"{data.source}: no category lists 'keypoints' (a detection json), but {model} is a "
                              f"keypoints model (spec.task 'keypoints', {count} keypoints); expected a keypoints json")
    ids = sorted(int(c["id"]) for c in data.categories)
    if same_categories and ids != sorted(ours):
        raise CocoFormatError(f"{data.source}: category ids {ids} differ from those of {model} ({sorted(ours)}); "
                              f"expected the categories the model was trained on")
    unknown = [i for i in ids if i not in ours]
    if unknown:
        raise CocoFormatError(f"{data.source}: categories {unknown} are not among those of {model} ({sorted(ours)})")
    for i, cat in enumerate(data.categories):
        mine = ours[int(cat["id"])]
        where = f"{data.source}: categories[{i}] (id {cat['id']})"
        if cat["name"] != mine["name"]:
            raise CocoFormatError(f"{where} field 'name' is {cat['name']!r}, but in {model} category {cat['id']} "
                                  f"is {mine['name']!r}")
        if task == "keypoints":
            _check_keypoints(list(cat.get("keypoints") or []), list(mine.get("keypoints") or []), where, model)


def _check_keypoints(names: list[str], expected: list[str], where: str, model: str) -> None:
    if len(names) != len(expected):
        raise CocoFormatError(f"{where} field 'keypoints' lists {len(names)} keypoints, but {model} has "
                              f"{len(expected)} for this category")
    for k, (name, want) in enumerate(zip(names, expected)):
        if name != want:
            raise CocoFormatError(f"{where} field 'keypoints'[{k}] is {name!r}, but in {model} it is {want!r}")
