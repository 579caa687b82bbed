"""The WAM extras over the DDS node (`wam-control run` wiring, in one process over loopback DDS).

- ~/surprise: std_msgs/Float64 carrying the monitor's score, at the auxiliary thread's rate (not per
  tick); the surprise values are in /diagnostics.
- imagination preview: a subscriber appearing on its image topic starts the decoder thread and rgb8
  frames arrive; the subscriber leaving stops it. Disabled (the default): not even imported.
- an enabled monitor without its calibration file, or a preview without its decoder, is refused with
  the file's name and what to do.

The node runs the real Controller with the session's test model; a feeder thread plays the robot.
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed to run the test model")

from wam_control.transport import dds_types as D
from wam_control.transport import messages as M
from wam_control.transport.dds import DdsNode

HZ = 200.0
POSE = np.array([0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8])
PREVIEW_TOPIC = "/camera/imagination/image_raw"
DECODER_HW = (24, 16)


def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _preview_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wam-imagination"]


def _config(fr3_config_path: Path, **sections: Any) -> Any:
    from wam_control.config import load_config

    return load_config(fr3_config_path, {"control_hz": HZ, **sections})


def write_calibration(path: Path, contract: Any) -> Path:
    """Nominal statistics mean 0, std 1 per offset: the z-score is the raw distance, so any matched
    prediction gives a score > 0 (thresholds are set far above it: the arm is never slowed)."""
    from wam_control.runtime.calibration import SurpriseCalibration

    k = len(contract.latent_offsets)
    return SurpriseCalibration(
        offsets=tuple(contract.latent_offsets),
        mean=np.zeros(k),
        std=np.ones(k),
        p95=np.full(k, 2.0),
        p99=np.full(k, 3.0),
        episodes=1,
        weights_sha256=contract.weights_sha256,
    ).save(path)


def write_decoder(path: Path, contract: Any, hw: tuple[int, int] = DECODER_HW) -> Path:
    """A tiny latent -> uint8 image ONNX with the metadata of a decoder trained for `contract`
    (one linear layer; the training pipeline itself is test_imagination_preview's business)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from wam_control.imagination import DECODER_KIND

    h, w = hw
    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.5, (contract.latent_dim, h * w * 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["latent", "W"], ["x"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "k255"], ["y"]),
        helper.make_node("Cast", ["y"], ["u"], to=TensorProto.UINT8),
        helper.make_node("Reshape", ["u", "shape"], ["image"]),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["B", contract.latent_dim])],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", h, w, 3])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.array(255.0, np.float32), "k255"),
            numpy_helper.from_array(np.array([-1, h, w, 3], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "kind": DECODER_KIND,
        "version": 1,
        "latent_dim": contract.latent_dim,
        "image_height": h,
        "image_width": w,
        "camera": "scene",
        "wam_weights_sha256": contract.weights_sha256,
    }
    helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


class Feeder:
    """The robot: joint states at 200 Hz and both cameras of config/fr3.yaml at 15 Hz, until stopped."""

    def __init__(self, node: DdsNode, joints: list[str]) -> None:
        self._js = node.publisher("/joint_states", D.JointState_, "joint_states")
        self._imgs = [
            node.publisher(t, D.Image_, "sensor_data")
            for t in ("/camera/image_raw", "/wrist_camera/image_raw")
        ]
        self._joints = joints
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        T = M.dds_msg_types()
        frame = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
        next_img = 0.0
        while not self._stop.wait(1 / 200.0):
            now = time.monotonic()
            self._js.publish(M.joint_state_msg(T, self._joints, POSE, stamp_s=time.time()))
            if now >= next_img:
                next_img = now + 1 / 15.0
                frame[0, 0, 0] ^= 1  # a changing picture, as a camera's would be
                for img in self._imgs:
                    img.publish(M.image_msg(T, frame, "rgb8", stamp_s=time.time()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fr3_config_path: Path, test_model_path: Path):
    """A running DDS controller node with surprise and imagination enabled, a feeder and a peer."""
    from wam_control.policy.contract import read_contract
    from wam_control.transport.adapter import build_runtime
    from wam_control.transport.dds_node import DdsControllerNode

    tmp = tmp_path_factory.mktemp("surprise_node")
    contract = read_contract(test_model_path)
    config = _config(
        fr3_config_path,
        surprise={
            "enabled": True,
            "calibration": str(write_calibration(tmp / "cal.surprise.json", contract)),
            "slow_threshold": 1e6,
            "stop_threshold": 2e6,
            "latch": False,
        },
        imagination={
            "enabled": True,
            "decoder": str(write_decoder(tmp / "dec.decoder.onnx", contract)),
            "topic": PREVIEW_TOPIC,
            "max_rate_hz": 50.0,
        },
    )
    runtime = build_runtime(config, test_model_path, worker="thread")
    assert runtime.surprise is not None and runtime.imagination is not None
    assert not runtime.imagination.running and not _preview_threads()  # nobody watches yet
    domain = random.randint(100, 200)
    ctrl_node = DdsNode("wam_controller", domain_id=domain)
    peer = DdsNode("peer", domain_id=domain)
    node = DdsControllerNode(
        runtime.controller,
        ctrl_node,
        diagnostics_period_s=0.2,
        surprise=runtime.surprise,
        imagination=runtime.imagination,
    )
    scores: list[float] = []
    diags: list[tuple[float, list[M.DiagnosticValue]]] = []
    peer.subscription("/wam_controller/surprise", D.Float64_, lambda m: scores.append(m.data), "reliable")
    peer.subscription("/diagnostics", D.DiagnosticArray_, lambda m: diags.append(M.diagnostic_array_from_msg(m)),
                      "diagnostics")  # fmt: skip
    feeder = Feeder(peer, list(config.joint_names))
    feeder.start()
    node.start()
    try:
        yield {"runtime": runtime, "node": node, "scores": scores, "diags": diags, "domain": domain}
    finally:
        feeder.stop()
        node.stop()
        runtime.close()
        ctrl_node.close()
        peer.close()


def test_surprise_score_is_published_at_the_side_thread_rate(live) -> None:
    runtime, node, scores = live["runtime"], live["node"], live["scores"]
    monitor = runtime.surprise
    assert _wait(lambda: len(scores) >= 5), "no std_msgs/Float64 on /wam_controller/surprise"
    # Real inference results reach the monitor, a matched prediction gives a score > 0, and the topic
    # carries exactly the monitor's value.
    assert _wait(lambda: monitor.counters["observations_scored"] > 0, 30.0), monitor.counters
    assert _wait(lambda: monitor.score > 0 and scores[-1] == monitor.score), (scores[-5:], monitor.score)
    assert all(np.isfinite(scores))
    # Side-thread rate (20 Hz), not per tick (200 Hz): count both over the same window.
    s0, c0 = len(scores), node.command_pub.published
    assert _wait(lambda: node.command_pub.published - c0 >= 200)
    ds, dc = len(scores) - s0, node.command_pub.published - c0
    assert 0 < ds * 3 < dc, f"{ds} surprise messages for {dc} commands"
    # The same values in /diagnostics (controller status) next to the transport's imagination state.
    n = len(live["diags"])
    assert _wait(lambda: len(live["diags"]) > n + 1)
    _, statuses = live["diags"][-1]
    by_name = {s.name: s.values for s in statuses}
    ctrl, transport = by_name["wam_controller: controller"], by_name["wam_controller: transport"]
    assert {"surprise.score", "surprise.velocity_scale", "surprise.matches"} <= set(ctrl)
    assert float(ctrl["surprise.velocity_scale"]) == 1.0  # thresholds far away: never slowed
    assert "imagination.subscribed" in transport


def test_imagination_runs_only_while_someone_subscribes(live) -> None:
    preview = live["runtime"].imagination
    assert not preview.subscribed and not _preview_threads()
    assert preview.counters["offered"] == 0  # results were ignored while nobody watched
    frames: list[Any] = []
    viewer = DdsNode("viewer", domain_id=live["domain"])
    try:
        # A best-effort (sensor data) viewer matches the reliable preview writer.
        viewer.subscription(PREVIEW_TOPIC, D.Image_, frames.append, "sensor_data")
        assert _wait(lambda: len(frames) >= 2, 30.0), (preview.values(), preview.last_error)
        assert preview.subscribed and len(_preview_threads()) == 1
        img = M.image_from_msg(frames[-1])
        assert img.encoding == "rgb8" and img.rgb.shape == (*DECODER_HW, 3)
        assert frames[-1].step == DECODER_HW[1] * 3
        assert preview.counters["published"] >= 2 and preview.counters["decode_errors"] == 0
    finally:
        viewer.close()
    assert _wait(lambda: not preview.subscribed and not _preview_threads(), 10.0), preview.values()
    published = preview.counters["published"]
    assert _wait(lambda: live["node"].command_pub.published > 0)
    assert preview.counters["published"] == published  # off again: nothing decoded


def test_disabled_extras_are_not_even_imported(
    fr3_config_path: Path, test_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wam_control.transport.adapter import build_runtime
    from wam_control.transport.dds_node import DdsControllerNode

    monkeypatch.delitem(sys.modules, "wam_control.imagination", raising=False)
    config = _config(fr3_config_path, surprise={"enabled": False})
    assert not config.imagination.enabled  # the default
    runtime = build_runtime(config, test_model_path, worker="thread")
    node = DdsNode("wam_controller", domain_id=random.randint(100, 200))
    try:
        assert runtime.surprise is None and runtime.imagination is None
        ctl = DdsControllerNode(runtime.controller, node)
        assert {p.key for p in ctl.endpoints.publications}.isdisjoint({"surprise", "imagination"})
        assert ctl.imagination_pub is None
        assert ctl.io.surprise_msg() is None
        ctl.io.poll_imagination(3)  # a subscriber count without a preview changes nothing
        assert "wam_control.imagination" not in sys.modules and not _preview_threads()
        topics = {p.topic for p in node.publishers}
        assert "/wam_controller/surprise" not in topics and PREVIEW_TOPIC not in topics
    finally:
        runtime.close()
        node.close()


def test_missing_calibration_or_decoder_is_refused_by_name(
    tmp_path: Path, fr3_config_path: Path, test_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wam_control.imagination import DecoderError
    from wam_control.transport import dds_node
    from wam_control.transport.adapter import build_runtime

    model = Path(shutil.copy(test_model_path, tmp_path / "arm.onnx"))  # no calibration beside this copy
    threads = threading.active_count()
    assert dds_node.main(["--config", str(fr3_config_path), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "arm.surprise.json") in err
    assert f"wam-control bench surprise --calibrate-only --model {model}" in err
    assert "surprise.enabled: false" in err

    config = _config(fr3_config_path, surprise={"enabled": False}, imagination={"enabled": True})
    with pytest.raises(DecoderError) as exc:
        build_runtime(config, model)
    assert str(tmp_path / "arm.decoder.onnx") in str(exc.value)
    assert "imagination.enabled: false" in str(exc.value)
    assert threading.active_count() == threads  # refused before any worker or thread started


def test_frame_check_reaches_the_worker_and_needs_its_calibration_section(
    tmp_path: Path, fr3_config_path: Path, test_model_path: Path, test_decoder_path: Path
) -> None:
    import dataclasses

    from wam_control.policy.contract import read_contract
    from wam_control.runtime.calibration import CalibrationError, FrameStats, SurpriseCalibration
    from wam_control.transport.adapter import build_runtime

    contract = read_contract(test_model_path)
    plain = write_calibration(tmp_path / "plain.surprise.json", contract)
    surprise = {
        "enabled": True,
        "calibration": str(plain),
        "frame_check": True,
        "decoder": str(test_decoder_path),
    }
    with pytest.raises(CalibrationError, match="plain.surprise.json has no 'frame' section"):
        build_runtime(_config(fr3_config_path, surprise=surprise), test_model_path, worker="thread")
    cal = SurpriseCalibration.load(plain)
    stats = SurpriseCalibration.from_samples({8: [0.1, 0.2] * 20}, frame_samples=[0.04, 0.05] * 20).frame
    assert stats is not None
    framed = dataclasses.replace(cal, frame=FrameStats(stats.stats, "scene")).save(
        tmp_path / "f.surprise.json"
    )
    surprise["calibration"] = str(framed)
    runtime = build_runtime(_config(fr3_config_path, surprise=surprise), test_model_path, worker="thread")
    worker = runtime.controller.worker
    worker.start()
    try:
        assert worker.wait_ready(60.0), worker.last_error
        assert runtime.surprise is not None and runtime.surprise.frame_calibrated
        assert "frame check (scene" in str(worker.health()["backend"])
    finally:
        worker.close()
