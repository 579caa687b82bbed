"""The `wam_controller` node's ROS 2 parameters: every deployment-YAML key flattened as ROS 2 flattens
nested YAML, and the way back (no rclpy needed: the node, the launch tests and the config tests use it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Nested sections of RobotConfig (every field whose type is a dataclass), flattened as ROS 2 does.
_SECTIONS = ("topics", "timeouts", "safety", "inference", "loop", "surprise", "imagination")


def schema_parameter_names() -> list[tuple[str, str]]:
    """(parameter name, description) for every fixed key of the deployment YAML, flattened as ROS 2
    flattens nested YAML (`topics.joint_states`). Per-joint limits and per-camera topics depend on
    `joints` / `cameras` and are declared after those are read; `extra_dofs.<name>.<key>` are declared
    from the parameters given (their names are the model's)."""
    from wam_control.config import schema

    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(schema.RobotConfig):
        if f.name in ("joint_limits", "source", "extra_dofs") or f.name in _SECTIONS:
            continue
        out.append((f.name, f"RobotConfig.{f.name} (wam_control/config/schema.py)"))
    for section in _SECTIONS:
        cls = {f.name: f.type for f in dataclasses.fields(schema.RobotConfig)}[section]
        section_cls = getattr(schema, cls) if isinstance(cls, str) else cls
        for f in dataclasses.fields(section_cls):
            if section == "topics" and f.name == "camera_images":
                continue
            out.append(
                (f"{section}.{f.name}", f"{section_cls.__name__}.{f.name} (wam_control/config/schema.py)")
            )
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}} (the inverse of ROS 2's YAML flattening)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (nested dicts merge, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
