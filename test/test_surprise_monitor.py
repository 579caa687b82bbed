"""Surprise monitor: matching predictions to ticks, scoring, responses, calibration (simulated clock)."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from wam_control.policy.contract import ModelContract
from wam_control.runtime.calibration import (
    CalibrationError,
    SurpriseCalibration,
    default_calibration_path,
)
from wam_control.runtime.surprise import (
    LATCH_REASON,
    SurpriseConfig,
    SurpriseMonitor,
    build_monitor,
)

FR3 = tuple(f"fr3_joint{i}" for i in range(1, 8))
HZ = 500.0
STEP = 25  # ticks per action step: action_dt 0.05 s at 500 Hz
C = 16


def contract(**kw: object) -> ModelContract:
    args: dict[str, object] = dict(
        contract_version=1,
        model_name="surprise-test",
        joint_names=FR3,
        camera_names=("scene",),
        image_height=8,
        image_width=8,
        action_dt=0.05,
        horizon=16,
        latent_steps=4,
        latent_offsets=(2, 4, 8, 16),
        max_prefix=8,
        latent_dim=C,
        weights_sha256="ab" * 32,
    )
    args.update(kw)
    return ModelContract(**args)  # type: ignore[arg-type]


class World:
    """A latent trajectory f(tick) and a model that predicts it, both with seeded noise."""

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.freq = rng.uniform(0.2, 1.0, C)
        self.phase = rng.uniform(0, 2 * np.pi, C)
        self.noise = noise
        self.rng = np.random.default_rng(seed + 1)
        self.offsets = np.array([2, 4, 8, 16]) * STEP
        self.jump = np.zeros(C, np.float32)

    def f(self, tick: float) -> np.ndarray:
        return np.sin(2 * np.pi * self.freq * tick / HZ + self.phase).astype(np.float32)

    def result(self, tick: int) -> tuple[np.ndarray, np.ndarray]:
        latent = self.f(tick) + self.jump + self.rng.normal(0, self.noise, C).astype(np.float32)
        pred = np.stack([self.f(tick + o) for o in self.offsets]) + self.jump
        pred = pred + self.rng.normal(0, self.noise, pred.shape).astype(np.float32)
        return latent.astype(np.float32), pred.astype(np.float32)


class FakeFilter:
    def __init__(self) -> None:
        self.fault: str | None = None
        self.holding = False
        self.ramp = 1.0
        self.calls: list[tuple[str, object]] = []

    def set_velocity_scale(self, scale: float) -> None:
        assert 0.0 < scale <= 1.0
        self.calls.append(("scale", scale))

    def latch(self, reason: str) -> None:
        self.calls.append(("latch", reason))
        if self.fault is None:
            self.fault = reason


def calibrate(world: World, ticks: range, config: SurpriseConfig | None = None) -> SurpriseCalibration:
    samples: dict[int, list[float]] = {}
    mon = SurpriseMonitor(contract(), HZ, None, config, record=samples)
    for t in ticks:
        mon.on_result(t, *world.result(t))
    assert mon.score == 0.0  # uncalibrated: measures only
    return SurpriseCalibration.from_samples(
        samples, episodes=1, seeds=[0], weights_sha256=contract().weights_sha256
    )


def test_predictions_are_matched_to_the_tick_they_target() -> None:
    world = World(noise=0.0)
    rec: dict[int, list[float]] = {}
    # zero tolerance: only a prediction whose target is exactly this tick can match
    mon = SurpriseMonitor(contract(), HZ, None, SurpriseConfig(match_tolerance_steps=0.0), record=rec)
    for t in range(0, 1001, 200):
        mon.on_result(t, *world.result(t))
    # 200 sees request 0's +8 steps; every later observation sees +8 of t-200 and +16 of t-400.
    assert sorted(rec) == [8, 16]
    assert len(rec[8]) == 5 and len(rec[16]) == 4
    # Exact predictions of the right tick: distance is float32 rounding only.
    assert max(rec[8] + rec[16]) < 1e-6
    # +2 and +4 steps (50, 100 ticks) never had an observation near them.
    assert mon.counters["expired"] >= 2 * 4
    assert mon.counters["matches"] == 9


def test_a_wrong_tick_would_show_as_distance() -> None:
    """Guard for the test above: the latent moves enough in one action step to be seen."""
    world = World()
    assert np.sqrt(np.mean((world.f(200) - world.f(200 + STEP)) ** 2)) > 0.05


def test_nearest_prediction_within_tolerance_wins() -> None:
    world = World()
    rec: dict[int, list[float]] = {}
    cfg = SurpriseConfig(match_tolerance_steps=2.0)  # 50 ticks: +2 (50) and +4 (100) are both candidates
    mon = SurpriseMonitor(contract(), HZ, None, cfg, record=rec)
    mon.on_result(0, *world.result(0))
    mon.on_result(60, *world.result(60))
    assert list(rec) == [2]  # target 50 (10 ticks away) beats target 100 (40 ticks away)
    assert rec[2][0] > 1e-3  # 10 ticks off: a real, small difference
    # request 0's +4 (target 100) stayed pending; at 160 it is out of reach and expires
    expired = mon.counters["expired"]
    mon.on_result(160, *world.result(160))
    assert mon.counters["expired"] == expired + 1
    assert len(rec[8]) == 1  # request 0's +8 (target 200, 40 ticks away) is its nearest now


def test_scheduler_cadence_matches_within_one_step() -> None:
    """Requests come every ~188 ticks (half a chunk minus the delay margin), not on the offsets' grid."""
    world = World()
    rec: dict[int, list[float]] = {}
    mon = SurpriseMonitor(contract(), HZ, None, record=rec)
    for t in range(0, 188 * 8, 188):
        mon.on_result(t, *world.result(t))
    assert len(rec[8]) == 7 and len(rec[16]) == 6


def test_a_chunk_started_at_arrival_is_compared_at_its_start_plus_offset() -> None:
    """Delay: a chunk requested at rest (tick 0) arrives and starts at tick 100, so the world runs 100
    ticks behind the observation's clock. Predictions keyed from `start_tick` meet the latent of the
    observation at the tick they are for; keyed from the observation tick they are off by the delay."""
    world = World()
    delay = 100
    latent0, pred0 = world.result(0)  # pred0[i] = f(offset_i): the chunk's own time, from its start

    def observed(start: int | None) -> dict[int, list[float]]:
        rec: dict[int, list[float]] = {}
        mon = SurpriseMonitor(contract(), HZ, None, record=rec)
        mon.on_result(0, latent0, pred0, start_tick=start)
        mon.on_result(200, world.f(200 - delay), pred0)  # the world at tick 200: 100 ticks into the chunk
        return rec

    aligned = observed(delay)
    assert list(aligned) == [4] and aligned[4][0] < 1e-6  # start 100 + 4 steps = tick 200, exact
    shifted = observed(None)
    assert list(shifted) == [8] and shifted[8][0] > 0.05  # 0 + 8 steps = 200: the chunk is 100 ticks behind


def test_result_arriving_while_holding_stores_no_predictions_but_is_scored() -> None:
    """Without `start_tick`, a result that finds the filter holding belongs to a chunk that starts at
    its (unknown) arrival: its predictions are not stored, its latent still meets earlier ones."""
    world = World()
    rec: dict[int, list[float]] = {}
    mon = SurpriseMonitor(contract(), HZ, None, record=rec)
    flt = FakeFilter()
    mon.attach(flt)
    flt.holding = True
    mon.on_result(0, *world.result(0))
    assert mon.counters["unanchored"] == 1 and not mon._live.any()
    flt.holding = False
    mon.on_result(200, *world.result(200))  # nothing from tick 0 to meet
    assert rec == {} and mon._live.any()
    flt.holding = True  # e.g. starved: the arm stopped, the next chunk starts at its arrival
    mon.on_result(400, *world.result(400))
    assert rec[8][0] < 1e-6 and mon.counters["unanchored"] == 2
    mon.on_result(600, *world.result(600), start_tick=600)  # the caller knows: stored
    mon.on_result(800, *world.result(800))
    assert len(rec[8]) == 2


def test_missing_results_are_tolerated() -> None:
    world = World(noise=0.01)
    cal = calibrate(world, range(0, 20001, 200))
    mon = SurpriseMonitor(contract(), HZ, cal)
    flt = FakeFilter()
    mon.attach(flt)
    for t in range(0, 4001, 200):
        if t in (1000, 1200, 2600):
            continue  # results lost (worker restart, stale input)
        mon.on_result(t, *world.result(t))
    assert mon.counters["expired"] > 0
    assert math.isfinite(mon.score) and mon.score < mon.config.slow_threshold
    assert flt.calls == []
    # out-of-order or malformed results are counted and ignored
    mon.on_result(100, *world.result(100))
    mon.on_result(5000, np.zeros(C + 1, np.float32), np.zeros((4, C), np.float32))
    assert mon.counters["bad_outputs"] == 2


def test_latent_jump_raises_the_score_then_slows_then_latches() -> None:
    world = World(noise=0.02, seed=3)
    cal = calibrate(world, range(0, 40001, 200))
    cfg = SurpriseConfig(slow_threshold=4.0, stop_threshold=12.0, smoothing=0.5)
    mon = SurpriseMonitor(contract(), HZ, cal, cfg)
    flt = FakeFilter()
    mon.attach(flt)
    scores = []
    for t in range(50000, 54001, 200):
        mon.on_result(t, *world.result(t))
        scores.append(mon.score)
    assert max(scores) < cfg.slow_threshold, scores
    assert flt.calls == []
    # Reality starts to drift away from the predictions: the gap grows each observation.
    first_slow = first_latch = None
    for i, t in enumerate(range(54200, 60001, 200)):
        world.jump[:] = 0.03 * (i + 1)
        latent, _ = world.result(t)
        _, pred = World(noise=0.0, seed=3).result(t)  # predictions made without the drift
        mon.on_result(t, latent, pred)
        if first_slow is None and mon.velocity_scale < 1.0:
            first_slow = t
        if first_latch is None and flt.fault is not None:
            first_latch = t
    assert first_slow is not None and first_latch is not None and first_slow < first_latch
    kinds = [k for k, _ in flt.calls]
    assert kinds.count("latch") == 1 and flt.fault == LATCH_REASON
    before = [v for k, v in flt.calls[: kinds.index("latch")] if k == "scale"]
    assert before and all(cfg.min_scale <= float(v) < 1.0 for v in before)  # type: ignore[arg-type]
    assert before == sorted(before, reverse=True)  # slowing down monotonically while the gap grows
    assert mon.counters["trips"] == 1 and mon.peak_score >= cfg.stop_threshold
    # re-arm path: the controller resets the monitor, which restores the full envelope
    mon.reset()
    assert flt.calls[-1] == ("scale", 1.0) and mon.score == 0.0 and not mon._live.any()


def test_single_spike_is_seen_without_smoothing_delay() -> None:
    world = World(noise=0.02, seed=5)
    cal = calibrate(world, range(0, 40001, 200))
    mon = SurpriseMonitor(contract(), HZ, cal, SurpriseConfig(smoothing=0.6))
    flt = FakeFilter()
    mon.attach(flt)
    for t in range(50000, 52001, 200):
        mon.on_result(t, *world.result(t))
    world.jump[:] = 0.5  # the scene changes at once (object teleported)
    mon.on_result(52200, *world.result(52200))
    assert mon.raw > 20 and mon.velocity_scale < 1.0 and flt.fault == LATCH_REASON


def test_no_response_without_latch_flag() -> None:
    world = World(noise=0.02, seed=5)
    cal = calibrate(world, range(0, 20001, 200))
    mon = SurpriseMonitor(contract(), HZ, cal, SurpriseConfig(latch=False))
    flt = FakeFilter()
    mon.attach(flt)
    mon.on_result(30000, *world.result(30000))
    world.jump[:] = 1.0
    mon.on_result(30200, *world.result(30200))
    assert flt.fault is None and mon.velocity_scale == mon.config.min_scale


def test_monitor_allocates_nothing_per_result() -> None:
    world = World(noise=0.02)
    cal = calibrate(world, range(0, 10001, 200))
    mon = SurpriseMonitor(contract(), HZ, cal, SurpriseConfig(latch=False))
    mon.attach(FakeFilter())
    inputs = [world.result(t) for t in range(0, 200 * 3000, 200)]
    for i in range(50):
        mon.on_result(i * 200, *inputs[i])
    only_monitor = [tracemalloc.Filter(True, "*runtime/surprise.py")]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_monitor)
        for i in range(50, len(inputs)):
            mon.on_result(i * 200, *inputs[i])
        after = tracemalloc.take_snapshot().filter_traces(only_monitor)
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 1024, after.compare_to(before, "lineno")[:5]
    assert mon.counters["matches"] > 5000


def test_calibration_round_trip(tmp_path: Path) -> None:
    world = World(noise=0.02)
    cal = calibrate(world, range(0, 20001, 200))
    path = cal.save(tmp_path / "m.surprise.json")
    back = SurpriseCalibration.load(path, contract())
    assert back.offsets == cal.offsets == (8, 16)
    for name in ("mean", "std", "p95", "p99"):
        np.testing.assert_allclose(getattr(back, name), getattr(cal, name))
    assert back.weights_sha256 == contract().weights_sha256 and back.extra["samples"] == [100, 99]
    # the format the training helper writes (no sha, its own metric spelling) loads too
    data = json.loads(path.read_text())
    data.pop("weights_sha256")
    data["metric"] = "normalized_l2"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert SurpriseCalibration.load(other, contract()).offsets == (8, 16)


def test_calibration_errors_name_the_problem(tmp_path: Path) -> None:
    cal = calibrate(World(noise=0.02), range(0, 20001, 200))
    with pytest.raises(CalibrationError, match="weights_sha256"):
        SurpriseCalibration.load(cal.save(tmp_path / "a.json"), contract(weights_sha256="cd" * 32))
    data = cal.to_json()
    data["metric"] = "cosine"
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="metric"):
        SurpriseCalibration.load(tmp_path / "b.json")
    data = cal.to_json()
    del data["std"]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="std"):
        SurpriseCalibration.load(tmp_path / "c.json")
    data = cal.to_json()
    data["offsets"] = [3, 16]
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"offsets \[3\]"):
        SurpriseCalibration.load(tmp_path / "d.json", contract())
    with pytest.raises(CalibrationError, match="nope.surprise.json does not exist"):
        SurpriseCalibration.load(tmp_path / "nope.surprise.json")
    with pytest.raises(CalibrationError, match="at least one offset"):
        SurpriseCalibration.from_samples({8: [0.1, 0.2]})


def test_config_and_factory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stop_threshold"):
        SurpriseConfig(slow_threshold=5.0, stop_threshold=5.0)
    with pytest.raises(ValueError, match="min_scale"):
        SurpriseConfig(min_scale=0.0)
    assert build_monitor(SurpriseConfig(enabled=False), contract(), HZ) is None
    model = tmp_path / "wam.onnx"
    assert default_calibration_path(model) == tmp_path / "wam.surprise.json"
    with pytest.raises(CalibrationError, match="wam.surprise.json does not exist"):
        build_monitor(SurpriseConfig(), contract(), HZ, str(model))
    calibrate(World(noise=0.02), range(0, 20001, 200)).save(tmp_path / "wam.surprise.json")
    mon = build_monitor(SurpriseConfig(), contract(), HZ, str(model))
    assert mon is not None and mon.calibration is not None and mon.tolerance_ticks == STEP


def test_predictions_made_during_ramp_in_are_not_scored() -> None:
    """While the filter ramps in, the arm cannot follow the chunk the predictions are conditioned on."""
    rec: dict[int, list[float]] = {}
    mon = SurpriseMonitor(contract(), HZ, None, SurpriseConfig(match_tolerance_steps=0.0), record=rec)
    flt = FakeFilter()
    mon.attach(flt)
    zero = np.zeros(C, np.float32)
    pred = np.ones((4, C), np.float32)  # far from every later latent: would score if stored
    flt.ramp = 0.5
    mon.on_result(0, zero, pred)
    assert mon.counters["ramp_in"] == 1 and not mon._live.any()
    flt.ramp = 1.0
    mon.on_result(2 * STEP, zero, pred)  # matches nothing stored during the ramp
    assert not rec and mon._live.any()
    mon.on_result(4 * STEP, zero, pred)  # the +2-step prediction of the post-ramp result
    assert rec and abs(rec[2][0] - 1.0) < 1e-6


def _with_sections(
    cal: SurpriseCalibration, *, ramp: bool = False, frame: bool = False
) -> SurpriseCalibration:
    """`cal` plus ramp-in statistics (mean 1.0, std 0.1 for every offset) and/or frame statistics
    (mean 0.04, std 0.01), through the JSON form the calibration file uses."""
    data = cal.to_json()
    if ramp:
        data["ramp_in"] = {"offsets": [2, 4, 8, 16], "mean": [1.0] * 4, "std": [0.1] * 4,
                           "p95": [1.2] * 4, "p99": [1.3] * 4}  # fmt: skip
    if frame:
        data["frame"] = {
            "mean": 0.04,
            "std": 0.01,
            "p95": 0.055,
            "p99": 0.06,
            "camera": "scene",
            "samples": 40,
        }
    return SurpriseCalibration.from_json(json.loads(json.dumps(data)))


def test_predictions_made_during_ramp_in_are_scored_against_their_own_statistics() -> None:
    world = World(noise=0.02, seed=7)
    cal = _with_sections(calibrate(world, range(0, 20001, 200)), ramp=True)
    rec: dict[int, list[float]] = {}
    ramp_rec: dict[int, list[float]] = {}
    cfg = SurpriseConfig(match_tolerance_steps=0.0, smoothing=1.0, slow_threshold=50.0, stop_threshold=60.0)
    mon = SurpriseMonitor(contract(), HZ, cal, cfg, record=rec, record_ramp=ramp_rec)
    flt = FakeFilter()
    mon.attach(flt)
    zero = np.zeros(C, np.float32)
    flt.ramp = 0.5
    mon.on_result(0, zero, np.ones((4, C), np.float32))  # stored (the calibration has ramp_in)
    assert mon.counters["ramp_in"] == 1 and mon._live.any()
    flt.ramp = 1.0
    mon.on_result(2 * STEP, zero, np.zeros((4, C), np.float32))
    # distance 1.0 against the ramp-in statistics (mean 1.0): z = 0, not the huge z of the steady ones
    assert ramp_rec == {2: [pytest.approx(1.0)]} and not rec
    assert mon.raw == pytest.approx(0.0, abs=1e-5)
    scored = mon.counters["observations_scored"]
    mon.on_result(4 * STEP, zero, np.zeros((4, C), np.float32))  # steady prediction of 2*STEP: exact
    # recorded as a steady distance, unscored (offset 2 has no steady statistics at cadence 200); the
    # ramp-in request's +4 prediction also targets this tick: scored against the ramp statistics
    assert rec[2] == [pytest.approx(0.0, abs=1e-6)] and 2 not in cal.offsets
    assert ramp_rec[4] == [pytest.approx(1.0)] and mon.raw == pytest.approx(0.0, abs=1e-5)
    assert mon.counters["observations_scored"] == scored + 1


def test_frame_channel_scores_decoded_view_errors_and_responds() -> None:
    world = World(noise=0.02, seed=11)
    cal = _with_sections(calibrate(world, range(0, 20001, 200)), frame=True)
    cfg = SurpriseConfig(slow_threshold=4.0, stop_threshold=8.0, smoothing=0.5)
    frames: list[float] = []
    mon = SurpriseMonitor(contract(), HZ, cal, cfg, record_frame=frames)
    flt = FakeFilter()
    mon.attach(flt)
    for t in range(30000, 32001, 200):
        mon.on_result(t, *world.result(t), frame_error=0.04)
    assert mon.frame_score == pytest.approx(0.0, abs=1e-9) and flt.calls == []
    # The latent keeps matching its predictions (a model blind to the change); the view does not.
    scores = []
    for t in range(32200, 34001, 200):
        mon.on_result(t, *world.result(t), frame_error=0.04 + 0.01 * 10.0)  # z = 10
        scores.append((mon.latent_score, mon.frame_score, mon.score))
    assert all(lat < cfg.slow_threshold for lat, _, _ in scores)
    assert [s for _, _, s in scores] == [max(lat, fr) for lat, fr, _ in scores]
    assert scores[0][1] == pytest.approx(5.0)  # EWMA 0.5 of z = 10 from 0
    assert flt.fault == LATCH_REASON and mon.counters["frames_scored"] >= 12
    assert frames[:3] == [0.04, 0.04, 0.04] and mon.values()["surprise.frame_error"] == pytest.approx(0.14)
    # A result without a frame check (NaN) is counted, and leaves the channel as it was.
    before = mon.frame_score
    mon.on_result(34200, *world.result(34200))
    assert mon.counters["frames_missing"] == 1 and mon.frame_score == before


def test_frame_errors_without_frame_statistics_are_only_recorded() -> None:
    world = World(noise=0.02, seed=12)
    cal = calibrate(world, range(0, 20001, 200))
    mon = SurpriseMonitor(contract(), HZ, cal, SurpriseConfig())
    for t in range(30000, 31001, 200):
        mon.on_result(t, *world.result(t), frame_error=0.9)
    assert mon.frame_score == 0.0 and mon.counters["frames_scored"] == 0 and mon.frame_error == 0.9


def test_calibration_sections_round_trip_and_errors(tmp_path: Path) -> None:
    cal = SurpriseCalibration.from_samples(
        {8: list(np.linspace(0.01, 0.05, 30))},
        ramp_samples={8: list(np.linspace(0.05, 0.1, 30)), 16: [0.1] * 3},  # 16: too few, left out
        frame_samples=list(np.linspace(0.03, 0.05, 30)),
        frame_camera="scene",
    )
    assert cal.ramp_offsets == (8,) and cal.frame is not None and cal.frame.camera == "scene"
    back = SurpriseCalibration.load(cal.save(tmp_path / "c.json"))
    assert back.ramp is not None and back.ramp_offsets == (8,)
    np.testing.assert_allclose(back.ramp.mean, cal.ramp.mean)  # type: ignore[union-attr]
    assert back.frame is not None and back.frame.mean == pytest.approx(0.04) and back.frame.std > 0
    assert "ramp_in" not in back.extra and "frame" not in back.extra
    data = cal.to_json()
    data["frame"] = {"mean": 0.04, "std": -1.0, "p95": 0.1, "p99": 0.1}
    with pytest.raises(CalibrationError, match="frame.std > 0"):
        SurpriseCalibration.from_json(data, source="cal.json")
    data = cal.to_json()
    data["ramp_in"] = {"mean": [0.1], "std": [0.1], "p95": [0.1], "p99": [0.1]}
    with pytest.raises(
        CalibrationError, match="cal.json: section 'ramp_in' must be an object with 'offsets'"
    ):
        SurpriseCalibration.from_json(data, source="cal.json")
    data["ramp_in"] = {"offsets": [8, 16], "mean": [0.1], "std": [0.1], "p95": [0.1], "p99": [0.1]}
    with pytest.raises(CalibrationError, match="ramp_in.mean' must be 2 finite numbers"):
        SurpriseCalibration.from_json(data, source="cal.json")
    data["ramp_in"] = {"offsets": [3], "mean": [0.1], "std": [0.1], "p95": [0.1], "p99": [0.1]}
    with pytest.raises(CalibrationError, match=r"offsets \[3\] are not among"):
        SurpriseCalibration.from_json(data).check(contract())


def test_frame_check_needs_its_calibration_section_and_decoder(tmp_path: Path) -> None:
    from wam_control.imagination import DecoderError

    model = tmp_path / "wam.onnx"
    calibrate(World(noise=0.02), range(0, 20001, 200)).save(tmp_path / "wam.surprise.json")
    with pytest.raises(DecoderError, match="wam.decoder.onnx does not exist.*surprise.frame_check: false"):
        build_monitor(SurpriseConfig(frame_check=True), contract(), HZ, str(model))
