import pytest
import torch

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES, COCO_PERSON_KEYPOINT_NAMES, flip_indices
from dd_core.data.transforms import hflip, hflip_boxes, resized_size, vanishing_scale


def _person(width=40):
    kps = torch.zeros(1, 17, 3)
    kps[0, :, 0] = torch.arange(17, dtype=torch.float32)          # x = keypoint index
    kps[0, :, 1] = 5.0
    kps[0, :, 2] = 2
    kps[0, 3] = 0                                                  # left_ear unlabeled
    return {"boxes": torch.tensor([[2.0, 3.0, 12.0, 20.0]]), "labels": torch.tensor([1]), "keypoints": kps}


def test_flip_indices_swap_left_and_right_only():
    names = COCO_PERSON_KEYPOINT_NAMES
    for i, j in enumerate(COCO_PERSON_FLIP_INDICES):
        if names[i] == "nose":
            assert j == i
        else:
            side, part = names[i].split("_", 1)
            assert names[j] == {"left": "right", "right": "left"}[side] + "_" + part
    assert flip_indices(["a", "left_x", "right_x"]) == [0, 2, 1]


def test_hflip_mirrors_boxes_and_keypoints_and_swaps_left_right():
    image = torch.arange(2 * 3 * 40, dtype=torch.uint8).reshape(3, 2, 40)
    flipped, t = hflip(image, _person(), COCO_PERSON_FLIP_INDICES)
    assert torch.equal(flipped[..., 0], image[..., -1])
    assert t["boxes"].tolist() == [[28.0, 3.0, 38.0, 20.0]]
    kps = t["keypoints"][0]
    # New left_eye (1) is the old right_eye (2), mirrored: x = 40 - 2.
    assert kps[1].tolist() == [38.0, 5.0, 2.0]
    assert kps[2].tolist() == [39.0, 5.0, 2.0]
    assert kps[0].tolist() == [40.0, 5.0, 2.0]  # the nose keeps its channel
    # Old left_ear (3) was unlabeled: after the swap it sits in right_ear's channel (4), all zero.
    assert kps[4].tolist() == [0.0, 0.0, 0.0]
    assert kps[3].tolist() == [40.0 - 4, 5.0, 2.0]


def test_hflip_twice_is_identity():
    image = torch.rand(3, 8, 40)
    target = _person()
    back_image, back = hflip(*hflip(image, target, COCO_PERSON_FLIP_INDICES), COCO_PERSON_FLIP_INDICES)
    assert torch.equal(back_image, image)
    assert torch.equal(back["boxes"], target["boxes"]) and torch.equal(back["keypoints"], target["keypoints"])


def test_hflip_boxes_keeps_boxes_valid():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 1.0, 40.0, 2.0]])
    out = hflip_boxes(boxes, 40)
    assert (out[:, 2] > out[:, 0]).all() and out.tolist() == [[30.0, 0.0, 40.0, 10.0], [0.0, 1.0, 35.0, 2.0]]


@pytest.mark.parametrize("size, scale, max_size", [((100, 200), 50, 1000), ((100, 400), 50, 120), ((37, 53), 64, 96),
                                                    ((480, 640), 800, 1333), ((3, 3), 128, 224), ((1, 96), 64, 96)])
def test_resized_size_is_torchvision_s_resize(size, scale, max_size):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    resize = GeneralizedRCNNTransform(scale, max_size, [0.0] * 3, [1.0] * 3).eval()
    assert resized_size(size, scale, max_size) == tuple(resize.resize(torch.zeros(3, *size), None)[0].shape[-2:])


def test_a_side_resized_to_nothing_is_where_torchvision_fails():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    assert resized_size((1, 2000), 96, 224) == (0, 224) and vanishing_scale((1, 2000), [96, 128], 224) == 96
    with pytest.raises(RuntimeError, match="Input and output sizes should be greater than 0"):
        GeneralizedRCNNTransform(96, 224, [0.0] * 3, [1.0] * 3).eval().resize(torch.zeros(3, 1, 2000), None)
    assert vanishing_scale((10, 20), [96], 224) is None
