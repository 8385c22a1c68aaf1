"""The settings of one training run: the paper's recipe, iteration-based.

:class:`TrainStageConfig` is a training stage as the run config writes it (``teacher:``,
``student:``; :mod:`dd_core.config.schema` adds the fields only a stage of a run has), every default
and bound written here once. :class:`TrainConfig` is that stage as one training run uses it: with the
run's seed and the recipe's fixed constants.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Bounds that turn a typo into an error at once instead of hours later. Checkpoints are named
# model_<7 digits>.pth, so no schedule may pass 9,999,999 iterations (image sides: dd_core/models/presets.py).
MAX_ITERATIONS = 9_999_999

Iterations = Annotated[int, Field(gt=0, le=MAX_ITERATIONS)]
# 0: no training; the initial weights (model.weights) are the result, written as a checkpoint.
IterationsOrZero = Annotated[int, Field(ge=0, le=MAX_ITERATIONS)]
StepPoint = Annotated[float, Field(gt=0, le=1)]


class TrainStageConfig(BaseModel):
    """One training stage of the run config (``teacher:``, ``student:``)."""

    # allow_inf_nan=False: lr=.inf or nan is refused here, not found as a diverged loss later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    iterations: Iterations = 2000
    batch_size: int = Field(default=8, gt=0, le=4096)  # the global batch: images per step over all ranks
    lr: float = Field(default=0.02, gt=0)
    warmup_iters: int = Field(default=100, ge=0, le=MAX_ITERATIONS)  # linear warmup from warmup_factor * lr
    checkpoint_every: Iterations = 500  # also written at the last iteration
    num_workers: int = Field(default=0, ge=0, le=256)
    # Seconds between the progress lines a training task logs (the UI's progress artifact moves
    # every few seconds regardless): a run of days logs every few minutes, not every step.
    report_every: float = Field(default=180.0, gt=0, le=86400)
    # The learning rate is divided by 10 at these fractions of the iterations (default: the paper's
    # 2/3 and 8/9; Detectron's s1x: [0.769, 0.923], 100k and 120k of 130k; []: never divided).
    lr_steps: list[StepPoint] | None = Field(default=None, max_length=8)

    @field_validator("lr_steps")
    @classmethod
    def _increasing(cls, v: list[float] | tuple[float, ...] | None) -> Any:
        if v is not None and any(a >= b for a, b in zip(v, v[1:])):
            raise ValueError(f"must be strictly increasing fractions of the iterations ([] : no decay), got {list(v)}")
        return v


class TrainConfig(TrainStageConfig):
    """Hyper-parameters of one training run: a stage, the run's seed and the recipe's constants."""

    model_config = ConfigDict(frozen=True)

    iterations: IterationsOrZero = 2000
    lr_steps: tuple[StepPoint, ...] | None = Field(default=None, max_length=8)  # None: 2/3 and 8/9
    seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_factor: float = 1.0 / 3
    keep_checkpoints: int = Field(default=2, gt=0)  # older ones are deleted; 2 so a truncated newest one has a fallback

    @classmethod
    def from_config(cls, stage: TrainStageConfig, seed: int) -> TrainConfig:
        """One training stage of the run config (``teacher:``, ``student:``) with the run's seed;
        warmup and checkpoint interval never exceed its length."""
        fields = {name: getattr(stage, name) for name in TrainStageConfig.model_fields}
        return cls(**{**fields, "seed": seed, "warmup_iters": min(stage.warmup_iters, stage.iterations),
                      "checkpoint_every": max(1, min(stage.checkpoint_every, stage.iterations))})

    def schedule(self) -> dict[str, Any]:
        """What a checkpoint must have been trained with to be resumed, in the order checkpoints record it;
        how often it is written, by how many loader workers and how often it reports are left out."""
        names = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "warmup_iters", "warmup_factor",
                 "seed", "lr_steps")
        return {name: getattr(self, name) for name in names}
