"""Multi-transform inference as a model: called as the model is, predicting as the ensembling functions do."""

from __future__ import annotations

import pytest
import torch

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES as FLIP
from dd_core.data.keypoints import COCO_PERSON_KEYPOINT_NAMES, flip_indices
from dd_core.models import ModelSpec, build_model
from dd_core.tta import (
    LayerSettings,
    base_transform,
    multi_transform_boxes,
    multi_transform_keypoints,
    transform_set,
)
from dd_core.tta.model import BoxMerge, MultiTransformModel
from dd_core.tta.settings import MultiTransformSettings

NAMES = list(COCO_PERSON_KEYPOINT_NAMES)


def _model(task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    num_classes = {} if task == "keypoints" else {"num_classes": 3}
    m = build_model(ModelSpec(task=task, box_detections_per_img=10, **num_classes)).eval()
    m.roi_heads.score_thresh = 0.0  # random weights score low: keep every box so there are RoIs
    return m


@pytest.fixture(scope="module")
def keypoint_model() -> torch.nn.Module:
    return _model("keypoints")


@pytest.fixture(scope="module")
def box_model() -> torch.nn.Module:
    return _model("detection")


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.rand(3, 96, 128), torch.rand(3, 64, 80)]


def assert_identical(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
            else:
                assert ours[key] == value, key


def test_the_keypoint_wrapper_is_the_ensembling_function(keypoint_model, images) -> None:
    settings = MultiTransformSettings(scales=(56, 64, 128), flip=True)
    wrapper = MultiTransformModel.from_settings(keypoint_model, settings, NAMES)
    expected = multi_transform_keypoints(keypoint_model, images, transform_set((56, 64, 128), True), FLIP)
    assert any(len(e["boxes"]) for e in expected)
    assert_identical(wrapper(images), expected)


def test_the_detection_wrapper_is_the_ensembling_function(box_model, images) -> None:
    settings = MultiTransformSettings(scales=(56, 64, 128), nms_threshold=0.4, voting_threshold=0.7,
                                      scoring="AVG").for_task("detection")
    wrapper = MultiTransformModel.from_settings(box_model, settings, [])
    expected = multi_transform_boxes(box_model, images, transform_set((56, 64, 128), True), nms_threshold=0.4,
                                     voting_threshold=0.7, scoring="AVG")
    assert any(len(e["boxes"]) for e in expected)
    assert_identical(wrapper(images), expected)


def test_flip_pairs_give_the_left_right_swap(keypoint_model) -> None:
    names = ["nose", "left_eye", "right_eye"] + [f"k{i}" for i in range(14)]
    pairs = [["k0", "k1"]]
    wrapper = MultiTransformModel.from_settings(keypoint_model, MultiTransformSettings(scales=(64,)), names, pairs)
    assert wrapper.flip_indices == flip_indices(names, pairs)


@pytest.mark.parametrize("task", ["keypoints", "detection"])
def test_the_identity_transform_is_the_model_itself(task, keypoint_model, box_model, images) -> None:
    model = keypoint_model if task == "keypoints" else box_model
    with torch.inference_mode():
        expected = model(images)
    if task == "keypoints":
        wrapper = MultiTransformModel(model, [base_transform(model)], flip_indices=FLIP)
    else:  # the model's own NMS and cap, each box voting for itself alone
        wrapper = MultiTransformModel(model, [base_transform(model)], merge=BoxMerge(0.5, 1.0, "ID", 10))
    got = wrapper(images)
    for ours, theirs in zip(got, expected):
        assert len(theirs["boxes"]) > 0 and ours["num_transforms"] == 1
        order = torch.argsort(ours["scores"], descending=True, stable=True)
        reference = torch.argsort(theirs["scores"], descending=True, stable=True)
        for key in theirs:
            torch.testing.assert_close(ours[key][order], theirs[key][reference], rtol=0, atol=1e-5)


def test_the_wrapper_moves_and_switches_mode_with_its_model(keypoint_model) -> None:
    wrapper = MultiTransformModel(keypoint_model, [base_transform(keypoint_model)], flip_indices=FLIP)
    assert [id(p) for p in wrapper.parameters()] == [id(p) for p in keypoint_model.parameters()]  # .to() moves it
    wrapper.train()
    assert keypoint_model.training
    with pytest.raises(ValueError, match="needs the model in eval mode"):
        wrapper([torch.rand(3, 32, 32)])
    wrapper.eval()
    assert not keypoint_model.training


def test_bad_arguments_are_refused(keypoint_model) -> None:
    transforms = [base_transform(keypoint_model)]
    with pytest.raises(ValueError, match="needs at least one transform"):
        MultiTransformModel(keypoint_model, [], flip_indices=FLIP)
    with pytest.raises(ValueError, match="exactly one of flip_indices"):
        MultiTransformModel(keypoint_model, transforms)
    with pytest.raises(ValueError, match="exactly one of flip_indices"):
        MultiTransformModel(keypoint_model, transforms, flip_indices=FLIP, merge=BoxMerge(0.5, 0.8, "ID"))
    with pytest.raises(ValueError, match="self-inverse permutation"):
        MultiTransformModel(keypoint_model, transforms, flip_indices=[1, 1])
    with pytest.raises(ValueError, match="the model has no keypoints"):
        MultiTransformModel.from_settings(keypoint_model, MultiTransformSettings(scales=(64,)), [])


def test_layer_settings_reach_the_wrapper(keypoint_model) -> None:
    settings = MultiTransformSettings(scales=(64,), flip=False, precision="bfloat16", channels_last=True)
    wrapper = MultiTransformModel.from_settings(keypoint_model, settings, NAMES)
    assert wrapper.layers == LayerSettings("bfloat16", True) and wrapper.transforms == transform_set((64,), False)
