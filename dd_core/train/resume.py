"""Resuming a run: what a checkpoint restores, and when resuming it is refused.

A checkpoint holds the random state of the process that wrote it, so a resumed run draws the
same augmentations as an uninterrupted one. It is resumed only if it was trained with the same
``signature`` (settings and data): otherwise its steps would be reused silently.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping, Protocol

import torch

from dd_core.models.checkpoint import load_latest_checkpoint
from dd_core.train.distributed import DistributedContext, gather

log = logging.getLogger(__name__)


class Restorable(Protocol):
    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


def seed_everything(seed: int) -> None:
    """Seed the streams the augmentations draw from (torch's and Python's)."""
    torch.manual_seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and not value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs, nested keys dotted.

    A setting absent on one side and ``None`` or empty on the other is the same: fields removed
    since a checkpoint was written (``TrainConfig.grad_clip``, ``ModelSpec.extra``) held those.
    """
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b and not (_empty(a) and _empty(b)):
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def check_resumable(state: Mapping[str, Any], meta: Mapping[str, Any], checkpoint_dir: str) -> None:
    """Refuse to resume checkpoints trained with other settings or data (they would be reused silently)."""
    old, new = state.get("signature"), meta.get("signature")
    if old is None or new is None:
        return
    changed = differences(old, new)
    if changed:
        raise ValueError(f"{checkpoint_dir}: holds training with other settings or data "
                         f"({'; '.join(changed[:6])}); start a new run id (or use another folder) "
                         f"instead of resuming it")


def check_same_start(world: DistributedContext, start: int, checkpoint_dir: str | None) -> None:
    """Every rank must resume from the same checkpoint, or their weights and schedules would differ."""
    starts = gather(world, start)
    if len(set(starts)) > 1:
        raise ValueError(f"{checkpoint_dir}: the ranks found different latest checkpoints (iteration per rank: "
                         f"{starts}); the checkpoint folder must be storage every rank sees (s3:// or a shared "
                         f"file system)")


def resume(checkpoint_dir: str | None, model: torch.nn.Module, optimization: Restorable, *,
           meta: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> int:
    """Restore the latest checkpoint of ``checkpoint_dir`` (weights, optimization, random state).

    Returns its iteration, or 0 (and restores nothing) when there is none.
    """
    state = load_latest_checkpoint(checkpoint_dir, options) if checkpoint_dir else None
    if state is None:
        return 0
    check_resumable(state, meta, checkpoint_dir)
    model.load_state_dict(state["model"])
    optimization.load_state_dict(state)
    set_rng_state(state["rng"])
    start = int(state["iteration"])
    log.info("resumed from iteration %d in %s", start, checkpoint_dir)
    return start
