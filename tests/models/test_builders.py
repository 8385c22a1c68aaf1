import pytest
import torch
from torchvision.models import resnet18

from dd_core.models import PRESETS, ModelSpec, build_model
from dd_core.models.builders import load_backbone_weights


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_both_tasks(preset):
    kp = build_model(ModelSpec(task="keypoints", preset=preset))
    det = build_model(ModelSpec(task="detection", preset=preset, num_classes=9))
    assert kp.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
    assert det.roi_heads.box_predictor.cls_score.out_features == 9 and det.roi_heads.keypoint_head is None
    assert kp.transform.min_size[-1] == PRESETS[preset].test_size  # eval uses the preset's test scale


def test_resnext_widths_follow_the_paper():
    body32 = build_model(ModelSpec(preset="x101-32x4d-fpn")).backbone.body
    body64 = build_model(ModelSpec(preset="x101-64x4d-fpn")).backbone.body
    assert body32.layer1[0].conv2.groups == 32 and body32.layer1[0].conv2.out_channels == 128
    assert body64.layer1[0].conv2.groups == 64 and body64.layer1[0].conv2.out_channels == 256


def test_slim_preset_is_small_and_runs():
    spec = ModelSpec(task="keypoints", preset="slim")
    model = build_model(spec).eval()
    assert model.backbone.out_channels == 64
    assert len(model.roi_heads.keypoint_head) == 8  # 4 x (conv 64 + relu)
    with torch.inference_mode():
        out = model([torch.rand(3, 96, 128)])
    assert set(out[0]) == {"boxes", "labels", "scores", "keypoints", "keypoints_scores"}


def test_spec_roundtrips_and_validates():
    spec = ModelSpec(task="detection", preset="slim", num_classes=7, min_size=(100, 120), test_size=110)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert build_model(spec).transform.min_size == (100, 120, 110)
    with pytest.raises(ValueError, match="ModelSpec.task"):
        ModelSpec(task="segmentation")
    with pytest.raises(ValueError, match="ModelSpec.preset"):
        ModelSpec(preset="r34")
    with pytest.raises(ValueError, match="count the background"):
        ModelSpec(num_classes=1)
    with pytest.raises(ValueError, match="unknown fields"):
        ModelSpec.from_dict({"task": "keypoints", "depth": 3})


def test_backbone_weights_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    classifier = resnet18(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(ModelSpec(preset="slim", backbone_weights=str(tmp_path / "resnet18.pth")))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    # Frozen BatchNorm with pretrained statistics, as torchvision does.
    assert type(body.bn1).__name__ == "FrozenBatchNorm2d"
    assert torch.equal(body.bn1.running_mean, classifier.bn1.running_mean)


def test_mismatched_backbone_weights_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: backbone weights do not match"):
        load_backbone_weights(build_model(ModelSpec(preset="slim")).backbone.body, str(tmp_path / "bad.pth"))


def test_weights_and_backbone_weights_at_an_s3_url_are_read_with_the_storage_options(s3):
    """The input check reads weights with storage.options; so must training's build_model."""
    import fsspec

    bucket, options = s3
    torch.manual_seed(0)
    classifier = resnet18(weights=None)
    detector = build_model(ModelSpec(preset="slim", norm="frozen"))  # as a model started from weights
    for name, state in (("resnet18.pth", classifier.state_dict()), ("w.pth", detector.state_dict())):
        with fsspec.open(f"{bucket}/{name}", "wb", **options) as f:
            torch.save(state, f)
    body = build_model(ModelSpec(preset="slim", backbone_weights=f"{bucket}/resnet18.pth"), options=options).backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    loaded = build_model(ModelSpec(preset="slim", weights=f"{bucket}/w.pth"), options=options).state_dict()
    assert loaded.keys() == detector.state_dict().keys()
    assert all(torch.equal(value, loaded[key]) for key, value in detector.state_dict().items())
