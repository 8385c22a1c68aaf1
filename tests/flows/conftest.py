"""Helpers for flow tests: tiny synthetic sets and a fast run config over them."""

from __future__ import annotations

from pathlib import Path

from dd_core.config import RunConfig, parse_config


def make_sets(folder: Path, counts: tuple[int, int, int], task: str = "keypoints") -> Path:
    """Labeled, unlabeled and val synthetic sets of 64-px images under ``folder``."""
    from dd_core.data.synthetic import make_detection_dataset, make_keypoints_dataset

    make = make_keypoints_dataset if task == "keypoints" else make_detection_dataset
    for (name, seed, start), n in zip((("labeled", 1, 1), ("unlabeled", 2, 1001), ("val", 3, 2001)), counts):
        make(folder / name, n, seed=seed, start_id=start, size=64)
    return folder


def local_config(d: Path | str, **extra) -> RunConfig:
    """A run over :func:`make_sets`' folders that trains for one step: what flow tests need."""
    return parse_config({
        "run_id": "test", "storage": {"root": f"{d}/store"},
        "labeled": {"annotations": f"{d}/labeled/annotations.json", "images": f"{d}/labeled/images"},
        "unlabeled": {"images": f"{d}/unlabeled/images"},
        "val": {"annotations": f"{d}/val/annotations.json", "images": f"{d}/val/images"},
        "model": {"test_size": 64, "min_size": [64], "max_size": 96},
        "teacher": {"iterations": 1, "batch_size": 2, "warmup_iters": 0},
        "student": {"iterations": 1, "batch_size": 2, "warmup_iters": 0},
        "tta": {"scales": [64], "flip": True}, "shards": {"size": 2}, **extra,
    })
