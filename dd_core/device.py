"""Which device a stage runs on: the run config's ``device`` resolved on the machine that runs it."""

from __future__ import annotations

import re


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; a GPU asked for but absent is an error.

    Resolved where the stage runs (a worker with a GPU may run what a laptop scheduled), and
    refused there with a clear message instead of torch's deep in the first forward pass.
    """
    import torch

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", device):
        raise ValueError(f"device {device!r:.40}: expected auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (index and int(index) >= count):
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s) (use device: auto or cpu)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use device: auto or cpu)")
    return device
