"""bench surprise rig: the deployment config's cameras all reach the controller, disturbances act, and
calibration seeds stay apart from the evaluation seeds (lockstep sim, random-init model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="mujoco is needed for the sim")


@pytest.fixture(scope="module")
def rig(test_model_path: Path):  # type: ignore[no-untyped-def]
    from wam_control.bench.surprise import SurpriseRig as Rig
    from wam_control.config import load_config, preset_path

    config = load_config(preset_path("fr3"))
    r = Rig(str(test_model_path), config, "reach", 20.0, config.surprise)
    yield r
    r.close()


def test_every_configured_camera_is_fed_and_predictions_are_matched(rig) -> None:  # type: ignore[no-untyped-def]
    assert rig.cameras == ("scene", "wrist")
    rec: dict[int, list[float]] = {}
    # The controller only asks the model once both cameras have delivered a frame; predictions made
    # during the filter's 1 s ramp-in are not scored, so the first +8-step match comes after ~1.5 s.
    ep = rig.run(100300, "nominal", 0.0, 2.0, None, record=rec)
    assert ep.ticks == 1000
    assert 8 in rec and len(rec[8]) >= 1 and np.isfinite(rec[8]).all()


def test_disturbances_change_the_world(rig) -> None:  # type: ignore[no-untyped-def]
    arm = rig.arm
    rig.run(100300, "camera", 0.1, 0.2, None)
    cam = arm.model.camera("scene").id
    assert np.linalg.norm(arm.model.cam_pos[cam] - rig._cam_pos0[cam]) >= 0.05
    rig.run(100300, "nominal", 0.0, 0.1, None)  # the next episode restores the camera
    np.testing.assert_array_equal(arm.model.cam_pos, rig._cam_pos0)


def test_calibration_seeds_must_not_overlap_evaluation(capsys: pytest.CaptureFixture[str]) -> None:
    from wam_control.bench.surprise import main

    with pytest.raises(SystemExit):
        main(["--calibrate", "5", "--calibration-seed", "10", "--seed", "12", "--episodes", "2"])
    assert "overlap the evaluation seeds" in capsys.readouterr().err


def test_calibration_uses_successful_nominal_episodes_only(
    rig, test_model_path: Path, test_decoder_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A failed nominal run is not nominal; ramp-in and frame statistics come along when measured."""
    from wam_control.bench.surprise import SurpriseRig as Rig
    from wam_control.bench.surprise import calibrate

    config = rig.config
    checked = Rig(str(test_model_path), config, "reach", 20.0, config.surprise, str(test_decoder_path))
    try:
        runs: list[int] = []
        real = checked.run

        def run(seed, kind, inject_s, duration_s, calibration, **record):  # type: ignore[no-untyped-def]
            ep = real(seed, kind, inject_s, duration_s, calibration, **record)
            runs.append(seed)
            ep.success = seed % 2 == 0  # every odd seed "fails"
            return ep

        checked.run = run
        logs: list[str] = []
        cal = calibrate(checked, 4, 100100, 6.0, log=logs.append)
        assert runs == [100100, 100101, 100102, 100103]
        assert cal.seeds == (100100, 100102) and cal.episodes == 2
        assert cal.extra["failed_seeds_left_out"] == [100101, 100103]
        assert "failed, left out: [100101, 100103]" in logs[0]
        # the decoder's camera is recorded, and every observation had a frame error
        assert cal.frame is not None and cal.frame.camera == "scene" and cal.frame.mean > 0
    finally:
        checked.close()
