"""Training teachers and students: the paper's schedule, checkpoints, resumable loops."""

from dd_core.models.checkpoint import (
    load_checkpoint,
    load_latest_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from dd_core.train.loop import TrainResult, train
from dd_core.train.settings import TrainConfig
from dd_core.train.schedule import lr_factor

__all__ = ["TrainConfig", "TrainResult", "load_checkpoint", "load_latest_checkpoint", "lr_factor",
           "model_from_checkpoint", "save_checkpoint", "train"]
