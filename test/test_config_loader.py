"""Config loader: presets, accepted layouts, and one clear error per kind of mistake."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from wam_control.config import ConfigError, config_from_dict, load_config, preset_path

# limits.md, transcribed independently of the preset files.
FR3 = {
    "q": [
        (-2.7437, 2.7437),
        (-1.7837, 1.7837),
        (-2.9007, 2.9007),
        (-3.0421, -0.1518),
        (-2.8065, 2.8065),
        (0.5445, 4.5169),
        (-3.0159, 3.0159),
    ],
    "v": [2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26],
    "a": [10.0] * 7,
    "j": [5000.0] * 7,
}
PANDA = {
    "q": [
        (-2.8973, 2.8973),
        (-1.7628, 1.7628),
        (-2.8973, 2.8973),
        (-3.0718, -0.0698),
        (-2.8973, 2.8973),
        (-0.0175, 3.7525),
        (-2.8973, 2.8973),
    ],
    "v": [2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61],
    "a": [15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0],
    "j": [7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0],
}


@pytest.mark.parametrize(("name", "ref"), [("fr3", FR3), ("panda", PANDA)])
def test_presets_load_and_match_limits_md(name: str, ref: dict) -> None:
    cfg = load_config(preset_path(name))
    assert cfg.dof == 7 and cfg.joint_names == tuple(f"{name}_joint{i}" for i in range(1, 8))
    for i, joint in enumerate(cfg.joint_names):
        jl = cfg.joint_limits[joint]
        assert (jl.min_position, jl.max_position) == pytest.approx(ref["q"][i])
        assert jl.max_velocity == pytest.approx(ref["v"][i])
        assert jl.max_acceleration == pytest.approx(ref["a"][i])
        assert jl.deceleration == pytest.approx(ref["a"][i])
        assert jl.max_jerk == pytest.approx(ref["j"][i])
    la = cfg.limit_arrays()
    margin = cfg.safety.position_margin
    np.testing.assert_allclose(la.q_min, [lo + margin for lo, _ in ref["q"]])
    np.testing.assert_allclose(la.q_max, [hi - margin for _, hi in ref["q"]])
    np.testing.assert_allclose(la.v_max, ref["v"])
    np.testing.assert_allclose(la.j_max, ref["j"])


def _plain() -> dict:
    """A minimal valid deployment, plain layout, two joints."""
    limits = {
        "has_position_limits": True,
        "min_position": -1.0,
        "max_position": 1.0,
        "has_velocity_limits": True,
        "max_velocity": 2.0,
        "has_acceleration_limits": True,
        "max_acceleration": 10.0,
        "has_jerk_limits": True,
        "max_jerk": 5000.0,
    }
    return {
        "joints": ["j1", "j2"],
        "control_hz": 500.0,
        "joint_limits": {"j1": dict(limits), "j2": dict(limits)},
    }


def _with(path: str, value: object, delete: bool = False) -> dict:
    data = copy.deepcopy(_plain())
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if delete:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


# (case id, data, key named in the error, words expected in the message)
ERROR_CASES = [
    ("unknown top-level key", _with("contol_hz", 500.0), "contol_hz", "unknown key"),
    ("unknown nested key", _with("safety.margin", 0.1), "safety.margin", "unknown key"),
    (
        "unknown joint-limit key",
        _with("joint_limits.j1.max_velocty", 1.0),
        "joint_limits.j1.max_velocty",
        "unknown key",
    ),
    (
        "missing joint limits",
        _with("joint_limits.j2", None, delete=True),
        "joint_limits.j2",
        "missing limits",
    ),
    (
        "missing velocity limit",
        _with("joint_limits.j1.has_velocity_limits", False),
        "joint_limits.j1.has_velocity_limits",
        "expected true",
    ),
    (
        "min above max",
        _with("joint_limits.j1.min_position", 2.0),
        "joint_limits.j1.min_position",
        "must be below",
    ),
    ("negative rate", _with("control_hz", -500.0), "control_hz", "positive rate"),
    ("zero rate", _with("control_hz", 0), "control_hz", "positive rate"),
    ("rate as text", _with("control_hz", "fast"), "control_hz", "expected a number"),
    (
        "bool for number",
        _with("joint_limits.j1.max_velocity", True),
        "joint_limits.j1.max_velocity",
        "expected a number",
    ),
    (
        "number for bool",
        _with("joint_limits.j1.has_jerk_limits", 1),
        "joint_limits.j1.has_jerk_limits",
        "true or false",
    ),
    ("joints not a list", _with("joints", "j1"), "joints", "list of strings"),
    (
        "negative velocity",
        _with("joint_limits.j1.max_velocity", -1.0),
        "joint_limits.j1.max_velocity",
        "positive",
    ),
    (
        "NaN velocity",
        _with("joint_limits.j1.max_velocity", float("nan")),
        "joint_limits.j1.max_velocity",
        "NaN",
    ),
    ("bad command interface", _with("command_interface", "effort"), "command_interface", "expected one of"),
    ("margin negative", _with("safety.position_margin", -0.1), "safety.position_margin", ">= 0"),
    (
        "brake fraction above 1",
        _with("safety.brake_deceleration_fraction", 1.5),
        "safety.brake_deceleration_fraction",
        "fraction",
    ),
    ("negative spin", _with("loop.spin_s", -1e-3), "loop.spin_s", ">= 0"),
    (
        "negative min prefix",
        _with("inference.min_prefix_steps", -1),
        "inference.min_prefix_steps",
        ">= 0 action steps",
    ),
    ("bad affinity", _with("loop.cpu_affinity", "a,b"), "loop.cpu_affinity", "CPU ids"),
    ("rt priority out of range", _with("loop.realtime_priority", 120), "loop.realtime_priority", "1-99"),
    ("duplicate joints", _with("joints", ["j1", "j1"]), "joints", "unique"),
    ("missing joints", _with("joints", None, delete=True), "joints", "missing"),
]


@pytest.mark.parametrize(("case", "data", "key", "words"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_name_file_key_and_expectation(case: str, data: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="deploy.yaml")
    err = info.value
    assert err.key == key, f"{case}: error names {err.key!r}"
    assert str(err).startswith("deploy.yaml: ")
    assert words in str(err), f"{case}: {err}"


def test_valid_plain_layout_loads() -> None:
    cfg = config_from_dict(_plain(), source="deploy.yaml")
    assert cfg.joint_names == ("j1", "j2") and cfg.control_period == pytest.approx(0.002)
    la = cfg.limit_arrays()
    np.testing.assert_allclose(la.q_max, [1.0 - cfg.safety.position_margin] * 2)
    np.testing.assert_allclose(la.d_max, [10.0, 10.0])  # deceleration falls back to acceleration


def test_ros_parameters_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"wam_controller": {"ros__parameters": _plain()}}))
    cfg = load_config(path)
    assert cfg.joint_names == ("j1", "j2") and cfg.source == str(path)


def test_ros_parameters_wrapper_mixed_with_plain_keys_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": _plain()}, "control_hz": 100.0}))
    with pytest.raises(ConfigError, match="mixes ros__parameters"):
        load_config(path)


# A user's ros2_control joint_limits file, exactly as such files are written (comments, ros__parameters
# wrapper, soft limits, effort, integer values): it must load unchanged.
ROS2_CONTROL_LIMITS = """\
# joint_limits.yaml of a ros2_control robot description package
joint_limits:
  ros__parameters:
    joint_limits:
      arm_joint_1:
        has_position_limits: true
        min_position: -2.9
        max_position: 2.9
        has_velocity_limits: true
        max_velocity: 2
        has_acceleration_limits: true
        max_acceleration: 8.0
        has_deceleration_limits: true
        max_deceleration: 12.0
        has_jerk_limits: false
        max_jerk: 0.0
        has_effort_limits: true
        max_effort: 87.0
        has_soft_limits: true
        k_position: 100.0
        k_velocity: 20.0
        soft_lower_limit: -2.8
        soft_upper_limit: 2.8
      arm_joint_2:
        has_position_limits: true
        min_position: -1.5
        max_position: 1.5
        has_velocity_limits: true
        max_velocity: 1.5
        has_acceleration_limits: true
        max_acceleration: 5.0
        has_jerk_limits: true
        max_jerk: 1000.0
"""

MOVEIT_LIMITS = """\
default_velocity_scaling_factor: 0.1
default_acceleration_scaling_factor: 0.1
joint_limits:
  arm_joint_1: {has_velocity_limits: true, max_velocity: 2.0, has_acceleration_limits: true, max_acceleration: 8.0, has_position_limits: true, min_position: -2.9, max_position: 2.9}
  arm_joint_2: {has_velocity_limits: true, max_velocity: 1.5, has_acceleration_limits: true, max_acceleration: 5.0, has_position_limits: true, min_position: -1.5, max_position: 1.5}
"""


@pytest.mark.parametrize("text", [ROS2_CONTROL_LIMITS, MOVEIT_LIMITS], ids=["ros2_control", "moveit"])
def test_users_joint_limits_file_loads_unchanged(tmp_path: Path, text: str) -> None:
    (tmp_path / "joint_limits.yaml").write_text(text)
    (tmp_path / "deploy.yaml").write_text(
        "joints: [arm_joint_1, arm_joint_2]\ncontrol_hz: 1000\njoint_limits_file: joint_limits.yaml\n"
    )
    cfg = load_config(tmp_path / "deploy.yaml")
    jl = cfg.joint_limits["arm_joint_1"]
    assert jl.max_velocity == 2.0 and jl.max_acceleration == 8.0
    la = cfg.limit_arrays()
    if text is ROS2_CONTROL_LIMITS:
        assert jl.deceleration == 12.0 and jl.max_effort == 87.0
        assert math.isinf(la.j_max[0]) and la.j_max[1] == 1000.0  # has_jerk_limits false: no limit
    np.testing.assert_allclose(
        la.q_min, [-2.9 + cfg.safety.position_margin, -1.5 + cfg.safety.position_margin]
    )


def test_joint_limits_file_errors_name_that_file(tmp_path: Path) -> None:
    bad = ROS2_CONTROL_LIMITS.replace("max_position: 1.5", "max_position: -1.6")
    (tmp_path / "joint_limits.yaml").write_text(bad)
    (tmp_path / "deploy.yaml").write_text(
        "joints: [arm_joint_1, arm_joint_2]\njoint_limits_file: joint_limits.yaml\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "deploy.yaml")
    assert info.value.source.endswith("joint_limits.yaml")
    assert info.value.key == "joint_limits.arm_joint_2.min_position"


def test_joint_limits_file_missing(tmp_path: Path) -> None:
    (tmp_path / "deploy.yaml").write_text("joints: [a]\njoint_limits_file: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="file not found: nowhere.yaml"):
        load_config(tmp_path / "deploy.yaml")


def test_both_limits_and_limits_file_is_an_error() -> None:
    data = _plain()
    data["joint_limits_file"] = "x.yaml"
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="deploy.yaml")
    assert info.value.key == "joint_limits_file"


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("joints: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "b.yaml")


def test_every_nested_section_is_a_ros_parameter_section() -> None:
    """The rclpy node flattens these sections into parameters: a new section must be listed there."""
    import dataclasses

    from wam_control.config import schema
    from wam_control.transport.ros_params import _SECTIONS

    nested = {
        f.name
        for f in dataclasses.fields(schema.RobotConfig)
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())
    }
    assert nested == set(_SECTIONS)


def test_section_consistency_errors_name_the_file_and_section(tmp_path) -> None:
    src = preset_path("fr3").read_text()
    bad = re.sub(r"stop_threshold: [0-9.]+", "stop_threshold: 2.0", src)
    assert bad != src
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=r"bad\.yaml: surprise: .*stop_threshold"):
        load_config(path)


def test_files_named_in_the_config_resolve_against_its_folder(tmp_path) -> None:
    src = preset_path("fr3").read_text()
    src = src.replace('calibration: ""', "calibration: stats/nominal.json").replace(
        'decoder: ""', "decoder: stats/decoder.onnx"
    )
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "stats").mkdir()
    (folder / "stats" / "nominal.json").write_text("{}")
    path = folder / "robot.yaml"
    path.write_text(src.replace("model: ../models/wam_reach_wrist.onnx", "model: m.onnx"))
    config = load_config(path)
    assert Path(config.surprise.calibration) == folder / "stats" / "nominal.json"
    # Not there yet: still placed beside the config, where the error message will point.
    assert Path(config.imagination.decoder) == folder / "stats" / "decoder.onnx"
    assert Path(config.inference.model) == folder / "m.onnx"


def _with_gripper(**dof: object) -> dict:
    """_plain() plus a gripper extra DOF on joint 'finger' (stroke 0-0.04 m)."""
    data = _plain()
    data["joint_limits"]["finger"] = {**data["joint_limits"]["j1"], "min_position": 0.0, "max_position": 0.04}
    data["extra_dofs"] = {"gripper": {"joint": "finger", "command_topic": "/gripper/commands", **dof}}
    return data


@pytest.mark.parametrize(
    ("dof", "finger_range"),
    [
        ({}, (0.004, 0.036)),  # the arm's rule: safety.position_margin, at most 10 % of the range
        ({"position_margin": None}, (0.004, 0.036)),
        ({"position_margin": 0.0}, (0.0, 0.04)),  # a gripper: closed and fully open are commands
        ({"position_margin": 0.002}, (0.002, 0.038)),
    ],
)
def test_an_extra_dof_keeps_its_own_position_margin(dof: dict, finger_range: tuple[float, float]) -> None:
    cfg = config_from_dict(_with_gripper(**dof), source="deploy.yaml")
    la = dataclasses.replace(cfg, joints=("j1", "j2", "finger")).limit_arrays()  # as the controller does
    assert (la.q_min[2], la.q_max[2]) == pytest.approx(finger_range)
    np.testing.assert_allclose(la.q_max[:2], [1.0 - cfg.safety.position_margin] * 2)  # the arm's unchanged


@pytest.mark.parametrize(("margin", "words"), [(-0.001, ">= 0"), (0.02, "under half"), ("none", "expected a number")])
def test_an_extra_dofs_bad_position_margin_is_named(margin: object, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(_with_gripper(position_margin=margin), source="deploy.yaml")
    assert info.value.key == "extra_dofs.gripper.position_margin" and words in str(info.value)


def test_the_hand_presets_gripper_commands_its_whole_stroke() -> None:
    cfg = load_config(preset_path("fr3_hand"))
    finger = cfg.extra_joint("gripper")
    la = dataclasses.replace(cfg, joints=(*cfg.joints, finger)).limit_arrays()
    assert (la.q_min[-1], la.q_max[-1]) == (0.0, 0.04)
    assert la.q_max[0] == pytest.approx(cfg.joint_limits["fr3_joint1"].max_position - cfg.safety.position_margin)
