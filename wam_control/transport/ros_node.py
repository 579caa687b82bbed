"""`wam_controller`: the controller as an rclpy lifecycle node (`ros2 run wam_control wam_controller`).

A thin adapter over the same Controller, converters and QoS profiles as `wam-control run` (see
`adapter.py`); only subscriptions, publishers, parameters and the lifecycle are rclpy's.

Lifecycle:
  configure   read parameters -> RobotConfig, load the model (contract checked), start the inference
              worker and wait for its warm-up, create subscriptions (they only store the latest value),
              lifecycle publishers and the `~/rearm` std_srvs/Trigger service
  activate    enable publishers, start the control thread (FixedRateLoop on monotonic deadlines; not an
              rclpy timer, which follows the ROS clock and jitters with the executor)
  deactivate  brake to hold while still publishing, stop the control thread, disable publishers
  cleanup     release the model, worker, subscriptions, publishers and service
  shutdown    deactivate + cleanup from any state

WAM extras (docs/surprise.md), as in `wam-control run`: with surprise.enabled, configure fails unless
the calibration file exists, and the score goes out on ~/surprise (std_msgs/Float64, 20 Hz from the
auxiliary thread); with imagination.enabled, configure checks the decoder file, and the auxiliary thread
polls the image publisher's subscription count: the decoder is loaded and its thread started when the
first subscriber appears, stopped when the last one leaves (and on deactivate).

Parameters: every key of the deployment YAML (config/fr3.yaml is a ROS 2 parameter file) is declared
with a descriptor and read back into the same typed RobotConfig the DDS path uses. Override a key the
ROS 2 way, by a later parameter source: `-p inference.model:=/path/m.onnx`, `-p
command_interface:=forward_position` (launch_params.py is what robot.launch.py passes). `config_dir` is
the folder relative paths are relative to (robot.launch.py sets the YAML's own folder); `config_file`
names a YAML that is not a parameter file, whose keys the parameters then override. `autostart`
configures and activates the node right after it starts (for `ros2 run`; the launch file drives the
lifecycle with events instead). `use_sim_time` is honoured for every outgoing stamp; the control loop
always runs on the monotonic clock.

This module holds what needs no rclpy (parameter names, `main` with its import guard); the node itself
is `rclpy_node.py`, imported only once rclpy is known to be there.
"""

from __future__ import annotations

import dataclasses
import sys
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


def main(args: list[str] | None = None) -> int:
    try:
        import rclpy  # noqa: F401  (the guard: the node module imports rclpy at its top)
    except ImportError as exc:
        print(
            f"wam_controller needs ROS 2's rclpy ({exc}). Source your ROS 2 installation "
            "(source /opt/ros/<distro>/setup.bash) and your workspace, or install ROS 2 Kilted's Python "
            "packages from PyPI (pip install 'wam_control[ros]'), or run the same controller without "
            "ROS 2: wam-control run --config <yaml> --model <onnx>",
            file=sys.stderr,
        )
        return 1
    from wam_control.transport.rclpy_node import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
