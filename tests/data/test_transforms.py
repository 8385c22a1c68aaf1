import torch

from dd_core.data.keypoints import COCO_PERSON_FLIP_INDICES, COCO_PERSON_KEYPOINT_NAMES, flip_indices
from dd_core.data.transforms import ResizeShorterSide, hflip, hflip_boxes, scale_target, shorter_side_size


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


def test_resize_shorter_side_and_its_inverse():
    assert shorter_side_size(100, 200, 50, 1000) == (50, 100)
    assert shorter_side_size(100, 400, 50, 120) == (30, 120)    # the longer side caps it
    image = torch.randint(0, 255, (3, 100, 200), dtype=torch.uint8)
    target = _person()
    resize = ResizeShorterSide(50, 1000)
    small, t = resize(image, target)
    assert small.shape == (3, 50, 100) and small.dtype == torch.uint8
    assert t["boxes"].tolist() == [[1.0, 1.5, 6.0, 10.0]]
    back = ResizeShorterSide.inverse(t, (50, 100), (100, 200))
    assert torch.allclose(back["boxes"], target["boxes"]) and torch.allclose(back["keypoints"], target["keypoints"])


def test_scale_target_scales_area():
    t = scale_target({"boxes": torch.zeros(0, 4), "area": torch.tensor([10.0])}, 2.0, 3.0)
    assert t["area"].tolist() == [60.0] and t["boxes"].shape == (0, 4)
