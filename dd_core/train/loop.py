"""Iteration-based SGD training of a teacher or student, resumable from its latest checkpoint.

:func:`train` reads top to bottom, as torchvision's ``train_one_epoch`` and nanoGPT's ``train.py``
do: set up (ranks, optimization, resume, seeds, batches, loader), then one loop over the steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dd_core.data.dataset import collate
from dd_core.data.sampler import GroupedBatchSampler, RankBatchSampler
from dd_core.data.transforms import Target
from dd_core.models.checkpoint import checkpoint_url, prune_checkpoints, save_checkpoint
from dd_core.ops.stop import NEVER, StopToken
from dd_core.ops.workers import drop_inherited_exit_hooks
from dd_core.storage import exists
from dd_core.train.distributed import DistributedContext, barrier, data_parallel, rank_seed, sync_batchnorm
from dd_core.train.progress import Progress, ProgressHook
from dd_core.train.resume import check_same_start, resume, rng_state, seed_everything
from dd_core.train.schedule import make_scheduler
from dd_core.train.settings import TrainConfig

BatchSamplerFactory = Callable[[int], Iterable[list[int]]]
# Called on every rank after each optimizer step: (iteration, the model without its DDP wrapper,
# this rank's targets). For monitoring and tests; it must not change the model.
StepHook = Callable[[int, torch.nn.Module, list[Target]], None]
# Called on the rank that writes the checkpoints (rank 0) once each is written: (iteration, its URL).
CheckpointHook = Callable[[int, str], None]


@dataclass(frozen=True)
class TrainHooks:
    """What a training run calls besides training: after each step on every rank (``on_step``), after
    each checkpoint on rank 0 (``on_checkpoint``), with the run's :class:`~dd_core.train.progress.Progress`
    after each step on rank 0 (``on_progress``). Hooks watch; they must not change the model."""

    on_step: StepHook | None = None
    on_checkpoint: CheckpointHook | None = None
    on_progress: ProgressHook | None = None

    def for_rank(self, world: DistributedContext) -> "TrainHooks":
        """The hooks this rank calls: every rank steps, only rank 0 checkpoints and reports."""
        return self if world.is_main else TrainHooks(on_step=self.on_step)


@dataclass(frozen=True)
class Runtime:
    """How this call trains, none of which is in the training signature: the device, this rank's
    place among several (``world``; ``None``: one process), a progress bar (on rank 0), and
    ``stop_after``, which ends the call early after that many steps (tests, time-boxed jobs): the
    run resumes from there next time."""

    device: str | torch.device = "cpu"
    world: DistributedContext | None = None
    progress: bool = True
    stop_after: int | None = None


@dataclass
class TrainResult:
    iteration: int
    checkpoint: str | None
    seconds: float
    last_losses: dict[str, float]
    # Per set ("labeled", "pseudo"): images, those left out of training, those trained on.
    images: dict[str, dict[str, int]] = field(default_factory=dict)


class Optimization:
    """SGD with momentum, the paper's schedule and AMP's loss scaler: what a step updates and a checkpoint restores."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, amp: bool):
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.iterations, cfg.warmup_iters, cfg.warmup_factor,
                                        cfg.lr_steps)
        self.amp = amp  # float16 autocast and a scaled loss: on CUDA only
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """From a checkpoint (one written before AMP has no ``scaler``)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


@dataclass(frozen=True)
class Checkpoints:
    """Where a run's checkpoints go (``directory``; ``None``: nowhere), the primitives each carries
    (``meta``: model spec, categories, training signature) and the storage ``options`` to reach them."""

    directory: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] | None = field(default=None, repr=False)

    def write(self, iteration: int, model: torch.nn.Module, optimization: Optimization, world: DistributedContext,
              keep: int, on_checkpoint: CheckpointHook | None = None) -> str | None:
        """Checkpoint ``iteration`` (nanoGPT-style: state dicts and primitives) on rank 0, keep the
        newest ``keep``; its URL on every rank, once it exists."""
        if not self.directory:
            return None
        _check_finite_weights(model, iteration)
        url = checkpoint_url(self.directory, iteration)
        if world.is_main:
            save_checkpoint(url, {"model": model.state_dict(), **optimization.state_dict(), "iteration": iteration,
                                  "rng": rng_state(), **self.meta}, self.options)
            prune_checkpoints(self.directory, keep, self.options)
            if on_checkpoint is not None:
                on_checkpoint(iteration, url)
        barrier(world)  # no rank moves on (or returns its URL) before the checkpoint exists
        return url


def _move(targets: list[Target], device: torch.device) -> list[Target]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def _check_finite(losses: dict[str, torch.Tensor], iteration: int) -> float:
    value = float(sum(v.detach() for v in losses.values()))
    if not math.isfinite(value):
        parts = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(f"loss is {value} at iteration {iteration}: {parts}; training stopped "
                                 f"(lower the learning rate or check the labels)")
    return value


def _check_finite_weights(model: torch.nn.Module, iteration: int) -> None:
    """Refuse to checkpoint weights that are not finite: the loss is checked before each step, so
    the last step's blow-up would otherwise be saved, labeled with, and trained on."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"weights are not finite after iteration {iteration} ({name!r} holds "
                                     f"{float(value[~torch.isfinite(value)].flatten()[0])}); training stopped "
                                     f"(lower the learning rate or check the labels)")


def _check_global_batch(cfg: TrainConfig, world: DistributedContext) -> None:
    if cfg.batch_size % world.world_size:
        raise ValueError(f"TrainConfig.batch_size {cfg.batch_size} is the global batch (images per step over all "
                         f"ranks): it must be a multiple of the {world.world_size} processes")


def _set_up(model: torch.nn.Module, cfg: TrainConfig, checkpoints: Checkpoints, world: DistributedContext,
            device: torch.device) -> tuple[torch.nn.Module, Optimization, int]:
    """The model on ``device`` (BatchNorm synced over the ranks), its optimization, seeds, and the
    step to start from: those of the latest checkpoint, the same on every rank, or 0."""
    _check_global_batch(cfg, world)
    model = sync_batchnorm(model.to(device).train(), world, device)
    optimization = Optimization(model, cfg, amp=device.type == "cuda")
    seed_everything(cfg.seed)
    start = resume(checkpoints.directory, model, optimization, meta=checkpoints.meta, options=checkpoints.options)
    check_same_start(world, start, checkpoints.directory)
    return model, optimization, start


def _nothing_left(cfg: TrainConfig, start: int, checkpoints: Checkpoints, model: torch.nn.Module,
                  optimization: Optimization, world: DistributedContext, hooks: TrainHooks) -> TrainResult | None:
    """The result of a run with no step left to take (``None`` if it has some).

    With no iterations at all, the model as started (a published detector) is the result: written
    as checkpoint 0 once. A resume that found it leaves it as it is: rewriting it would change its
    bytes, and with them the fingerprint that names every shard labeled by it.
    """
    directory = checkpoints.directory
    if cfg.iterations == 0:
        if directory and exists(checkpoint_url(directory, 0), checkpoints.options):
            return TrainResult(0, checkpoint_url(directory, 0), 0.0, {})
        url = checkpoints.write(0, model, optimization, world, cfg.keep_checkpoints, hooks.on_checkpoint)
        return TrainResult(0, url, 0.0, {})
    if start >= cfg.iterations:
        return TrainResult(start, checkpoint_url(directory, start) if directory else None, 0.0, {})
    return None


def _seed_rank(seed: int, world: DistributedContext, start: int) -> int:
    """Seed this rank's augmentations from step ``start`` on; the seed of its loader's generator.

    Rank 0 keeps the run's own stream (just seeded, or restored from the checkpoint); the others
    draw from :func:`~dd_core.train.distributed.rank_seed`.
    """
    if not world.rank:
        return seed + start
    seed = rank_seed(seed, world.rank, start)
    seed_everything(seed)
    return seed


def _batches(dataset: Dataset, cfg: TrainConfig, world: DistributedContext, start: int,
             make_batches: BatchSamplerFactory | None) -> Iterable[list[int]]:
    """This rank's share of every global batch from batch ``start`` on (default: aspect-ratio groups)."""
    if make_batches is None:
        ratios = dataset.aspect_ratios() if hasattr(dataset, "aspect_ratios") else [1.0] * len(dataset)
        batches: Iterable[list[int]] = GroupedBatchSampler(ratios, cfg.batch_size, seed=cfg.seed, start_batch=start)
    else:
        batches = make_batches(start)
    if world.distributed:
        batches = RankBatchSampler(batches, cfg.batch_size, world.rank, world.world_size)
    return batches


def _loader(dataset: Dataset, cfg: TrainConfig, world: DistributedContext, start: int,
            make_batches: BatchSamplerFactory | None) -> DataLoader:
    """This rank's batches from batch ``start`` on, loaded (its augmentations seeded: :func:`_seed_rank`)."""
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed
    # run would diverge from an uninterrupted one.
    generator = torch.Generator().manual_seed(_seed_rank(cfg.seed, world, start))
    return DataLoader(dataset, batch_sampler=_batches(dataset, cfg, world, start, make_batches), collate_fn=collate,
                      num_workers=cfg.num_workers, generator=generator, worker_init_fn=drop_inherited_exit_hooks)


def _bar(cfg: TrainConfig, start: int, show: bool) -> tqdm:
    return tqdm(total=cfg.iterations, initial=start, disable=not show, desc="train", unit="it", dynamic_ncols=True)


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, *, checkpoints: Checkpoints = Checkpoints(),
          make_batches: BatchSamplerFactory | None = None, runtime: Runtime = Runtime(),
          hooks: TrainHooks = TrainHooks(), stop: StopToken = NEVER) -> TrainResult:
    """Train ``model`` for ``cfg.iterations`` SGD steps, resuming from the latest of its ``checkpoints``.

    ``make_batches(start)`` yields lists of dataset indices from batch ``start`` on (default:
    aspect-ratio groups). With several ranks (``runtime.world``, :mod:`dd_core.train.distributed`)
    ``cfg.batch_size`` and ``cfg.lr`` stay the global batch's, each rank trains on its slice (DDP),
    rank 0 alone checkpoints and reports, and all resume from the same checkpoint.
    """
    world = runtime.world or DistributedContext()
    device = world.device(runtime.device)
    model, optimization, start = _set_up(model, cfg, checkpoints, world, device)
    hooks = hooks.for_rank(world)
    if (done := _nothing_left(cfg, start, checkpoints, model, optimization, world, hooks)) is not None:
        return done
    loader = _loader(dataset, cfg, world, start, make_batches)
    net = data_parallel(model, world, device)  # computes the losses; hooks and checkpoints see ``model``
    end = cfg.iterations if runtime.stop_after is None else min(cfg.iterations, start + runtime.stop_after)
    bar = _bar(cfg, start, show=runtime.progress and world.is_main)
    t0, last_losses, checkpoint, iteration = time.perf_counter(), {}, None, start
    try:  # a failure closes the bar first, so the error starts a line of its own
        for images, targets in loader:
            stop.check()
            lr = optimization.lr  # this step's (the scheduler moves it on after the step)
            with torch.autocast(device.type, enabled=optimization.amp):
                losses = net([im.to(device, non_blocking=True) for im in images], _move(targets, device))
            loss = _check_finite(losses, iteration)
            optimization.optimizer.zero_grad(set_to_none=True)
            optimization.scaler.scale(sum(losses.values())).backward()
            optimization.scaler.step(optimization.optimizer)
            optimization.scaler.update()
            optimization.scheduler.step()
            iteration += 1
            last_losses = {k: float(v.detach()) for k, v in losses.items()}
            if hooks.on_step is not None:
                hooks.on_step(iteration, model, targets)
            if hooks.on_progress is not None:
                seconds_per_step = (time.perf_counter() - t0) / (iteration - start)
                hooks.on_progress(Progress(iteration, cfg.iterations, last_losses, lr, seconds_per_step, start))
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimization.lr:.4f}", refresh=False)
            bar.update(1)
            if iteration % cfg.checkpoint_every == 0 or iteration == end:  # end: the last step, or an early stop
                checkpoint = checkpoints.write(iteration, model, optimization, world, cfg.keep_checkpoints,
                                               hooks.on_checkpoint)
            if iteration >= end:
                break
    finally:
        bar.close()
    return TrainResult(iteration, checkpoint, time.perf_counter() - t0, last_losses)
