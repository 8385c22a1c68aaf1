"""Speed measurements (results go to BENCHMARKS.md as measured, with the machine and date).

    python bench/speed.py synth       [--images 1000] [--size 128]   # synthetic data generation
    python bench/speed.py train-step  [--steps 20] [--batch 8]       # slim keypoint training step

``train-step`` also reports how long the model waited for the data loader (its stall share).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dd_core.data.coco import load_coco
from dd_core.data.dataset import CocoDataset, collate
from dd_core.data.synthetic import make_keypoints_dataset
from dd_core.models import build_model
from dd_core.train.detector import spec_for, training_transforms


def synth(images: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_keypoints_dataset(Path(tmp) / "kp", images, seed=0, size=size)
        seconds = time.perf_counter() - t0
    return {"benchmark": "synth keypoints", "images": images, "size": size, "seconds": round(seconds, 2)}


def train_step(steps: int, batch: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        make_keypoints_dataset(Path(tmp) / "kp", 160, seed=0)
        coco = load_coco(f"{tmp}/kp/annotations.json", f"{tmp}/kp/images")
        torch.manual_seed(0)
        model = build_model(spec_for("keypoints", coco)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = DataLoader(CocoDataset(coco, training_transforms(coco)), batch_size=batch, shuffle=True,
                            collate_fn=collate, num_workers=workers, drop_last=True)
        waits, computes = [], []
        it = iter(loader)
        for _ in range(steps + 3):
            t0 = time.perf_counter()
            try:
                images, targets = next(it)
            except StopIteration:
                it = iter(loader)
                images, targets = next(it)
            t1 = time.perf_counter()
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            waits.append(t1 - t0)
            computes.append(time.perf_counter() - t1)
    waits, computes = waits[3:], computes[3:]  # warm-up steps excluded
    step = (sum(waits) + sum(computes)) / steps
    return {"benchmark": "slim keypoint train step", "batch": batch, "steps": steps, "workers": workers,
            "seconds_per_step": round(step, 3), "loader_stall_share": round(sum(waits) / (sum(waits) + sum(computes)), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=["synth", "train-step"])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    row = synth(args.images, args.size) if args.benchmark == "synth" else train_step(args.steps, args.batch, args.workers)
    row.update(machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads", date=time.strftime("%Y-%m-%d"))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
