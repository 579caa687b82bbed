"""Issue 14's "done when": a minimum contract v2 model built outside the project's exporter (onnx.helper:
images, state -> actions, nothing else) runs at rate in `wam-control run` over DDS (loopback), moves, and
keeps every limit, with the FR3 preset as shipped (surprise.enabled: auto turns the monitor off for a
model without a world-model head, and says so). The plant and checker are test_transport_e2e's."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_transport_e2e as e2e
from byom_models import FR3_GOAL, build_model


def test_minimum_v2_model_runs_over_dds(tmp_path: Path, fr3_config_path: Path) -> None:
    pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed to run the model")
    from wam_control.config import load_config

    model = build_model(tmp_path / "plain_policy.onnx", weights_hash=False)
    text = fr3_config_path.read_text().replace("control_hz: 500.0", f"control_hz: {e2e.HZ}")
    assert "surprise:\n      enabled: auto" in text  # the preset as shipped, apart from the rate
    config_path = tmp_path / "fr3.yaml"
    config_path.write_text(text)
    config = load_config(config_path)

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.randint(100, 200)), PYTHONUNBUFFERED="1")
    env.pop("CYCLONEDDS_URI", None)
    me, py = str(Path(e2e.__file__).resolve()), sys.executable
    stop_file = tmp_path / "stop"
    checker = subprocess.Popen([py, me, "checker", str(tmp_path / "checker.json"), "40", str(stop_file)], env=env)
    plant = subprocess.Popen([py, me, "plant", str(tmp_path / "plant.json"), ",".join(config.joint_names), "25"],
                             env=env)  # fmt: skip
    ctrl = subprocess.Popen(
        [py, "-m", "wam_control.cli", "run", "--config", str(config_path), "--model", str(model),
         "--log-level", "INFO"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        plant.wait(timeout=35)
        time.sleep(e2e.HOLD_S)
    finally:
        ctrl.terminate()
        out, _ = ctrl.communicate(timeout=15)
        stop_file.touch()
        checker.wait(timeout=15)
        plant.kill()
    assert ctrl.returncode == 0, out
    assert "surprise monitor and imagination preview off" in out, out
    assert "scheduler's C2 seam blend" in out
    plant_info = json.loads((tmp_path / "plant.json").read_text())
    assert plant_info["first_cmd"], out
    # Rate, limits, predicted chunk, diagnostics, brake-to-hold when the plant goes silent.
    e2e._check_results(tmp_path, config, plant_info["stop_time"], out)
    rows = np.load(tmp_path / "checker.npy")
    q = rows[:, 1:8]
    start = np.array(e2e.POSE)
    moved = np.abs(q - start).max(axis=0)
    assert moved.max() > 0.1, f"the arm did not move: {moved}"
    # ...towards the model's goal (each joint's error shrank).
    assert (np.abs(q[-1] - FR3_GOAL) < np.abs(start - FR3_GOAL)).all()


def test_latched_prompt_and_gripper_topic_over_dds(tmp_path: Path) -> None:
    """A prompt + gripper model in the DDS node, in process: a prompt published (transient local) before
    the controller exists reaches it; a later one from a volatile publisher replaces it; the gripper's
    setpoint goes out on its own Float64MultiArray topic, inside its own limits."""
    pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")
    pytest.importorskip("tokenizers", reason="tokenizers (pip install 'wam_control[prompt]')")
    from test_byom_runtime import gripper_config

    from wam_control.transport import dds_types as D
    from wam_control.transport import messages as M
    from wam_control.transport import qos
    from wam_control.transport.adapter import build_runtime
    from wam_control.transport.dds import DdsNode
    from wam_control.transport.dds_node import DdsControllerNode

    model = build_model(tmp_path / "vla.onnx", prompt=True, extra=["gripper"], extra_goal=[0.035])
    config = gripper_config()
    runtime = build_runtime(config, model, worker="thread")
    assert runtime.tokenizer is not None and runtime.surprise is None
    domain = random.randint(100, 200)
    peer = DdsNode("operator", domain_id=domain)
    T = M.dds_msg_types()
    latched = peer.publisher("/wam_controller/instruction", D.String_, qos.INSTRUCTION)
    latched.publish(M.string_msg(T, "reach left"))  # before the controller exists
    grip: list[list[float]] = []
    peer.subscription("/gripper_controller/commands", D.Float64MultiArray_, lambda m: grip.append(list(m.data)),
                      "reliable")  # fmt: skip
    js = peer.publisher("/joint_states", D.JointState_, "joint_states")
    cams = [peer.publisher(t, D.Image_, "sensor_data") for t in ("/camera/image_raw", "/wrist_camera/image_raw")]
    ctrl_node = DdsNode("wam_controller", domain_id=domain)
    node = DdsControllerNode(runtime.controller, ctrl_node, tokenizer=runtime.tokenizer)
    c = runtime.controller
    names = [*config.joint_names, "fr3_finger_joint1", "fr3_finger_joint2"]
    frame = np.zeros((32, 32, 3), np.uint8)
    node.start()
    try:
        deadline = time.monotonic() + 20
        volatile = None
        while time.monotonic() < deadline:
            q = np.asarray(c.filter.q, dtype=float).copy() if c.filter.q.size else np.zeros(8)
            pose = q if np.abs(q).max() > 0 else np.concatenate([e2e.POSE, [0.01]])
            js.publish(M.joint_state_msg(T, names, np.append(pose, pose[-1]), stamp_s=time.time()))
            for cam in cams:
                cam.publish(M.image_msg(T, frame, "rgb8", stamp_s=time.time()))
            values = c.status().values
            if volatile is None and values.get("model.instruction") == "reach left" and len(grip) > 50:
                volatile = peer.publisher("/wam_controller/instruction", D.String_, "reliable")
                time.sleep(0.3)  # let it match
                volatile.publish(M.string_msg(T, "reach right"))
            if volatile is not None and values.get("model.instruction") == "reach right":
                break
            time.sleep(0.02)
        values = c.status().values
    finally:
        node.stop()
        runtime.close()
        ctrl_node.close()
        peer.close()
    assert volatile is not None, f"the latched prompt never took effect: {values}"
    assert values["model.instruction"] == "reach right", values
    g = np.array(grip)
    assert g.shape[1] == 2 and (g[:, 0] == g[:, 1]).all()  # one value per command joint
    lim = c.limits
    assert (g[:, 0] >= lim.q_min[-1] - 1e-9).all() and (g[:, 0] <= lim.q_max[-1] + 1e-9).all()
    assert g[-1, 0] > g[0, 0] + 1e-3  # the gripper opened toward the model's 0.035
