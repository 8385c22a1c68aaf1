"""Golden file of the detection teacher's box merge (union -> per-class NMS -> box voting).

Fixed, seeded inputs: four objects of three classes seen under six test-time transforms (one
jittered box each, some missed) plus a few stray boxes, merged once per box voting scoring method.
``tests/expected/merge_detections.json`` holds every output box, score and label; regenerate it
on purpose with ``OMNIDISTILL_ACCEPT=1`` (see ``tests/golden.py``). The tests of the golden-file
helper itself are here too: a drifted value, a changed id or a missing file must fail.
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from dd_core.ensemble.box_voting import SCORING_METHODS
from dd_core.ensemble.merge import merge_detections
from tests import golden

# (scoring, beta): every method at Detectron's beta 1.0, and the three that use beta at 0.5 too.
CASES = [(method, 1.0) for method in SCORING_METHODS] + [
    (method, 0.5) for method in ("GENERALIZED_AVG", "QUASI_SUM", "TEMP_AVG")
]
OBJECTS = [  # (x1, y1, x2, y2, class id): two overlapping objects of class 1; class ids not contiguous
    (10.0, 12.0, 60.0, 80.0, 1), (40.0, 20.0, 95.0, 90.0, 1),
    (100.0, 30.0, 150.0, 70.0, 2), (20.0, 90.0, 70.0, 120.0, 5),
]
NUM_TRANSFORMS = 6


def union_of_transforms() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes, scores, labels): every transform's detections mapped back to the image, as float32."""
    g = torch.Generator().manual_seed(30)
    boxes, scores, labels = [], [], []
    for _ in range(NUM_TRANSFORMS):
        for *xyxy, label in OBJECTS:
            if torch.rand((), generator=g) < 0.15:  # this transform missed the object
                continue
            boxes.append(torch.tensor(xyxy) + 2.0 * torch.randn(4, generator=g))
            scores.append(0.3 + 0.7 * torch.rand((), generator=g))
            labels.append(label)
        if torch.rand((), generator=g) < 0.4:  # a stray: a small box anywhere, a low score, any class
            x, y = 140.0 * torch.rand(2, generator=g)
            x2 = x + 8 + 20 * torch.rand((), generator=g)
            y2 = y + 8 + 20 * torch.rand((), generator=g)
            boxes.append(torch.stack([x, y, x2, y2]))
            scores.append(0.3 * torch.rand((), generator=g))
            labels.append(OBJECTS[int(torch.randint(len(OBJECTS), (), generator=g))][4])
    return torch.stack(boxes).float(), torch.stack(scores).float(), torch.tensor(labels, dtype=torch.int64)


def merged_cases() -> dict:
    boxes, scores, labels = union_of_transforms()
    inputs = json.dumps([boxes.tolist(), scores.tolist(), labels.tolist()])
    out = {"inputs_sha256": hashlib.sha256(inputs.encode()).hexdigest(), "num_inputs": len(boxes)}
    for method, beta in CASES:
        b, s, l = merge_detections(boxes, scores, labels, nms_threshold=0.5, voting_threshold=0.8,
                                   scoring=method, beta=beta)
        out[f"{method}_beta{beta}"] = {"boxes": b, "scores": s, "labels": l,
                                       "dtypes": [str(b.dtype), str(s.dtype), str(l.dtype)]}
    b, s, l = merge_detections(boxes, scores, labels, scoring="ID", max_detections=3)  # the exact per-image cap
    out["ID_max3"] = {"boxes": b, "scores": s, "labels": l}
    return out


def test_merge_detections_matches_golden_file() -> None:
    golden.assert_expected(merged_cases(), "merge_detections")


def test_golden_inputs_exercise_the_merge() -> None:
    # The fixed case must be worth its file: several classes, NMS that removes boxes, voting that
    # moves some of the survivors, and scores that tell the methods (and betas) apart.
    boxes, _, labels = union_of_transforms()
    merged = golden.load_expected("merge_detections")
    assert sorted(set(labels.tolist())) == [1, 2, 5]
    assert len(merged["ID_beta1.0"]["labels"]) < len(boxes)
    raw = {tuple(b) for b in boxes.tolist()}
    assert sum(tuple(b) not in raw for b in merged["ID_beta1.0"]["boxes"]) >= 3
    scores = {json.dumps(case["scores"]) for name, case in merged.items() if name.endswith(("beta1.0", "beta0.5"))}
    # AVG, GENERALIZED_AVG, QUASI_SUM and TEMP_AVG coincide at beta 1 (all the mean): 9 cases, 6 scorings.
    assert len(scores) == 6


# --- the golden-file helper itself ----------------------------------------------------------------


def test_a_drifted_float_fails_and_names_where() -> None:
    actual = golden.load_expected("merge_detections")  # the helper alone, whatever the code does
    drifted = copy.deepcopy(golden.load_expected("merge_detections"))
    value = drifted["AVG_beta1.0"]["scores"][1]
    drifted["AVG_beta1.0"]["scores"][1] = value * (1 + 1e-5)  # ten times the tolerance
    with pytest.raises(AssertionError, match=r"\$\.AVG_beta1\.0\.scores\[1\]: .* != expected"):
        golden.assert_matches(actual, drifted)
    drifted["AVG_beta1.0"]["scores"][1] = value * (1 + 1e-7)  # within rtol=1e-6: passes
    golden.assert_matches(actual, drifted)


def test_ids_and_structure_must_match_exactly() -> None:
    actual = golden.load_expected("merge_detections")  # the helper alone, whatever the code does
    for edit, pattern in [
        (lambda e: e["ID_beta1.0"]["labels"].__setitem__(0, e["ID_beta1.0"]["labels"][0] + 1),
         r"labels\[0\].*\(exact\)"),
        (lambda e: e["ID_max3"]["boxes"].pop(), r"ID_max3\.boxes: length 3 != expected 2"),
        (lambda e: e.pop("ID_max3"), r"\$: keys"),
        (lambda e: e["ID_beta1.0"].__setitem__("labels", [float(v) for v in e["ID_beta1.0"]["labels"]]),
         "expected a float"),
    ]:
        expected = copy.deepcopy(golden.load_expected("merge_detections"))
        edit(expected)
        with pytest.raises(AssertionError, match=pattern):
            golden.assert_matches(actual, expected)


def test_missing_file_fails_with_how_to_create_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(golden.ACCEPT_ENV, raising=False)
    how = r"no golden file\. Create it on purpose with `OMNIDISTILL_ACCEPT=1 \.venv/bin/pytest"
    with pytest.raises(pytest.fail.Exception, match=how):
        golden.assert_expected({"a": 1.0}, "absent", directory=tmp_path)
    assert not (tmp_path / "absent.json").exists()


def test_accept_writes_a_file_that_round_trips_exactly(tmp_path, monkeypatch) -> None:
    value = {"x": [0.1 + 0.2, 1 / 3, torch.tensor([1.5, 2.25], dtype=torch.float32)], "n": 7, 3: "s"}
    monkeypatch.setenv(golden.ACCEPT_ENV, "1")
    golden.assert_expected(value, "case", directory=tmp_path)
    stored = json.loads((tmp_path / "case.json").read_text())
    assert stored == {"x": [0.30000000000000004, 0.3333333333333333, [1.5, 2.25]], "n": 7, "3": "s"}  # full repr
    monkeypatch.delenv(golden.ACCEPT_ENV)
    golden.assert_expected(value, "case", directory=tmp_path)
    with pytest.raises(AssertionError, match=r"\$\.n: 8 != expected 7"):
        golden.assert_expected({**value, "n": 8}, "case", directory=tmp_path)


def test_accept_refuses_a_file_over_the_size_cap(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(golden.ACCEPT_ENV, "1")
    with pytest.raises(AssertionError, match="over 20000"):
        golden.assert_expected(torch.arange(5000, dtype=torch.float64) / 7, "big", directory=tmp_path)
    assert not (tmp_path / "big.json").exists()
