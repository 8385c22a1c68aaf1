"""The settings of one training run: the paper's recipe, iteration-based."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dd_core.config.schema import TrainStageConfig


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (the paper's recipe, iteration-based)."""

    iterations: int = 2000
    batch_size: int = 8             # the global batch: images per step over all ranks
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100         # linear warmup from warmup_factor * lr
    warmup_factor: float = 1.0 / 3
    checkpoint_every: int = 500     # also written at the last iteration
    keep_checkpoints: int = 2       # older ones are deleted; 2 so a truncated newest one has a fallback
    seed: int = 0
    num_workers: int = 0
    lr_steps: tuple[float, ...] | None = None  # /10 at these fractions of iterations; None: 2/3 and 8/9

    def __post_init__(self) -> None:
        if self.iterations < 0:  # 0: the initial weights (model.weights) are the result, written as a checkpoint
            raise ValueError(f"TrainConfig.iterations must be 0 or more, got {self.iterations}")
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lr_steps is not None:
            object.__setattr__(self, "lr_steps", tuple(self.lr_steps))
            if any(not 0 < s <= 1 for s in self.lr_steps) or list(self.lr_steps) != sorted(self.lr_steps):
                raise ValueError(f"TrainConfig.lr_steps must be increasing fractions of the iterations in (0, 1], "
                                 f"got {list(self.lr_steps)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")

    @classmethod
    def from_config(cls, stage: TrainStageConfig, seed: int) -> TrainConfig:
        """One training stage of the run config (``teacher:``, ``student:``) with the run's seed;
        warmup and checkpoint interval never exceed its length."""
        return cls(iterations=stage.iterations, batch_size=stage.batch_size, lr=stage.lr,
                   warmup_iters=min(stage.warmup_iters, stage.iterations),
                   checkpoint_every=max(1, min(stage.checkpoint_every, stage.iterations)),
                   num_workers=stage.num_workers, seed=seed,
                   lr_steps=tuple(stage.lr_steps) if stage.lr_steps is not None else None)
