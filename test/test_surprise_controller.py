"""The surprise monitor inside the real Controller, on a simulated clock (replay rig, scripted worker)."""

from __future__ import annotations

import tracemalloc

import numpy as np
from test_surprise_monitor import World, contract

from wam_control.config import load_config, preset_path
from wam_control.policy.base import PolicyOutput
from wam_control.runtime.calibration import SurpriseCalibration
from wam_control.runtime.clock import SimClock
from wam_control.runtime.controller import ERROR, OK, Controller
from wam_control.runtime.replay import (
    FirstOrderPlant,
    ReferenceModel,
    Replay,
    ScriptedWorker,
    home_pose,
    sinusoid_motion,
)
from wam_control.runtime.surprise import LATCH_REASON, SurpriseConfig, SurpriseMonitor
from wam_control.runtime.worker import InferenceRequest


def rig(world: World, monitor_args: dict) -> tuple[Controller, Replay, SurpriseMonitor]:
    config = load_config(preset_path("fr3"), {"cameras": ["scene"]})  # the test contract has one camera
    con = contract()
    clock = SimClock(100.0)
    center = home_pose(config)
    ref = ReferenceModel(con, sinusoid_motion(config.dof, center, 0.2), config.control_hz, noise_rad=0.001)

    def model(req: InferenceRequest) -> PolicyOutput:
        latent, pred = world.result(req.obs_tick)
        return PolicyOutput(ref(req).actions, latent, pred)

    worker = ScriptedWorker(model, clock, config.control_period, latency_ticks=10)
    monitor = SurpriseMonitor(con, config.control_hz, **monitor_args)
    ctl = Controller(config, con, worker, clock, surprise_monitor=monitor)
    replay = Replay(ctl, clock, FirstOrderPlant(center, config.control_period))
    ctl.start()
    return ctl, replay, monitor


def nominal_calibration(world: World) -> SurpriseCalibration:
    samples: dict[int, list[float]] = {}
    _, replay, _ = rig(world, {"calibration": None, "record": samples})
    replay.run(20000)
    return SurpriseCalibration.from_samples(samples, weights_sha256=contract().weights_sha256)


def test_controller_reports_slows_and_latches_on_surprise() -> None:
    cal = nominal_calibration(World(noise=0.02, seed=1))
    world = World(noise=0.02, seed=2)
    ctl, replay, mon = rig(world, {"calibration": cal, "config": SurpriseConfig()})
    replay.run(4000)
    st = ctl.status()
    assert st.level == OK, st.message
    assert st.values["surprise.observations_scored"] > 10
    assert st.values["surprise.score"] < SurpriseConfig().slow_threshold
    assert st.values["surprise.velocity_scale"] == 1.0 and ctl.filter.fault is None

    # The scene changes at once: the next observations contradict every pending prediction.
    def jump(_: Replay) -> None:
        world.jump[:] = 0.6

    replay.at(replay.tick_now + 5, jump)
    log = replay.run(1000)
    assert ctl.filter.fault == LATCH_REASON
    st = ctl.status()
    assert st.level == ERROR and "surprise" in st.message
    assert st.values["surprise.trips"] == 1 and st.values["surprise.peak"] >= SurpriseConfig().stop_threshold
    assert log.holding[-1]  # braked to hold
    # While latched, the score that tripped it stays what ~/surprise and the diagnostics show
    # (it used to read 0 right after every trip); the re-arm clears it and gives the full envelope back.
    assert mon.score >= SurpriseConfig().stop_threshold and mon.tripped
    assert st.values["surprise.score"] == mon.score
    ok, why = ctl.rearm()
    assert ok, why
    assert mon.score == 0.0 and mon.velocity_scale == 1.0 and not mon.tripped
    replay.run(3000)
    assert ctl.filter.fault is None and ctl.status().level == OK
    assert mon.score < SurpriseConfig().slow_threshold  # predictions made after the change agree again


def test_slowdown_is_a_warning_in_status() -> None:
    cal = nominal_calibration(World(noise=0.02, seed=1))
    world = World(noise=0.02, seed=2)
    ctl, replay, mon = rig(world, {"calibration": cal, "config": SurpriseConfig(latch=False)})
    replay.run(3000)
    world.jump[:] = 0.6
    replay.run(400)
    st = ctl.status()
    assert mon.velocity_scale < 1.0 and ctl.filter.fault is None
    assert st.level == 1 and "velocity scaled" in st.message


class _StaticWorker:
    """Returns one preallocated result `latency` ticks after each submit: allocation-free itself."""

    def __init__(self, out: PolicyOutput, clock: SimClock, dt: float) -> None:
        from wam_control.runtime.worker import InferenceResult

        self.res = InferenceResult(0, 0, out, None, 0.0)
        self.clock, self.dt = clock, dt
        self.busy = False
        self.restarts = 0
        self.last_error = ""
        self._ready = 0.0

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    def submit(self, req: InferenceRequest) -> bool:
        self.res.request_id, self.res.obs_tick = req.request_id, req.obs_tick
        self.res.output.actions[:] = req.state  # type: ignore[union-attr]
        self._ready = self.clock.now() + 9.5 * self.dt
        self.busy = True
        return True

    def poll(self):  # type: ignore[no-untyped-def]
        if self.busy and self.clock.now() >= self._ready:
            self.busy = False
            return self.res
        return None

    def check(self, now: float) -> None:
        return None

    def health(self) -> dict[str, float | int | str]:
        return {"state": "ready", "restarts": 0, "last_error": ""}


def test_tick_path_with_monitor_does_not_grow_memory() -> None:
    config = load_config(preset_path("fr3"), {"cameras": ["scene"]})  # the test contract has one camera
    con = contract()
    clock = SimClock(100.0)
    rng = np.random.default_rng(0)
    out = PolicyOutput(
        np.zeros((con.horizon, con.num_joints), np.float32),
        rng.normal(size=con.latent_dim).astype(np.float32),
        rng.normal(size=(con.latent_steps, con.latent_dim)).astype(np.float32),
    )
    worker = _StaticWorker(out, clock, config.control_period)
    # Mean 0 / huge spread: every match scores ~0, so nothing latches and the loop keeps running.
    cal = SurpriseCalibration.from_samples({o: list(rng.uniform(0, 1, 50)) for o in con.latent_offsets})
    mon = SurpriseMonitor(con, config.control_hz, cal, SurpriseConfig(latch=False))
    ctl = Controller(config, con, worker, clock, surprise_monitor=mon)  # type: ignore[arg-type]
    replay = Replay(ctl, clock, FirstOrderPlant(home_pose(config), config.control_period))
    ctl.start()
    replay.run(2000)
    mine = [
        tracemalloc.Filter(True, "*runtime/surprise.py"),
        tracemalloc.Filter(True, "*runtime/controller.py"),
    ]
    image = np.zeros((con.image_height, con.image_width, 3), np.uint8)
    matches = mon.counters["matches"]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for tick in range(replay.tick_now, replay.tick_now + 10000):
            clock.set(100.0 + tick * ctl.dt)
            ctl.on_joint_state(config.joint_names, replay.plant.q, None, tick * ctl.dt)
            if tick % 17 == 0:
                ctl.on_image("scene", image, tick * ctl.dt)
            ctl.tick(tick)
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert mon.counters["matches"] - matches > 50  # results kept flowing through the monitor
    assert growth < 2048, after.compare_to(before, "lineno")[:5]
