"""Test-time transforms: every geometric map and its inverse, and the model-exact resize."""

from __future__ import annotations

import pytest
import torch

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES as FLIP
from dd_core.data.keypoints import COCO_PERSON_KEYPOINT_NAMES as NAMES
from dd_core.models import ModelSpec, build_model
from dd_core.tta.transforms import (
    TestTransform,
    base_transform,
    boxes_from_frame,
    boxes_to_frame,
    frame_size,
    group_by_scale,
    hflip_boxes,
    hflip_heatmaps,
    hflip_image,
    hflip_keypoints,
    keypoints_from_frame,
    keypoints_to_frame,
    resize_boxes,
    resize_transform,
    scale_batches,
    scaled_max_size,
    transform_set,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(task="detection")).eval()


def random_boxes(n: int, height: int, width: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * torch.tensor([width / 2, height / 2])
    wh = torch.rand(n, 2) * torch.tensor([width / 2, height / 2]) + 1
    return torch.cat([xy, xy + wh], dim=1)


def random_keypoints(n: int, height: int, width: int) -> torch.Tensor:
    xy = torch.rand(n, len(NAMES), 2) * torch.tensor([width, height])
    return torch.cat([xy, torch.randint(0, 3, (n, len(NAMES), 1)).float()], dim=2)


def test_transform_set_is_scales_times_flip() -> None:
    ts = transform_set([96, 128, 96], flip=True)
    assert [str(t) for t in ts] == ["s96", "s96-flip", "s128", "s128-flip"]
    assert transform_set([128], flip=False) == [TestTransform(128, False)]
    assert group_by_scale(ts) == {96: ts[:2], 128: ts[2:]}
    with pytest.raises(ValueError, match="TestTransform.scale must be a positive number of pixels, got 0"):
        TestTransform(0)


def test_hflip_boxes_mirrors_continuous_coordinates() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 50.0]])
    assert torch.equal(hflip_boxes(boxes, 100), torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 50.0]]))
    torch.manual_seed(1)
    boxes = random_boxes(20, 90, 130)
    torch.testing.assert_close(hflip_boxes(hflip_boxes(boxes, 130), 130), boxes, rtol=0, atol=1e-5)


def test_hflip_keypoints_swaps_left_and_right() -> None:
    kps = torch.zeros(1, len(NAMES), 3)
    kps[0, NAMES.index("left_wrist")] = torch.tensor([10.0, 30.0, 2.0])
    flipped = hflip_keypoints(kps, 100, FLIP)
    assert flipped[0, NAMES.index("right_wrist")].tolist() == [90.0, 30.0, 2.0]
    assert flipped[0, NAMES.index("left_wrist")].tolist() == [100.0, 0.0, 0.0]
    torch.manual_seed(2)
    kps = random_keypoints(4, 90, 130)
    torch.testing.assert_close(hflip_keypoints(hflip_keypoints(kps, 130, FLIP), 130, FLIP), kps, rtol=0, atol=1e-5)


def test_hflip_heatmaps_moves_the_peak_and_swaps_channels() -> None:
    maps = torch.zeros(2, len(NAMES), 8, 8)
    maps[1, NAMES.index("left_ankle"), 3, 1] = 5.0
    flipped = hflip_heatmaps(maps, FLIP)
    assert flipped[1, NAMES.index("right_ankle"), 3, 6] == 5.0
    assert torch.equal(hflip_heatmaps(flipped, FLIP), maps)
    assert torch.equal(hflip_image(hflip_image(maps)), maps)


@pytest.mark.parametrize("hflip", [False, True])
def test_frame_maps_round_trip(hflip: bool) -> None:
    torch.manual_seed(3)
    t, original, frame = TestTransform(160, hflip), (96, 130), (160, 216)
    boxes, kps = random_boxes(10, *original), random_keypoints(3, *original)
    in_frame = boxes_to_frame(boxes, t, original, frame)
    torch.testing.assert_close(boxes_from_frame(in_frame, t, frame, original), boxes, rtol=0, atol=1e-4)
    assert (in_frame[:, 2:] > in_frame[:, :2]).all()  # still valid xyxy after a flip
    back = keypoints_from_frame(keypoints_to_frame(kps, t, original, frame, FLIP), t, frame, original, FLIP)
    torch.testing.assert_close(back, kps, rtol=0, atol=1e-4)
    torch.testing.assert_close(resize_boxes(resize_boxes(boxes, original, frame), frame, original), boxes, rtol=0, atol=1e-4)


def test_base_scale_reproduces_the_model_preprocessing_bit_for_bit(model: torch.nn.Module) -> None:
    images = [torch.rand(3, 96, 128), torch.rand(3, 50, 200)]
    with torch.inference_mode():
        ours, _ = resize_transform(model, base_transform(model).scale)(images)
        theirs, _ = model.transform(images)
    assert torch.equal(ours.tensors, theirs.tensors)
    assert ours.image_sizes == theirs.image_sizes
    assert scaled_max_size(model, 64) == 112  # 224 * 64 / 128: the aspect cap scales too


@pytest.mark.parametrize("scale", [96, 128, 160])
def test_frame_size_matches_the_resize(model: torch.nn.Module, scale: int) -> None:
    images = [torch.rand(3, 96, 128), torch.rand(3, 70, 61), torch.rand(3, 40, 250)]
    with torch.inference_mode():
        image_list, _ = resize_transform(model, scale)(images)
    assert image_list.image_sizes == [frame_size(model, scale, tuple(im.shape[-2:])) for im in images]


def test_flip_commutes_with_the_resize(model: torch.nn.Module) -> None:
    """Why boxes map to a frame by "resize, then flip": the frame is "flip, then resize"."""
    image = torch.rand(3, 70, 93)
    resize = resize_transform(model, 112)
    with torch.inference_mode():
        flip_then_resize = resize.resize(hflip_image(image))[0]
        resize_then_flip = hflip_image(resize.resize(image)[0])
    torch.testing.assert_close(flip_then_resize, resize_then_flip, rtol=0, atol=1e-5)


def test_scale_batches_pairs_each_image_with_its_mirror(model: torch.nn.Module) -> None:
    images = [torch.rand(3, 64, 80), torch.rand(3, 80, 64)]
    with torch.inference_mode():
        batches = list(scale_batches(model, images, transform_set([96, 128], flip=True)))
    assert [b.scale for b in batches] == [96, 128]
    entries = batches[0].entries()
    assert [(str(t), i) for t, i, _ in entries] == [("s96", 0), ("s96", 1), ("s96-flip", 0), ("s96-flip", 1)]
    assert entries[0][2] == (96, 120) and entries[3][2] == (120, 96)
    assert batches[0].images.tensors.shape[0] == 4


def test_fixed_size_models_refuse_other_scales(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.transform, "fixed_size", (128, 128))
    resize_transform(model, 128)
    with pytest.raises(ValueError, match="fixed_size"):
        resize_transform(model, 96)
