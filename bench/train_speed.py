"""Training speed: our training loop against torchvision's reference recipe, same model size and data.

The reference is ``references/detection/train.py`` of torchvision: ``keypointrcnn_resnet50_fpn``
(no pretrained weights), SGD momentum 0.9 weight decay 1e-4, batch 2 per GPU (lr 0.02 is for 8
GPUs; one GPU takes 0.0025 by the linear scaling rule, and 0.02 diverges from scratch),
horizontal flip, aspect-ratio grouped batches, ``--amp``; its ``train_one_epoch`` loop is
reproduced here step for step (losses summed, ``reduce_dict``, finiteness check, scaler step).
Ours is :func:`dd_core.train.train` on the ``r50-fpn`` preset (the same architecture) with its
checkpointing off. Both read the same synthetic people through the same data loader settings.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.tta_speed import sync
from dd_core.data.coco import load_coco
from dd_core.data.dataset import CocoDataset, collate
from dd_core.data.sampler import GroupedBatchSampler
from dd_core.data.synthetic import make_keypoints_dataset
from dd_core.models import ModelConfig, build_model
from dd_core.train import TrainConfig, train
from dd_core.train.detector import spec_for, training_transforms
from dd_core.train.loop import Runtime, TrainHooks

WARMUP_STEPS = 5
LR = 0.0025  # torchvision's 0.02 for 16 images per step, scaled to 2


def _steady_rate(stamps: list[float]) -> float:
    """Iterations per second from per-step timestamps, warm-up steps left out."""
    gaps = [b - a for a, b in zip(stamps[WARMUP_STEPS:], stamps[WARMUP_STEPS + 1:])]
    return 1.0 / statistics.median(gaps)


def reference_loop(coco, batch: int, steps: int, device: torch.device, workers: int) -> float:
    """torchvision's reference ``train_one_epoch`` with ``--amp``; returns iterations per second."""
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    dataset = CocoDataset(coco, training_transforms(coco))
    sampler = GroupedBatchSampler(dataset.aspect_ratios(), batch, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    stamps = []
    for step, (images, targets) in enumerate(loader):
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        loss_value = float(sum(v.detach() for v in loss_dict.values()))  # reduce_dict is the identity on 1 GPU
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value}")
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            optimizer.step()
        sync(device)
        stamps.append(time.perf_counter())
        if step + 1 >= steps:
            break
    return _steady_rate(stamps)


def our_loop(coco, batch: int, steps: int, device: torch.device, workers: int) -> float:
    """:func:`dd_core.train.train` on the r50-fpn preset; returns iterations per second."""
    torch.manual_seed(0)
    model = build_model(spec_for("keypoints", coco, ModelConfig(preset="r50-fpn")))
    cfg = TrainConfig(iterations=steps, batch_size=batch, lr=LR, warmup_iters=1, checkpoint_every=steps,
                      num_workers=workers)
    stamps: list[float] = []

    def stamp(iteration, model, targets) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    train(model, CocoDataset(coco, training_transforms(coco)), cfg, runtime=Runtime(device=device, progress=False),
          hooks=TrainHooks(on_step=stamp))
    return _steady_rate(stamps)


def compare_training(preset: str, size: int, batch: int, steps: int, device: torch.device, workers: int = 4) -> dict:
    """Iterations per second of both loops on ``size``-px synthetic people (COCO-like 640 by default)."""
    if preset != "r50-fpn":
        raise ValueError("the reference recipe is torchvision's keypointrcnn_resnet50_fpn: use --preset r50-fpn")
    size = size if size >= 320 else 640
    with tempfile.TemporaryDirectory() as tmp:
        make_keypoints_dataset(Path(tmp) / "kp", max(64, batch * (steps + 2)), seed=0, size=size)
        coco = load_coco(f"{tmp}/kp/annotations.json", f"{tmp}/kp/images")
        # Twice each, alternating: the first runs also warm the CUDA allocator and kernels up.
        cold = (reference_loop(coco, batch, steps, device, workers), our_loop(coco, batch, steps, device, workers))
        ref = reference_loop(coco, batch, steps, device, workers)
        ours = our_loop(coco, batch, steps, device, workers)
    return {"benchmark": "training iterations per second", "model": "Keypoint R-CNN R-50-FPN", "image_size": size,
            "first_runs_it_per_s": {"reference": round(cold[0], 2), "ours": round(cold[1], 2)},
            "batch": batch, "steps": steps, "amp": device.type == "cuda", "loader_workers": workers,
            "reference_it_per_s": round(ref, 2), "ours_it_per_s": round(ours, 2),
            "ours_over_reference": round(ours / ref, 3)}


def compare_amp_dtypes(preset: str, size: int, batch: int, steps: int, device: torch.device, dtypes: list[str],
                       workers: int = 4) -> dict:
    """Our loop's iterations per second with AMP autocasting to each of ``dtypes``, alternated twice.

    The loop autocasts to the device's default autocast dtype (float16 on CUDA); it is set per run.
    """
    if preset != "r50-fpn":
        raise ValueError("the AMP comparison trains the r50-fpn preset: use --preset r50-fpn")
    if device.type != "cuda":
        raise ValueError("AMP runs on CUDA only: use --device cuda")
    size = size if size >= 320 else 640
    default = torch.get_autocast_dtype("cuda")
    rates: dict[str, list[float]] = {d: [] for d in dtypes}
    with tempfile.TemporaryDirectory() as tmp:
        make_keypoints_dataset(Path(tmp) / "kp", max(64, batch * (steps + 2)), seed=0, size=size)
        coco = load_coco(f"{tmp}/kp/annotations.json", f"{tmp}/kp/images")
        try:
            for _ in range(2):  # the first round also warms the allocator and kernels up
                for name in dtypes:
                    torch.set_autocast_dtype("cuda", getattr(torch, name))
                    rates[name].append(our_loop(coco, batch, steps, device, workers))
        finally:
            torch.set_autocast_dtype("cuda", default)
    return {"benchmark": "training iterations per second by AMP dtype", "model": "Keypoint R-CNN R-50-FPN",
            "image_size": size, "batch": batch, "steps": steps, "loader_workers": workers, "order": dtypes,
            "first_round_it_per_s": {d: round(r[0], 2) for d, r in rates.items()},
            "it_per_s": {d: round(r[1], 2) for d, r in rates.items()}}
