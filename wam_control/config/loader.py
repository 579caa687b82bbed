"""Load and validate a deployment YAML into `RobotConfig`.

Accepted layouts (so that one file serves `wam-control`, `ros2 launch` and existing ros2_control files):
- plain: top-level keys of `RobotConfig` (joints, control_hz, joint_limits, ...);
- ROS 2 parameter file: `<node name or /**>: {ros__parameters: {...}}`;
- `joint_limits_file: <path>` pointing at a user's existing ros2_control/MoveIt joint_limits YAML,
  loaded unchanged (`joint_limits:` at the top, optionally under `ros__parameters` or
  `robot_description_planning`).

Every error is a `ConfigError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from wam_control.config.schema import (
    InferenceConfig,
    JointLimits,
    LoopConfig,
    RobotConfig,
    SafetyConfig,
    TimeoutsConfig,
    TopicsConfig,
)

# Top-level keys of MoveIt's joint_limits.yaml that carry no per-joint limit.
_MOVEIT_LIMITS_EXTRAS = {"default_velocity_scaling_factor", "default_acceleration_scaling_factor"}
# Limits the safety filter cannot work without (positions may be absent only for wrap-around joints).
_REQUIRED_LIMITS = (("has_velocity_limits", "max_velocity"), ("has_acceleration_limits", "max_acceleration"))


class ConfigError(ValueError):
    """A configuration problem: `file: key: message`."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RobotConfig:
    """Read, validate and type a deployment YAML. `overrides` are top-level keys applied on top."""
    path = Path(path)
    data = read_config_data(path)
    if overrides:
        data = {**data, **overrides}
    return config_from_dict(data, source=str(path), base_dir=path.parent)


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The deployment YAML's keys, untyped (a ROS 2 parameter file unwrapped); `load_config` types them."""
    path = Path(path)
    return _unwrap_ros_parameters(_read_yaml(path), str(path))


def config_from_dict(
    data: dict[str, Any], source: str = "<memory>", base_dir: Path | None = None
) -> RobotConfig:
    data = dict(data)
    limits_file = data.pop("joint_limits_file", None)
    if limits_file is not None:
        if "joint_limits" in data:
            raise ConfigError(
                source, "joint_limits_file", "give either joint_limits or joint_limits_file, not both"
            )
        limits_path = _resolve(str(limits_file), base_dir)
        data["joint_limits"] = load_joint_limits_file(limits_path)
        limits_source = str(limits_path)
    else:
        limits_source = source
    if "joints" not in data:
        raise ConfigError(source, "joints", "missing: the list of controlled joint names, in command order")
    if "joint_limits" not in data:
        raise ConfigError(
            source, "joint_limits", "missing: per-joint limits in ros2_control's joint_limits schema"
        )
    raw_limits = data.pop("joint_limits")
    if not isinstance(raw_limits, dict):
        raise ConfigError(
            limits_source, "joint_limits", f"expected a mapping joint -> limits, got {_kind(raw_limits)}"
        )
    joint_limits = {
        str(name): _build(JointLimits, value, f"joint_limits.{name}", limits_source)
        for name, value in raw_limits.items()
    }
    # Files named in the config resolve against the config file's folder first (then the cwd).
    for section, key in (("inference", "model"), ("surprise", "calibration"), ("imagination", "decoder")):
        values = data.get(section)
        if (
            isinstance(values, dict)
            and isinstance(values.get(key), str)
            and values[key]
            and base_dir is not None
        ):
            data[section] = {**values, key: str(_resolve(values[key], base_dir, must_exist=False))}
    config = _build(RobotConfig, {**data, "joint_limits": {}, "source": source}, "", source)
    config = dataclasses.replace(config, joint_limits=joint_limits)
    _validate(config, limits_source)
    return config


def load_joint_limits_file(path: str | Path) -> dict[str, Any]:
    """Return the `joint_limits` mapping of a ros2_control or MoveIt joint_limits YAML, unchanged."""
    source = str(path)
    data = _unwrap_ros_parameters(_read_yaml(Path(path)), source)
    if "robot_description_planning" in data and isinstance(data["robot_description_planning"], dict):
        data = data["robot_description_planning"]
    if "joint_limits" not in data or not isinstance(data["joint_limits"], dict):
        raise ConfigError(source, "joint_limits", "missing: expected a top-level 'joint_limits:' mapping")
    unknown = set(data) - {"joint_limits"} - _MOVEIT_LIMITS_EXTRAS
    if unknown:
        raise ConfigError(
            source, sorted(unknown)[0], "unknown key in a joint_limits file (expected only joint_limits)"
        )
    return dict(data["joint_limits"])


# --------------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a YAML mapping at the top level, got {_kind(data)}")
    return data


def _unwrap_ros_parameters(data: dict[str, Any], source: str) -> dict[str, Any]:
    """`{node: {ros__parameters: {...}}}` -> `{...}` (one node, or several merged in file order)."""
    wrapped = [v for v in data.values() if isinstance(v, dict) and "ros__parameters" in v]
    if not wrapped:
        return data
    if len(wrapped) != len(data):
        raise ConfigError(source, "", "mixes ros__parameters sections with plain keys")
    merged: dict[str, Any] = {}
    for section in wrapped:
        params = section["ros__parameters"]
        if not isinstance(params, dict):
            raise ConfigError(source, "ros__parameters", f"expected a mapping, got {_kind(params)}")
        merged.update(params)
    return merged


def _resolve(value: str, base_dir: Path | None, must_exist: bool = True) -> Path:
    """Relative paths: the config file's folder first, then the working directory."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    options = ([base_dir / candidate] if base_dir is not None else []) + [Path.cwd() / candidate]
    for option in options:
        if option.exists():
            return option
    if must_exist:
        raise ConfigError(
            str(base_dir or "."), "", f"file not found: {value} (looked in {', '.join(map(str, options))})"
        )
    return options[0]


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _build(cls: type, value: Any, key: str, source: str) -> Any:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are errors."""
    if not isinstance(value, dict):
        raise ConfigError(source, key or cls.__name__, f"expected a mapping, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        where = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(source, where, f"unknown key; expected one of: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, raw in value.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(hints[name], raw, sub, source)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(source, f"{key}.{missing[0]}" if key else missing[0], "missing required key")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own consistency check (e.g. SurpriseConfig thresholds)
        raise ConfigError(source, key or cls.__name__, str(exc)) from None


def _coerce(hint: Any, raw: Any, key: str, source: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, raw, key, source)  # type: ignore[arg-type]
    if origin is typing.Literal:
        choices = get_args(hint)
        if raw not in choices:
            raise ConfigError(source, key, f"expected one of {', '.join(map(repr, choices))}, got {raw!r}")
        return raw
    if hint is type(None):  # the `~` of an optional key
        if raw is not None:
            raise ConfigError(source, key, f"expected ~ (nothing), got {raw!r}")
        return None
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(source, key, f"expected true or false, got {raw!r}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            if isinstance(raw, str) and raw.strip().lower() in (".inf", "inf", "-inf", "-.inf"):
                return float(raw.replace(".inf", "inf"))
            raise ConfigError(source, key, f"expected a number, got {raw!r}")
        value = float(raw)
        if math.isnan(value):
            raise ConfigError(source, key, "expected a number, got NaN")
        return value
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(source, key, f"expected an integer, got {raw!r}")
        return raw
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(source, key, f"expected a string, got {raw!r}")
        return raw
    if origin is tuple:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(source, key, f"expected a list of strings, got {raw!r}")
        return tuple(raw)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(hint):
            try:
                return _coerce(option, raw, key, source)
            except ConfigError as exc:
                errors.append(str(exc).rpartition(": ")[2])
        raise ConfigError(source, key, " or ".join(errors))
    if origin is dict and dataclasses.is_dataclass(get_args(hint)[1]):
        if not isinstance(raw, dict):
            raise ConfigError(source, key, f"expected a mapping, got {_kind(raw)}")
        return {str(k): _build(get_args(hint)[1], v or {}, f"{key}.{k}", source) for k, v in raw.items()}
    if origin is dict:
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise ConfigError(source, key, f"expected a mapping of strings to strings, got {raw!r}")
        return dict(raw)
    raise ConfigError(source, key, f"unsupported type {hint!r}")  # a schema bug, not a user error


def _validate(config: RobotConfig, limits_source: str) -> None:
    src = config.source
    if not config.joints:
        raise ConfigError(src, "joints", "expected at least one joint name")
    duplicates = sorted({j for j in config.joints if config.joints.count(j) > 1})
    if duplicates:
        raise ConfigError(src, "joints", f"joint names must be unique; repeated: {duplicates}")
    if not (config.control_hz > 0 and math.isfinite(config.control_hz)):
        raise ConfigError(src, "control_hz", f"expected a positive rate in Hz, got {config.control_hz}")
    if config.command_horizon_points < 1:
        raise ConfigError(
            src, "command_horizon_points", f"expected >= 1, got {config.command_horizon_points}"
        )
    if not config.cameras:
        raise ConfigError(src, "cameras", "expected at least one camera name")
    missing_topics = [c for c in config.cameras if c not in config.topics.camera_images]
    if missing_topics:
        raise ConfigError(
            src, f"topics.camera_images.{missing_topics[0]}", "missing image topic for this camera"
        )
    _positive(
        src,
        "safety",
        config.safety,
        ("max_tracking_error", "ramp_in_scale", "max_state_age_s", "velocity_scale"),
    )
    _positive(
        src, "timeouts", config.timeouts, ("joint_state_s", "image_s", "inference_deadline_s", "startup_s")
    )
    if config.safety.position_margin < 0:
        raise ConfigError(
            src, "safety.position_margin", f"expected >= 0 rad, got {config.safety.position_margin}"
        )
    for name in ("ramp_in_scale", "velocity_scale", "brake_deceleration_fraction"):
        value = getattr(config.safety, name)
        if not 0 < value <= 1:
            raise ConfigError(src, f"safety.{name}", f"expected a fraction in (0, 1], got {value}")
    if config.safety.ramp_in_s < 0:
        raise ConfigError(src, "safety.ramp_in_s", f"expected >= 0 s, got {config.safety.ramp_in_s}")
    if config.safety.max_consecutive_bad_targets < 1:
        raise ConfigError(src, "safety.max_consecutive_bad_targets", "expected >= 1")
    if not 0 < config.inference.delay_percentile <= 100:
        raise ConfigError(src, "inference.delay_percentile", "expected a percentile in (0, 100]")
    if (
        config.inference.threads < 1
        or config.inference.delay_window < 1
        or config.inference.warmup_chunks < 0
    ):
        raise ConfigError(src, "inference", "threads and delay_window must be >= 1, warmup_chunks >= 0")
    if config.inference.min_prefix_steps < 0:
        raise ConfigError(
            src, "inference.min_prefix_steps", f"expected >= 0 action steps, got {config.inference.min_prefix_steps}"
        )
    if config.safety.max_state_age_s < config.timeouts.joint_state_s:
        raise ConfigError(
            src,
            "safety.max_state_age_s",
            f"expected >= timeouts.joint_state_s ({config.timeouts.joint_state_s} s): "
            "the filter must not brake on a joint state the model may still use",
        )
    if config.loop.spin_s < 0:
        raise ConfigError(src, "loop.spin_s", f"expected >= 0 s, got {config.loop.spin_s}")
    if not 0 <= config.loop.realtime_priority <= 99:
        raise ConfigError(src, "loop.realtime_priority", "expected 0 (off) or a SCHED_FIFO priority 1-99")
    if config.loop.cpu_affinity:
        try:
            [int(c) for c in config.loop.cpu_affinity.split(",")]
        except ValueError:
            raise ConfigError(
                src,
                "loop.cpu_affinity",
                f"expected comma-separated CPU ids, got {config.loop.cpu_affinity!r}",
            ) from None
    for joint in config.joints:
        if joint not in config.joint_limits:
            raise ConfigError(
                limits_source,
                f"joint_limits.{joint}",
                f"missing limits for configured joint '{joint}' (have: {', '.join(config.joint_limits) or 'none'})",
            )
        _validate_joint(config.joint_limits[joint], f"joint_limits.{joint}", limits_source)
    for name, dof in config.extra_dofs.items():
        joint = dof.joint or name
        if joint in config.joints:
            raise ConfigError(src, f"extra_dofs.{name}.joint", f"{joint!r} is an arm joint (in joints)")
        if dof.command_interface == "none":
            continue
        if not dof.command_topic:
            raise ConfigError(
                src, f"extra_dofs.{name}.command_topic", "missing: the topic of this DOF's controller"
            )
        if joint not in config.joint_limits:
            raise ConfigError(
                limits_source,
                f"joint_limits.{joint}",
                f"missing limits for extra DOF '{name}' (joint '{joint}'): it goes through the safety "
                "filter like an arm joint",
            )
        jl = config.joint_limits[joint]
        _validate_joint(jl, f"joint_limits.{joint}", limits_source)
        margin = dof.position_margin
        half_range = 0.5 * (jl.max_position - jl.min_position) if jl.has_position_limits else math.inf
        if margin is not None and not 0 <= margin < half_range:
            raise ConfigError(
                src,
                f"extra_dofs.{name}.position_margin",
                f"expected >= 0 and under half of joint '{joint}''s range "
                f"[{jl.min_position}, {jl.max_position}], got {margin}",
            )


def _validate_joint(jl: JointLimits, key: str, source: str) -> None:
    if jl.has_position_limits:
        if not (math.isfinite(jl.min_position) and math.isfinite(jl.max_position)):
            raise ConfigError(
                source,
                f"{key}.min_position",
                "has_position_limits is true: min_position and max_position must be finite numbers",
            )
        if jl.min_position >= jl.max_position:
            raise ConfigError(
                source,
                f"{key}.min_position",
                f"min_position ({jl.min_position}) must be below max_position ({jl.max_position})",
            )
    elif not jl.angle_wraparound:
        raise ConfigError(
            source,
            f"{key}.has_position_limits",
            "expected true with min_position/max_position (only angle_wraparound joints may omit them)",
        )
    for flag, value_key in _REQUIRED_LIMITS:
        if not getattr(jl, flag):
            raise ConfigError(
                source,
                f"{key}.{flag}",
                f"expected true with {value_key} > 0: the safety filter needs it for every joint",
            )
    for flag, value_key in (
        *_REQUIRED_LIMITS,
        ("has_deceleration_limits", "max_deceleration"),
        ("has_jerk_limits", "max_jerk"),
    ):
        if getattr(jl, flag):
            value = getattr(jl, value_key)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    source, f"{key}.{value_key}", f"expected a positive finite number, got {value}"
                )


def _positive(src: str, section: str, obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(src, f"{section}.{name}", f"expected a positive number, got {value}")


__all__ = [
    "ConfigError",
    "InferenceConfig",
    "LoopConfig",
    "SafetyConfig",
    "TimeoutsConfig",
    "TopicsConfig",
    "config_from_dict",
    "load_config",
    "load_joint_limits_file",
]
