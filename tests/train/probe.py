"""Training hooks run inside torchrun's ranks by tests: what each rank held and trained on, per step.

Each rank appends JSON lines to ``$OMNIDISTILL_PROBE_DIR/rank<R>.jsonl``: after every step
(:func:`record_step`, a job's ``on_step``) its iteration, a digest of its parameters and the image
ids of its slice of the batch; and every checkpoint it writes (:func:`record_checkpoint`, a job's
``on_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import os

import torch


def _log(record: dict) -> None:
    rank = int(os.environ.get("RANK", "0") or 0)
    with open(os.path.join(os.environ["OMNIDISTILL_PROBE_DIR"], f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"rank": rank, **record}) + "\n")


def parameter_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record_step(iteration: int, model: torch.nn.Module, targets: list) -> None:
    _log({"iteration": iteration, "params": parameter_digest(model),
          "image_ids": [int(t["image_id"]) for t in targets]})


def record_checkpoint(iteration: int, url: str) -> None:
    _log({"saved": url, "saved_iteration": iteration})
