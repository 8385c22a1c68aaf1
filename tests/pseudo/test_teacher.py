import pytest
import torch

from dd_core.pseudo.teacher import checked_scales, frame_check, teacher_from_checkpoint
from dd_core.tta.settings import MultiTransformSettings
from tests.conftest import save_random_checkpoint, write_tiny_coco
from tests.pseudo.helpers import TTA


def test_a_teacher_refuses_settings_of_the_other_task(tmp_path):
    coco = write_tiny_coco(tmp_path / "kp", num_images=1)
    ckpt = save_random_checkpoint(str(tmp_path / "kp.pth"), coco)
    with pytest.raises(ValueError, match=r"kp.pth: a keypoints teacher needs multi-transform settings for keypoints"):
        teacher_from_checkpoint(ckpt, MultiTransformSettings().for_task("detection"))


ODD_SIZES = [(1, 2000), (2000, 1), (1, 40), (40, 1), (2, 300), (3, 600), (7, 1000), (1, 120), (1, 96), (3, 3), (1, 1),
             (5, 5000), (333, 1), (17, 4001)]


@pytest.mark.parametrize("scale", [56, 64, 96])
def test_the_frame_check_refuses_exactly_what_torchvision_s_resize_cannot_do(tmp_path, scale):
    from dd_core.tta.transforms import resize_transform

    coco = write_tiny_coco(tmp_path / "pile", num_images=1)
    model = teacher_from_checkpoint(save_random_checkpoint(str(tmp_path / "m.pth"), coco), TTA).model.model.eval()
    check, resize = frame_check(model, [scale]), resize_transform(model, scale)
    for height, width in ODD_SIZES:
        try:
            resized, _ = resize([torch.zeros(3, height, width)])
        except RuntimeError as exc:
            assert "sizes should be greater than 0" in str(exc)
            assert "resizes to 0 px at scale" in check(height, width), (height, width)
        else:
            assert check(height, width) is None, (height, width)
            assert min(resized.image_sizes[0]) >= 1


def test_teachers_also_check_the_model_s_own_scale(tmp_path):
    """Outside the transform set, the model's test scale (64 here) resizes every accepted image too:
    for a keypoint teacher's boxes, and for the student, which trains on it capped at the same max_size."""

    tta = MultiTransformSettings(scales=(96,), flip=False)
    kp_coco = write_tiny_coco(tmp_path / "kp", num_images=1)
    keypoints = teacher_from_checkpoint(save_random_checkpoint(str(tmp_path / "kp.pth"), kp_coco), tta)
    box_coco = write_tiny_coco(tmp_path / "box", num_images=1, task="detection")
    boxes = teacher_from_checkpoint(save_random_checkpoint(str(tmp_path / "box.pth"), box_coco, "detection"),
                                    tta.for_task("detection"))
    assert checked_scales(keypoints.model.model, tta) == checked_scales(boxes.model.model, tta) == [96, 64]
    image = torch.rand(3, 1, 120)  # 1 px high at scale 96 (longer side capped at 144 px), 0 px at 64 (96 px)
    assert frame_check(keypoints.model.model, [96])(1, 120) is None
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="sizes should be greater than 0"):
            keypoints.model.eval()([image])
        assert len(boxes.model.eval()([image])) == 1  # the box teacher could label it, but
    with pytest.raises(RuntimeError, match="sizes should be greater than 0"):
        boxes.model.model.transform.train()([image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    for teacher in (keypoints, boxes):
        assert "its shorter side resizes to 0 px at scale 64" in teacher.check_image(1, 120)


def test_a_teacher_is_its_detector_under_multi_transform_inference(tmp_path):
    from dd_core.models.loading import load_detector
    from dd_core.pseudo.teacher import teacher_of
    from dd_core.tta.model import MultiTransformModel
    from dd_core.tta.transforms import transform_set

    coco = write_tiny_coco(tmp_path / "box", num_images=1, task="detection")
    detector = load_detector(save_random_checkpoint(str(tmp_path / "box.pth"), coco, "detection"))
    tta = MultiTransformSettings(scales=(56, 64), voting_threshold=0.7).for_task("detection")
    teacher = teacher_of(detector, tta)
    assert isinstance(teacher.model, MultiTransformModel) and teacher.model.model is detector.model
    assert teacher.model.transforms == transform_set((56, 64), True) and teacher.model.merge.voting_threshold == 0.7
    assert teacher.label_to_category == detector.label_to_category == {1: 1}
    with pytest.raises(ValueError, match=r"box.pth: a detection teacher needs multi-transform settings for detection"):
        teacher_of(detector, tta.for_task("keypoints"))
