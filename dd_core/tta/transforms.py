"""Test-time transforms (scale x horizontal flip) and their exact inverses.

The paper's multi-transform inference (section 3) runs one model on several geometric transforms
of an unlabeled image and maps every prediction back to the original image before merging
("the inverse transformation must be applied to each prediction", section 4). Its set is the
shorter side resized to 400..1200 px in steps of 100, each with and without a horizontal flip.

Conventions (torchvision's): boxes are xyxy and keypoints ``(x, y[, v])`` in *continuous*
coordinates, where pixel ``i`` spans ``[i, i + 1)``; a horizontal flip of an image ``W`` pixels
wide maps ``x -> W - x`` (not ``W - 1 - x``, which is the discrete-index convention).

A transform's *frame* is the image the backbone sees: the original image flipped (if
``hflip``), then resized by a :class:`GeneralizedRCNNTransform` at the transform's ``scale``
(padding for ``size_divisible`` is outside the frame and never enters the coordinate maps).
Flipping before or after the bilinear resize gives the same image (``align_corners=False``
sampling is mirror-symmetric), so boxes map to a frame by "resize, then flip" and back by
"un-flip, then resize".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.detection import transform as tv_transform
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from dd_core.data.transforms import hflip_boxes, hflip_keypoints, resized_size  # the same geometry as training
from dd_core.tta.precision import FLOAT32, LayerSettings

Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class TestTransform:
    """One test-time transform: resize the shorter side to ``scale`` px, then optionally mirror.

    ``scale`` is what :class:`GeneralizedRCNNTransform` calls ``min_size``: the longer side is
    capped at the model's ``max_size`` scaled by the same factor (see :func:`resize_transform`).
    """

    __test__ = False  # a name starting with "Test": keep pytest from collecting it

    scale: int
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"TestTransform.scale must be a positive number of pixels, got {self.scale}")

    def __str__(self) -> str:
        return f"s{self.scale}" + ("-flip" if self.hflip else "")


def transform_set(scales: Sequence[int], flip: bool) -> list[TestTransform]:
    """The paper's set: every scale, unflipped and (if ``flip``) mirrored; duplicates dropped."""
    flips = (False, True) if flip else (False,)
    out = [TestTransform(int(s), f) for s in scales for f in flips]
    return list(dict.fromkeys(out))


def base_scale(model: nn.Module) -> int:
    """The model's own test scale: ``GeneralizedRCNNTransform`` uses ``min_size[-1]`` in eval mode."""
    return int(model.transform.min_size[-1])


def base_transform(model: nn.Module) -> TestTransform:
    """The identity transform: what ``model(images)`` does by itself."""
    return TestTransform(base_scale(model), False)


def scaled_max_size(model: nn.Module, scale: int) -> int:
    """The longer-side cap at ``scale``: the model's ``max_size`` times ``scale / base``.

    Scaling the cap keeps the aspect-ratio behaviour of the base scale at every scale (a fixed
    cap would silently turn the larger scales of a wide image into the same size).
    """
    return round(scale * model.transform.max_size / base_scale(model))


def resize_transform(model: nn.Module, scale: int) -> GeneralizedRCNNTransform:
    """A copy of ``model.transform`` that resizes to ``scale`` (eval mode).

    At ``base_scale(model)`` it reproduces the model's own preprocessing bit for bit, so a
    single identity transform gives exactly the model's predictions.
    """
    t = model.transform
    if t.fixed_size is not None and scale != base_scale(model):
        raise ValueError(f"the model resizes every image to fixed_size={t.fixed_size}: scale {scale} would be ignored")
    out = GeneralizedRCNNTransform(
        min_size=scale, max_size=scaled_max_size(model, scale), image_mean=t.image_mean,
        image_std=t.image_std, size_divisible=t.size_divisible, fixed_size=t.fixed_size,
    )
    return out.eval()


def image_size(image: Tensor) -> Size:
    """``(h, w)`` of a CHW image."""
    return int(image.shape[-2]), int(image.shape[-1])


# --- images -----------------------------------------------------------------------------------


def hflip_image(image: Tensor) -> Tensor:
    """Mirror a CHW (or NCHW) image; its own inverse."""
    return image.flip(-1)


def apply_to_image(transform: TestTransform, image: Tensor) -> Tensor:
    """The flip part of ``transform`` (the resize is left to :func:`resize_transform`)."""
    return hflip_image(image) if transform.hflip else image


# --- boxes ------------------------------------------------------------------------------------


def resize_boxes(boxes: Tensor, from_size: Size, to_size: Size) -> Tensor:
    """Rescale xyxy boxes from an image of ``from_size`` to one of ``to_size`` (both ``(h, w)``).

    torchvision's own function, so that mapping back matches ``model.transform.postprocess``
    bit for bit.
    """
    return tv_transform.resize_boxes(boxes, list(from_size), list(to_size))


def boxes_to_frame(boxes: Tensor, transform: TestTransform, original: Size, frame: Size) -> Tensor:
    """Boxes of the original image, in the frame of ``transform`` (resize, then flip)."""
    out = resize_boxes(boxes, original, frame)
    return hflip_boxes(out, frame[1]) if transform.hflip else out


def boxes_from_frame(boxes: Tensor, transform: TestTransform, frame: Size, original: Size) -> Tensor:
    """Inverse of :func:`boxes_to_frame`: un-flip in the frame, then resize to the original."""
    out = hflip_boxes(boxes, frame[1]) if transform.hflip else boxes
    return resize_boxes(out, frame, original)


# --- keypoints ----------------------------------------------------------------------------------


def resize_keypoints(keypoints: Tensor, from_size: Size, to_size: Size) -> Tensor:
    """Rescale ``(N, K, 2 or 3)`` keypoints between image sizes (torchvision's own function)."""
    return tv_transform.resize_keypoints(keypoints, list(from_size), list(to_size))


def keypoints_to_frame(
    keypoints: Tensor, transform: TestTransform, original: Size, frame: Size, flip_indices: Sequence[int]
) -> Tensor:
    """Keypoints of the original image, in the frame of ``transform`` (resize, then flip)."""
    out = resize_keypoints(keypoints, original, frame)
    return hflip_keypoints(out, frame[1], flip_indices) if transform.hflip else out


def keypoints_from_frame(
    keypoints: Tensor, transform: TestTransform, frame: Size, original: Size, flip_indices: Sequence[int]
) -> Tensor:
    """Inverse of :func:`keypoints_to_frame`: un-flip (and un-swap) in the frame, then resize."""
    out = hflip_keypoints(keypoints, frame[1], flip_indices) if transform.hflip else keypoints
    return resize_keypoints(out, frame, original)


def hflip_heatmaps(heatmaps: Tensor, flip_indices: Sequence[int]) -> Tensor:
    """Mirror ``(R, K, H, W)`` per-RoI keypoint heatmaps (logits) and swap left/right channels.

    Heatmaps live in the RoI's own coordinates, so un-flipping the heatmaps of a mirrored RoI
    needs no image width: Detectron's ``logits[:, flip_inds].flip(-1)``. Its own inverse.
    """
    return heatmaps[:, list(flip_indices)].flip(-1)


# --- running the backbone, one scale at a time ----------------------------------------------------


def frame_size(model: nn.Module, scale: int, size: Size) -> Size:
    """The ``(h, w)`` of an image of ``size`` in the frame of a transform at ``scale``."""
    fixed = model.transform.fixed_size
    if fixed is not None:
        return int(fixed[1]), int(fixed[0])
    return resized_size(size, scale, scaled_max_size(model, scale))


@dataclass
class ScaleBatch:
    """The backbone's features for every image under every transform at one scale.

    The batch is transform-major: entry ``j`` is image ``j % n`` under ``transforms[j // n]``, so
    an image and its mirror share one backbone call (same size, hence the same padding).
    """

    scale: int
    transforms: list[TestTransform]
    images: ImageList
    features: dict[str, Tensor]

    def part(self, transform: TestTransform) -> tuple[ImageList, dict[str, Tensor]]:
        """The images under one of this batch's transforms and their features (views, no copy)."""
        n = len(self.images.image_sizes) // len(self.transforms)
        j = self.transforms.index(transform)
        rows = slice(j * n, (j + 1) * n)
        return (ImageList(self.images.tensors[rows], self.images.image_sizes[rows]),
                {k: v[rows] for k, v in self.features.items()})

    def entries(self) -> list[tuple[TestTransform, int, Size]]:
        """``(transform, image index, frame size)`` of each batch entry, in batch order."""
        n = len(self.images.image_sizes) // len(self.transforms)
        return [(self.transforms[j // n], j % n, tuple(s)) for j, s in enumerate(self.images.image_sizes)]


def group_by_scale(transforms: Sequence[TestTransform]) -> dict[int, list[TestTransform]]:
    """The transforms grouped by scale, in order of first appearance."""
    groups: dict[int, list[TestTransform]] = {}
    for t in transforms:
        groups.setdefault(t.scale, []).append(t)
    return groups


def scale_batches(model: nn.Module, images: Sequence[Tensor], transforms: Sequence[TestTransform],
                  layers: LayerSettings = FLOAT32) -> Iterator[ScaleBatch]:
    """Augment and run the backbone, one scale at a time.

    A generator, so features do not pile up over scales (at the paper's 1200-px scale an FPN's
    features dwarf everything else): besides the scale being computed, only the batch the caller
    still holds is alive. The backbone runs as ``layers`` says; its features are float32 either way.
    """
    for scale, group in group_by_scale(transforms).items():
        inputs = [apply_to_image(t, image) for t in group for image in images]
        image_list, _ = resize_transform(model, scale)(inputs)
        tensors = layers.backbone_input(image_list.tensors)
        features = layers.run(model.backbone, tensors, device=tensors.device)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        yield ScaleBatch(scale, group, image_list, features)
        del image_list, features  # drop our reference before the next scale's backbone pass
