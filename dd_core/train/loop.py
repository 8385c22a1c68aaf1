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
from dd_core.data.sampler import RankBatchSampler
from dd_core.data.transforms import Target
from dd_core.train.checkpoint import (
    checkpoint_url,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from dd_core.train.distributed import DistributedContext, barrier, gather, rank_seed
from dd_core.train.schedule import make_scheduler

log = logging.getLogger(__name__)

BatchSamplerFactory = Callable[[int], Iterable[list[int]]]
# Called on every rank after each optimizer step: (iteration, the model without its DDP wrapper,
# this rank's targets). For monitoring and tests; it must not change the model.
StepHook = Callable[[int, torch.nn.Module, list[Target]], None]


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


def _check_same_start(world: DistributedContext, start: int, checkpoint_dir: str | None) -> None:
    """Every rank must resume from the same checkpoint, or their weights and schedules would differ."""
    starts = gather(world, start)
    if len(set(starts)) > 1:
        raise ValueError(f"{checkpoint_dir}: the ranks found different latest checkpoints (iteration per rank: "
                         f"{starts}); the checkpoint folder must be storage every rank sees (s3:// or a shared "
                         f"file system)")


def _for_ranks(model: torch.nn.Module, world: DistributedContext, device: torch.device) -> torch.nn.Module:
    """Trainable BatchNorm made SyncBatchNorm on GPUs, so it normalises over the global batch.

    torch's SyncBatchNorm runs on GPUs only: on the CPU each rank normalises with its own images'
    statistics, and DDP copies rank 0's running statistics to every rank before each forward.
    Frozen BatchNorm (pretrained backbones) has nothing to synchronise.
    """
    if world.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _wrap(model: torch.nn.Module, world: DistributedContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the ranks; it starts from rank 0's weights and averages gradients.

    Averaging the gradients of ranks that each hold ``batch_size / world_size`` images gives the
    gradient of the mean loss over the global batch: the same step, at the same learning rate, as
    one process with the whole batch.
    """
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, checkpoint_dir: str | None = None,
          make_batches: BatchSamplerFactory | None = None, meta: Mapping[str, Any] | None = None,
          options: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
          progress: bool = True, stop_after: int | None = None, world: DistributedContext | None = None,
          on_step: StepHook | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.iterations`` SGD steps, resuming from ``checkpoint_dir`` if it has any.

    ``make_batches(start)`` yields lists of dataset indices from batch ``start`` on (default: an
    aspect-ratio grouped sampler). ``meta`` (primitives only: model spec, categories, ...) is stored
    in every checkpoint. ``stop_after`` ends early after that many steps in this call (tests and
    time-boxed jobs); the run resumes from there next time.

    With ``world`` (a process group of several ranks, see :mod:`dd_core.train.distributed`) the
    model is trained with DistributedDataParallel: ``cfg.batch_size`` and ``cfg.lr`` stay those of
    the global batch, each rank trains on its slice of it, only rank 0 writes checkpoints and shows
    progress, and every rank resumes from the same checkpoint, whatever the number of ranks that
    wrote it.
    """
    world = world or DistributedContext()
    device = world.device(device)
    if cfg.batch_size % world.world_size:
        raise ValueError(f"TrainConfig.batch_size {cfg.batch_size} is the global batch (images per step over all "
                         f"ranks): it must be a multiple of the {world.world_size} processes")
    model = _for_ranks(model.to(device).train(), world, device)
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
    _check_same_start(world, start, checkpoint_dir)
    if start >= cfg.iterations:
        return TrainResult(start, checkpoint_url(checkpoint_dir, start) if checkpoint_dir else None, 0.0, {})
    loader_seed = cfg.seed + start
    if world.rank:
        loader_seed = rank_seed(cfg.seed, world.rank, start)
        torch.manual_seed(loader_seed)
        random.seed(loader_seed)

    if make_batches is None:
        from dd_core.data.sampler import GroupedBatchSampler

        ratios = dataset.aspect_ratios() if hasattr(dataset, "aspect_ratios") else [1.0] * len(dataset)
        make_batches = lambda s: GroupedBatchSampler(ratios, cfg.batch_size, seed=cfg.seed, start_batch=s)  # noqa: E731
    batches = make_batches(start)
    if world.distributed:
        batches = RankBatchSampler(batches, cfg.batch_size, world.rank, world.world_size)
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed
    # run would diverge from an uninterrupted one.
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(loader_seed))
    net = _wrap(model, world, device)

    def write(iteration: int) -> str | None:
        if not checkpoint_dir:
            return None
        url = checkpoint_url(checkpoint_dir, iteration)
        if world.is_main:
            save_checkpoint(url, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                  "iteration": iteration, "rng": _rng_state(), **dict(meta or {})}, options)
            prune_checkpoints(checkpoint_dir, cfg.keep_checkpoints, options)
        barrier(world)  # no rank moves on (or returns its URL) before the checkpoint exists
        return url

    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    bar = tqdm(total=cfg.iterations, initial=start, disable=not (progress and world.is_main), desc="train",
               unit="it", dynamic_ncols=True)
    t0, losses_out, last_ckpt, iteration = time.perf_counter(), {}, None, start
    try:  # a failure closes the bar first, so the error starts a line of its own
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            with torch.autocast(device.type, enabled=use_amp):
                losses = net(images, _move(targets, device))
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
            if on_step is not None:
                on_step(iteration, model, targets)
            losses_out = {k: float(v.detach()) for k, v in losses.items()}
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}", refresh=False)
            bar.update(1)
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                last_ckpt = write(iteration)
            if iteration >= end:
                break
    finally:
        bar.close()
    if iteration == end and iteration % cfg.checkpoint_every and iteration != cfg.iterations:
        last_ckpt = write(iteration)  # an early stop keeps its progress
    return TrainResult(iteration, last_ckpt, time.perf_counter() - t0, losses_out)
