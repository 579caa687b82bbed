"""DdsNode API: ROS naming, domain id, loopback pinning, QoS mapping, in-process pub/sub, robustness."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")

from wam_control.transport import dds_types as D
from wam_control.transport import messages as M
from wam_control.transport import qos
from wam_control.transport.dds import (
    LOOPBACK_URI,
    DdsNode,
    dds_topic_name,
    domain_id_from_env,
    pin_loopback,
    resolve_name,
)


@pytest.mark.parametrize(
    "name,ns,expected",
    [
        ("/joint_states", "", "/joint_states"),
        ("/joint_states", "arm", "/joint_states"),
        ("~/estop", "", "/wam_controller/estop"),
        ("~/estop", "/left/", "/left/wam_controller/estop"),
        ("diagnostics", "left", "/left/diagnostics"),
        ("~", "", "/wam_controller"),
    ],
)
def test_resolve_name(name: str, ns: str, expected: str) -> None:
    assert resolve_name(name, "wam_controller", ns) == expected
    assert dds_topic_name(expected) == "rt" + expected


@pytest.mark.parametrize("bad", ["", "a//b", "/with space"])
def test_resolve_name_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_name(bad, "n")


def test_domain_id_from_env() -> None:
    assert domain_id_from_env({}) == 0
    assert domain_id_from_env({"ROS_DOMAIN_ID": " 42 "}) == 42
    for bad in ("x", "233", "-1"):
        with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
            domain_id_from_env({"ROS_DOMAIN_ID": bad})


def test_pin_loopback_respects_user_setting() -> None:
    env: dict[str, str] = {}
    assert pin_loopback(env) and env["CYCLONEDDS_URI"] == LOOPBACK_URI
    assert "<NetworkInterface name='lo'/>" in LOOPBACK_URI and "<AllowMulticast>false" in LOOPBACK_URI
    assert "127.0.0.1" in LOOPBACK_URI
    user = {"CYCLONEDDS_URI": "file:///etc/cyclone.xml"}
    assert not pin_loopback(user) and user["CYCLONEDDS_URI"] == "file:///etc/cyclone.xml"


def test_qos_profiles_match_design() -> None:
    from cyclonedds.core import Policy

    js = qos.to_dds(qos.JOINT_STATES)
    assert Policy.History.KeepLast(10) in js and Policy.Durability.Volatile in js
    assert any(isinstance(x, Policy.Reliability.Reliable) for x in js)
    img = qos.to_dds("sensor_data")
    assert Policy.Reliability.BestEffort in img and Policy.History.KeepLast(5) in img
    assert Policy.History.KeepLast(1) in qos.to_dds(qos.DIAGNOSTICS)
    assert Policy.Reliability.BestEffort in qos.to_dds(qos.CLOCK)
    assert Policy.DataRepresentation(use_cdrv0_representation=True) in js  # XCDR1, as ROS 2 writes
    with pytest.raises(ValueError, match="unknown QoS profile 'fast'"):
        qos.profile("fast")


def _wait(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def nodes():
    domain = random.randint(100, 200)
    a, b = DdsNode("talker", domain_id=domain), DdsNode("listener", namespace="ns", domain_id=domain)
    yield a, b
    a.close()
    b.close()


def test_pubsub_image_and_latest(nodes) -> None:
    a, b = nodes
    got: list = []
    sub = b.subscription("/camera/image_raw", D.Image_, got.append, "sensor_data")
    pub = a.publisher("/camera/image_raw", D.Image_, "sensor_data")
    assert sub.topic == "/camera/image_raw"
    assert _wait(lambda: pub.matched() == 1 and sub.matched() == 1)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    T = M.dds_msg_types()
    for i in range(3):
        assert pub.publish(M.image_msg(T, pixels, "rgb8", stamp_s=float(i)))
    assert _wait(lambda: len(got) >= 1 and sub.latest is not None and sub.latest.header.stamp.sec == 2)
    np.testing.assert_array_equal(M.image_from_msg(sub.latest).rgb, pixels)
    assert sub.take_latest() is not None and sub.take_latest() is None


def test_private_topic_names_and_type_conflict(nodes) -> None:
    a, b = nodes
    got: list = []
    b.subscription("~/estop", D.Bool_, got.append, "reliable")
    pub = a.publisher("/ns/listener/estop", D.Bool_, "reliable")
    assert _wait(lambda: pub.matched() == 1)
    pub.publish(D.Bool_(data=True))
    assert _wait(lambda: got and got[-1].data is True)
    with pytest.raises(ValueError, match="already used with std_msgs::msg::dds_::Bool_"):
        a.publisher("/ns/listener/estop", D.JointState_, "reliable")


def test_reliable_reader_does_not_match_best_effort_writer(nodes) -> None:
    a, b = nodes
    sub = b.subscription("/joint_states", D.JointState_, None, "joint_states")
    pub = a.publisher("/joint_states", D.JointState_, "sensor_data")
    time.sleep(0.3)
    assert pub.matched() == 0 and sub.matched() == 0  # QoS incompatibility, as in ROS 2


def test_callback_errors_are_contained(nodes) -> None:
    a, b = nodes

    def boom(msg):
        raise RuntimeError("bad callback")

    sub = b.subscription("/x", D.Bool_, boom, "reliable")
    pub = a.publisher("/x", D.Bool_, "reliable")
    assert _wait(lambda: pub.matched() == 1)
    for _ in range(3):
        pub.publish(D.Bool_(data=True))
    assert _wait(lambda: sub.callback_errors == 3)
    assert sub.received == 3 and "bad callback" in sub.last_error


def test_publish_failure_is_counted_not_raised(nodes) -> None:
    a, _ = nodes
    pub = a.publisher("/y", D.JointState_, "reliable")
    assert pub.publish(D.JointState_(name=["a"], position=["not a number"])) is False  # type: ignore[list-item]
    assert pub.failed == 1 and pub.last_error


def test_controller_node_estop_and_rearm_topics(fr3_config_path) -> None:
    """DdsControllerNode's wiring: ~/estop reaches Controller.on_estop, ~/rearm answers on ~/rearm_result."""
    from wam_control.config import load_config
    from wam_control.transport.dds_node import DdsControllerNode

    class Fake:
        def __init__(self, config) -> None:
            self.config = config
            self.estops: list[bool] = []

        def on_estop(self, engaged: bool) -> None:
            self.estops.append(engaged)

        def rearm(self):
            return False, "e-stop is still engaged"

    domain = random.randint(100, 200)
    fake = Fake(load_config(fr3_config_path))
    ctrl_node = DdsNode("wam_controller", domain_id=domain)
    peer = DdsNode("operator", domain_id=domain)
    try:
        node = DdsControllerNode(fake, ctrl_node)
        assert node.command_pub.topic == "/joint_trajectory_controller/joint_trajectory"
        answers: list = []
        peer.subscription("/wam_controller/rearm_result", D.Bool_, answers.append, "reliable")
        estop = peer.publisher("/wam_controller/estop", D.Bool_, "reliable")
        rearm = peer.publisher("/wam_controller/rearm", D.Bool_, "reliable")
        assert _wait(
            lambda: estop.matched() == 1 and rearm.matched() == 1 and node.rearm_result_pub.matched() == 1
        )
        estop.publish(D.Bool_(data=True))
        assert _wait(lambda: fake.estops == [True])
        rearm.publish(D.Bool_(data=True))
        assert _wait(lambda: answers and answers[-1].data is False)
        assert node.last_rearm == "refused: e-stop is still engaged"
    finally:
        ctrl_node.close()
        peer.close()
