"""Launch files and the Gazebo bridge config, checked without ROS 2 (syntax, arguments, bridge entries)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _launch_arguments(path: Path) -> set[str]:
    """Names declared with DeclareLaunchArgument("name", ...) or listed in an ARGUMENTS table of
    (name, default, description) tuples that the file declares in a loop."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            first = node.args[0]
            if isinstance(first, ast.Constant):
                names.add(first.value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            names |= {row.elts[0].value for row in node.value.elts}  # type: ignore[attr-defined]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    return names


def test_robot_launch_arguments() -> None:
    """Every argument robot.launch.py declares is one launch_params understands, and vice versa."""
    import inspect

    from wam_control.transport.launch_params import controller_parameters

    args = _launch_arguments(REPO / "launch" / "robot.launch.py")
    mapped = set(inspect.signature(controller_parameters).parameters) - {"cwd"}
    assert args == mapped | {"namespace", "autostart"}
    text = (REPO / "launch" / "robot.launch.py").read_text()
    assert "controller_parameters(" in text and "parse_bool(\"autostart\"" in text


def test_gazebo_launch_arguments() -> None:
    args = _launch_arguments(REPO / "launch" / "gazebo.launch.py")
    assert {"world", "config", "model", "bridge_config"} <= args
    assert '"use_sim_time": "true"' in (REPO / "launch" / "gazebo.launch.py").read_text()


def test_gz_bridge_yaml() -> None:
    entries = yaml.safe_load((REPO / "config" / "gz_bridge.yaml").read_text())
    by_ros = {e["ros_topic_name"]: e for e in entries}
    expected = {
        "/clock": ("rosgraph_msgs/msg/Clock", "gz.msgs.Clock"),
        "/camera/image_raw": ("sensor_msgs/msg/Image", "gz.msgs.Image"),
        "/camera/camera_info": ("sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo"),
        "/joint_states": ("sensor_msgs/msg/JointState", "gz.msgs.Model"),
    }
    for topic, (ros_type, gz_type) in expected.items():
        e = by_ros[topic]
        assert (e["ros_type_name"], e["gz_type_name"], e["direction"]) == (ros_type, gz_type, "GZ_TO_ROS")
        assert e["gz_topic_name"]
    # The ROS side must be what the shipped config subscribes to.
    fr3 = yaml.safe_load((REPO / "config" / "fr3.yaml").read_text())["/**"]["ros__parameters"]["topics"]
    assert (
        fr3["camera_images"]["scene"] in by_ros and fr3["joint_states"] in by_ros and fr3["clock"] in by_ros
    )
