"""Safety filter behaviour: table-driven cases in the style of ros2_control's limiter tests, plus
the lifecycle (seed, ramp-in, hold, latch, re-arm) and counters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wam_control.config import load_config, preset_path
from wam_control.config.schema import LimitArrays, SafetyConfig
from wam_control.runtime.safety import SafetyFilter

DT = 0.002
NAMES = ("j1", "j2")


def limits(**over: float) -> LimitArrays:
    base = dict(q_min=-1.0, q_max=1.0, v_max=1.0, a_max=10.0, d_max=10.0, j_max=1000.0)
    base.update(over)
    return LimitArrays(**{k: np.full(2, v) for k, v in base.items()}, max_tracking_error=0.25)


def make(safety: SafetyConfig | None = None, **lim: float) -> SafetyFilter:
    s = safety or SafetyConfig(ramp_in_s=0.0, max_consecutive_bad_targets=3)
    return SafetyFilter(limits(**lim), s, DT, NAMES)


def robot_view(seed: np.ndarray, qs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward differences of consecutive commands, as the robot computes them (seed at rest)."""
    q = np.array([seed, seed, seed, *qs])
    v = np.diff(q, axis=0) / DT
    a = np.diff(v, axis=0) / DT
    j = np.diff(a, axis=0) / DT
    return v, a, j


def run(f: SafetyFilter, targets, ticks: int, measured=None, age: float = 0.0) -> list[np.ndarray]:
    out = []
    for k in range(ticks):
        t = targets(k) if callable(targets) else targets
        m = f.q.copy() if measured is None else measured
        out.append(f.step(t, m, age).copy())
    return out


def within_limits(seed: np.ndarray, qs: list[np.ndarray], lim: LimitArrays, tol: float = 1e-6) -> None:
    v, a, j = robot_view(seed, qs)
    q = np.array(qs)
    assert np.all(q <= lim.q_max + tol) and np.all(q >= lim.q_min - tol)
    assert np.all(np.abs(v) <= lim.v_max * (1 + tol))
    assert np.all(np.abs(a) <= np.minimum(lim.a_max, lim.d_max) * (1 + tol))
    assert np.all(np.abs(j) <= lim.j_max * (1 + tol))


# Each row: start q, target (or special), ticks, expectation checked on the final command and counters.
CASES = [
    # id, q0, target, ticks, final q expected (None: not checked), counters expected nonzero
    ("reach inside target", 0.0, 0.2, 600, 0.2, ()),
    ("target above max clamped", 0.5, 3.0, 1500, 1.0, ("j1.position",)),
    ("target below min clamped", -0.5, -3.0, 1500, -1.0, ("j1.position",)),
    ("far step pulled into tracking window", 0.0, 0.9, 3, None, ("j1.tracking_error",)),
    ("NaN rejected whole", 0.3, "nan", 10, 0.3, ("target_rejected.nonfinite",)),
    ("inf rejected whole", 0.3, "inf", 10, 0.3, ("target_rejected.nonfinite",)),
    ("wrong size rejected", 0.3, "short", 10, 0.3, ("target_rejected.shape",)),
    ("text rejected", 0.3, "text", 10, 0.3, ("target_rejected.shape",)),
    ("no target holds", 0.3, None, 10, 0.3, ("hold.no_target",)),
]


@pytest.mark.parametrize(
    ("case", "q0", "target", "ticks", "final", "counters"), CASES, ids=[c[0] for c in CASES]
)
def test_table(case, q0, target, ticks, final, counters) -> None:
    f = make(safety=SafetyConfig(ramp_in_s=0.0, max_consecutive_bad_targets=1000))
    f.reset(np.array([q0, 0.0]))
    special = {
        "nan": np.array([np.nan, 0.0]),
        "inf": np.array([0.0, np.inf]),
        "short": np.array([0.1]),
        "text": "1.0, 2.0",
    }
    t = (
        special.get(target)
        if isinstance(target, str)
        else (None if target is None else np.array([target, 0.0]))
    )
    qs = run(f, t, ticks)
    within_limits(np.array([q0, 0.0]), qs, limits())
    if final is not None:
        assert qs[-1][0] == pytest.approx(final, abs=1e-3), case
    counts = f.interventions()
    for key in counters:
        assert counts.get(key, 0) > 0, f"{case}: {key} not counted in {counts}"
    if target in ("nan", "inf", "short", "text", None):
        assert f.holding and np.all(np.array(qs) == q0 * np.array([1.0, 0.0])), (
            "a rejected target moved the arm"
        )


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        make().step(np.zeros(2), np.zeros(2), 0.0)


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0]), np.zeros(3), None])
def test_reset_rejects_bad_measurement(bad) -> None:
    with pytest.raises(ValueError, match="j1, j2"):
        make().reset(bad)


@pytest.mark.parametrize(
    ("measured", "age", "counter"),
    [
        (None, 0.0, "state.missing"),
        ("same", 0.5, "state.stale"),
        ("same", float("nan"), "state.stale"),
        ("nan", 0.0, "state.invalid"),
    ],
)
def test_lost_state_brakes_to_hold(measured, age, counter) -> None:
    f = make()
    f.reset(np.zeros(2))
    run(f, np.array([0.2, -0.2]), 60)  # moving
    assert not f.stopped
    q_before = f.q.copy()
    m = {"same": None, "nan": np.array([np.nan, 0.0]), None: None}[measured]
    for _ in range(300):
        mm = m if measured != "same" else f.q.copy()
        if measured is None:
            mm = None
        f.step(np.array([0.2, -0.2]), mm, age)
        assert f.holding
    assert f.stopped and f.interventions()[counter] > 0
    # Held where its own braking ended, short of the target: it never jumped.
    assert abs(f.q[0] - q_before[0]) < 0.2


def test_brake_to_hold_from_own_state_not_measured() -> None:
    f = make()
    f.reset(np.zeros(2))
    qs = run(f, lambda k: np.array([0.8, -0.8]), 150)
    assert abs(f.v[0]) > 0.5
    far = np.array([-0.9, 0.9])  # a measurement far from the command must not pull the command there
    qs += run(f, None, 400, measured=far)
    within_limits(np.zeros(2), qs, limits())
    assert f.stopped and f.holding
    assert f.q[0] > qs[149][0]  # kept going forward while braking, did not jump back
    held = f.q.copy()
    qs2 = run(f, None, 50, measured=far)
    assert all(np.array_equal(q, held) for q in qs2)


def test_repeated_bad_targets_latch_until_rearm() -> None:
    f = make(safety=SafetyConfig(ramp_in_s=0.0, max_consecutive_bad_targets=3))
    f.reset(np.zeros(2))
    run(f, np.array([0.3, 0.3]), 50)
    for _ in range(3):
        f.step(np.array([np.nan, 0.0]), f.q.copy(), 0.0)
    assert f.fault == "repeated_bad_target"
    assert not f.rearm(f.q.copy())  # still braking: refuse
    run(f, np.array([0.3, 0.3]), 400)  # valid targets are ignored while latched
    assert f.stopped and f.holding and f.q[0] < 0.3
    assert f.interventions()["fault.repeated_bad_target"] == 1
    held = f.q.copy()
    assert f.rearm(held + 0.001)  # robot where the command is: resume from the held command
    assert f.fault is None and np.array_equal(f.q, held)
    qs = run(f, np.array([0.3, 0.3]), 600)
    assert qs[-1][0] == pytest.approx(0.3, abs=1e-3)


def test_good_targets_reset_the_bad_run() -> None:
    f = make(safety=SafetyConfig(ramp_in_s=0.0, max_consecutive_bad_targets=3))
    f.reset(np.zeros(2))
    for _ in range(10):
        f.step(np.array([np.nan, 0.0]), f.q.copy(), 0.0)
        f.step(np.array([np.nan, 0.0]), f.q.copy(), 0.0)
        f.step(np.zeros(2), f.q.copy(), 0.0)
    assert f.fault is None


def test_latch_external_and_rearm_from_moved_robot() -> None:
    f = make()
    f.reset(np.zeros(2))
    qs = run(f, np.array([0.5, 0.0]), 80)
    f.latch("estop")
    f.latch("estop")
    qs += run(f, np.array([0.5, 0.0]), 400)
    assert f.stopped and f.fault == "estop" and f.interventions()["fault.estop"] == 2
    within_limits(np.zeros(2), qs, limits())
    moved = np.array([-0.4, 0.1])  # pushed by hand during the stop: a new motion starts there
    assert f.rearm(moved)
    assert np.array_equal(f.q, moved) and f.fault is None
    f.latch("estop")
    assert not f.rearm(np.array([np.nan, 0.0])) and f.fault == "estop"  # needs a valid measurement


def test_tracking_error_holds() -> None:
    f = make()
    f.reset(np.zeros(2))
    run(f, np.array([0.2, 0.0]), 20)
    lagging = np.array([-0.3, 0.0])  # robot blocked far behind the command
    f.step(np.array([0.2, 0.0]), lagging, 0.0)
    assert f.holding and f.interventions()["j1.tracking_error"] > 0


def test_velocity_scale_and_ramp_in() -> None:
    lim = limits(v_max=2.0, a_max=20.0, d_max=20.0, j_max=5000.0)
    f = SafetyFilter(lim, SafetyConfig(ramp_in_s=1.0, ramp_in_scale=0.2), DT, NAMES)
    f.reset(np.array([-0.9, 0.0]))
    qs = run(f, lambda k: np.array([0.9, 0.0]), 250)  # first 0.5 s: ramp <= 0.6
    seed = np.array([-0.9, 0.0])
    v, _, _ = robot_view(seed, qs)
    ramp_at = 0.2 + 0.8 * np.arange(1, 251) * DT
    assert np.all(np.abs(v[2:, 0]) <= 2.0 * ramp_at + 1e-9)
    with pytest.raises(ValueError):
        f.set_velocity_scale(0.0)
    f.set_velocity_scale(0.25)
    qs2 = run(f, lambda k: np.array([-0.9 if (k // 300) % 2 else 0.9, 0.0]), 1200)
    v2, _, _ = robot_view(seed, qs + qs2)
    assert np.all(np.abs(v2[-900:, 0]) <= 0.5 + 1e-9)  # after the slow-down settles
    within_limits(seed, qs + qs2, lim)


def test_deceleration_limit_below_acceleration_is_respected() -> None:
    lim = limits(a_max=10.0, d_max=4.0)
    f = make(a_max=10.0, d_max=4.0)
    f.reset(np.zeros(2))
    qs = run(f, lambda k: np.array([0.9 if (k // 200) % 2 == 0 else -0.9, 0.0]), 1200)
    within_limits(np.zeros(2), qs, lim)


def test_seed_outside_margin_box_only_moves_inward() -> None:
    f = make()
    f.reset(np.array([1.03, 0.0]))  # inside the robot's limit, outside the margin box
    qs = run(f, np.array([1.5, 0.0]), 500)
    q = np.array(qs)[:, 0]
    assert q.max() <= 1.03 + 1e-12 and q[-1] <= 1.0 + 1e-9
    assert f.interventions()["j1.position"] > 0


def test_interventions_name_joint_and_limit() -> None:
    cfg = load_config(preset_path("fr3"))
    s = dataclasses.replace(cfg.safety, ramp_in_s=0.0)
    f = SafetyFilter(cfg.limit_arrays(), s, cfg.control_period, cfg.joint_names)
    la = cfg.limit_arrays()
    f.reset(0.5 * (la.q_min + la.q_max))
    target = 0.5 * (la.q_min + la.q_max)
    target[2] = 10.0
    f.step(target, f.q.copy(), 0.0)
    f.step(np.full(7, np.inf), f.q.copy(), 0.0)
    counts = f.interventions()
    assert counts["fr3_joint3.position"] == 1 and counts["target_rejected.nonfinite"] == 1
    assert not any(k.startswith("fr3_joint1.") for k in counts)


def test_state_views_are_read_only() -> None:
    f = make()
    f.reset(np.zeros(2))
    f.step(np.array([0.1, 0.0]), np.zeros(2), 0.0)
    for arr in (f.q, f.v, f.a, f.jerk):
        with pytest.raises(ValueError):
            arr[0] = 1.0
    assert f.jerk[0] != 0.0 and f.v[0] == pytest.approx((f.q[0] - 0.0) / DT)


@pytest.mark.parametrize("beyond", [0.0, 1e-6, 0.3, 5.0])
def test_target_at_or_beyond_a_limit_parks_just_inside_without_envelope_brakes(beyond) -> None:
    """The last ticks of an approach that ends exactly on a limit cannot be certified (one tick of
    motion is kept in hand), so the filter parks a few a_max dt^2 inside instead of retrying and
    braking every tick."""
    f = make()
    f.reset(np.array([0.0, 0.0]))
    qs = run(f, np.array([1.0 + beyond, -1.0 - beyond]), 1000)
    within_limits(np.zeros(2), qs, limits())
    assert f.stopped
    gap = 10.0 * 10.0 * DT * DT
    np.testing.assert_allclose(f.q, [1.0 - gap, -1.0 + gap], rtol=0, atol=1e-12)
    counts = f.interventions()
    assert not any("envelope" in k for k in counts), counts
    assert (counts.get("j1.position", 0) > 0) == (beyond > 0)


def test_pass_through_is_exact_and_stops_when_the_stream_turns_infeasible() -> None:
    f = make()
    f.reset(np.zeros(2))
    # A slow ramp: passed through unchanged (after the first ticks that lock on).
    ramp = [np.array([0.0002 * k * k / (k + 50.0), 0.0]) for k in range(200)]
    out = [f.step(t, f.q.copy(), 0.0).copy() for t in ramp]
    assert all(np.array_equal(o, t) for o, t in zip(out[20:], ramp[20:]))
    # Then a jump: not feasible in one tick, so the command moves toward it within the limits.
    jump = ramp[-1] + np.array([0.05, 0.0])
    out += run(f, jump, 300)
    assert not np.array_equal(out[200], jump)
    within_limits(np.zeros(2), out, limits())
    np.testing.assert_array_equal(out[-1], jump)
