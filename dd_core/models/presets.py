"""Architecture presets: what differs between the slim CPU model and the paper's models.

Plain data: the run configuration checks its sizes against a preset's, and
:mod:`dd_core.models.builders` builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bounds that turn a typo into an error at once instead of hours later: no image side (training or
# test scale) may pass 4,096 px, nor its longer-side cap 8,192 px (the paper's largest is 1,200).
MAX_SIDE = 4096
MAX_LONG_SIDE = 8192


@dataclass(frozen=True)
class Preset:
    """Architecture knobs of one preset (what differs between slim and the paper's models)."""

    depth: tuple[int, int, int, int]
    block: str  # "basic" | "bottleneck"
    groups: int = 1
    width_per_group: int = 64
    fpn_channels: int = 256
    box_head_dim: int = 1024
    keypoint_head: tuple[int, ...] = (512,) * 8
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    min_size: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    test_size: int = 800
    max_size: int = 1333
    rpn_top_n_train: tuple[int, int] = (2000, 2000)
    rpn_top_n_test: tuple[int, int] = (1000, 1000)
    box_batch_size_per_image: int = 512
    # RoIAlign samples per bin side; torchvision's CPU backward of it is single-threaded and a large
    # share of a slim training step at 2, so the slim preset uses 1.
    roi_sampling_ratio: int = 2


PRESETS: dict[str, Preset] = {
    "slim": Preset(
        depth=(2, 2, 2, 2), block="basic", fpn_channels=64, box_head_dim=256, keypoint_head=(64,) * 4,
        anchor_sizes=(8, 16, 32, 64, 128), min_size=(112, 120, 128, 136, 144), test_size=128, max_size=224,
        rpn_top_n_train=(600, 300), rpn_top_n_test=(300, 150), box_batch_size_per_image=128, roi_sampling_ratio=1,
    ),
    "r50-fpn": Preset(depth=(3, 4, 6, 3), block="bottleneck"),
    "r101-fpn": Preset(depth=(3, 4, 23, 3), block="bottleneck"),
    "x101-32x4d-fpn": Preset(depth=(3, 4, 23, 3), block="bottleneck", groups=32, width_per_group=4),
    "x101-64x4d-fpn": Preset(depth=(3, 4, 23, 3), block="bottleneck", groups=64, width_per_group=4),
}
