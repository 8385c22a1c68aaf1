"""Several training processes as one (torch.distributed, launched by torchrun): who is who, and set-up.

torchrun starts one process per GPU (or per CPU worker) and tells each its place through the
environment: ``RANK`` (0 .. WORLD_SIZE-1 over all nodes), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its
index on this node, which picks its GPU). Without torchrun the variables are absent and the
process is rank 0 of 1: the single-process trainer, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size <= 0 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"inconsistent distributed environment: RANK={self.rank}, WORLD_SIZE={self.world_size}, "
                             f"LOCAL_RANK={self.local_rank} (expected 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and results and shows progress; the others only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str | torch.device) -> torch.device:
        """The device of this rank: ``cuda`` becomes ``cuda:<LOCAL_RANK>``; the CPU is shared."""
        device = torch.device(device)
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "DistributedContext":
        """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: a single process)."""
        env = os.environ if env is None else env
        values = {}
        for key, field, default in (("RANK", "rank", 0), ("WORLD_SIZE", "world_size", 1),
                                    ("LOCAL_RANK", "local_rank", 0)):
            raw = env.get(key)
            try:
                values[field] = default if raw in (None, "") else int(raw)
            except ValueError:
                raise ValueError(f"environment variable {key}={raw!r} is not an integer (torchrun sets it)") from None
        return cls(**values)


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """``auto`` -> ``nccl`` for CUDA devices, ``gloo`` for the CPU; ``nccl`` without CUDA is refused."""
    if backend not in BACKENDS:
        raise ValueError(f"distributed backend: expected one of {BACKENDS}, got {backend!r}")
    kind = torch.device(device).type
    if backend == "auto":
        return "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl" and kind != "cuda":
        raise ValueError(f"distributed backend nccl needs CUDA devices, but training runs on {kind}: "
                         f"use gloo (or auto)")
    return backend


def init_distributed(backend: str = "auto", device: str | torch.device = "cpu",
                     env: Mapping[str, str] | None = None) -> DistributedContext:
    """Join the process group torchrun set up (when ``WORLD_SIZE > 1``) and pick this rank's GPU.

    The rendezvous address comes from torchrun's ``MASTER_ADDR`` / ``MASTER_PORT``.
    """
    context = DistributedContext.from_env(env)
    if not context.distributed or dist.is_initialized():
        return context
    rank_device = context.device(device)
    if rank_device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {context.local_rank} has no GPU: {torch.cuda.device_count()} visible on "
                             f"this node; start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(rank_device)
    dist.init_process_group(backend=resolve_backend(backend, rank_device), rank=context.rank,
                            world_size=context.world_size)
    return context


def cleanup() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if context.distributed:
        dist.barrier()


def gather(context: DistributedContext, value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` for a single process)."""
    if not context.distributed:
        return [value]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, value)
    return out


def rank_seed(seed: int, rank: int, start: int) -> int:
    """The seed of rank ``rank``'s random augmentations from step ``start`` on.

    Ranks seeded alike would flip the same slots of their slices (a global batch holding the same
    augmentation pattern ``world_size`` times): rank 0 keeps the run's own stream, which is
    checkpointed; every other rank draws from ``(seed, rank, start)``.
    """
    return int(np.random.SeedSequence([seed, rank, start]).generate_state(1)[0])


def sync_batchnorm(model: torch.nn.Module, world: DistributedContext, device: torch.device) -> torch.nn.Module:
    """Trainable BatchNorm made SyncBatchNorm on GPUs, so it normalises over the global batch.

    torch's SyncBatchNorm runs on GPUs only: on the CPU each rank normalises with its own images'
    statistics, and DDP copies rank 0's running statistics to every rank before each forward.
    Frozen BatchNorm (pretrained backbones) has nothing to synchronise.
    """
    if world.distributed and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def data_parallel(model: torch.nn.Module, world: DistributedContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the ranks; it starts from rank 0's weights and averages gradients.

    Averaging the gradients of ranks that each hold ``batch_size / world_size`` images gives the
    gradient of the mean loss over the global batch: the same step, at the same learning rate, as
    one process with the whole batch. A single process gets ``model`` itself.
    """
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
