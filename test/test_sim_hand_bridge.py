"""Sim bridge with the hand: /joint_states carries the fingers, the gripper's controller topics are
followed (as the runtime's extra-DOF output sends them) or rejected, and never advance the clock."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("cyclonedds")

from wam_control.sim.arm import FINGER_NAMES, GRIPPER_OPEN, JOINT_NAMES, SimArm
from wam_control.transport import messages as M


def _wait(pred, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_gripper_topics_accepted_rejected_and_joint_states_carry_fingers() -> None:
    from wam_control.sim.bridge import TOPIC_GRIPPER_FORWARD, TOPIC_GRIPPER_TRAJECTORY, SimBridge
    from wam_control.transport import dds_types as d
    from wam_control.transport import qos
    from wam_control.transport.dds import DdsNode

    domain = 150 + (os.getpid() + 37) % 70
    arm = SimArm(control_hz=100.0, task="pick_place", seed=1, cameras=())
    sim_node = DdsNode("wam_sim", domain_id=domain)
    ctl_node = DdsNode("test_controller", domain_id=domain)
    try:
        bridge = SimBridge(arm, sim_node, M.dds_msg_types(), clock_mode="lockstep")
        T = M.dds_msg_types()
        joints: list = []
        ctl_node.subscription("/joint_states", d.JointState_, joints.append, qos.JOINT_STATES)
        fwd = ctl_node.publisher("/forward_position_controller/commands", d.Float64MultiArray_, qos.RELIABLE)
        grip = ctl_node.publisher(TOPIC_GRIPPER_FORWARD, d.Float64MultiArray_, qos.RELIABLE)
        grip_traj = ctl_node.publisher(TOPIC_GRIPPER_TRAJECTORY, d.JointTrajectory_, qos.RELIABLE)
        assert _wait(lambda: fwd.matched() >= 1 and grip.matched() >= 1 and grip_traj.matched() >= 1)
        assert _wait(lambda: bridge.pub_joints.matched() >= 1)
        bridge.publish_observation()
        assert _wait(lambda: len(joints) >= 1)
        js = M.joint_state_from_msg(joints[-1])
        assert js.names == JOINT_NAMES + FINGER_NAMES
        assert js.positions[7:] == pytest.approx([GRIPPER_OPEN, GRIPPER_OPEN], abs=1e-6)

        hold = arm.joint_state()[1]

        def tick(n: int) -> None:
            for _ in range(n):
                assert fwd.publish(M.float64_multi_array_msg(T, hold, label=None))
                assert bridge.spin_once(2.0)

        # a gripper message alone does not advance the lockstep clock
        assert grip.publish(M.float64_multi_array_msg(T, np.array([0.01, 0.01]), label=None))
        assert _wait(lambda: bridge._pending_gripper is not None)
        assert not bridge.spin_once(0.05) and arm.time == 0.0
        tick(80)  # 0.8 s: the fingers close at 0.05 m/s, from 0.04 to 0.01
        assert arm.gripper_state()[1] == pytest.approx([0.01, 0.01], abs=1e-3)
        assert bridge.rejected == {}
        # rejected: three values, a NaN; the setpoint in force stays
        for bad in (np.array([0.0, 0.0, 0.0]), np.array([np.nan, 0.0])):
            assert grip.publish(M.float64_multi_array_msg(T, bad, label=None))
            assert _wait(lambda: bridge._pending_gripper is not None)
            tick(1)
        assert bridge.rejected == {TOPIC_GRIPPER_FORWARD: 2}
        assert arm.gripper_command() == pytest.approx([0.01, 0.01])
        # a trajectory naming finger 1 only: finger 2 mimics it
        assert grip_traj.publish(M.joint_trajectory_msg(T, [FINGER_NAMES[0]], [0.2], np.array([[0.03]])))
        assert _wait(lambda: bridge._pending_gripper is not None)
        tick(80)
        assert arm.gripper_state()[1] == pytest.approx([0.03, 0.03], abs=1e-3)
        # a trajectory for other joints is rejected
        assert grip_traj.publish(M.joint_trajectory_msg(T, ["panda_finger_joint1"], [0.2], np.array([[0.0]])))
        assert _wait(lambda: bridge._pending_gripper is not None)
        tick(1)
        assert bridge.rejected == {TOPIC_GRIPPER_FORWARD: 2, TOPIC_GRIPPER_TRAJECTORY: 1}
        assert "lacks" in bridge.last_error
        assert _wait(lambda: M.joint_state_from_msg(joints[-1]).stamp_s == pytest.approx(arm.time))
        assert M.joint_state_from_msg(joints[-1]).positions[7:] == pytest.approx([0.03, 0.03], abs=1e-3)
    finally:
        ctl_node.close()
        sim_node.close()
        arm.close()


def test_bridge_without_hand_has_no_gripper_topics() -> None:
    from wam_control.sim.bridge import TOPIC_GRIPPER_FORWARD, SimBridge

    class Node:
        def __init__(self) -> None:
            self.topics: list[str] = []

        def publisher(self, topic, msg_type, profile):
            self.topics.append(topic)
            return self

        def subscription(self, topic, msg_type, callback, profile):
            self.topics.append(topic)

        def publish(self, msg) -> None:
            pass

    with SimArm(control_hz=100.0, task="reach", seed=1, cameras=()) as arm:
        node = Node()
        SimBridge(arm, node, M.dds_msg_types())
        assert TOPIC_GRIPPER_FORWARD not in node.topics and "/joint_states" in node.topics
