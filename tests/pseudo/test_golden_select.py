"""Golden file of the selection: seeded ensembled predictions -> thresholds -> pseudo-label COCO json.

Two fixed cases built from seeded prediction columns (the Parquet table a run's inference
writes) and a hand-made labeled set: detection over three categories (one of them predicted but
never labeled, scores rounded so that ties occur) and keypoints (COCO persons, 17 keypoints with
logit scores). Each goes through the public functions with explicit arguments:
``per_category_thresholds`` and ``keypoint_score_threshold`` alone, ``select_pseudo_labels``
(calibrated on the labeled set) and ``fixed_selection`` + ``apply_selection`` (``omnidistill
label``'s fixed thresholds). ``tests/expected/select_*.json`` hold the thresholds, the selection
report and the whole pseudo-label COCO dict (kept instances, boxes, keypoints and visibility);
regenerate them on purpose with ``OMNIDISTILL_ACCEPT=1`` (``tests/golden.py``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dd_core.calibrate.thresholds import keypoint_score_threshold, labeled_instances_per_image, per_category_thresholds
from dd_core.data.keypoints import PERSON_CATEGORY
from dd_core.pseudo.select import Predictions, apply_selection, fixed_selection, select_pseudo_labels
from dd_core.storage.parquet import predictions_table
from tests import golden

NUM_IMAGES = 6
K = len(PERSON_CATEGORY["keypoints"])


def predictions(categories: list[int], num_rows: int, keypoints: bool, g: torch.Generator) -> Predictions:
    """Seeded ensembled predictions of ``NUM_IMAGES`` images, as the inference shards hold them."""
    image_ids = torch.randint(1, NUM_IMAGES + 1, (num_rows,), generator=g)
    xy = 100 * torch.rand(num_rows, 2, generator=g)
    box = torch.cat([xy, xy + 5 + 40 * torch.rand(num_rows, 2, generator=g)], dim=1)
    scores = (torch.rand(num_rows, generator=g) * 20).round() / 20  # steps of 0.05: ties
    cats = torch.tensor(categories)[torch.randint(len(categories), (num_rows,), generator=g)]
    if keypoints:
        kps = (box[:, None, :2] + (box[:, None, 2:] - box[:, None, :2]) * torch.rand(num_rows, K, 2, generator=g))
        kp_rows = kps.reshape(num_rows, 2 * K).numpy()
        kp_scores = (4 * torch.randn(num_rows, K, generator=g)).numpy()  # heatmap logits: negative too
    else:
        kp_rows, kp_scores = [[] for _ in range(num_rows)], [[] for _ in range(num_rows)]
    rows = {"image_id": image_ids.numpy(), "file_name": [f"{int(i):03d}.jpg" for i in image_ids],
            "category_id": cats.numpy(), "box": box.numpy(), "score": scores.numpy(),
            "keypoints": kp_rows, "keypoint_scores": kp_scores, "num_transforms": [18] * num_rows}
    images = [{"id": i, "file_name": f"{i:03d}.jpg", "width": 160, "height": 120} for i in range(1, NUM_IMAGES + 1)]
    return Predictions(predictions_table(rows, {}), images)


def labeled_set(per_category: dict[int, int], categories: list[dict], visible: list[int] | None = None) -> dict:
    """A labeled COCO dict on 4 images: ``per_category[c]`` instances of ``c`` (plus one crowd, not counted)."""
    anns = []
    for category, count in per_category.items():
        for n in range(count + 1):
            ann = {"id": len(anns) + 1, "image_id": 1 + n % 4, "category_id": category, "bbox": [0, 0, 9, 9],
                   "iscrowd": int(n == count)}
            if visible is not None:
                shown = visible[n % len(visible)]
                ann["keypoints"] = [5, 5, 2] * shown + [0, 0, 0] * (K - shown)
                ann["num_keypoints"] = shown
            anns.append(ann)
    images = [{"id": i, "file_name": f"l{i}.jpg", "width": 64, "height": 48} for i in range(1, 5)]
    return {"images": images, "annotations": anns, "categories": categories}


def digest(p: Predictions) -> str:
    """The inputs' fingerprint: a changed seed stream shows here first, not as a drift of the method."""
    return hashlib.sha256(str(p.table.to_pydict()).encode()).hexdigest()


def select_case(p: Predictions, labeled: dict, task: str, fixed: tuple[float, float | None]) -> dict:
    coco, selection = select_pseudo_labels(p, labeled, task)
    fixed_sel = fixed_selection(p, labeled["categories"], task, *fixed)
    return {"inputs_sha256": digest(p), "num_predictions": p.table.num_rows,
            "calibrated": {"selection": selection.to_dict(), "coco": coco},
            "fixed": {"selection": fixed_sel.to_dict(),
                      "coco": apply_selection(p, labeled["categories"], fixed_sel.thresholds,
                                              fixed_sel.keypoint_thresholds)}}


def test_detection_selection_matches_golden_file() -> None:
    p = predictions([1, 2, 9], 40, keypoints=False, g=torch.Generator().manual_seed(30))
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]  # 9 is predicted, never labeled
    labeled = labeled_set({1: 5, 2: 2}, categories)
    scores = p.table.column("score").to_numpy()
    ids = p.table.column("category_id").to_numpy()
    golden.assert_expected({
        # Alone, with explicit arguments: a target for a category with no predictions (3) and none for 9.
        "per_category_thresholds": per_category_thresholds(scores, ids, NUM_IMAGES, {1: 1.25, 2: 0.5, 3: 1.0}),
        "labeled_instances_per_image": labeled_instances_per_image(labeled),
        **select_case(p, labeled, "detection", (0.5, None)),
    }, "select_detection")


def test_keypoint_selection_matches_golden_file() -> None:
    p = predictions([1], 14, keypoints=True, g=torch.Generator().manual_seed(31))
    labeled = labeled_set({1: 6}, [PERSON_CATEGORY], visible=[12, 9, 0, 15])
    kp_scores = np.stack(p.table.column("keypoint_scores").to_numpy(zero_copy_only=False))
    golden.assert_expected({
        "keypoint_score_threshold": {str(t): keypoint_score_threshold(kp_scores, t) for t in (0.0, 6.5, 9.0, 17.0)},
        **select_case(p, labeled, "keypoints", (0.4, 0.0)),
    }, "select_keypoints")


def test_golden_cases_exercise_the_selection() -> None:
    # The cases must be worth their files: ties in the scores, thresholds that drop some of the
    # predictions, and keypoints both kept (v=2) and dropped (v=0).
    det = golden.load_expected("select_detection")
    sel = det["calibrated"]["selection"]
    assert sel["kept_per_category"] != sel["predicted_per_category"] and sum(sel["kept_per_category"].values()) > 0
    assert det["per_category_thresholds"]["3"] == 0.0 and "9" not in det["per_category_thresholds"]
    kps = golden.load_expected("select_keypoints")
    visibility = {v for ann in kps["calibrated"]["coco"]["annotations"] for v in ann["keypoints"][2::3]}
    assert visibility == {0.0, 2.0}
    p = predictions([1, 2, 9], 40, keypoints=False, g=torch.Generator().manual_seed(30))
    scores = p.table.column("score").to_numpy()
    assert len(np.unique(scores)) < len(scores)
