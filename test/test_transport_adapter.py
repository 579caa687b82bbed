"""ControllerIO / braking tail / rclpy parameter mapping, against a recording fake controller."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace as NS

import numpy as np
import pytest

from wam_control.config import load_config
from wam_control.runtime.controller import ControllerStatus, JointCommand
from wam_control.transport import messages as M
from wam_control.transport.adapter import ControllerIO, braking_tail, camera_info_topic
from wam_control.transport.ros_params import nest, schema_parameter_names


def _types() -> M.MsgTypes:
    fields = [f for f in M.MsgTypes.__dataclass_fields__ if f not in ("floats", "octets", "byte")]
    return M.MsgTypes(**{f: NS for f in fields}, floats=lambda a: a.tolist(), octets=bytes, byte=int)


class FakeController:
    def __init__(self, config) -> None:
        self.config = config
        self.calls: list[tuple] = []
        self.reject_next: str | None = None
        self.chunk = None

    def on_joint_state(self, names, positions, velocities, stamp_s):
        self.calls.append(("js", tuple(names), np.array(positions), stamp_s))
        return self.reject_next

    def on_image(self, camera, rgb, stamp_s):
        self.calls.append(("img", camera, rgb.copy(), stamp_s))
        return None

    def on_estop(self, engaged):
        self.calls.append(("estop", engaged))

    def rearm(self):
        return True, "re-armed"

    def predicted_chunk(self):
        return self.chunk

    def status(self):
        return ControllerStatus(1, "starving", {"ticks": 5, "delay": 0.25})


@pytest.fixture
def config(fr3_config_path):
    return load_config(fr3_config_path)


def _js(names, q, stamp=1.0):
    sec, ns = M.split_s(stamp)
    return NS(header=NS(stamp=NS(sec=sec, nanosec=ns)), name=names, position=q, velocity=[], effort=[])


def test_joint_state_path_checks_counts_and_forwards(config) -> None:
    fake = FakeController(config)
    io = ControllerIO(fake, _types())
    names = list(reversed(config.joint_names))
    io.on_joint_state(_js(names, list(range(7)), 1.0))
    assert fake.calls[-1][1] == tuple(names)  # matched by name downstream, never reordered here
    io.on_joint_state(_js(names[:6], list(range(6)), 2.0))  # missing a joint: never reaches the controller
    io.on_joint_state(_js(names, list(range(7)), 0.5))  # stamp went backwards
    fake.reject_next = "joint_state: too old"
    io.on_joint_state(_js(names, list(range(7)), 3.0))
    assert len([c for c in fake.calls if c[0] == "js"]) == 2
    c = io.monitor.counters()
    assert c["rx/joint_states.accepted"] == 1 and c["rx/joint_states.rejected"] == 3
    assert c["rx/joint_states.last_problem"] == "joint_state: too old"
    diag = io.diagnostics_values()
    assert diag[0].level == 1 and diag[0].message == "starving" and diag[0].values["ticks"] == 5
    assert diag[1].level == M.WARN and "3 message(s) rejected" in diag[1].message


def test_image_path_converts_bgr(config) -> None:
    fake = FakeController(config)
    io = ControllerIO(fake, _types())
    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 3), dtype=np.uint8)
    T = _types()
    io.on_image("scene", M.image_msg(T, np.ascontiguousarray(rgb[..., ::-1]), "bgr8", 1.0))
    np.testing.assert_array_equal(fake.calls[-1][2], rgb)
    bad = M.image_msg(T, rgb, "rgb8", 2.0)
    bad.encoding = "16UC1"
    io.on_image("scene", bad)
    assert io.monitor.rejected["/camera/image_raw"] == 1
    assert camera_info_topic("/camera/image_raw") == "/camera/camera_info"


def _cmd(d=7, v=0.5):
    return JointCommand(
        3, np.linspace(-0.5, 0.5, d) + np.array([0, 0, 0, -2, 0, 2, 0]), np.full(d, v), np.full(d, 1.0)
    )


def test_trajectory_command_one_point(config) -> None:
    io = ControllerIO(FakeController(config), _types())
    cmd = _cmd()
    msg = io.command_msg(cmd)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)  # start now
    assert msg.joint_names == list(config.joint_names) and len(msg.points) == 1
    p = msg.points[0]
    assert p.positions == cmd.positions.tolist() and p.velocities == cmd.velocities.tolist()
    assert p.accelerations == cmd.accelerations.tolist()
    assert M.stamp_to_s(p.time_from_start) == pytest.approx(config.control_period)


def test_trajectory_command_with_braking_tail(config) -> None:
    cfg = replace(config, command_horizon_points=5)
    io = ControllerIO(FakeController(cfg), _types())
    msg = io.command_msg(_cmd(v=1.0))
    assert len(msg.points) == 5
    times = [M.stamp_to_s(p.time_from_start) for p in msg.points]
    assert np.all(np.diff(times) > 0)
    assert msg.points[-1].velocities == [0.0] * 7


def test_braking_tail_stops_within_deceleration() -> None:
    q = np.array([0.0, 1.0, 0.0])
    v = np.array([2.0, -1.0, 0.0])
    decel = np.array([8.0, 8.0, np.inf])
    times, pos, vel = braking_tail(q, v, decel, np.full(3, -0.3), np.full(3, 1.05), n=20, t0=0.002)
    assert times[-1] == pytest.approx(0.002 + 2.0 / 8.0)
    np.testing.assert_allclose(vel[-1], 0.0)
    np.testing.assert_allclose(pos[-1, :2], [0.0 + 2.0**2 / 16, 1.0 - 1.0 / 16])  # v^2 / 2d
    assert np.all(pos <= 1.05) and np.all(pos >= -0.3)
    acc = np.diff(np.vstack([v, vel]), axis=0) / np.diff(np.concatenate([[0.002], times]))[:, None]
    assert np.all(np.abs(acc[:, :2]) <= 8.0 + 1e-9)


def test_forward_command_exact_joints_in_order(config) -> None:
    cfg = replace(config, command_interface="forward_position")
    io = ControllerIO(FakeController(cfg), _types())
    cmd = _cmd()
    msg = io.command_msg(cmd)
    assert msg.data == cmd.positions.tolist() and msg.layout.dim == []


def test_predicted_chunk_only_on_change(config) -> None:
    fake = FakeController(config)
    io = ControllerIO(fake, _types(), now=lambda: 10.0)
    assert io.predicted_chunk_msg() is None
    fake.chunk = (1, np.array([-0.05, 0.0, 0.05, 0.1]), np.arange(28.0).reshape(4, 7))
    msg = io.predicted_chunk_msg()
    assert [M.stamp_to_s(p.time_from_start) for p in msg.points] == pytest.approx([0.0, 0.05, 0.1])
    assert M.stamp_to_s(msg.header.stamp) == 10.0
    assert io.predicted_chunk_msg() is None
    fake.chunk = (2, *fake.chunk[1:])
    assert io.predicted_chunk_msg() is not None


def test_estop_and_rearm(config) -> None:
    fake = FakeController(config)
    io = ControllerIO(fake, _types())
    io.on_estop(NS(data=True))
    assert fake.calls[-1] == ("estop", True) and io.estop_engaged
    assert io.rearm() == (True, "re-armed")


def test_ros_parameters_rebuild_the_same_config(fr3_config_path) -> None:
    """ROS 2 flattens the YAML into dotted parameters; the node nests them back into the same config."""
    import yaml

    from wam_control.config import config_from_dict

    raw = yaml.safe_load(fr3_config_path.read_text())["/**"]["ros__parameters"]

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    flat = dict(flatten(raw))
    declared = {name for name, _ in schema_parameter_names()}
    dynamic = {k for k in flat if k.startswith(("joint_limits.", "topics.camera_images."))}
    assert set(flat) - dynamic <= declared, set(flat) - dynamic - declared
    rebuilt = config_from_dict(nest(flat), source="params", base_dir=fr3_config_path.parent)
    original = load_config(fr3_config_path)
    assert replace(rebuilt, source="x") == replace(original, source="x")


def test_run_cli_reports_bad_config_and_model(tmp_path, fr3_config_path, capsys) -> None:
    from wam_control.transport import dds_node

    assert dds_node.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope" in capsys.readouterr().err
    assert dds_node.main(["--config", str(fr3_config_path), "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx" in capsys.readouterr().err


class FakePreview:
    """ImaginationPreview's transport-facing surface; `fail` makes the decoder load raise."""

    def __init__(self, fail: str = "") -> None:
        self.subscribed = False
        self.fail = fail
        self.calls: list[bool] = []
        self.last_error = ""
        self.publish = None

    def set_subscribed(self, on: bool) -> None:
        self.calls.append(on)
        if on and self.fail:
            raise ValueError(self.fail)
        self.subscribed = on

    def values(self):
        return {"imagination.subscribed": int(self.subscribed)}


def test_surprise_message_carries_the_monitor_score(config) -> None:
    assert ControllerIO(FakeController(config), _types()).surprise_msg() is None
    monitor = NS(score=4.5)
    io = ControllerIO(FakeController(config), _types(), surprise=monitor)
    assert io.surprise_msg().data == 4.5
    monitor.score = 0.25
    assert io.surprise_msg().data == 0.25


def test_imagination_follows_the_subscriber_count_and_publishes_rgb8(config) -> None:
    preview = FakePreview()
    io = ControllerIO(FakeController(config), _types(), now=lambda: 7.5, imagination=preview)
    sent: list = []
    io.bind_imagination(sent.append)
    for n in (0, 0, 2, 3, 1, 0, 0):
        io.poll_imagination(n)
    assert preview.calls == [True, False]  # only on the transitions
    # camera_info seen: the frame carries the camera's frame_id; stamped now, tight rgb8 rows
    io.cameras["scene"].info = NS(frame_id="camera_optical")
    preview.publish(np.full((4, 6, 3), 9, np.uint8), 120, 0.8)
    msg = sent[-1]
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 4, 6, 18)
    assert msg.header.frame_id == "camera_optical" and M.stamp_to_s(msg.header.stamp) == 7.5
    io.poll_imagination(1)
    io.imagination_off()
    assert preview.calls == [True, False, True, False] and not preview.subscribed


def test_imagination_decoder_failure_is_reported_once_and_not_retried(config, caplog) -> None:
    preview = FakePreview(fail="decoder x.onnx was trained for another model")
    io = ControllerIO(FakeController(config), _types(), imagination=preview)
    with caplog.at_level("ERROR"):
        for _ in range(5):
            io.poll_imagination(1)
    assert preview.calls == [True]
    assert sum("imagination preview disabled" in r.message for r in caplog.records) == 1
    transport = io.diagnostics_values()[1].values
    assert "another model" in transport["imagination.error"]
    assert transport["imagination.subscribed"] == 0


# ------------------------------------------------------------------ endpoints declared once (endpoints.py)


def test_endpoints_are_the_configs_topics_and_both_transports_have_each_kind(config) -> None:
    from wam_control.transport import dds_types as d
    from wam_control.transport.endpoints import ControllerEndpoints

    io = ControllerIO(FakeController(config), _types())
    ep = ControllerEndpoints(io)
    subs = {(e.topic, e.kind) for e in ep.subscriptions}
    assert subs == {
        ("/joint_states", "JointState"), ("~/estop", "Bool"),
        ("/camera/image_raw", "Image"), ("/camera/camera_info", "CameraInfo"),
        ("/wrist_camera/image_raw", "Image"), ("/wrist_camera/camera_info", "CameraInfo"),
    }  # fmt: skip
    assert [(p.key, p.topic, p.kind) for p in ep.publications] == [
        ("command", "/joint_trajectory_controller/joint_trajectory", "JointTrajectory"),
        ("predicted_chunk", "~/predicted_chunk", "JointTrajectory"),
        ("diagnostics", "/diagnostics", "DiagnosticArray"),
    ]
    # Clock only where the transport stamps with it itself (DDS); the prompt only for a prompted model.
    io.tokenizer = object()
    ep2 = ControllerEndpoints(io, clock=True)
    extra = [(e.topic, e.kind, e.handler is None) for e in ep2.subscriptions[len(ep.subscriptions):]]
    assert extra == [("/clock", "Clock", False), ("~/instruction", "String", True), ("~/instruction", "String", True)]
    # Every kind is a message class in both transports (rclpy's MsgTypes field, dds_types' `<Kind>_`).
    kinds = {e.kind for e in ep2.subscriptions} | {p.kind for p in ep2.publications} | {"Float64MultiArray"}
    for kind in kinds:
        assert kind in M.MsgTypes.__dataclass_fields__ and hasattr(d, kind + "_"), kind


def test_endpoints_forward_interface_and_command_publish(config) -> None:
    from wam_control.transport.endpoints import ControllerEndpoints

    cfg = replace(config, command_interface="forward_position")
    io = ControllerIO(FakeController(cfg), M.dds_msg_types())
    ep = ControllerEndpoints(io)
    assert (ep.command_topic, ep.publications[0].kind) == ("/forward_position_controller/commands", "Float64MultiArray")
    sent: list = []
    ep.bind({p.key: sent.append for p in ep.publications}, [])
    q = np.linspace(-0.5, 0.5, 7)
    ep.publish_command(JointCommand(3, q, np.zeros(7), np.zeros(7)))
    assert len(sent) == 1 and list(sent[0].data) == pytest.approx(q)
