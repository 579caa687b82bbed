"""Property tests of the safety filter: the envelope holds on every tick for adversarial streams,
the certification really implies a safe stop, stops are near Ruckig's optimum, and the per-tick
filter and the batched core compute identical commands."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wam_control.bench.safety import smooth_streams, tightness
from wam_control.config import load_config, preset_path
from wam_control.runtime.safety import (
    _PLANS,
    BatchCore,
    SafetyFilter,
    _brake_jerk,
    _certify,
    _plan_reach,
    _stop_distance,
)

TOL = 1e-6
PRESETS = {name: load_config(preset_path(name)) for name in ("fr3", "panda")}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_robot_view(seed: np.ndarray, qs: np.ndarray, la, dt: float) -> None:
    q = np.concatenate([np.repeat(seed[None], 3, axis=0), qs])
    v = np.diff(q, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    j = np.diff(a, axis=0) / dt
    assert np.all(np.isfinite(qs))
    assert np.all(qs <= la.q_max + 1e-9) and np.all(qs >= la.q_min - 1e-9), "position"
    assert np.all(np.abs(v) <= la.v_max * (1 + TOL)), "velocity"
    assert np.all(np.abs(a) <= np.minimum(la.a_max, la.d_max) * (1 + TOL)), "acceleration"
    assert np.all(np.abs(j) <= la.j_max * (1 + TOL)), "jerk"


EVENT = st.one_of(
    st.tuples(st.just("step"), st.floats(-1.5, 1.5), st.integers(1, 80)),
    st.tuples(st.just("behind"), st.sampled_from([-1.0, 1.0]), st.integers(20, 300)),
    st.tuples(st.just("oscillate"), st.sampled_from([-1.0, 1.0]), st.integers(1, 8)),
    st.tuples(st.just("sine"), st.floats(0.5, 60.0), st.integers(20, 200)),
    st.tuples(st.just("nan"), st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(1, 8)),
    st.tuples(st.just("shape"), st.sampled_from([0, 1, 6, 8, 14, 77]), st.integers(1, 3)),
    st.tuples(st.just("none"), st.just(0.0), st.integers(1, 60)),
    st.tuples(st.just("stale"), st.just(0.0), st.integers(1, 30)),
    st.tuples(st.just("scale"), st.floats(0.05, 1.0), st.just(1)),
    st.tuples(st.just("latch"), st.just(0.0), st.just(1)),
)


@FAST
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    hz=st.sampled_from([500.0, 1000.0]),
    seed=st.integers(0, 2**31 - 1),
    events=st.lists(EVENT, min_size=1, max_size=25),
)
def test_adversarial_streams_never_leave_the_envelope(preset, hz, seed, events) -> None:
    cfg = PRESETS[preset]
    la = cfg.limit_arrays()
    dt = 1.0 / hz
    safety = dataclasses.replace(cfg.safety, ramp_in_s=0.05, max_consecutive_bad_targets=4)
    f = SafetyFilter(la, safety, dt, cfg.joint_names)
    rng = np.random.default_rng(seed)
    center, half = 0.5 * (la.q_min + la.q_max), 0.5 * (la.q_max - la.q_min)
    q0 = rng.uniform(la.q_min, la.q_max)
    f.reset(q0)
    out = []
    k = 0
    for kind, value, count in events:
        for c in range(count):
            age = 0.0
            if kind == "step":
                target = center + value * half * rng.uniform(0.5, 1.0, 7)
            elif kind == "behind":  # far behind a limit: full speed toward it, then must stop
                target = center + value * 3.0 * half
            elif kind == "oscillate":
                target = (
                    np.where((k // count) % 2 == 0, la.q_max + 0.2, la.q_max - 0.05)
                    if value > 0
                    else (np.where((k // count) % 2 == 0, la.q_min - 0.2, la.q_min + 0.05))
                )
            elif kind == "sine":
                target = center + 0.9 * half * np.sin(value * k * dt + np.arange(7))
            elif kind == "nan":
                target = center.copy()
                target[rng.integers(0, 7)] = value
            elif kind == "shape":
                target = np.zeros((1, 7)) if value == 77 else np.zeros(int(value))
            elif kind == "stale":
                target, age = center, 1.0
            else:
                target = None
            if kind == "scale" and c == 0:
                f.set_velocity_scale(value)
            if kind == "latch" and c == 0:
                f.latch("test")
            before = f.q.copy()
            was = (f.v.copy(), f.a.copy())
            q = f.step(target, f.q.copy(), age).copy()
            if kind in ("nan", "shape", "none", "stale"):
                # Rejected whole: braking from its own state, the same as with no target at all.
                assert f.holding
                ref = SafetyFilter(la, safety, dt, cfg.joint_names)
                ref.reset(before)
                ref._v[:] = was[0].tolist()
                ref._a[:] = was[1].tolist()
                np.testing.assert_array_equal(ref.step(None, before, 0.0), q)
            out.append(q)
            k += 1
            if f.fault is not None and f.stopped:
                f.rearm(f.q.copy())
    check_robot_view(q0, np.array(out), la, dt)


@settings(max_examples=300, deadline=None)
@given(
    v=st.floats(-1.0, 1.0),
    a=st.floats(-1.0, 1.0),
    vm=st.sampled_from([0.3, 2.175, 2.62, 5.26]),
    am=st.sampled_from([1.0, 7.5, 10.0, 20.0]),
    jm=st.sampled_from([100.0, 3750.0, 5000.0, 10000.0]),
    dt=st.sampled_from([0.001, 0.002, 0.004]),
    slack=st.floats(0.0, 0.01),
)
def test_certified_state_brakes_safely(v, a, vm, am, jm, dt, slack) -> None:
    """T(x) => the brake law from x keeps |j| <= jm, |a| <= am, |v| <= vm, q <= hi, and stops."""
    v, a = v * vm, a * am
    lo, hi = -10.0, 1.0
    s = 1.0 if (v > 0 or (v == 0 and a > 0)) else -1.0
    d = _stop_distance(abs(v), a * s, jm, am) + (abs(v) + abs(a) * dt) * dt
    q = hi - d - slack if s > 0 else lo + d + slack
    kind, _, _ = _certify(q, v, a, lo, hi, vm, am, jm, dt)
    if kind:
        return
    for _ in range(200000):
        j = _brake_jerk(v, a, jm, am, dt)
        assert abs(j) <= jm * (1 + 1e-12)
        a += j * dt
        v += a * dt
        q += v * dt
        assert abs(a) <= am * (1 + 1e-9) and abs(v) <= vm * (1 + 1e-9)
        assert lo - 1e-12 <= q <= hi + 1e-12
        if abs(v) < 1e-12 and abs(a) < 1e-9:
            return
    pytest.fail("brake law did not stop")


@pytest.mark.parametrize("preset", ["fr3", "panda"])
def test_stop_is_close_to_ruckig_optimum(preset) -> None:
    ruckig = pytest.importorskip("ruckig")
    cfg = PRESETS[preset]
    la = cfg.limit_arrays()
    dt = cfg.control_period
    rng = np.random.default_rng(1)
    for trial in range(60):
        i = trial % 7
        vm, am, jm = float(la.v_max[i]), float(min(la.a_max[i], la.d_max[i])), float(la.j_max[i])
        v = rng.uniform(0.05, 1.0) * vm
        a = rng.uniform(-1.0, 1.0) * am
        if v + max(a, 0.0) ** 2 / (2 * jm) > vm:
            a = 0.0
        otg = ruckig.Ruckig(1)
        inp = ruckig.InputParameter(1)
        inp.control_interface = ruckig.ControlInterface.Velocity
        inp.current_position, inp.current_velocity, inp.current_acceleration = [0.0], [v], [a]
        inp.target_velocity, inp.target_acceleration = [0.0], [0.0]
        inp.max_velocity, inp.max_acceleration, inp.max_jerk = [vm], [am], [jm]
        traj = ruckig.Trajectory(1)
        otg.calculate(inp, traj)
        t_opt = traj.duration
        d_opt = traj.at_time(t_opt)[0][0]
        # The filter's stop from the same commanded state.
        q, vv, aa, ticks = 0.0, v, a, 0
        while not (vv == 0.0 and aa == 0.0):
            j = _brake_jerk(vv, aa, jm, am, dt)
            aa += j * dt
            vv += aa * dt
            q += vv * dt
            if abs(vv) < 1e-12 and abs(aa) < 1e-9:
                vv = aa = 0.0
            ticks += 1
            assert ticks < 10000
        t_stop = ticks * dt
        assert q >= d_opt - 2 * v * dt, f"stopped in {q} < physically possible {d_opt}"
        assert t_stop >= t_opt - 2 * dt
        assert t_stop <= 1.5 * t_opt + 5 * dt
        assert q <= 1.5 * d_opt + 5 * v * dt
        # And the certification bound covers it.
        assert q <= _stop_distance(v, a, jm, am) + (v + abs(a) * dt) * dt


@pytest.mark.parametrize("preset", ["fr3", "panda"])
def test_per_tick_filter_and_batched_core_agree_exactly(preset) -> None:
    cfg = PRESETS[preset]
    la = cfg.limit_arrays()
    dt = cfg.control_period
    safety = dataclasses.replace(cfg.safety, ramp_in_s=0.2, max_consecutive_bad_targets=10**9)
    rng = np.random.default_rng(7)
    rows = 3
    core = BatchCore(la, safety, dt, rows)
    filters = [SafetyFilter(la, safety, dt, cfg.joint_names) for _ in range(rows)]
    q0 = rng.uniform(la.q_min, la.q_max, (rows, 7))
    core.reset(q0)
    for f, q in zip(filters, q0):
        f.reset(q)
    center, half = 0.5 * (la.q_min + la.q_max), 0.5 * (la.q_max - la.q_min)
    brakes = 0
    for k in range(3000):
        phase = (k // 300) % 4
        if phase == 0:
            target = rng.uniform(la.q_min - 0.5, la.q_max + 0.5, (rows, 7))
        elif phase in (1, 2):
            target = np.broadcast_to(center + 3.0 * half * np.sign(np.sin(k / 100.0)), (rows, 7)).copy()
        else:
            target = center + 0.9 * half * np.sin(
                k * dt * np.arange(1, 8) * 4.0 + rng.uniform(0, 0.01, (rows, 7))
            )
        usable = rng.random(rows) > 0.03
        if k % 400 == 399:
            # Fast toward the upper limit, right at the edge of the certified set, and a target that
            # keeps going exactly as the command does (its own velocity and acceleration): passing it
            # through cannot be certified, the brake law must take over (in both).
            v0 = 0.9 * la.v_max
            a0 = 0.3 * np.minimum(la.a_max, la.d_max)
            am = np.minimum(la.a_max, la.d_max)
            d = np.array([_stop_distance(v0[i], a0[i], la.j_max[i], am[i]) for i in range(7)])
            q_edge = la.q_max - d - (v0 + a0 * dt) * dt - 1e-6
            p_prev, vt_prev = q_edge, v0 - a0 * dt
            core.q[:], core.v[:], core.a[:] = q_edge, v0, a0
            core.p_prev[:], core.vt_prev[:], core.have_prev[:] = p_prev, vt_prev, True
            for f in filters:
                f._q[:], f._v[:], f._a[:] = q_edge.tolist(), v0.tolist(), a0.tolist()
                f._p_prev[:], f._vt_prev[:], f._have_prev = p_prev.tolist(), vt_prev.tolist(), True
            target = np.broadcast_to(q_edge + (v0 + a0 * dt) * dt, (rows, 7)).copy()
            usable[:] = True
        measured = core.q + rng.normal(0.0, 1e-3, (rows, 7))
        if k % 50 == 0:  # sudden slow-downs while heading for a limit exercise the envelope brake
            scale = rng.uniform(0.05, 1.0, rows)
            core.velocity_scale[:] = scale
            for f, s in zip(filters, scale):
                f.set_velocity_scale(float(s))
        expected = np.array(
            [f.step(target[r] if usable[r] else None, measured[r], 0.0) for r, f in enumerate(filters)]
        )
        got = core.step(target, measured, usable)
        np.testing.assert_array_equal(got, expected)
        brakes = core.envelope_brakes
    assert brakes > 0, "stream never exercised the envelope brake"
    assert any(k.endswith("envelope_position") for f in filters for k in f.interventions())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    hz=st.sampled_from([500.0, 1000.0]),
    fraction=st.floats(0.02, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_smooth_feasible_streams_pass_through_unchanged(preset, hz, fraction, seed) -> None:
    """A target stream inside the limits (here <= 50 % of every v / a / jerk limit, starting at rest)
    comes out exactly as it went in once the ramp-in is over: no lag, no smoothing."""
    cfg = dataclasses.replace(PRESETS[preset], control_hz=hz)
    dt = cfg.control_period
    ramp = int(round(cfg.safety.ramp_in_s / dt))
    ticks = ramp + int(0.4 / dt)
    rng = np.random.default_rng(seed)
    targets = smooth_streams(cfg, rng, 1, ticks + 1, dt, fraction, start_s=cfg.safety.ramp_in_s)[:, 0]
    f = SafetyFilter(cfg.limit_arrays(), cfg.safety, dt, cfg.joint_names)
    f.reset(targets[0])
    out = np.array([f.step(targets[k], f.q.copy(), 0.0).copy() for k in range(1, ticks + 1)])
    np.testing.assert_array_equal(out[ramp:], targets[ramp + 1 :])
    assert not any("envelope" in k for k in f.interventions())
    check_robot_view(targets[0], out, cfg.limit_arrays(), dt)


@pytest.mark.parametrize("preset", ["fr3", "panda"])
def test_point_to_point_close_to_ruckig(preset) -> None:
    """Far and near targets are reached close to time-optimally: arrival within 0.1 mrad against
    Ruckig's time-optimal jerk-limited motion with the same limits (the bench's measure)."""
    pytest.importorskip("ruckig")
    worst, median = tightness(PRESETS[preset], seed=5, rows=12)
    assert worst <= 1.5, worst
    assert median <= 1.1, median


@pytest.mark.parametrize("preset", ["fr3", "panda"])
def test_far_step_reaches_full_speed_without_overshoot(preset) -> None:
    cfg = PRESETS[preset]
    la = cfg.limit_arrays()
    dt = cfg.control_period
    safety = dataclasses.replace(cfg.safety, ramp_in_s=0.0)
    f = SafetyFilter(la, safety, dt, cfg.joint_names)
    q0 = la.q_min + 0.1
    q1 = la.q_max - 0.1
    f.reset(q0)
    out = np.array([f.step(q1, f.q.copy(), 0.0).copy() for _ in range(int(5.0 / dt))])
    v = np.diff(out, axis=0) / dt
    assert np.all(np.abs(v).max(axis=0) >= 0.98 * la.v_max)  # cruises at the limit, window or not
    assert np.all(out <= q1 + 1e-12)  # never past the target
    np.testing.assert_array_equal(out[-1], q1)
    assert f.stopped
    check_robot_view(q0, out, la, dt)


@settings(max_examples=300, deadline=None)
@given(
    z=st.tuples(*[st.floats(-1.0, 1.0)] * 3),
    mag=st.tuples(st.floats(0.0, 6.0), st.floats(0.0, 4.0), st.floats(0.0, 2.0)),
    js=st.sampled_from([100.0, 5000.0, 7500.0]),
)
def test_plan_reach_never_skips_a_feasible_plan(z, mag, js) -> None:
    """_plan_reach is a necessary condition: where it says no, no plan keeps |jerk| <= js."""
    z0, z1, z2 = (z[i] * js * 10.0 ** mag[i] for i in range(3))
    if _plan_reach(z0, z1, z2, js):
        return
    for rows in _PLANS:
        assert max(abs(g0 * z0 + g1 * z1 + g2 * z2) for g0, g1, g2 in rows) > js
