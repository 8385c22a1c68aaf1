"""The paper's learning-rate schedule: linear warmup, then /10 at 2/3 and 8/9 of training (or at
the ``steps`` given, as fractions of it: Detectron's ``s1x`` is 100k and 120k of 130k)."""

from __future__ import annotations

import torch

PAPER_STEPS: tuple[float, ...] = (2 / 3, 8 / 9)
S1X_STEPS: tuple[float, ...] = (100_000 / 130_000, 120_000 / 130_000)  # Detectron's keypoint s1x


def lr_factor(iteration: int, total: int, warmup_iters: int, warmup_factor: float = 1.0 / 3,
              steps: tuple[float, ...] = PAPER_STEPS, gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    factor = gamma ** sum(iteration >= int(round(s * total)) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_iters: int,
                   warmup_factor: float = 1.0 / 3, steps: tuple[float, ...] | None = None
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """``steps`` (fractions of ``total``; ``None``: the paper's 2/3 and 8/9) divide the rate by ten."""
    steps = PAPER_STEPS if steps is None else tuple(steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup_iters, warmup_factor, steps))
