"""Training a detector on labeled (+ pseudo-labeled) sets: images with nothing to learn from are left out."""

import copy

import numpy as np
import pytest

from dd_core.data.coco import coco_from_dict, load_coco
from dd_core.data.filtering import TrainingImageFilter, filter_for_training
from dd_core.models import ModelConfig
from dd_core.train import TrainConfig
from dd_core.train.detector import TrainingInputs, spec_for, train_detector, training_data
from dd_core.train.loop import Runtime, TrainHooks
from tests.conftest import write_tiny_coco


def _half_empty(coco: dict, source: str, root: str, first_id: int):
    """The set with every second image's annotations gone (a pile where half the images hold nobody)."""
    d = copy.deepcopy(coco)
    for image in d["images"]:
        image["id"] += first_id
    for ann in d["annotations"]:
        ann["image_id"] += first_id
        ann["id"] += first_id
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] % 2 == 0]
    return coco_from_dict(d, source, root)


def test_an_empty_pseudo_labeled_image_is_not_trained_on(tmp_path):
    coco = write_tiny_coco(tmp_path / "tiny", num_images=6)
    labeled = load_coco(str(tmp_path / "tiny/annotations.json"), str(tmp_path / "tiny/images"))
    pseudo = _half_empty(coco, "pseudo.json", str(tmp_path / "tiny/images"), 1000)
    seen: set[int] = set()
    result = train_detector(
        spec_for("keypoints", labeled, ModelConfig(test_size=64, min_size=(64,), max_size=96)),
        TrainingInputs(labeled, pseudo=pseudo, labeled_ratio=0.5),
        TrainConfig(iterations=12, batch_size=4, lr=0.005, warmup_iters=1, checkpoint_every=12),
        str(tmp_path / "ckpt"), runtime=Runtime(progress=False),
        hooks=TrainHooks(on_step=lambda it, model, targets: seen.update(int(t["image_id"]) for t in targets)))
    empty = {im["id"] for im in pseudo.images if not pseudo.annotations_by_image[im["id"]]}
    assert len(empty) == 3 and not seen & empty
    assert seen & {1002, 1004, 1006}  # pseudo-labeled images with people were drawn
    assert result.images == {"labeled": {"images": 6, "left_out": 0, "trained_on": 6},
                             "pseudo": {"images": 6, "left_out": 3, "trained_on": 3}}


def test_a_filtered_labeled_set_keeps_the_6_to_4_mix(tmp_path):
    coco = write_tiny_coco(tmp_path / "tiny", num_images=10)
    root = str(tmp_path / "tiny/images")
    labeled = filter_for_training(_half_empty(coco, "labeled.json", root, 0), TrainingImageFilter()).data
    pseudo = filter_for_training(_half_empty(coco, "pseudo.json", root, 1000), TrainingImageFilter()).data
    assert len(labeled.images) == len(pseudo.images) == 5
    dataset, make_batches = training_data(labeled, pseudo, TrainConfig(batch_size=8, seed=3), 0.6)
    slots = np.array([index for batch, _ in zip(make_batches(0), range(400)) for index in batch])
    labeled_share = float((slots < len(labeled.images)).mean())
    assert abs(labeled_share - 0.6) < 0.03  # 3,200 slots: the binomial's sd is 0.009
    assert set(slots.tolist()) == set(range(10))  # every kept image, and only those
    assert {dataset[i][1]["boxes"].shape[0] > 0 for i in range(10)} == {True}


def test_every_labeled_image_left_out_is_a_clear_error(tmp_path):
    coco = write_tiny_coco(tmp_path / "tiny", num_images=2)
    for ann in coco["annotations"]:
        ann["keypoints"] = [0] * 51
        ann["num_keypoints"] = 0
    labeled = coco_from_dict(coco, "nokp.json", str(tmp_path / "tiny/images"))
    with pytest.raises(ValueError, match=r"nokp.json: every one of its 2 images is left out of training \(images with "
                                         r"fewer than 1 visible keypoint\(s\) on instances to train on left out; "
                                         r"crowd regions and tiny boxes are not such instances\): nothing in it "
                                         r"teaches the model; label instances"):
        train_detector(spec_for("keypoints", labeled), TrainingInputs(labeled), TrainConfig(iterations=1, batch_size=2),
                       None, runtime=Runtime(progress=False))


def test_a_teacher_starts_from_weights_at_an_s3_url_read_with_the_job_s_options(tmp_path, s3):
    """The input check reads model.weights with storage.options: training must too."""
    import fsspec
    import torch

    from dd_core.models import build_model

    bucket, options = s3
    write_tiny_coco(tmp_path / "tiny", num_images=2)
    labeled = load_coco(str(tmp_path / "tiny/annotations.json"), str(tmp_path / "tiny/images"))
    spec = spec_for("keypoints", labeled, ModelConfig(weights=f"{bucket}/w.pth", test_size=64, min_size=(64,),
                                                         max_size=96))
    torch.manual_seed(5)
    published = build_model(spec.__class__(preset=spec.preset, norm="frozen")).state_dict()
    with fsspec.open(f"{bucket}/w.pth", "wb", **options) as f:
        torch.save(published, f)
    started = {}
    hooks = TrainHooks(on_step=lambda it, model, targets: started.update(model.backbone.body.state_dict()))
    train_detector(spec, TrainingInputs(labeled), TrainConfig(iterations=1, batch_size=2, warmup_iters=0), None,
                   options=options, runtime=Runtime(progress=False), hooks=hooks)
    assert torch.equal(started["conv1.weight"], published["backbone.body.conv1.weight"])  # frozen: as loaded
