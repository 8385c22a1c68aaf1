"""A torch Dataset over a validated COCO set: images from any URL, torchvision detection targets."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset

from dd_core.data.coco import CocoData, trainable_box
from dd_core.data.images import read_image
from dd_core.data.transforms import Target
from dd_core.storage import join


def category_to_label(coco: CocoData) -> dict[int, int]:
    """COCO category ids (any integers) -> contiguous labels 1..C; 0 is torchvision's background."""
    return {cat_id: i + 1 for i, cat_id in enumerate(coco.category_ids)}


def annotations_to_target(anns: list[dict[str, Any]], cat_to_label: Mapping[int, int], num_keypoints: int,
                          image_id: int) -> Target:
    """COCO annotations of one image -> a torchvision target.

    Crowd regions are left out: torchvision's heads have no ignore label, so training on a crowd
    box as a positive would teach the wrong thing (COCOeval still treats them as ignore regions).
    So are boxes too small to train on (:func:`dd_core.data.coco.trainable_box`: torchvision
    refuses a box without width or height).
    """
    anns = [a for a in anns if not a.get("iscrowd", 0) and trainable_box(a["bbox"])]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    target: Target = {
        "boxes": boxes,
        "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
        "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
        "image_id": torch.tensor(image_id),
    }
    if num_keypoints:
        kps = [a.get("keypoints") or [0] * (3 * num_keypoints) for a in anns]
        target["keypoints"] = torch.tensor(kps, dtype=torch.float32).reshape(-1, num_keypoints, 3)
    return target


class CocoDataset(Dataset):
    """``(image, target)`` pairs for training or evaluation.

    ``transforms`` maps ``(uint8 image, target) -> (image, target)``; end with ``to_float``.
    """

    def __init__(self, coco: CocoData, transforms: Callable | None = None,
                 options: Mapping[str, Any] | None = None, cat_to_label: Mapping[int, int] | None = None,
                 check_size: Callable[[int, int], str | None] | None = None):
        self.coco = coco
        self.transforms = transforms
        self.options = dict(options or {})
        self.cat_to_label = dict(cat_to_label or category_to_label(coco))
        self.num_keypoints = len(coco.keypoint_names)
        self.check_size = check_size  # (height, width) -> why the model cannot take it, or None

    def __len__(self) -> int:
        return len(self.coco.images)

    def image_url(self, index: int) -> str:
        return join(self.coco.images_root, self.coco.images[index]["file_name"])

    def aspect_ratios(self) -> list[float]:
        """Width / height per image from the json (1.0 where the json has no size)."""
        return [img["width"] / img["height"] if img.get("width") and img.get("height") else 1.0
                for img in self.coco.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info = self.coco.images[index]
        image = read_image(self.image_url(index), self.options)
        self._check(index, info, int(image.shape[-2]), int(image.shape[-1]))
        target = annotations_to_target(self.coco.annotations_by_image[info["id"]], self.cat_to_label,
                                       self.num_keypoints, info["id"])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


    def _check(self, index: int, info: Mapping[str, Any], height: int, width: int) -> None:
        """Refuse an image whose annotations cannot be right (the json gives another size) or that the
        model cannot take (too thin for its scales), naming it: torchvision would fail deep in a
        forward pass, without a name, on every retry."""
        where = f"{self.image_url(index)} ({self.coco.source}: images[{index}], id {info['id']})"
        expected = (info.get("height"), info.get("width"))
        if None not in expected and expected != (height, width):
            raise ValueError(f"{where}: the file is {width}x{height} px (width x height) but the json says "
                             f"{expected[1]}x{expected[0]}: its annotations would be misplaced")
        reason = self.check_size(height, width) if self.check_size is not None else None
        if reason is not None:
            raise ValueError(f"{where}: {reason}")


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection models take lists of differently sized images, not a stacked tensor."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
