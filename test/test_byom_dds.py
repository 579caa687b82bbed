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
