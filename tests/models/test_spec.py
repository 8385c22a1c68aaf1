import json

import pytest

from dd_core.models import KeypointSetConfig, ModelConfig, ModelSpec


def test_model_config_round_trips_through_json():
    overrides = ModelConfig(preset="r50-fpn", backbone_weights="s3://w/resnet50.pth", min_size=[600, 800],
                            test_size=800, max_size=1333)
    assert overrides.min_size == (600, 800)  # lists (JSON, config) become the spec's tuple
    assert ModelConfig.from_dict(json.loads(json.dumps(overrides.to_dict()))) == overrides
    assert ModelConfig.from_dict({}) == ModelConfig()
    with pytest.raises(ValueError, match=r"depth\n  Extra inputs are not permitted"):
        ModelConfig.from_dict({"preset": "slim", "depth": 3})
    with pytest.raises(ValueError, match="preset\n  Input should be 'slim', 'r50-fpn', .* \\[type=literal_error, "
                                         "input_value='r34'"):
        ModelConfig(preset="r34")


def test_model_config_fills_in_a_spec():
    overrides = ModelConfig(preset="r50-fpn", backbone_weights="w.pth", min_size=(600, 800), test_size=800,
                            max_size=1333)
    assert overrides.spec("detection", num_classes=3, num_keypoints=1) == ModelSpec(
        task="detection", preset="r50-fpn", num_classes=3, num_keypoints=1, min_size=(600, 800), test_size=800,
        max_size=1333, backbone_weights="w.pth")
    assert ModelConfig().spec("keypoints", 2, 17) == ModelSpec()
    keypoints = KeypointSetConfig(flip_pairs=[["a", "b"]], sigmas=[0.1, 0.2])
    assert ModelConfig().spec("keypoints", 2, 2, keypoints) == ModelSpec(num_keypoints=2, flip_pairs=(("a", "b"),),
                                                                          oks_sigmas=(0.1, 0.2))


def test_a_spec_of_an_earlier_version_loads_without_its_empty_extra():
    spec = ModelSpec(task="detection", num_classes=3, min_size=(100, 120))
    assert ModelSpec.from_dict({**spec.to_dict(), "extra": {}, "norm": None}) == spec
    with pytest.raises(ValueError, match=r"model spec: extra \{'depth': 3\} is not supported"):
        ModelSpec.from_dict({**spec.to_dict(), "extra": {"depth": 3}})


def test_norm_is_batch_or_frozen():
    assert ModelSpec().resolved_norm == "batch" and ModelSpec(backbone_weights="w.pth").resolved_norm == "frozen"
    # Restored from a checkpoint: no weights file re-read, the pretrained model's norm and frozen stages kept.
    pretrained = ModelSpec(norm="frozen", trainable_backbone_layers=3, norm_eps=1e-5)
    assert ModelSpec(backbone_weights="w.pth").for_restore() == pretrained
    assert ModelSpec(weights="w.pth").for_restore() == pretrained
    assert ModelSpec().for_restore() == ModelSpec(norm="batch", trainable_backbone_layers=5, norm_eps=1e-5)
    # torchvision runs its v1 COCO detectors with eps 0 (overwrite_eps): so does a model started from them.
    coco = ModelSpec(preset="r50-fpn", weights="KeypointRCNN_ResNet50_FPN_Weights.COCO_V1").for_restore()
    assert coco == ModelSpec(preset="r50-fpn", norm="frozen", trainable_backbone_layers=3, norm_eps=0.0)
    assert ModelSpec(weights="https://example.com/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth").resolved_norm_eps == 0
    with pytest.raises(ValueError, match=r"ModelSpec.norm: expected one of \('batch', 'frozen'\)"):
        ModelSpec(norm="group")
