"""Iteration-based SGD training of a teacher or student, resumable from its latest checkpoint."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dd_core.data.dataset import collate
from dd_core.train.checkpoint import (
    checkpoint_url,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from dd_core.train.schedule import make_scheduler

log = logging.getLogger(__name__)

BatchSamplerFactory = Callable[[int], Iterable[list[int]]]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the paper's recipe, iteration-based)."""

    iterations: int = 2000
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100         # linear warmup from warmup_factor * lr
    warmup_factor: float = 1.0 / 3
    checkpoint_every: int = 500     # also written at the last iteration
    keep_checkpoints: int = 2       # older ones are deleted; 2 so a truncated newest one has a fallback
    seed: int = 0
    num_workers: int = 0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")


@dataclass
class TrainResult:
    iteration: int
    checkpoint: str | None
    seconds: float
    last_losses: dict[str, float]


def _move(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _check_finite(losses: dict[str, torch.Tensor], iteration: int) -> float:
    value = float(sum(v.detach() for v in losses.values()))
    if not math.isfinite(value):
        parts = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(f"loss is {value} at iteration {iteration}: {parts}; training stopped "
                                 f"(lower the learning rate or check the labels)")
    return value


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _check_resumable(state: Mapping[str, Any], meta: Mapping[str, Any], checkpoint_dir: str) -> None:
    """Refuse to resume checkpoints trained with other settings or data (they would be reused silently)."""
    old, new = state.get("signature"), meta.get("signature")
    if old is None or new is None or old == new:
        return
    raise ValueError(f"{checkpoint_dir}: holds training with other settings or data "
                     f"({'; '.join(_differences(old, new)[:6])}); start a new run id (or use another folder) "
                     f"instead of resuming it")


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, checkpoint_dir: str | None = None,
          make_batches: BatchSamplerFactory | None = None, meta: Mapping[str, Any] | None = None,
          options: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.iterations`` SGD steps, resuming from ``checkpoint_dir`` if it has any.

    ``make_batches(start)`` yields lists of dataset indices from batch ``start`` on (default: an
    aspect-ratio grouped sampler). ``meta`` (primitives only: model spec, categories, ...) is stored
    in every checkpoint. ``stop_after`` ends early after that many steps in this call (tests and
    time-boxed jobs); the run resumes from there next time.
    """
    device = torch.device(device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.iterations, cfg.warmup_iters, cfg.warmup_factor)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start = 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    state = load_latest_checkpoint(checkpoint_dir, options) if checkpoint_dir else None
    if state is not None:
        _check_resumable(state, meta or {}, checkpoint_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start = int(state["iteration"])
        log.info("resumed from iteration %d in %s", start, checkpoint_dir)
    if start >= cfg.iterations:
        return TrainResult(start, checkpoint_url(checkpoint_dir, start) if checkpoint_dir else None, 0.0, {})

    if make_batches is None:
        from dd_core.data.sampler import GroupedBatchSampler

        ratios = dataset.aspect_ratios() if hasattr(dataset, "aspect_ratios") else [1.0] * len(dataset)
        make_batches = lambda s: GroupedBatchSampler(ratios, cfg.batch_size, seed=cfg.seed, start_batch=s)  # noqa: E731
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed
    # run would diverge from an uninterrupted one.
    loader = DataLoader(dataset, batch_sampler=make_batches(start), collate_fn=collate,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed + start))

    def write(iteration: int) -> str | None:
        if not checkpoint_dir:
            return None
        url = checkpoint_url(checkpoint_dir, iteration)
        save_checkpoint(url, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                              "iteration": iteration, "rng": _rng_state(), **dict(meta or {})}, options)
        prune_checkpoints(checkpoint_dir, cfg.keep_checkpoints, options)
        return url

    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    bar = tqdm(total=cfg.iterations, initial=start, disable=not progress, desc="train", unit="it",
               dynamic_ncols=True)
    t0, losses_out, last_ckpt, iteration = time.perf_counter(), {}, None, start
    for images, targets in loader:
        images = [im.to(device, non_blocking=True) for im in images]
        with torch.autocast(device.type, enabled=use_amp):
            losses = model(images, _move(targets, device))
        value = _check_finite(losses, iteration)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        iteration += 1
        losses_out = {k: float(v.detach()) for k, v in losses.items()}
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}", refresh=False)
        bar.update(1)
        if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
            last_ckpt = write(iteration)
        if iteration >= end:
            break
    bar.close()
    if iteration == end and iteration % cfg.checkpoint_every and iteration != cfg.iterations:
        last_ckpt = write(iteration)  # an early stop keeps its progress
    return TrainResult(iteration, last_ckpt, time.perf_counter() - t0, losses_out)
