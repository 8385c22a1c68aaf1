"""The run configuration: one YAML file (:mod:`.schema`), read with ``--set`` overrides
(:mod:`.loading`), its inputs checked before a run (:mod:`.inputs`), and turned into the typed
arguments of dd_core's functions in one place (:mod:`.adapters`)."""

from dd_core.config.adapters import model_overrides, multi_transform_settings, train_config, train_job
from dd_core.config.inputs import check_run_inputs, runs_folder
from dd_core.config.loading import ConfigError, apply_overrides, load_config, parse_config
from dd_core.config.schema import (
    DistributedConfig,
    LabeledConfig,
    ModelConfig,
    RunConfig,
    ShardsConfig,
    StorageConfig,
    StudentConfig,
    TrainingImagesConfig,
    TrainStageConfig,
    TTAConfig,
    UnlabeledConfig,
)

__all__ = [
    "ConfigError", "DistributedConfig", "LabeledConfig", "ModelConfig", "RunConfig", "ShardsConfig", "StorageConfig",
    "StudentConfig", "TTAConfig", "TrainStageConfig", "TrainingImagesConfig", "UnlabeledConfig", "apply_overrides", "check_run_inputs",
    "load_config", "model_overrides", "multi_transform_settings", "parse_config", "runs_folder", "train_config", "train_job",
]
