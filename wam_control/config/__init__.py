"""Typed, validated deployment settings (see schema.py for every key)."""

from wam_control.config.loader import (
    ConfigError,
    config_from_dict,
    load_config,
    load_joint_limits_file,
    read_config_data,
)
from wam_control.config.presets import preset_path
from wam_control.config.schema import (
    ImaginationConfig,
    InferenceConfig,
    JointLimits,
    LimitArrays,
    LoopConfig,
    RobotConfig,
    SafetyConfig,
    SurpriseConfig,
    TimeoutsConfig,
    TopicsConfig,
)

__all__ = [
    "ConfigError",
    "ImaginationConfig",
    "InferenceConfig",
    "JointLimits",
    "LimitArrays",
    "LoopConfig",
    "RobotConfig",
    "SafetyConfig",
    "SurpriseConfig",
    "TimeoutsConfig",
    "TopicsConfig",
    "config_from_dict",
    "load_config",
    "load_joint_limits_file",
    "preset_path",
    "read_config_data",
]
