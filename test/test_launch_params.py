"""launch_params: what robot.launch.py turns its arguments into, tested without ROS 2's launch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wam_control.config import config_from_dict, read_config_data
from wam_control.transport.launch_params import (
    LaunchArgumentError,
    controller_parameters,
    parameter_file_text,
    parse_bool,
    ros_arguments,
)
from wam_control.transport.ros_params import deep_merge, nest

REPO = Path(__file__).resolve().parents[1]
FR3 = REPO / "config" / "fr3.yaml"


def _effective(parameters: list) -> dict:
    """The parameters the node ends up with: every source in order, the later one wins (ROS 2's rule)."""
    data: dict = {}
    for entry in parameters:
        if isinstance(entry, dict):
            data = deep_merge(data, nest(entry))
        else:
            data = deep_merge(data, read_config_data(entry))
    return data


def test_default_arguments_keep_every_yaml_value() -> None:
    """The bug of issue 19: `command_interface: ''` after the YAML replaced joint_trajectory with ''."""
    params = controller_parameters(config=str(FR3))
    assert params[0] == str(FR3)
    overrides = params[1]
    assert set(overrides) == {"config_dir", "use_sim_time", "autostart"}
    assert overrides == {"config_dir": str(FR3.parent), "use_sim_time": False, "autostart": False}
    data = _effective(params)
    assert data["command_interface"] == "joint_trajectory"
    assert data["inference"]["model"] == "../models/wam_reach_wrist.onnx"
    node_only = {"config_dir", "use_sim_time", "autostart"}  # the node's own parameters, not the schema's
    config = config_from_dict({k: v for k, v in data.items() if k not in node_only},
                              base_dir=Path(overrides["config_dir"]))  # fmt: skip
    assert Path(config.inference.model).resolve() == (REPO / "models" / "wam_reach_wrist.onnx").resolve()


def test_empty_config_means_the_package_preset() -> None:
    assert Path(controller_parameters()[0]).resolve() == FR3.resolve()


@pytest.mark.parametrize(
    ("argument", "value", "key", "expected"),
    [
        ("command_interface", "forward_position", "command_interface", "forward_position"),
        ("backend", "onnxruntime", "inference.backend", "onnxruntime"),
        ("worker", "process", "inference.worker", "process"),
        ("model", "/abs/m.onnx", "inference.model", "/abs/m.onnx"),
    ],
)
def test_each_argument_overrides_its_yaml_key(argument: str, value: str, key: str, expected: str) -> None:
    params = controller_parameters(config=str(FR3), **{argument: value})
    assert params[1][key] == expected
    section, _, leaf = key.rpartition(".")
    data = _effective(params)
    assert (data[section][leaf] if section else data[leaf]) == expected
    # Nothing else moved.
    others = {k for k in params[1] if k not in ("config_dir", "use_sim_time", "autostart")}
    assert others == {key}


def test_relative_paths_are_relative_to_the_launch_directory(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "robot.yaml").write_text(FR3.read_text())
    params = controller_parameters(config="cfg/robot.yaml", model="models/m.onnx", cwd=tmp_path)
    assert params[0] == str(tmp_path / "cfg" / "robot.yaml")
    assert params[1]["inference.model"] == str(tmp_path / "models" / "m.onnx")
    # Paths inside the YAML stay relative to the YAML's folder.
    assert params[1]["config_dir"] == str(tmp_path / "cfg")


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("True", True), ("1", True), ("false", False),
                                            ("False", False), ("0", False), ("", False), (True, True)])  # fmt: skip
def test_use_sim_time_is_a_bool(raw: str, value: bool) -> None:
    assert controller_parameters(config=str(FR3), use_sim_time=raw)[1]["use_sim_time"] is value


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"use_sim_time": "maybe"}, "use_sim_time"),
        ({"command_interface": "effort"}, "command_interface"),
        ({"backend": "tflite"}, "backend"),
        ({"worker": "fork"}, "worker"),
        ({"config": "/no/such/robot.yaml"}, "config"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict, names: str) -> None:
    with pytest.raises(LaunchArgumentError, match=names):
        controller_parameters(**({"config": str(FR3)} | kwargs))


def test_parse_bool_rejects_words() -> None:
    with pytest.raises(LaunchArgumentError, match="autostart"):
        parse_bool("autostart", "sometimes")


def test_ros_arguments_as_launch_ros_passes_them(tmp_path: Path) -> None:
    params = controller_parameters(config=str(FR3), command_interface="forward_position")
    args = ros_arguments(params, namespace="left", params_dir=tmp_path)
    assert args[:5] == ["--ros-args", "-r", "__node:=wam_controller", "-r", "__ns:=/left"]
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert files[0] == str(FR3)
    written = yaml.safe_load(Path(files[1]).read_text())
    assert written["/**"]["ros__parameters"]["command_interface"] == "forward_position"
    assert written["/**"]["ros__parameters"]["use_sim_time"] is False


def test_parameter_file_nests_dotted_names() -> None:
    text = parameter_file_text({"inference.model": "/m.onnx", "autostart": False})
    assert yaml.safe_load(text) == {"/**": {"ros__parameters": {"inference": {"model": "/m.onnx"}, "autostart": False}}}
