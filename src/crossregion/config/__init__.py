"""Typed experiment configuration: schema, YAML presets with ``base:``, dotted overrides."""

from crossregion.config.io import (
    available_presets,
    config_differences,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    save_config,
)
from crossregion.config.schema import (
    DataConfig,
    DatasetSpec,
    EngineConfig,
    ExperimentConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
)

__all__ = [
    "DataConfig",
    "DatasetSpec",
    "EngineConfig",
    "ExperimentConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "available_presets",
    "config_differences",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "save_config",
]
