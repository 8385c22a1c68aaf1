"""The paper's learning-rate schedule: linear warmup, then /10 at 2/3 and 8/9 of training."""

from __future__ import annotations

import torch


def lr_factor(iteration: int, total: int, warmup_iters: int, warmup_factor: float = 1.0 / 3,
              steps: tuple[float, ...] = (2 / 3, 8 / 9), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    factor = gamma ** sum(iteration >= int(round(s * total)) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_iters: int,
                   warmup_factor: float = 1.0 / 3) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup_iters, warmup_factor))
