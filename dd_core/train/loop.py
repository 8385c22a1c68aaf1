"""Iteration-based SGD training of a teacher or student, resumable from its latest checkpoint.

:func:`train` sets a run up (ranks, optimization, resume, seeds, batches, loader, checkpoints);
:class:`StepLoop` runs its steps, as torchvision's ``train_one_epoch`` does, by iteration.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dd_core.data.dataset import collate
from dd_core.data.sampler import GroupedBatchSampler, RankBatchSampler
from dd_core.data.transforms import Target
from dd_core.stopping import check_stop
from dd_core.storage import exists
from dd_core.train.checkpoint import checkpoint_url, prune_checkpoints, save_checkpoint
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

    def step(self, loss: torch.Tensor) -> None:
        """One SGD step down ``loss``, then one of the learning-rate schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

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
class Checkpointer:
    """Writes a run's checkpoints (rank 0 alone) and keeps the newest ``keep``; every rank waits for each."""

    directory: str | None  # None: no checkpoints
    keep: int
    meta: Mapping[str, Any]  # primitives stored in every checkpoint: model spec, categories, signature
    world: DistributedContext
    options: Mapping[str, Any] | None = None
    on_checkpoint: CheckpointHook | None = None

    def write(self, iteration: int, model: torch.nn.Module, optimization: Optimization) -> str | None:
        """Checkpoint ``iteration`` (nanoGPT-style: state dicts and primitives); its URL on every rank."""
        if not self.directory:
            return None
        _check_finite_weights(model, iteration)
        url = checkpoint_url(self.directory, iteration)
        if self.world.is_main:
            save_checkpoint(url, {"model": model.state_dict(), **optimization.state_dict(), "iteration": iteration,
                                  "rng": rng_state(), **self.meta}, self.options)
            prune_checkpoints(self.directory, self.keep, self.options)
            if self.on_checkpoint is not None:
                self.on_checkpoint(iteration, url)
        barrier(self.world)  # no rank moves on (or returns its URL) before the checkpoint exists
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


@dataclass
class StepLoop:
    """The steps of one run: forward (autocast on CUDA), stop on a non-finite loss, SGD step, hook,
    progress bar, and a checkpoint every ``cfg.checkpoint_every`` steps and at the last."""

    cfg: TrainConfig
    model: torch.nn.Module  # without its DDP wrapper: what hooks and checkpoints see
    net: torch.nn.Module  # what computes the losses: DDP over the ranks, or the model itself
    optimization: Optimization
    checkpointer: Checkpointer
    device: torch.device
    progress: bool = True
    hooks: TrainHooks = TrainHooks()

    def step(self, images: list[torch.Tensor], targets: list[Target],
             iteration: int) -> tuple[dict[str, torch.Tensor], float]:
        """One SGD step at ``iteration`` (the steps taken before it): its losses and their sum."""
        images = [im.to(self.device, non_blocking=True) for im in images]
        with torch.autocast(self.device.type, enabled=self.optimization.amp):
            losses = self.net(images, _move(targets, self.device))
        value = _check_finite(losses, iteration)
        self.optimization.step(sum(losses.values()))
        return losses, value

    def run(self, loader: Iterable[tuple[list[torch.Tensor], list[Target]]], start: int, end: int) -> TrainResult:
        """Steps ``start`` to ``end``; stopping before ``cfg.iterations`` checkpoints where it stopped.

        A stop request (:func:`dd_core.stopping.check_stop`) ends the run between two steps.
        """
        cfg = self.cfg
        bar = tqdm(total=cfg.iterations, initial=start, disable=not self.progress, desc="train", unit="it",
                   dynamic_ncols=True)
        t0, last_losses, last_ckpt, iteration = time.perf_counter(), {}, None, start
        try:  # a failure closes the bar first, so the error starts a line of its own
            for images, targets in loader:
                check_stop()
                lr = self.optimization.lr  # this step's (the scheduler moves it on after the step)
                losses, value = self.step(images, targets, iteration)
                iteration += 1
                last_losses = {k: float(v.detach()) for k, v in losses.items()}
                self._after_step(iteration, targets, Progress(iteration, cfg.iterations, last_losses, lr,
                                                              (time.perf_counter() - t0) / (iteration - start), start))
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{self.optimization.lr:.4f}", refresh=False)
                bar.update(1)
                if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                    last_ckpt = self.checkpointer.write(iteration, self.model, self.optimization)
                if iteration >= end:
                    break
        finally:
            bar.close()
        if iteration == end and iteration % cfg.checkpoint_every and iteration != cfg.iterations:
            # An early stop keeps its progress.
            last_ckpt = self.checkpointer.write(iteration, self.model, self.optimization)
        return TrainResult(iteration, last_ckpt, time.perf_counter() - t0, last_losses)

    def _after_step(self, iteration: int, targets: list[Target], progress: Progress) -> None:
        if self.hooks.on_step is not None:
            self.hooks.on_step(iteration, self.model, targets)
        if self.hooks.on_progress is not None:
            self.hooks.on_progress(progress)


def _check_global_batch(cfg: TrainConfig, world: DistributedContext) -> None:
    if cfg.batch_size % world.world_size:
        raise ValueError(f"TrainConfig.batch_size {cfg.batch_size} is the global batch (images per step over all "
                         f"ranks): it must be a multiple of the {world.world_size} processes")


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


def _drop_inherited_exit_hooks(worker_id: int) -> None:
    """A forked loader worker forgets the thread-exit hooks of the parent's objects (Prefect's log and
    event services), which ``threading._shutdown`` calls as the worker exits.

    They stop threads that fork does not copy, and Prefect's fail there (its after-fork reset leaves
    ``_done_event`` None): the worker then exits with code 1 and the DataLoader reports it dead. The
    module-level hooks (``concurrent.futures``') stay: they are fork-safe and serve the worker's own pools.
    """
    hooks = getattr(threading, "_threading_atexits", None)  # CPython's list, as _register_atexit fills it
    if isinstance(hooks, list):
        hooks[:] = [hook for hook in hooks if not inspect.ismethod(getattr(hook, "func", hook))]


def _loader(dataset: Dataset, batches: Iterable[list[int]], num_workers: int, seed: int) -> DataLoader:
    # Its own generator: creating the iterator must not draw from the global RNG, or a resumed
    # run would diverge from an uninterrupted one.
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_drop_inherited_exit_hooks)


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, *, checkpoint_dir: str | None = None,
          make_batches: BatchSamplerFactory | None = None, meta: Mapping[str, Any] | None = None,
          options: Mapping[str, Any] | None = None, device: str | torch.device = "cpu", progress: bool = True,
          stop_after: int | None = None, world: DistributedContext | None = None,
          hooks: TrainHooks = TrainHooks()) -> TrainResult:
    """Train ``model`` for ``cfg.iterations`` SGD steps, resuming from ``checkpoint_dir`` if it has any.

    ``make_batches(start)`` yields lists of dataset indices from batch ``start`` on (default: an
    aspect-ratio grouped sampler). ``meta`` (primitives only: model spec, categories, ...) is stored
    in every checkpoint. ``stop_after`` ends early after that many steps in this call (tests and
    time-boxed jobs); the run resumes from there next time.

    With ``world`` (a process group of several ranks, see :mod:`dd_core.train.distributed`) the
    model is trained with DistributedDataParallel: ``cfg.batch_size`` and ``cfg.lr`` stay those of
    the global batch, each rank trains on its slice of it, only rank 0 writes checkpoints and shows
    and reports progress (see :class:`TrainHooks`), and every rank resumes from the same checkpoint,
    whatever the number of ranks that wrote it.
    """
    world = world or DistributedContext()
    device = world.device(device)
    _check_global_batch(cfg, world)
    model = sync_batchnorm(model.to(device).train(), world, device)
    optimization = Optimization(model, cfg, amp=device.type == "cuda")
    seed_everything(cfg.seed)
    start = resume(checkpoint_dir, model, optimization, meta=meta or {}, options=options)
    check_same_start(world, start, checkpoint_dir)
    hooks = hooks.for_rank(world)
    checkpointer = Checkpointer(checkpoint_dir, cfg.keep_checkpoints, dict(meta or {}), world, options,
                                hooks.on_checkpoint)
    if cfg.iterations == 0:  # nothing to train: the model as started (a published detector) is the result
        if checkpoint_dir and exists(checkpoint_url(checkpoint_dir, 0), options):
            # A resume found it: rewriting it would change its bytes, and with them the fingerprint
            # that names every shard labeled by it.
            return TrainResult(0, checkpoint_url(checkpoint_dir, 0), 0.0, {})
        return TrainResult(0, checkpointer.write(0, model, optimization), 0.0, {})
    if start >= cfg.iterations:
        return TrainResult(start, checkpoint_url(checkpoint_dir, start) if checkpoint_dir else None, 0.0, {})
    loader_seed = _seed_rank(cfg.seed, world, start)
    loader = _loader(dataset, _batches(dataset, cfg, world, start, make_batches), cfg.num_workers, loader_seed)
    steps = StepLoop(cfg, model, data_parallel(model, world, device), optimization, checkpointer, device,
                     progress=progress and world.is_main, hooks=hooks)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, start + stop_after)
    return steps.run(loader, start, end)
