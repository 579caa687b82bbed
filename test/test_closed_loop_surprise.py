"""The surprise monitor in the closed-loop harness: built per episode from the calibration file beside
the model when the config enables it, absent otherwise, and its response reported in the summary."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")


def _render_ok() -> bool:
    from wam_control.sim.gl import prepare

    return prepare() is not None


def _setup(tmp_path: Path, model: Path, mean: float) -> tuple[Any, Any, Path]:
    from wam_control.config import load_config, preset_path
    from wam_control.policy import read_contract
    from wam_control.runtime.calibration import SurpriseCalibration, default_calibration_path

    config = load_config(preset_path("fr3"))
    # The latent channel alone (the frame check has its own tests: test_frame_check.py).
    config = dataclasses.replace(config, surprise=dataclasses.replace(config.surprise, frame_check=False))
    contract = read_contract(model)
    path = tmp_path / "m.onnx"
    shutil.copy(model, path)
    samples = {o: list(np.full(40, mean) + np.linspace(0, mean * 1e-2, 40)) for o in contract.latent_offsets}
    SurpriseCalibration.from_samples(samples, weights_sha256=contract.weights_sha256).save(
        default_calibration_path(path)
    )
    return config, contract, path


def test_factory_follows_config_and_calibration_file(tmp_path: Path, test_model_path: Path) -> None:
    from wam_control.runtime.builder import Overrides, resolve
    from wam_control.runtime.calibration import CalibrationError, default_calibration_path

    config, contract, path = _setup(tmp_path, test_model_path, 1.0)
    optional = Overrides(surprise="if_calibrated", imagination=False)
    spec = resolve(config, path, optional)
    assert spec.calibration == default_calibration_path(path)
    a, b = spec.make_monitor(), spec.make_monitor()
    assert a is not None and a is not b  # one monitor per episode (each controller attaches its own filter)
    off = dataclasses.replace(config, surprise=dataclasses.replace(config.surprise, enabled=False))
    assert resolve(off, path, optional).make_monitor() is None
    default_calibration_path(path).unlink()
    spec = resolve(config, path, optional)  # no file: no monitor, said so
    assert spec.make_monitor() is None and "no calibration file" in spec.surprise_note
    with pytest.raises(CalibrationError, match="m.surprise.json"):  # ... unless asked for (the nodes)
        resolve(config, path, Overrides(surprise="required", imagination=False))
    default_calibration_path(path).write_text('{"format": "something else"}')
    with pytest.raises(CalibrationError, match="m.surprise.json"):
        resolve(config, path, optional)


@pytest.mark.skipif(not _render_ok(), reason="no offscreen OpenGL (EGL/OSMesa) for the sim cameras")
def test_async_episode_runs_the_monitor_and_the_summary_reports_slowdowns(
    tmp_path: Path, test_model_path: Path
) -> None:
    from wam_control.closedloop import BackendModel, make_arm, run_lockstep_episode, surprise_summary
    from wam_control.policy import load_backend
    from wam_control.runtime.builder import Overrides, resolve

    # A calibration whose nominal distance is tiny: every real prediction error is a surprise.
    config, contract, path = _setup(tmp_path, test_model_path, 1e-6)
    config = dataclasses.replace(config, surprise=dataclasses.replace(config.surprise, latch=False))
    # Predictions made during the filter's ramp-in are not scored: a short ramp keeps the episode short.
    config = dataclasses.replace(config, safety=dataclasses.replace(config.safety, ramp_in_s=0.2))
    spec = resolve(config, path, Overrides(surprise="if_calibrated", imagination=False))
    no_monitor = resolve(config, path, Overrides(surprise="off", imagination=False))
    backend = load_backend(path, "onnxruntime", warmup=1)
    arm = make_arm(config, contract, "reach", camera_hz=15.0)
    try:
        model = BackendModel(backend)
        r = run_lockstep_episode(arm, spec, model, 100000, lat_ticks=5, horizon_s=1.5)
        plain = run_lockstep_episode(arm, no_monitor, model, 100000, lat_ticks=5, horizon_s=1.5)
        sync = run_lockstep_episode(arm, spec, model, 100000, mode="sync", lat_ticks=5, horizon_s=1.5)
    finally:
        arm.close()
        backend.close()
    assert int(r.status["surprise.matches"]) > 0
    assert float(r.status["surprise.peak"]) >= config.surprise.slow_threshold
    assert int(r.status["surprise.slowdowns"]) >= 1
    line = surprise_summary([r])
    assert line is not None and "slow-down" in line
    # Without a monitor in the spec, and in the sync baseline, there is none.
    assert "surprise.peak" not in plain.status and "surprise.peak" not in sync.status
    assert surprise_summary([plain, sync]) is None
