"""The run configuration: one YAML file (:mod:`.schema`), read with ``--set`` overrides
(:mod:`.loading`), its inputs checked before a run (:mod:`.inputs`).

Its sections are the settings types of the code that uses them, passed down as they are:
``tta`` is :class:`dd_core.tta.settings.MultiTransformSettings`, ``model`` and ``keypoints``
:mod:`dd_core.models.spec`'s, ``training_images`` :class:`dd_core.data.filtering.TrainingImageFilter`,
``teacher`` and ``student`` :class:`dd_core.train.settings.TrainStageConfig` (with what only a run's
stage has); a training stage becomes a job by :meth:`dd_core.train.job.TrainJob.from_config`.
"""

from dd_core.config.inputs import check_run_inputs, inputs_checked, run_input_counts, runs_folder
from dd_core.config.loading import ConfigError, apply_overrides, load_config, parse_config
from dd_core.config.schema import (
    DistributedConfig,
    LabeledConfig,
    ModelConfig,
    RunConfig,
    ShardsConfig,
    StorageConfig,
    StudentConfig,
    TrainStageConfig,
    UnlabeledConfig,
)

__all__ = [
    "ConfigError", "DistributedConfig", "LabeledConfig", "ModelConfig", "RunConfig", "ShardsConfig", "StorageConfig",
    "StudentConfig", "TrainStageConfig", "UnlabeledConfig", "apply_overrides", "check_run_inputs", "inputs_checked",
    "load_config", "parse_config", "run_input_counts", "runs_folder",
]
