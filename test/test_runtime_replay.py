"""Replay pieces: scripted worker timing and faults, reference model prefix continuation, plant,
recorded observations."""

from __future__ import annotations

import numpy as np

from wam_control.runtime.clock import SimClock
from wam_control.runtime.replay import FirstOrderPlant, ReferenceModel, Replay, ScriptedWorker, build_rig
from wam_control.runtime.worker import InferenceRequest


def _request(rig, obs_tick: int, prefix: np.ndarray | None = None, n: int = 0) -> InferenceRequest:
    c = rig.contract
    p = np.zeros((c.horizon, c.num_joints), np.float32) if prefix is None else prefix
    return InferenceRequest(
        1, obs_tick, np.zeros((1, 32, 32, 3), np.uint8), np.zeros(c.num_joints, np.float32), p, n
    )


def test_scripted_worker_returns_after_the_scripted_latency_and_refuses_while_busy():
    rig = build_rig()
    clock = SimClock(0.0)
    w = ScriptedWorker(rig.model, clock, 0.002, latency_ticks=3)
    assert not w.submit(_request(rig, 0))  # not started
    w.start()
    assert w.submit(_request(rig, 0))
    assert w.busy and not w.submit(_request(rig, 0))
    got = []
    for tick in range(1, 6):
        clock.set(tick * 0.002)
        res = w.poll()
        if res is not None:
            got.append(tick)
    assert got == [3] and not w.busy


def test_scripted_worker_kill_loses_the_request_and_restarts_after_backoff():
    rig = build_rig()
    clock = SimClock(0.0)
    w = ScriptedWorker(rig.model, clock, 0.002, latency_ticks=3, restart_s=0.1)
    w.start()
    w.submit(_request(rig, 0))
    w.kill()
    assert w.health()["state"] == "backoff" and w.health()["crashes"] == 1 and w.health()["restarts"] == 1
    assert not w.submit(_request(rig, 0)) and w.poll() is None
    clock.set(0.2)
    w.check(clock.now())
    assert w.health()["state"] == "ready" and w.submit(_request(rig, 100))


def test_model_exceptions_become_error_results():
    rig = build_rig()
    clock = SimClock(0.0)

    def broken(req):  # type: ignore[no-untyped-def]
        raise ValueError("bad weights")

    w = ScriptedWorker(broken, clock, 0.002, latency_ticks=1)
    w.start()
    w.submit(_request(rig, 0))
    clock.set(0.002)
    res = w.poll()
    assert res is not None and res.output is None and res.error == "ValueError: bad weights"


def test_reference_model_continues_the_prefix_smoothly():
    rig = build_rig()
    model = ReferenceModel(rig.contract, rig.motion, 500.0, noise_rad=0.0)
    own = model.own_plan(200)
    prefix = (own + 0.02).astype(np.float32)  # a committed plan 2 cm-rad off the model's own
    out = model(_request(rig, 200, prefix, 4)).actions
    np.testing.assert_array_equal(out[:4], prefix[:4])
    # continues with the prefix's slope at the junction, then converges to its own plan
    np.testing.assert_allclose(out[4] - out[3], prefix[4] - prefix[3], atol=2e-3)
    np.testing.assert_allclose(out[-1], own[-1], atol=1e-6)
    # ignoring the prefix: its own plan
    model_np = ReferenceModel(rig.contract, rig.motion, 500.0, follow_prefix=False)
    np.testing.assert_allclose(model_np(_request(rig, 200, prefix, 4)).actions, own.astype(np.float32))


def test_first_order_plant_follows_the_command():
    plant = FirstOrderPlant([0.0, 1.0], dt=0.002, tau_s=0.01)
    for _ in range(50):  # 10 time constants
        plant.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(plant.q, [1.0, 0.0], atol=1e-4)


def test_recorded_observations_drive_the_controller():
    rig = build_rig(latency_ticks=5)
    cfg = rig.config
    q0 = rig.plant.q.copy()
    img = np.full((48, 64, 3), 90, np.uint8)  # another resolution: resized by the buffers
    events = [(k * 0.002, "joint", (cfg.joint_names, q0 + 0.0)) for k in range(400)]
    events += [(k * 0.033, "image", (cam, img)) for k in range(25) for cam in cfg.cameras]
    replay = Replay(rig.controller, rig.clock, rig.plant, recorded=events)
    log = replay.run(400)
    assert rig.controller.counters["commands"] == 400
    assert rig.controller.scheduler.counters["chunks_accepted"] > 0
    assert np.isfinite(log.q_cmd).all()
