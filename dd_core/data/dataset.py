"""A torch Dataset over a validated COCO set: images from any URL, torchvision detection targets.

A photo much larger than the model trains on is decoded reduced (:func:`dd_core.data.images.read_reduced`):
by the largest power of two that leaves it at least the largest frame the model's resize gives it
(:class:`TrainingFrame`), its targets divided by that factor (:func:`reduced_target`). The model
resizes every image to such a frame anyway, so only the resampling differs; a 12000 x 12000 photo
then takes about 4 bytes per pixel once while decoding, not the 60 of a whole decode. Images that
need no reduction are decoded, and their targets made, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset

from dd_core.data.coco import CocoData, trainable_box
from dd_core.data.images import MAX_PIXELS, FrameSize, ImageDecodeError, read_reduced
from dd_core.data.transforms import Target, resized_size
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


def reduced_target(target: Target, factor: int) -> Target:
    """``target`` on the pixels of its image reduced by ``factor`` (a power of two; see
    :class:`~dd_core.data.images.Reduction`): points ``p -> p / factor`` (boxes, keypoint x and y),
    areas ``a -> a / factor**2``; the inverse of ``Reduction.to_original``, exact in float32.
    Factor 1 returns ``target`` itself."""
    if factor == 1:
        return target
    out = dict(target)
    out["boxes"] = target["boxes"] / factor
    out["area"] = target["area"] / (factor * factor)
    if "keypoints" in target:
        keypoints = target["keypoints"].clone()
        keypoints[..., :2] /= factor  # visibility stays; unlabeled (0, 0, 0) stays all-zero
        out["keypoints"] = keypoints
    return out


@dataclass(frozen=True)
class TrainingFrame:
    """The largest frame a detector's ``GeneralizedRCNNTransform`` resizes an image to in training
    (a :data:`~dd_core.data.images.FrameSize`): it picks one of its ``min_size`` per image, so the
    largest, with the longer side capped at ``max_size`` (:func:`~dd_core.data.transforms.resized_size`)."""

    scale: int
    max_size: int

    @classmethod
    def of(cls, transform: Any) -> TrainingFrame:
        """The frame of a model's transform (``model.transform``)."""
        return cls(max(int(s) for s in transform.min_size), int(transform.max_size))

    def __call__(self, height: int, width: int) -> tuple[int, int]:
        if min(height, width) < 1:
            return height, width
        return resized_size((height, width), self.scale, self.max_size)


class CocoDataset(Dataset):
    """``(image, target)`` pairs for training or evaluation.

    ``transforms`` maps ``(uint8 image, target) -> (image, target)``; end with ``to_float``. With
    ``frame`` (the model's :class:`TrainingFrame`), a large photo is decoded reduced and its target
    scaled to match (module docstring); an image of more than ``max_pixels`` pixels (read from its
    header) is refused before it is decoded, naming it.
    """

    def __init__(self, coco: CocoData, transforms: Callable | None = None,
                 options: Mapping[str, Any] | None = None, cat_to_label: Mapping[int, int] | None = None,
                 check_size: Callable[[int, int], str | None] | None = None, frame: FrameSize | None = None,
                 max_pixels: int | None = MAX_PIXELS):
        self.coco = coco
        self.transforms = transforms
        self.options = dict(options or {})
        self.cat_to_label = dict(cat_to_label or category_to_label(coco))
        self.num_keypoints = len(coco.keypoint_names)
        self.check_size = check_size  # (height, width) -> why the model cannot take it, or None
        self.frame, self.max_pixels = frame, max_pixels

    def __len__(self) -> int:
        return len(self.coco.images)

    def image_url(self, index: int) -> str:
        return join(self.coco.images_root, self.coco.images[index]["file_name"])

    def aspect_ratios(self) -> list[float]:
        """Width / height per image from the json (1.0 where the json has no size)."""
        return [img["width"] / img["height"] if img.get("width") and img.get("height") else 1.0
                for img in self.coco.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        info, url = self.coco.images[index], self.image_url(index)
        try:
            image, reduction = read_reduced(url, self.options, self.max_pixels, self.frame)
        except ImageDecodeError as exc:  # the message starts with the URL: the record is added to it
            raise ImageDecodeError(f"{self._where(index, info)}: {str(exc).removeprefix(f'{url}: ')}") from exc
        self._check(index, info, (reduction.height, reduction.width), (int(image.shape[-2]), int(image.shape[-1])))
        target = annotations_to_target(self.coco.annotations_by_image[info["id"]], self.cat_to_label,
                                       self.num_keypoints, info["id"])
        target = reduced_target(target, reduction.factor)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _where(self, index: int, info: Mapping[str, Any]) -> str:
        return f"{self.image_url(index)} ({self.coco.source}: images[{index}], id {info['id']})"

    def _check(self, index: int, info: Mapping[str, Any], size: tuple[int, int], reduced: tuple[int, int]) -> None:
        """Refuse an image whose annotations cannot be right (the json gives another size than the
        file's ``size``) or that the model cannot take (too thin for its scales, as the file or as
        ``reduced``), naming it: torchvision would fail deep in a forward pass, without a name, on every retry."""
        height, width = size
        expected = (info.get("height"), info.get("width"))
        if None not in expected and expected != (height, width):
            raise ValueError(f"{self._where(index, info)}: the file is {width}x{height} px (width x height) but the "
                             f"json says {expected[1]}x{expected[0]}: its annotations would be misplaced")
        for h, w in dict.fromkeys((size, reduced)):
            reason = self.check_size(h, w) if self.check_size is not None else None
            if reason is not None:
                raise ValueError(f"{self._where(index, info)}: {reason}")


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Detection models take lists of differently sized images, not a stacked tensor."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
