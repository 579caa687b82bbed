"""Sim bridge: Gazebo-style topics over Cyclone DDS, lockstep clock, command handling."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from wam_control.sim.arm import HOME_Q, JOINT_NAMES, SimArm
from wam_control.transport import messages as M

# ---------------------------------------------------------------- trajectory sampling (no DDS)


def _traj(times, positions, velocities=None, names=JOINT_NAMES, stamp=0.0):
    return M.TrajectoryValue(
        joint_names=tuple(names),
        stamp_s=stamp,
        times=np.asarray(times, float),
        positions=np.asarray(positions, float),
        velocities=None if velocities is None else np.asarray(velocities, float),
        accelerations=None,
    )


def test_trajectory_sampling_linear_and_hermite() -> None:
    from wam_control.sim.bridge import TrajectoryCommand

    q0 = np.zeros(7)
    lin = TrajectoryCommand(_traj([0.1, 0.3], [np.ones(7), 3 * np.ones(7)]), 2.0, q0, np.zeros(7))
    assert lin.sample(1.0) == pytest.approx(q0)
    assert lin.sample(2.05) == pytest.approx(0.5 * np.ones(7))
    assert lin.sample(2.2) == pytest.approx(2 * np.ones(7))
    assert lin.sample(9.0) == pytest.approx(3 * np.ones(7))
    # Hermite through knots with the given velocities: constant-velocity data reproduces the line
    herm = TrajectoryCommand(_traj([0.1], [np.ones(7)], [10 * np.ones(7)]), 0.0, q0, 10 * np.ones(7))
    assert herm.sample(0.025) == pytest.approx(0.25 * np.ones(7))
    # joints matched by name, whatever order the message uses
    rev = TrajectoryCommand(_traj([0.1], [np.arange(7.0)[::-1]], names=JOINT_NAMES[::-1]), 0.0, q0, q0)
    assert rev.sample(0.1) == pytest.approx(np.arange(7.0))
    with pytest.raises(M.MessageError, match="lacks"):
        TrajectoryCommand(_traj([0.1], [np.zeros((1, 6))], names=JOINT_NAMES[:6]), 0.0, q0, q0)


# ---------------------------------------------------------------- over DDS (loopback, private domain)

cyclonedds = pytest.importorskip("cyclonedds")


def _wait(pred, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture()
def link():
    from wam_control.sim.bridge import SimBridge
    from wam_control.sim.gl import RenderUnavailableError
    from wam_control.transport import dds_types as d
    from wam_control.transport import qos
    from wam_control.transport.dds import DdsNode

    domain = 150 + os.getpid() % 70  # private domain: parallel test runs on this host never cross-talk
    try:
        arm = SimArm(control_hz=100.0, task="reach", seed=1, camera_hz=20.0, cameras=("scene",))
    except RenderUnavailableError as exc:
        pytest.skip(f"no offscreen GL backend: {exc}")
    sim_node = DdsNode("wam_sim", domain_id=domain)
    ctl_node = DdsNode("test_controller", domain_id=domain)
    bridge = SimBridge(arm, sim_node, M.dds_msg_types(), clock_mode="lockstep")
    got: dict[str, list] = {"joints": [], "images": [], "clock": []}
    ctl_node.subscription("/joint_states", d.JointState_, got["joints"].append, qos.JOINT_STATES)
    ctl_node.subscription("/camera/image_raw", d.Image_, got["images"].append, qos.SENSOR_DATA)
    ctl_node.subscription("/clock", d.Clock_, got["clock"].append, qos.CLOCK)
    fwd = ctl_node.publisher("/forward_position_controller/commands", d.Float64MultiArray_, qos.RELIABLE)
    traj = ctl_node.publisher(
        "/joint_trajectory_controller/joint_trajectory", d.JointTrajectory_, qos.RELIABLE
    )
    assert _wait(lambda: fwd.matched() >= 1 and traj.matched() >= 1), "DDS discovery did not complete"
    assert _wait(lambda: bridge.pub_joints.matched() >= 1 and bridge.pub_image["scene"].matched() >= 1)
    yield arm, bridge, fwd, traj, got
    ctl_node.close()
    sim_node.close()
    arm.close()


def test_lockstep_advances_one_period_per_command(link) -> None:
    arm, bridge, fwd, _, got = link
    T = M.dds_msg_types()
    bridge.publish_observation()
    assert _wait(lambda: len(got["joints"]) >= 1 and len(got["images"]) >= 1)
    assert not bridge.spin_once(0.05)  # no command: time stands still
    assert arm.time == 0.0
    target = HOME_Q + 0.05
    for k in range(30):
        assert fwd.publish(M.float64_multi_array_msg(T, target, label=None))
        assert bridge.spin_once(2.0), f"command {k} not received"
    assert arm.time == pytest.approx(30 * arm.control_period)
    assert _wait(lambda: M.joint_state_from_msg(got["joints"][-1]).stamp_s == pytest.approx(arm.time))
    last = M.joint_state_from_msg(got["joints"][-1], JOINT_NAMES)
    assert last.names == JOINT_NAMES
    assert np.max(np.abs(last.positions - target)) < 0.01
    img = M.image_from_msg(got["images"][-1])
    assert img.rgb.shape == (96, 96, 3) and img.rgb.std() > 5
    # camera at 20 Hz: frames at 0.0, 0.05, ..., 0.3 s
    stamps = sorted({round(M.image_from_msg(m).stamp_s, 6) for m in got["images"]})
    assert stamps[-1] == pytest.approx(0.3) and all(s * 20 == pytest.approx(round(s * 20)) for s in stamps)
    assert M.clock_from_msg(got["clock"][-1]) == pytest.approx(arm.time)


def test_bad_forward_command_is_rejected_and_trajectory_is_followed(link) -> None:
    arm, bridge, fwd, traj, _ = link
    T = M.dds_msg_types()
    q0 = arm.joint_state()[1]
    fwd.publish(M.float64_multi_array_msg(T, np.zeros(6), label=None))
    assert bridge.spin_once(2.0)
    assert bridge.rejected == {"/forward_position_controller/commands": 1}
    assert np.max(np.abs(arm.command() - q0)) < 1e-12  # the bad message changed nothing
    t0 = arm.time
    goal = q0 + 0.1
    # joints listed in reverse: matched by name; stamp 0 = start now; one point 0.2 s ahead
    traj.publish(M.joint_trajectory_msg(T, JOINT_NAMES[::-1], [0.2], goal[::-1][None, :]))
    assert bridge.spin_once(2.0)
    assert arm.command() == pytest.approx(q0 + 0.1 * (arm.control_period / 0.2))
    while arm.time < t0 + 0.1 - 1e-9:
        bridge.advance()  # no new message: keep following the same trajectory
    assert arm.command() == pytest.approx(q0 + 0.05)
    while arm.time < t0 + 0.3 - 1e-9:
        bridge.advance()
    assert arm.command() == pytest.approx(goal)  # holds the last point
    assert bridge.rejected == {"/forward_position_controller/commands": 1}
