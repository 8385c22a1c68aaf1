"""Checkpoints: plain dicts of state dicts and primitives, written atomically, read without pickle code.

Files are ``<dir>/model_<iteration>.pth``. Loading always uses ``weights_only=True``; a file cut short
by a crash fails to load and the previous one is used instead.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any, Mapping

import torch

from dd_core.models.builders import build_model
from dd_core.models.spec import ModelSpec
from dd_core.storage import filesystem, join, read_bytes, remove, write_bytes_atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"model_(\d{7})\.pth$")


def checkpoint_url(directory: str, iteration: int) -> str:
    return join(directory, f"model_{iteration:07d}.pth")


def save_checkpoint(url: str, state: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> None:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    write_bytes_atomic(url, buffer.getvalue(), options)


def load_checkpoint(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (no code runs: ``weights_only=True``)."""
    try:
        state = torch.load(io.BytesIO(read_bytes(url, options)), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, wrong format, pickled code refused by weights_only
        raise ValueError(f"{url}: not a readable omnidistill checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{url}: not an omnidistill checkpoint (expected a dict with a 'model' state dict)")
    return state


def list_checkpoints(directory: str, options: Mapping[str, Any] | None = None) -> list[tuple[int, str]]:
    """(iteration, url) of every checkpoint in ``directory``, oldest first."""
    fs, path = filesystem(directory, options)
    if not fs.exists(path):
        return []
    found = []
    for name in fs.ls(path, detail=False):
        m = _NAME.search(name)
        if m:
            found.append((int(m.group(1)), checkpoint_url(directory, int(m.group(1)))))
    return sorted(found)


def load_latest_checkpoint(directory: str, options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a truncated newer one is reported and skipped."""
    for iteration, url in reversed(list_checkpoints(directory, options)):
        try:
            return load_checkpoint(url, options)
        except ValueError as exc:
            log.warning("skipping unreadable checkpoint %s: %s", url, exc)
    return None


def prune_checkpoints(directory: str, keep: int, options: Mapping[str, Any] | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, url in list_checkpoints(directory, options)[:-keep]:
        remove(url, options)


def model_from_checkpoint(state: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild the architecture recorded in the checkpoint and load its weights (nanoGPT-style)."""
    if "spec" not in state:
        raise ValueError("checkpoint has no 'spec': it was not written by omnidistill's trainer")
    model = build_model(ModelSpec.from_dict(state["spec"]).for_restore())
    model.load_state_dict(state["model"])
    return model.eval()


def checkpoint_keypoint_names(state: Mapping[str, Any]) -> list[str]:
    """The keypoint names of the model in a checkpoint ([] for a box-only model)."""
    return next((list(c["keypoints"]) for c in state["categories"] if c.get("keypoints")), [])


def checkpoint_label_to_category(state: Mapping[str, Any]) -> dict[int, int]:
    """The model's contiguous labels -> the COCO category ids it was trained on."""
    return {int(label): int(cat) for cat, label in state["cat_to_label"].items()}
