"""Keypoint multi-transform inference: identity = the model itself, mirror equivariance, empties."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES as FLIP
from dd_core.models import ModelSpec, build_model
from dd_core.tta import (
    TestTransform,
    average_keypoint_logits,
    base_transform,
    hflip_boxes,
    hflip_heatmaps,
    hflip_image,
    hflip_keypoints,
    multi_transform_keypoints,
    multi_transform_keypoints_on_boxes,
    predictor_stages,
    transform_set,
    upsample_heatmaps,
)
from dd_core.tta.keypoints import base_detections
from dd_core.tta.transforms import boxes_to_frame, scale_batches

KEYS = ("boxes", "labels", "scores", "keypoints", "keypoints_scores")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelSpec(task="keypoints", box_detections_per_img=5)).eval()
    m.roi_heads.score_thresh = 0.0  # random weights score low: keep every box so there are RoIs
    return m


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    torch.manual_seed(1)
    # One image at the base scale (frame = original) and one that is upscaled (64 -> 128).
    return [torch.rand(3, 96, 128), torch.rand(3, 64, 80)]


@pytest.fixture(scope="module")
def boxes() -> torch.Tensor:
    return torch.tensor([[10.0, 12.0, 60.0, 90.0], [30.5, 5.2, 97.3, 70.1], [0.0, 0.0, 128.0, 96.0]])


def test_identity_transform_is_the_model_itself(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        expected = model(images)
    got = multi_transform_keypoints(model, images, [base_transform(model)], FLIP)
    for ours, theirs in zip(got, expected):
        assert len(theirs["boxes"]) > 0
        assert ours["num_transforms"] == 1
        for key in KEYS:  # measured: bit-identical
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-4)


def test_flip_symmetric_set_is_mirror_equivariant(
    model: torch.nn.Module, images: list[torch.Tensor], boxes: torch.Tensor
) -> None:
    # With a flip-symmetric set, the mirrored image's (s, no flip) pass *is* the original's
    # (s, flip) pass (same input tensor, same RoIs) and vice versa, so in exact arithmetic the
    # ensemble is exactly mirror-equivariant although no single pass is: a random-weight network
    # is not, and torchvision's RoIAlign (aligned=False, sampling at x * scale without the -0.5
    # shift) and the right/bottom batch padding break the symmetry of any one pass by up to a
    # feature pixel. What remains is float rounding (W - (W - x) in the box maps, summation
    # order), which can move a near-tied argmax by one decoding bin, at most one pixel of the
    # base frame. On this fixed model and image no argmax moves: measured 7.6e-6 px and 2.9e-6 in
    # the scores, so the tolerances are those, not a decoding bin.
    transforms = transform_set([96, 128], flip=True)
    image, width = images[0], images[0].shape[-1]
    original = multi_transform_keypoints_on_boxes(model, [image], [boxes], transforms, FLIP)[0]
    mirrored = multi_transform_keypoints_on_boxes(model, [hflip_image(image)], [hflip_boxes(boxes, width)],
                                                  transforms, FLIP)[0]
    expected = hflip_keypoints(original["keypoints"], width, FLIP)
    torch.testing.assert_close(mirrored["keypoints"][..., :2], expected[..., :2], rtol=0, atol=1e-5)
    torch.testing.assert_close(mirrored["keypoints_scores"], original["keypoints_scores"][:, list(FLIP)],
                               rtol=0, atol=1e-5)


def test_a_flip_transform_is_undone(model: torch.nn.Module, images: list[torch.Tensor], boxes: torch.Tensor) -> None:
    """The mirrored image seen through a flip is the original: its keypoints must come back mirrored."""
    image, width = images[0], images[0].shape[-1]
    plain = multi_transform_keypoints_on_boxes(model, [image], [boxes], [TestTransform(128)], FLIP)[0]
    unflipped = multi_transform_keypoints_on_boxes(
        model, [hflip_image(image)], [hflip_boxes(boxes, width)], [TestTransform(128, hflip=True)], FLIP
    )[0]
    expected = hflip_keypoints(plain["keypoints"], width, FLIP)
    torch.testing.assert_close(unflipped["keypoints"][..., :2], expected[..., :2], rtol=0, atol=1e-5)  # measured 7.6e-6


def test_more_transforms_average_their_heatmaps_on_the_base_pass_s_rois(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    single = multi_transform_keypoints(model, images, [base_transform(model)], FLIP)
    multi = multi_transform_keypoints(model, images, transform_set([96, 128, 160], flip=True), FLIP)
    with torch.inference_mode():
        detections, frames = base_detections(model, images)
        base_boxes = [d["boxes"] for d in detections]
        # The six transforms' heatmaps averaged on the base pass's RoIs (checked against torchvision's
        # own head below), decoded as torchvision decodes: the scores are the averaged maps' maxima.
        logits = average_keypoint_logits(model, images, base_boxes, frames,
                                         transform_set([96, 128, 160], flip=True), FLIP)
    for a, b, maps, rois in zip(single, multi, logits.split([len(r) for r in base_boxes]), base_boxes):
        assert b["num_transforms"] == 6
        assert torch.equal(a["boxes"], b["boxes"])  # the RoIs come from the single base pass
        torch.testing.assert_close(b["keypoints_scores"], heatmaps_to_keypoints(maps, rois)[1], rtol=0, atol=1e-5)


def test_no_detections_gives_empty_tensors(
    model: torch.nn.Module, images: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model.roi_heads, "score_thresh", 1.1)
    out = multi_transform_keypoints(model, images, transform_set([96, 128], flip=True), FLIP)
    for result in out:
        assert result["boxes"].shape == (0, 4) and result["scores"].shape == (0,) and result["labels"].shape == (0,)
        assert result["keypoints"].shape == (0, 17, 3) and result["keypoints_scores"].shape == (0, 17)
        assert result["num_transforms"] == 4


def test_an_image_without_boxes_beside_one_with_boxes(
    model: torch.nn.Module, images: list[torch.Tensor], boxes: torch.Tensor
) -> None:
    out = multi_transform_keypoints_on_boxes(model, images, [torch.zeros(0, 4), boxes[:2]], transform_set([128], True), FLIP)
    assert out[0]["keypoints"].shape == (0, 17, 3) and out[1]["keypoints"].shape == (2, 17, 3)


def test_refuses_training_mode_and_bad_flip_indices(model: torch.nn.Module, images: list[torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="flip_indices"):
        multi_transform_keypoints(model, images, [base_transform(model)], [0, 0] + list(FLIP[2:]))
    with pytest.raises(ValueError, match="flip_indices has 3 entries"):
        multi_transform_keypoints(model, images, [base_transform(model)], [0, 2, 1])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            multi_transform_keypoints(model, images, [base_transform(model)], FLIP)
    finally:
        model.eval()


@pytest.mark.parametrize("scales,expected_calls", [([96, 128, 160], 3), ([96, 160], 3)])
def test_backbone_runs_once_per_scale_plus_base_only_when_needed(
    model: torch.nn.Module, images: list[torch.Tensor], scales: list[int], expected_calls: int
) -> None:
    # The base scale (128) in the set: its backbone pass also gives the boxes (3 scales, 3 calls).
    # Not in the set: one extra pass at 128 for the boxes (2 scales + 1).
    calls = []
    hook = model.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        got = multi_transform_keypoints(model, images, transform_set(scales, flip=True), FLIP)
    finally:
        hook.remove()
    assert len(calls) == expected_calls
    assert all(out["num_transforms"] == 2 * len(scales) for out in got)


def test_reusing_the_base_pass_gives_the_boxes_of_a_separate_pass(
    model: torch.nn.Module, images: list[torch.Tensor]
) -> None:
    with torch.inference_mode():
        expected = model(images)
    got = multi_transform_keypoints(model, images, transform_set([96, 128, 160], flip=True), FLIP)
    for ours, theirs in zip(got, expected):
        for key in ("boxes", "labels", "scores"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-4)


def test_upsampling_commutes_with_the_heatmap_flip() -> None:
    torch.manual_seed(2)
    low = torch.randn(3, 17, 28, 28)
    up = upsample_heatmaps(low, 2)
    assert up.shape == (3, 17, 56, 56)
    flipped_first = upsample_heatmaps(hflip_heatmaps(low, FLIP), 2)
    torch.testing.assert_close(flipped_first, hflip_heatmaps(up, FLIP), rtol=0, atol=1e-6)


def test_predictor_stages_are_torchvisions_predictor(model: torch.nn.Module) -> None:
    predictor = model.roi_heads.keypoint_predictor
    per_transform, shared = predictor_stages(predictor)
    x = torch.randn(4, predictor.kps_score_lowres.in_channels, 14, 14)
    with torch.inference_mode():
        assert per_transform(x).shape[-1] == 28
        assert torch.equal(shared(per_transform(x)), predictor(x))


def test_another_predictor_runs_whole_on_every_transform(model: torch.nn.Module) -> None:
    class Sharper(type(model.roi_heads.keypoint_predictor)):
        def forward(self, x):
            return 2 * super().forward(x)

    sharper = Sharper(4, 17)
    per_transform, shared = predictor_stages(sharper)
    x = torch.randn(1, 17, 5, 5)
    assert per_transform is sharper and torch.equal(shared(x), x)


def test_averaging_before_the_upsampling_is_averaging_the_final_heatmaps(
    model: torch.nn.Module, images: list[torch.Tensor], boxes: torch.Tensor
) -> None:
    """The mean of each transform's full-size heatmaps (un-flipped), as Detectron averages them."""
    image, frame = images[0], tuple(images[0].shape[-2:])  # at the base scale: its frame is the original
    transforms = transform_set([96, 128, 160], flip=True)
    with torch.inference_mode():
        maps = []
        for batch in scale_batches(model, [image], transforms):
            rois = [boxes_to_frame(boxes, t, frame, f) for t, _, f in batch.entries()]
            heads = model.roi_heads  # torchvision's whole keypoint head, final upsampling included
            logits = heads.keypoint_predictor(heads.keypoint_head(
                heads.keypoint_roi_pool(batch.features, rois, batch.images.image_sizes)))
            for t, m in zip(batch.transforms, logits.split(len(boxes))):
                maps.append(hflip_heatmaps(m, FLIP) if t.hflip else m)
        expected = torch.stack(maps).mean(0)
        got = average_keypoint_logits(model, [image], [boxes], [frame], transforms, FLIP)
    assert got.shape == expected.shape == (len(boxes), 17, 56, 56)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.flatten(2).argmax(-1), expected.flatten(2).argmax(-1))
