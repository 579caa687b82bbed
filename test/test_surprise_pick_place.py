"""bench surprise for the prompted gripper model and pick_place (issue 16 step 4): the drop disturbance
(state-triggered: the cube falls out of the gripper while carried) proven with the expert oracle, the
pick_place teleport, the bench end to end on a random-init prompted stand-in, and the calibration file
of a contract v2 model (lockstep sim, deterministic)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("onnxruntime")


def _render_ok() -> bool:
    from wam_control.sim.gl import prepare

    return prepare() is not None


render = pytest.mark.skipif(not _render_ok(), reason="no offscreen OpenGL (EGL/OSMesa) for the sim cameras")


def _oracle_drop_episode(seed: int, after_s: float = 0.5) -> dict[str, Any]:
    """The expert oracle plays pick_place through the runtime in a DisturbedArm("drop") armed from tick
    0; the episode ends `after_s` after the drop fired (or at 12 s). Per tick: carried?, grip lost?"""
    from wam_control.closedloop import (
        BackendModel,
        DisturbedArm,
        cube_carried,
        make_arm,
        make_oracle,
        oracle_contract,
    )
    from wam_control.config import load_config, preset_path
    from wam_control.policy import read_contract
    from wam_control.runtime.builder import Overrides, build, resolve
    from wam_control.runtime.clock import SimClock
    from wam_control.runtime.episode import EpisodeStepper, Observer, run_lockstep
    from wam_control.runtime.replay import scripted_worker_factory

    config = load_config(preset_path("fr3_hand"))
    contract = oracle_contract(config, read_contract(config.inference.model), "pick_place")
    spec = resolve(config, config.inference.model, Overrides(surprise="off", imagination=False), contract=contract)
    arm = make_arm(config, contract, "pick_place", camera_hz=15.0)
    dt = config.control_period
    rows: list[tuple[bool, bool, float]] = []

    class Watch(Observer):
        def before_tick(self, tick: int) -> None:
            rows.append((cube_carried(arm), arm.grip_lost, float(np.mean(arm.gripper_state()[1]))))

        def after_tick(self, tick: int, command: Any) -> bool:
            return env.fired and tick >= env.inject_tick + int(round(after_s / dt))

    try:
        arm.reset(seed)
        clock = SimClock(0.0)
        ctl = build(spec, clock, scripted_worker_factory(BackendModel(make_oracle(arm, spec)), 3)).controller
        ctl.start()
        env = DisturbedArm(arm, config.cameras, "drop", 0, np.random.default_rng(0))
        run_lockstep(EpisodeStepper(env, ctl, [Watch()], dt=dt), clock, dt=dt, ticks=int(12.0 / dt))
        ctl.close()
        task = arm.task
        return {
            "fired": env.fired,
            "tick": env.inject_tick,
            "rows": rows,
            "lift": float(task.cube()[2]) - task.cube_half,
            "touching": task.touching(),
            "speed": task.cube_speed(),
            "cube": task.cube(),
            "grip_lost": arm.grip_lost,
            "hold": env._hold_ticks,
        }
    finally:
        arm.close()


@render
def test_drop_fires_when_the_cube_is_carried_and_the_cube_falls_to_the_table() -> None:
    from wam_control.closedloop import DROP_HOLD_S

    a = _oracle_drop_episode(100100)
    assert a["fired"], "the oracle lifts the cube: the drop must fire"
    k, rows = a["tick"], a["rows"]
    carried = [c for c, _, _ in rows]
    # state-triggered: the first tick at which the cube is carried (lifted > 5 cm, a finger on it)
    assert carried[k] and not any(carried[:k])
    assert 2.0 < k * 0.002 < 10.0
    # the fingers are driven open for DROP_HOLD_S whatever the oracle commands, then follow it again
    assert a["hold"] == int(round(DROP_HOLD_S / 0.002))
    assert rows[k + 1][1] and rows[k + a["hold"]][1] and not rows[k + a["hold"] + 1][1]
    assert max(f for _, _, f in rows[k : k + a["hold"]]) > 0.035
    assert not a["grip_lost"]
    # 0.5 s later the cube is on the table, out of the gripper, at rest
    assert a["lift"] < 0.003 and not a["touching"] and a["speed"] < 0.05
    # deterministic: the same seed drops at the same tick, the cube lands at the same place
    b = _oracle_drop_episode(100100)
    assert b["tick"] == k
    np.testing.assert_allclose(b["cube"], a["cube"], atol=1e-9)


def test_pick_place_teleport_moves_the_prompted_cube_on_the_table() -> None:
    from wam_control.closedloop import disturb
    from wam_control.sim.arm import SimArm

    with SimArm(task="pick_place", cameras=(), camera_hz=0.0) as arm:
        for seed in range(100300, 100305):
            arm.reset(seed)
            task = arm.task
            before = [task.cube(i).copy() for i in range(3)]
            disturb(arm, "teleport", np.random.default_rng(seed))
            after = task.cube()
            d = float(np.linalg.norm(after[:2] - before[task.target_index][:2]))
            assert 0.15 <= d <= 0.25
            assert abs(after[2] - (task.cube_half + 0.0005)) < 1e-9
            for i in range(3):
                if i != task.target_index:
                    np.testing.assert_array_equal(task.cube(i), before[i])
                    assert np.linalg.norm(after[:2] - before[i][:2]) >= task.min_cube_gap


def test_drop_only_fits_pick_place(capsys: pytest.CaptureFixture[str]) -> None:
    from wam_control.bench.surprise import kinds_for, main

    assert "drop" in kinds_for("pick_place") and "drop" not in kinds_for("reach")
    with pytest.raises(SystemExit):
        main(["--task", "reach", "--kinds", "teleport,drop"])
    assert "do not fit task reach" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prompt_rig(prompt_model_path: Path):  # type: ignore[no-untyped-def]
    from wam_control.bench.surprise import SurpriseRig
    from wam_control.config import load_config, preset_path

    config = load_config(preset_path("fr3_hand"))
    r = SurpriseRig(str(prompt_model_path), config, "pick_place", 20.0, config.surprise)
    yield r
    r.close()


@render
def test_calibration_file_round_trip_for_a_v2_model(prompt_rig, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A nominal pick_place episode of the prompted gripper model (its prompt given) is matched and
    recorded; its calibration file loads back for that model and is refused for another."""
    from wam_control.policy.contract import ModelContract
    from wam_control.runtime.calibration import MIN_SAMPLES, CalibrationError, SurpriseCalibration

    c: ModelContract = prompt_rig.contract
    assert c.contract_version == 2 and c.has_instruction and c.extra_actions == ("gripper",)
    assert prompt_rig.arm.has_hand and prompt_rig.arm.task.name == "pick_place"
    rec: dict[int, list[float]] = {}
    ramp: dict[int, list[float]] = {}
    ep = prompt_rig.run(100100, "nominal", 0.0, 2.5, None, record=rec, record_ramp=ramp)
    assert ep.task == "pick_place" and ep.ticks == 1250
    assert rec and all(np.isfinite(v).all() for v in rec.values())
    # A 2.5 s episode has too few matches for a file: repeat them (the round trip is what is tested).
    pad = {o: list(np.resize(v, MIN_SAMPLES)) for o, v in rec.items()}
    cal = SurpriseCalibration.from_samples(
        pad, ramp_samples={o: list(np.resize(v, MIN_SAMPLES)) for o, v in ramp.items()},
        episodes=1, seeds=[100100], weights_sha256=c.weights_sha256, extra={"task": "pick_place"},
    )  # fmt: skip
    path = tmp_path / "m.surprise.json"
    cal.save(path)
    back = SurpriseCalibration.load(path, c)
    assert back.offsets == cal.offsets and set(back.offsets) <= set(c.latent_offsets)
    np.testing.assert_allclose(back.mean, cal.mean)
    np.testing.assert_allclose(back.std, cal.std)
    assert back.weights_sha256 == c.weights_sha256 and back.extra["task"] == "pick_place"
    assert back.ramp is not None and back.ramp_offsets == cal.ramp_offsets
    other = dataclasses.replace(c, weights_sha256="0" * 64)
    with pytest.raises(CalibrationError):
        SurpriseCalibration.load(path, other)


@render
def test_bench_surprise_runs_pick_place_on_the_prompted_stand_in(
    prompt_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One short pick_place episode per kind (nominal, teleport, camera, occluder, joint, drop) with
    the prompted gripper model and fr3_hand's cameras; the random model never lifts the cube, so the
    drop does not fire and is counted as not triggered, not as a miss."""
    from wam_control.bench.surprise import main
    from wam_control.policy import read_contract
    from wam_control.runtime.calibration import SurpriseCalibration

    c = read_contract(prompt_model_path)
    cal = tmp_path / "stand_in.surprise.json"
    SurpriseCalibration.from_samples(
        {8: [0.02 + 0.001 * i for i in range(20)], 16: [0.03 + 0.001 * i for i in range(20)]},
        weights_sha256=c.weights_sha256,
    ).save(cal)
    rc = main([
        "--model", str(prompt_model_path), "--task", "pick_place", "--calibration", str(cal),
        "--frame-check", "off", "--episodes", "1", "--seed", "100300", "--duration-s", "1.2",
        "--inject-min-s", "0.4", "--inject-max-s", "0.5", "--window-s", "0.5",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "prompt: each episode's task prompt" in out and "task=pick_place" in out
    final = dict(kv.split("=", 1) for kv in out.strip().splitlines()[-1].split())
    assert final["episodes"] == "6" and final["nominal_episodes"] == "1"
    assert final["disturbed_episodes"] == "4" and final["drop_not_triggered"] == "1"
    assert final["detect_rate_drop"] == "nan" and final["task"] == "pick_place"
    for key in ("detect_rate", "false_alarm_rate", "detect_latency_ms_p50", "detect_rate_teleport"):
        assert key in final
    assert "drop: detected 0/0" in out and "not triggered 1" in out


def test_offline_tuning_replays_the_monitors_ewma_and_threshold(repo_root: Path) -> None:
    """scripts/surprise_tune.py: EWMA per channel, score = max, detection only from observations at or
    after the injection within the window, any nominal alarm is false; unfired drops are left out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("surprise_tune", repo_root / "scripts" / "surprise_tune.py")
    assert spec is not None and spec.loader is not None
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    f = np.float32
    d = {
        "kinds": np.array(["nominal", "teleport", "camera", "drop"]),
        "seeds": np.array([7, 7, 7, 7]),
        "inject_ticks": np.array([1000, 500, 500, 1000]),
        "fired": np.array([True, True, True, False]),
        "latency_ticks": 10,
        "window_ticks": 750,
        # nominal: raw 5 twice -> EWMA(0.5) 2.5, 3.75
        "raw_ticks_0": np.array([100, 300]), "raw_0": np.array([5, 5], f),
        "frame_ticks_0": np.array([], np.int64), "frame_z_0": np.array([], f),
        # teleport: high before the injection (early) only counts from an observation after it
        "raw_ticks_1": np.array([400, 505, 700]), "raw_1": np.array([20, 0, 0], f),
        "frame_ticks_1": np.array([], np.int64), "frame_z_1": np.array([], f),
        # camera: the frame channel sees it
        "raw_ticks_2": np.array([600]), "raw_2": np.array([0], f),
        "frame_ticks_2": np.array([600, 800]), "frame_z_2": np.array([8, 8], f),
        "raw_ticks_3": np.array([600]), "raw_3": np.array([50], f),
        "frame_ticks_3": np.array([], np.int64), "frame_z_3": np.array([], f),
    }  # fmt: skip
    r = tune.replay(d, 0.5, 4.0)
    assert r["false"] == [] and r["per_kind"] == {"teleport": "0/1", "camera": "1/1"}
    # teleport: 10 at 400 (before), 5 at 505 (observation tick 495 < 500: not after), 2.5 at 700
    assert tune.replay(d, 0.5, 2.5)["per_kind"]["teleport"] == "1/1"
    assert tune.replay(d, 0.5, 3.5)["false"] == [7]
    assert tune.replay(d, 0.5, 4.0, frame=False)["per_kind"]["camera"] == "0/1"
