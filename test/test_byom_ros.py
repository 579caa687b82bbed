"""The rclpy lifecycle node (`wam_controller`, its own process, Fast DDS) with a hand-built contract v2
model that takes a language prompt and drives a gripper: a deployment parameter file with an
`extra_dofs:` section, a latched ~/instruction published before the node is configured, a later prompt
from a volatile publisher, and the gripper's own command topic. The operator is an rclpy node here."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy (ROS 2): scripts/setup.sh installs it from PyPI")
pytest.importorskip("tokenizers", reason="tokenizers (pip install 'wam_control[prompt]')")

from byom_models import FR3_HOME, build_model
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from test_byom_runtime import GRIPPER_LIMITS
from test_ros_node import NODE, diag_values, start_node, stop_node, wait_for

from wam_control.config.loader import read_config_data
from wam_control.config.presets import preset_path
from wam_control.transport import messages as M
from wam_control.transport import qos
from wam_control.transport.launch_params import controller_parameters
from wam_control.transport.ros_peer import RclpyPeer

pytestmark = pytest.mark.slow

GRIPPER_TOPIC = "/gripper_controller/commands"


def test_rclpy_node_prompt_and_gripper(tmp_path: Path) -> None:
    model = build_model(tmp_path / "vla.onnx", prompt=True, extra=["gripper"], extra_goal=[0.035])
    data = read_config_data(preset_path("fr3"))
    data["inference"] = {**data["inference"], "model": str(model)}
    data["extra_dofs"] = {"gripper": {"joint": "fr3_finger_joint1", "command_interface": "forward_position",
                                      "command_topic": GRIPPER_TOPIC}}  # fmt: skip
    data["joint_limits"]["fr3_finger_joint1"] = GRIPPER_LIMITS
    config = tmp_path / "fr3_gripper.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": data}}))

    domain = random.randint(100, 200)
    log = tmp_path / "node.log"
    proc = start_node(controller_parameters(config=str(config)), domain, log)
    stop = threading.Event()
    try:
        with RclpyPeer("wam_test_vla_operator", domain_id=domain) as peer:
            T = M.rclpy_msg_types()
            latched = peer.publisher(f"{NODE}/instruction", String, qos.INSTRUCTION)
            latched.publish(String(data="reach left"))  # before the node is even configured
            grip = peer.record(GRIPPER_TOPIC, Float64MultiArray, qos.RELIABLE)
            diag = peer.record("/diagnostics", DiagnosticArray, qos.DIAGNOSTICS, maxlen=50)
            js = peer.publisher("/joint_states", JointState, qos.JOINT_STATES)
            cams = [peer.publisher(t, Image, qos.SENSOR_DATA) for t in ("/camera/image_raw", "/wrist_camera/image_raw")]
            names = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1"]
            frame = np.zeros((32, 32, 3), np.uint8)

            def feed() -> None:  # a robot that holds still (the node's commands are not followed)
                q = np.append(FR3_HOME, 0.01)
                while not stop.is_set():
                    js.publish(M.joint_state_msg(T, names, q, stamp_s=time.time()))
                    for cam in cams:
                        cam.publish(M.image_msg(T, frame, "rgb8", stamp_s=time.time()))
                    time.sleep(0.02)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            life = peer.lifecycle(NODE)
            assert life.wait_for_service(60.0), log.read_text()
            assert life.change("configure") and life.change("activate"), log.read_text()[-3000:]

            def controller() -> dict[str, str]:
                m = diag.latest()
                return diag_values(m, "controller") if m is not None else {}

            wait_for(lambda: controller().get("model.instruction") == "reach left", 30.0,
                     f"the latched prompt in /diagnostics; log:\n{log.read_text()[-3000:]}")  # fmt: skip
            got = grip.wait(lambda m: len(m.data) == 1, 20.0)
            assert got is not None, log.read_text()[-3000:]
            volatile = peer.publisher(f"{NODE}/instruction", String, qos.RELIABLE)
            wait_for(lambda: volatile.get_subscription_count() > 0, 10.0, "the volatile reader")
            volatile.publish(String(data="reach right"))
            wait_for(lambda: controller().get("model.instruction") == "reach right", 20.0, "the new prompt")
            values = controller()
            assert values["model.extra_dofs"] == "gripper->fr3_finger_joint1"
            assert values["model.surprise"] == "off" and values["model.prefix"].startswith("none")
            g = np.array([m.data[0] for _, m in grip.items()])
            assert (g >= 0.004 - 1e-9).all() and (g <= 0.036 + 1e-9).all()  # its own limits (with margin)
            stop.set()
            feeder.join(2.0)
    finally:
        stop.set()
        rc = stop_node(proc)
    out = log.read_text(errors="replace")
    assert rc == 0 and "Traceback" not in out, out[-3000:]
