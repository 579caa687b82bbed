"""What `robot.launch.py` hands the `wam_controller` node, as plain functions (no `launch` import).

The launch file only resolves its arguments to strings and calls `controller_parameters`; everything
that decides which arguments become parameters lives here and is tested without ROS 2's launch. The
tests, `wam-control demo --transport ros` and `wam-control bench ros-node` start the node with exactly
these parameters (`ros_arguments` turns them into the `--ros-args` that launch_ros would pass).

Override semantics: a launch argument left empty means "not given" and never reaches the node, so the
deployment YAML's own value stands. A given argument becomes the YAML key it overrides
(`model` -> `inference.model`, `command_interface` -> `command_interface`), placed after the YAML in
the parameter list: ROS 2 applies parameter sources in order, the later one wins. There is no second
parameter with the same meaning that could shadow or contradict the YAML.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from wam_control.config.schema import CommandInterface
from wam_control.policy.base import BACKENDS

NODE_NAME = "wam_controller"

# launch argument -> the deployment YAML key it overrides, and the values it may take (None: any).
OVERRIDES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "model": ("inference.model", None),
    "backend": ("inference.backend", BACKENDS),
    "worker": ("inference.worker", ("thread", "process")),
    "command_interface": ("command_interface", get_args(CommandInterface)),
}

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


class LaunchArgumentError(ValueError):
    """A launch argument with a value the node cannot take; the message names the argument."""


def parse_bool(name: str, value: str | bool) -> bool:
    """Launch arguments are strings: 'true'/'false' (any case), '1'/'0'; empty means false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LaunchArgumentError(f"launch argument {name}:={value!r}: expected true or false")


def default_config() -> Path:
    from wam_control.config.presets import share_dir

    return share_dir() / "config" / "fr3.yaml"


def controller_parameters(
    config: str = "",
    model: str = "",
    backend: str = "",
    worker: str = "",
    command_interface: str = "",
    use_sim_time: str | bool = "false",
    cwd: str | os.PathLike[str] | None = None,
) -> list[str | dict[str, Any]]:
    """The node's `parameters` list for robot.launch.py's arguments: [config YAML, {overrides}].

    `config_dir` tells the node where relative paths in the YAML (the model, calibration, decoder)
    are relative to: the YAML's own folder, as for `wam-control run --config`. Relative paths given
    as launch arguments are relative to the working directory of the launch (made absolute here).
    The node's own `autostart` stays off: the launch file drives the lifecycle with events.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    config_path = Path(config).expanduser() if str(config).strip() else default_config()
    if not config_path.is_absolute():
        config_path = base / config_path
    if not config_path.is_file():
        raise LaunchArgumentError(f"launch argument config:={config}: no such file {config_path}")
    overrides: dict[str, Any] = {"config_dir": str(config_path.parent)}
    given = {"model": model, "backend": backend, "worker": worker, "command_interface": command_interface}
    for arg, raw in given.items():
        value = str(raw).strip()
        if not value:
            continue  # "not given": the YAML's value stands
        key, choices = OVERRIDES[arg]
        if choices is not None and value not in choices:
            raise LaunchArgumentError(
                f"launch argument {arg}:={value}: expected one of {', '.join(choices)} (or empty: {key} "
                f"from {config_path.name})"
            )
        if arg == "model":
            path = Path(value).expanduser()
            value = str(path if path.is_absolute() else base / path)
        overrides[key] = value
    overrides["use_sim_time"] = parse_bool("use_sim_time", use_sim_time)
    overrides["autostart"] = False
    return [str(config_path), overrides]


def ros_arguments(
    parameters: Sequence[str | Mapping[str, Any]],
    namespace: str = "",
    node_name: str = NODE_NAME,
    params_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """`--ros-args ...` for `wam_controller` as launch_ros builds it from a `parameters` list: each YAML
    file as `--params-file`, each dict written to a parameter file of its own (in order, later wins),
    the node's name and namespace as remaps."""
    args = ["--ros-args", "-r", f"__node:={node_name}"]
    ns = namespace.strip("/")
    if ns:
        args += ["-r", f"__ns:=/{ns}"]
    for i, entry in enumerate(parameters):
        if isinstance(entry, Mapping):
            folder = Path(params_dir) if params_dir is not None else Path(tempfile.mkdtemp(prefix="wam_params_"))
            path = folder / f"{node_name}_params_{i}.yaml"
            path.write_text(parameter_file_text(entry))
            args += ["--params-file", str(path)]
        else:
            args += ["--params-file", str(entry)]
    return args


def parameter_file_text(values: Mapping[str, Any]) -> str:
    """A ROS 2 parameter file (`/**: ros__parameters:`) holding `values` (flat, dotted names nested)."""
    import yaml

    nested: dict[str, Any] = {}
    for key, value in values.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return yaml.safe_dump({"/**": {"ros__parameters": nested}}, sort_keys=False)
