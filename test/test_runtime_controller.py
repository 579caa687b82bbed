"""Controller on a simulated clock: composition, prefix hand-over, reaction, status, stop/start."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wam_control.policy.contract import ContractError
from wam_control.runtime.clock import SimClock
from wam_control.runtime.controller import ERROR, OK, AsyncExecution, Controller, SyncExecution
from wam_control.runtime.replay import build_rig, make_contract
from wam_control.runtime.scheduler import SchedulerParams


def test_contract_is_checked_against_the_config():
    rig = build_rig()
    cfg, con = rig.config, rig.contract
    swapped = dataclasses.replace(
        con, joint_names=(con.joint_names[1], con.joint_names[0], *con.joint_names[2:])
    )
    with pytest.raises(ContractError, match="order") as exc:
        Controller(cfg, swapped, rig.worker, SimClock())
    assert exc.value.field == "joint_names"
    with pytest.raises(ContractError) as exc:
        Controller(cfg, dataclasses.replace(con, camera_names=("wrist",)), rig.worker, SimClock())
    assert exc.value.field == "camera_names"
    with pytest.raises(ContractError, match="whole number of ticks"):
        Controller(cfg, make_contract(cfg, action_dt=0.0033), rig.worker, SimClock())


def test_no_command_before_start_and_before_the_first_joint_state():
    rig = build_rig()
    c = rig.controller
    c.stop()
    c._started = False  # a fresh controller: not started
    assert c.tick(0) is None
    c.start()
    assert c.tick(1) is None  # started, but no joint state yet
    c.on_joint_state(rig.config.joint_names, rig.plant.q, None, 0.0)
    cmd = c.tick(2)
    assert cmd is not None and cmd.tick == 2
    np.testing.assert_allclose(cmd.positions, rig.plant.q)  # seeded at the measured pose, at rest
    assert not cmd.velocities.any()


def test_nominal_run_tracks_the_reference_with_measured_delay_and_prompt_reaction():
    latency = 30
    rig = build_rig(latency_ticks=latency, noise_rad=0.0)
    log = rig.replay.run(2000)
    c, dt = rig.controller, rig.controller.dt
    m = c.scheduler.metrics()
    assert m["starved_ticks"] == 0 and m["chunks_expired"] == 0
    assert m["delay_ticks_estimate"] == latency
    assert m["delay_warmup_excluded"] == rig.config.inference.warmup_chunks
    # reaction: the first command that uses a chunk comes at observation tick + delay
    reqs = {r.request_id: r.obs_tick for r in rig.worker.requests}
    first_use = {}
    for tick, v in zip(log.ticks, log.version):
        first_use.setdefault(int(v), int(tick))
    obs_of_version = [r.obs_tick for r in rig.worker.requests]  # versions are accepted in request order
    reactions = [first_use[v] - obs_of_version[v - 1] for v in first_use if v > 0]
    assert len(reactions) > 10 and max(reactions) <= latency + 2
    assert len(reqs) == len(rig.worker.requests)
    # after the ramp-in the command follows the motion the model predicts (exact model: small lag)
    late = slice(1000, None)
    err = np.abs(log.q_cmd[late] - rig.motion(log.ticks[late] * dt)).max()
    assert err < 0.01
    assert c.status().level == OK


def test_requests_carry_the_committed_prefix_never_zero_padded():
    rig = build_rig(latency_ticks=25)
    log = rig.replay.run(1500)
    s = int(rig.controller.scheduler.s)
    later = [r for r in rig.worker.requests if r.prefix_len > 0 and r.obs_tick > 600]
    assert len(later) > 5, "no request carried a prefix"
    for r in later:
        assert r.prefix_len == min(25 // s + 2, rig.contract.max_prefix)
        rows = r.action_prefix
        tail = np.repeat(rows[r.prefix_len - 1][None], len(rows) - r.prefix_len, 0)
        np.testing.assert_array_equal(rows[r.prefix_len :], tail)
        # the prefix is what the arm was then told to do at those ticks (the filter lags ~1 mrad)
        for k in range(r.prefix_len):
            i = r.obs_tick + k * s - int(log.ticks[0])
            if i < len(log.ticks):
                assert np.abs(rows[k] - log.q_cmd[i]).max() < 5e-3
    first = rig.worker.requests[0]
    assert first.prefix_len == 0
    np.testing.assert_allclose(first.action_prefix, np.repeat(first.state[None], len(first.action_prefix), 0))


def test_min_prefix_steps_commits_a_longer_prefix_than_the_latency_needs():
    """inference.min_prefix_steps: at a short latency the requests still carry that many committed
    steps (the model sees the prefix it would see at a long latency), each the plan then being
    executed, and the run keeps tracking."""
    base = build_rig(latency_ticks=5).config
    cfg = dataclasses.replace(base, inference=dataclasses.replace(base.inference, min_prefix_steps=6))
    rig = build_rig(cfg, latency_ticks=5)
    log = rig.replay.run(1500)
    s = int(rig.controller.scheduler.s)
    assert 5 // s + 2 < 6  # the latency alone would commit fewer
    later = [r for r in rig.worker.requests if r.prefix_len > 0 and r.obs_tick > 600]
    assert len(later) > 5
    for r in later:
        assert r.prefix_len == 6
        for k in range(r.prefix_len):
            i = r.obs_tick + k * s - int(log.ticks[0])
            if i < len(log.ticks):
                assert np.abs(r.action_prefix[k] - log.q_cmd[i]).max() < 5e-3
    m = rig.controller.scheduler.metrics()
    assert m["starved_ticks"] == 0 and m["prefix_overflows"] == 0
    err = np.abs(log.q_cmd[1000:] - rig.motion(log.ticks[1000:] * rig.controller.dt)).max()
    assert err < 0.01


def test_min_prefix_steps_beyond_the_models_max_prefix_is_refused_by_name():
    base = build_rig().config
    cfg = dataclasses.replace(base, inference=dataclasses.replace(base.inference, min_prefix_steps=9))
    with pytest.raises(ContractError, match="inference.min_prefix_steps 9 exceeds the model's max_prefix 8") as exc:
        build_rig(cfg)
    assert exc.value.field == "max_prefix"
    # a model without the prefix inputs gets no prefix at all: the minimum does not apply to it
    rig = build_rig(cfg, contract=make_contract(cfg, prefix=False), latency_ticks=5)
    rig.replay.run(800)
    assert all(r.prefix_len == 0 for r in rig.worker.requests)


@pytest.mark.parametrize("execution", [AsyncExecution(), SyncExecution()], ids=["async", "sync"])
def test_seam_limits_are_a_quarter_of_each_dofs_own_limits_with_a_gripper(
    execution: AsyncExecution | SyncExecution,
) -> None:
    # fr3_hand: seven arm joints (10 rad/s^2, 5000 rad/s^3) and a finger (0.5 m/s^2, no jerk limit). A
    # common limit (the tightest of all) held the arm's seam corrections to the finger's 0.125.
    from wam_control.config import load_config, preset_path

    cfg = load_config(preset_path("fr3_hand"))
    limits = dataclasses.replace(cfg, joints=(*cfg.joints, "fr3_finger_joint1")).limit_arrays()
    params = execution.scheduler_params(limits)
    assert params.blend_max_acc_per_dof == (2.5,) * 7 + (0.125,)
    assert params.blend_max_jerk_per_dof == (1250.0,) * 7 + (SchedulerParams().blend_max_jerk,)


def test_stop_brakes_to_hold_and_start_resumes():
    rig = build_rig(latency_ticks=10)
    rig.replay.run(1200)
    c, dt = rig.controller, rig.controller.dt
    c.stop()
    log = rig.replay.run(600)
    assert np.abs(log.v_cmd[-100:]).max() == 0.0  # held
    assert c.status().message.startswith("stopped")
    n_req = len(rig.worker.requests)
    held = log.q_cmd[-1].copy()
    c.start()
    log = rig.replay.run(1200)
    assert len(rig.worker.requests) > n_req
    assert np.abs(log.q_cmd[-1] - held).max() > 1e-3  # moving again
    lim = rig.config.limit_arrays()
    assert (np.abs(log.acc(dt)) <= lim.a_max * (1 + 1e-6)).all()


def test_status_reports_rates_delays_seams_and_worker_health():
    rig = build_rig(latency_ticks=20)
    rig.replay.run(1500)
    st = rig.controller.status()
    v = st.values
    for key in (
        "ticks",
        "ticks_per_s",
        "inferences_per_s",
        "scheduler.delay_ticks_p50",
        "scheduler.delay_ms_p95",
        "scheduler.seam_jump_max_rad",
        "scheduler.seam_jerk_max",
        "scheduler.starved_ticks",
        "filter.interventions_total",
        "worker.state",
        "obs.joint_state.age_s",
        "fault",
    ):
        assert key in v, key
    assert v["scheduler.delay_ticks_p95"] == 20
    assert v["scheduler.delay_ms_p50"] == pytest.approx(40.0)
    rig.replay.run(500)
    v = rig.controller.status().values
    assert v["ticks_per_s"] == pytest.approx(500.0, rel=0.01)
    assert 0 < v["inferences_per_s"] < 500


def test_predicted_chunk_is_relative_to_the_last_tick():
    rig = build_rig(latency_ticks=5)
    assert rig.controller.predicted_chunk() is None
    rig.replay.run(300)
    version, t, pos = rig.controller.predicted_chunk()
    assert version == rig.controller.scheduler.version
    assert t.shape == (rig.contract.horizon,) and pos.shape == (rig.contract.horizon, rig.config.dof)
    assert t[0] <= 0.0 < t[-1]


def test_results_from_before_a_reset_are_discarded():
    rig = build_rig(latency_ticks=40)
    rig.replay.run(1000)
    assert rig.worker.busy
    rig.controller.stop()
    rig.controller.start()
    before = rig.controller.counters["results_discarded"]
    rig.replay.run(60)
    assert rig.controller.counters["results_discarded"] == before + 1


def test_a_latched_filter_fault_is_an_error_status():
    rig = build_rig()
    rig.replay.run(600)
    rig.controller.filter.latch("test fault")
    rig.replay.run(5)
    st = rig.controller.status()
    assert st.level == ERROR and "test fault" in st.message


def test_scripted_worker_is_deterministic():
    def trace() -> np.ndarray:
        rig = build_rig(latency_ticks=lambda n: 10 + (7 * n) % 23, noise_rad=0.01, seed=3)
        return rig.replay.run(1500).q_cmd

    np.testing.assert_array_equal(trace(), trace())


class _RampFromState:
    """A policy that plans from where it sees the arm: step k = observed state + k * `step` (rad)."""

    def __init__(self, contract, step: float) -> None:
        from wam_control.policy.base import PolicyOutput

        self._out = PolicyOutput
        self.c = contract
        self.step = step

    def __call__(self, req):
        k = np.arange(self.c.horizon, dtype=np.float32)[:, None]
        actions = req.state[None, :] + k * np.float32(self.step)
        n = int(req.prefix_len)
        actions[:n] = req.action_prefix[:n]
        return self._out(
            actions.astype(np.float32),
            np.zeros(self.c.latent_dim, np.float32),
            np.zeros((self.c.latent_steps, self.c.latent_dim), np.float32),
        )


def _ramp_rig(latency: int, step: float):
    from wam_control.config import load_config, preset_path
    from wam_control.runtime.replay import FirstOrderPlant, Replay, ScriptedWorker, home_pose

    cfg = load_config(preset_path("fr3"))
    con = make_contract(cfg, action_dt=0.05)  # 25 ticks per action step at 500 Hz
    clock = SimClock(0.0)
    worker = ScriptedWorker(_RampFromState(con, step), clock, cfg.control_period, latency)
    c = Controller(cfg, con, worker, clock)
    plant = FirstOrderPlant(home_pose(cfg), cfg.control_period)
    replay = Replay(c, clock, plant)
    c.start()
    return c, worker, replay, home_pose(cfg)


def test_a_chunk_computed_while_the_arm_stood_still_starts_at_its_arrival():
    """Regression (closed-loop collapse under injected delay): the first chunk, computed from the arm
    at rest, used to be placed at its observation tick, so the actions for the ticks spent waiting
    were dropped and the arm had to start mid-motion: a seam from rest to a point 4 steps along,
    blended by a catch-up move the model never planned, which the next request then committed to as
    its prefix. Nothing moved while the model thought, so the chunk must run from its beginning."""
    latency, step, s = 100, 0.02, 25
    c, worker, replay, q0 = _ramp_rig(latency, step)
    log = replay.run(260)  # first chunk arrives at tick 100; the next request goes out at tick 187
    sched = c.scheduler
    assert sched.counters["chunks_accepted"] == 1
    assert sched.counters["chunks_started_at_arrival"] == 1
    assert sched.counters["actions_dropped"] == 0
    assert sched.seam_gap_last < 1e-6  # the chunk starts where the arm holds (float32 state)
    assert sched.delay.last == latency  # the delay is still measured from the observation
    # The commanded motion is the chunk shifted to its arrival, never ahead of it: at most the
    # ramp's displacement since the arrival (the seam correction only eases in the start).
    for tick in (150, 200, 259):
        planned = step * (tick - latency) / s
        ahead = float(np.max(log.q_cmd[tick] - q0)) - planned
        assert ahead <= 1e-3, f"tick {tick}: commanded {ahead:.4f} rad ahead of the chunk"
    # The next request's prefix starts at the commanded pose, not 4 steps further.
    second = worker.requests[1]
    assert second.prefix_len > 0
    assert float(np.max(np.abs(second.action_prefix[0] - log.q_cmd[second.obs_tick]))) < 2e-3


def test_a_chunk_computed_while_moving_still_drops_its_past_actions():
    """The other side of the rule: when the arm executed a plan during the delay, the chunk stays on
    its observation's time grid and the actions for ticks already past are dropped."""
    latency = 60
    c, worker, replay, _ = _ramp_rig(latency, 0.02)
    replay.run(800)
    sched = c.scheduler
    assert sched.counters["chunks_accepted"] >= 3
    assert sched.counters["chunks_started_at_arrival"] == 1  # only the one requested at rest
    assert sched.counters["actions_dropped"] >= (sched.counters["chunks_accepted"] - 1) * (latency // 25)


class _TimingProbe:
    """Stands in for the surprise monitor: records, per result, the tick its latent predictions are
    timed from and the predicted joint-1 position (the ramp model's action at the predicted offset)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def attach(self, safety_filter) -> None:
        self.filter = safety_filter

    def reset(self) -> None:
        self.calls.append((-1, float("nan")))

    def on_result(self, obs_tick, latent, latent_pred, start_tick=None, frame_error=float("nan")) -> float:
        # The monitor's rule: without `start_tick`, predictions are keyed from the observation.
        self.calls.append((int(obs_tick if start_tick is None else start_tick), float(latent_pred[0, 0])))
        return 0.0

    def values(self) -> dict:
        return {}

    def warning(self) -> None:
        return None


def test_surprise_predictions_of_a_chunk_started_at_arrival_are_timed_from_its_arrival():
    """Regression (surprise trips under injected delay): a chunk computed at rest starts at its
    arrival, so what its world model predicts for `offset` steps after the observation happens
    `offset` steps after the arrival. The monitor used to get the observation tick: every first
    chunk of an episode looked wrong by the whole delay (200 ms: trips in nominal episodes)."""
    from wam_control.config import load_config, preset_path
    from wam_control.policy.base import PolicyOutput
    from wam_control.runtime.replay import FirstOrderPlant, Replay, ScriptedWorker, home_pose

    latency, step, s, off = 100, 0.02, 25, 8
    cfg = load_config(preset_path("fr3"))
    con = dataclasses.replace(make_contract(cfg, action_dt=0.05), latent_offsets=(off,))
    ramp = _RampFromState(con, step)

    def model(req):
        out = ramp(req)
        pred = np.zeros((1, con.latent_dim), np.float32)
        pred[0, 0] = out.actions[off, 0]  # "where joint 1 will be `off` steps after the chunk starts"
        return PolicyOutput(out.actions, out.latent, pred)

    clock = SimClock(0.0)
    worker = ScriptedWorker(model, clock, cfg.control_period, latency)
    probe = _TimingProbe()
    c = Controller(cfg, con, worker, clock, surprise_monitor=probe)
    replay = Replay(c, clock, FirstOrderPlant(home_pose(cfg), cfg.control_period))
    c.start()
    log = replay.run(500)
    calls = [call for call in probe.calls if call[0] >= 0]
    assert len(calls) >= 2
    (t1, pred1), (t2, _) = calls[0], calls[1]
    assert worker.requests[0].obs_tick == 0
    assert t1 == latency  # the arrival, where the chunk really started
    # The prediction holds at the retimed tick (once the ease-in from rest has caught up); at the
    # observation's tick it would have been wrong by the whole delay.
    err_arrival = abs(log.q_cmd[t1 + off * s, 0] - pred1)
    err_obs = abs(log.q_cmd[off * s, 0] - pred1)
    assert err_obs > 0.5 * off * step
    assert err_arrival < 0.25 * err_obs, (err_arrival, err_obs)
    # A chunk requested while moving stays on its observation's time grid.
    assert t2 == worker.requests[1].obs_tick
