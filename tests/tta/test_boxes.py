"""Box multi-transform inference: identity = the model itself, mirror equivariance, union + voting, empties."""

from __future__ import annotations

import pytest
import torch

from dd_core.models import ModelSpec, build_model
from dd_core.tta import TestTransform, base_transform, hflip_boxes, hflip_image, multi_transform_boxes, transform_set
from dd_core.tta.boxes import merge_boxes


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelSpec(task="detection", num_classes=3, box_detections_per_img=10)).eval()
    m.roi_heads.score_thresh = 0.0  # random weights score low: keep every box
    return m


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.rand(3, 96, 128), torch.rand(3, 64, 80)]


def by_score(d: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = torch.argsort(d["scores"], descending=True, stable=True)
    return d["boxes"][order], d["scores"][order], d["labels"][order]


def test_identity_transform_is_the_model_itself(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    # One transform's raw detections merged with the model's own NMS (0.5) and cap (10), each box
    # voting for itself alone (threshold 1): the model's postprocess. Measured: bit-identical.
    with torch.inference_mode():
        expected = model(images)
    got = multi_transform_boxes(model, images, [base_transform(model)], nms_threshold=0.5, voting_threshold=1.0,
                                max_detections=10)
    for ours, theirs in zip(got, expected):
        assert len(theirs["boxes"]) > 0 and ours["num_transforms"] == 1
        assert ours["boxes"].dtype == torch.float32 and ours["labels"].dtype == torch.int64
        for a, b in zip(by_score(ours), by_score(theirs)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_raw_detections_are_the_model_s_before_its_nms_and_cap(model: torch.nn.Module,
                                                               images: list[torch.Tensor]) -> None:
    from torchvision.ops import batched_nms

    from dd_core.tta.boxes import detect_in_frame, raw_detections_in_frame
    from dd_core.tta.transforms import scale_batches

    with torch.inference_mode():
        batch = next(scale_batches(model, images, [base_transform(model)]))
        raw = raw_detections_in_frame(model, batch.images, batch.features)
        final = detect_in_frame(model, batch.images, batch.features)
    for r, f in zip(raw, final):
        assert len(r["boxes"]) > 3 * len(f["boxes"]) > 0  # most raw boxes are suppressed
        keep = batched_nms(r["boxes"], r["scores"], r["labels"], 0.5)[:10]
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(r[key][keep], f[key], rtol=0, atol=0)


def test_box_voting_counts_every_transform_s_raw_boxes() -> None:
    """Detectron's way: the kept box is voted on by every raw box of every transform; merging boxes
    each transform had already suppressed would give it one voter per transform."""
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.5]]), "scores": torch.tensor([0.9, 0.8]),
         "labels": torch.tensor([1, 1])}
    b = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.2], [0.3, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.7, 0.6]),
         "labels": torch.tensor([1, 1])}
    union = merge_boxes([a, b], nms_threshold=0.5, voting_threshold=0.8)
    raw = torch.cat([a["boxes"], b["boxes"]])
    weights = torch.cat([a["scores"], b["scores"]])
    expected = (weights[:, None] * raw).sum(0) / weights.sum()  # all four vote: IoU >= 0.8 with the kept box
    torch.testing.assert_close(union["boxes"], expected[None], rtol=0, atol=1e-6)
    assert union["scores"].tolist() == pytest.approx([0.9]) and union["labels"].tolist() == [1]
    # The other way round: each transform's NMS first leaves two voters, and another box.
    first_nms = merge_boxes([{k: v[:1] for k, v in a.items()}, {k: v[:1] for k, v in b.items()}], voting_threshold=0.8)
    two = (0.9 * a["boxes"][0] + 0.7 * b["boxes"][0]) / 1.6
    torch.testing.assert_close(first_nms["boxes"], two[None], rtol=0, atol=1e-6)
    assert not torch.allclose(first_nms["boxes"], union["boxes"])


def test_flip_symmetric_set_is_mirror_equivariant(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    # As for keypoints: with the set flip-symmetric, the mirrored image's passes are the
    # original's passes with the flip swapped, so only float rounding of x -> W - x remains,
    # although a single pass is not equivariant (random weights, RoIAlign aligned=False,
    # right/bottom padding, anchors on a grid that starts at x = 0). Measured: 7.6e-6 px.
    transforms = transform_set([96, 128], flip=True)
    image, width = images[0], images[0].shape[-1]
    original = multi_transform_boxes(model, [image], transforms)[0]
    mirrored = multi_transform_boxes(model, [hflip_image(image)], transforms)[0]
    boxes, scores, labels = by_score(original)
    m_boxes, m_scores, m_labels = by_score(mirrored)
    assert len(boxes) > 0 and torch.equal(labels, m_labels)
    torch.testing.assert_close(m_scores, scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(m_boxes, hflip_boxes(boxes, width), rtol=0, atol=1e-3)


def test_a_flip_transform_is_undone(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """The mirrored image seen through a flip is the original: its boxes come back mirrored."""
    image, width = images[1], images[1].shape[-1]
    plain = by_score(multi_transform_boxes(model, [image], [TestTransform(112)])[0])
    flipped = by_score(multi_transform_boxes(model, [hflip_image(image)], [TestTransform(112, hflip=True)])[0])
    torch.testing.assert_close(flipped[0], hflip_boxes(plain[0], width), rtol=0, atol=1e-3)
    torch.testing.assert_close(flipped[1], plain[1], rtol=0, atol=1e-5)


def test_union_is_merged(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    transforms = transform_set([96, 128], flip=True)
    # Each transform's raw boxes (no NMS: an IoU never exceeds 1; each votes for itself alone).
    singles = [multi_transform_boxes(model, images[:1], [t], nms_threshold=1.0, voting_threshold=1.0,
                                     max_detections=None)[0] for t in transforms]
    merged = multi_transform_boxes(model, images[:1], transforms, max_detections=1000)[0]
    union = sum(len(s["boxes"]) for s in singles)
    assert merged["num_transforms"] == 4
    assert 0 < len(merged["boxes"]) <= union
    all_scores = torch.cat([s["scores"] for s in singles])
    # Scoring "ID": kept boxes keep their score (up to float noise: an image and its mirror share
    # one backbone batch here, and conv results depend slightly on the batch size).
    assert (merged["scores"][:, None] - all_scores[None, :]).abs().min(dim=1).values.max() < 1e-5
    h, w = images[0].shape[-2:]
    assert (merged["boxes"] >= -1e-4).all() and (merged["boxes"][:, [0, 2]] <= w + 1e-4).all()
    assert (merged["boxes"][:, [1, 3]] <= h + 1e-4).all()
    assert len(multi_transform_boxes(model, images[:1], transforms, max_detections=3)[0]["boxes"]) == 3


def test_a_repeated_transform_merges_into_one(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Every box comes twice: NMS drops the copies, voting averages a box with itself."""
    single = multi_transform_boxes(model, images, [TestTransform(96)])
    double = multi_transform_boxes(model, images, [TestTransform(96)] * 2)
    for a, b in zip(single, double):
        assert b["num_transforms"] == 2 and len(a["boxes"]) > 0
        for x, y in zip(by_score(a), by_score(b)):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


def test_merge_boxes_never_leaves_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The union is merged as tensors where the model left them: no round trip through numpy."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("merge_boxes converted a tensor to numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    parts = [
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[11.0, 10.0, 51.0, 50.0]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([1])},
    ]
    merged = merge_boxes(parts, scoring="AVG")
    # (0.9 * [10, 10, 50, 50] + 0.6 * [11, 10, 51, 50]) / 1.5 = [10.4, 10, 50.4, 50]; (0.9 + 0.6) / 2
    torch.testing.assert_close(merged["boxes"], torch.tensor([[10.4, 10.0, 50.4, 50.0]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(merged["scores"], torch.tensor([0.75]), rtol=0, atol=1e-6)
    assert merged["boxes"].dtype == merged["scores"].dtype == torch.float32
    assert merged["labels"].tolist() == [1] and merged["labels"].dtype == torch.int64


def test_no_detections_gives_empty_tensors(
    model: torch.nn.Module, images: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model.roi_heads, "score_thresh", 1.1)
    for result in multi_transform_boxes(model, images, transform_set([96, 128], flip=True)):
        assert result["boxes"].shape == (0, 4) and result["boxes"].dtype == torch.float32
        assert result["scores"].shape == (0,) and result["labels"].shape == (0,)
        assert result["labels"].dtype == torch.int64 and result["num_transforms"] == 4


def test_refuses_training_mode_and_no_transforms(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="at least one transform"):
        multi_transform_boxes(model, images, [])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            multi_transform_boxes(model, images, [base_transform(model)])
    finally:
        model.eval()
