"""Chunk scheduler: tick indexing, interpolation, delay estimate, trigger, prefix, seams, starvation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wam_control.config.schema import InferenceConfig
from wam_control.runtime.scheduler import ChunkScheduler, DelayTracker, SchedulerParams

DT = 0.002
H = 16
D = 3
S = 10  # ticks per action step


def ref(t: np.ndarray | float) -> np.ndarray:
    """A smooth reference motion, [len(t), D]."""
    t = np.atleast_1d(np.asarray(t, dtype=float))[:, None]
    w = np.array([1.3, 2.1, 0.7])
    return 0.4 * np.sin(w * t + np.array([0.0, 1.0, 2.0]))


def chunk_at(t0: int, s: float = S, h: int = H, offset: float = 0.0) -> np.ndarray:
    return ref((t0 + np.arange(h) * s) * DT) + offset


def make(
    params: SchedulerParams | None = None,
    s: float = S,
    warmup: int = 0,
    window: int = 20,
    max_prefix: int = 6,
) -> ChunkScheduler:
    inf = InferenceConfig(delay_percentile=95.0, delay_window=window, warmup_chunks=warmup)
    return ChunkScheduler(H, D, s, max_prefix, DT, inf, params)


def run(sched: ChunkScheduler, ticks: range) -> np.ndarray:
    out = []
    for t in ticks:
        q = sched.target(t)
        out.append(np.full(D, np.nan) if q is None else q.copy())
    return np.array(out)


def test_action_k_lands_on_tick_t0_plus_k_times_s_and_past_actions_are_dropped():
    sched = make()
    t0 = 100
    actions = chunk_at(t0)
    assert sched.accept(t0, actions, now_tick=t0 + 23) is None
    # Steps 0, 1, 2 (ticks 100, 110, 120) are in the past at arrival tick 123.
    assert sched.counters["actions_dropped"] == 3
    for k in range(3, H):
        np.testing.assert_allclose(sched.target(t0 + k * S), actions[k], atol=1e-12)
    assert sched.target(t0 + (H - 1) * S + 1) is None


def test_fractional_ticks_per_step_is_indexed_by_time():
    s = 2.5
    sched = make(s=s)
    t0 = 10
    actions = chunk_at(t0, s=s)
    sched.accept(t0, actions, now_tick=t0)
    np.testing.assert_allclose(sched.target(t0 + 5), actions[2], atol=1e-12)  # tick 15 = step 2
    q = sched.target(t0 + 6).copy()  # step 2.4, between the action points, close to the reference
    np.testing.assert_allclose(q, ref((t0 + 6) * DT)[0], atol=1e-4)


def test_cubic_interpolation_has_far_less_jerk_than_linear():
    def stream(interp: str) -> np.ndarray:
        sched = make(SchedulerParams(interpolation=interp))  # type: ignore[arg-type]
        sched.accept(0, chunk_at(0), now_tick=0)
        return run(sched, range(0, (H - 1) * S + 1))

    cubic, linear = stream("cubic"), stream("linear")
    # Both pass through the action points...
    np.testing.assert_allclose(cubic[::S], chunk_at(0), atol=1e-12)
    np.testing.assert_allclose(linear[::S], chunk_at(0), atol=1e-12)
    # ...but linear has a velocity step at each one: acceleration impulses, huge jerk.
    jerk_c = np.abs(np.diff(cubic, 3, axis=0)).max() / DT**3
    jerk_l = np.abs(np.diff(linear, 3, axis=0)).max() / DT**3
    acc_c = np.abs(np.diff(cubic, 2, axis=0)).max() / DT**2
    acc_l = np.abs(np.diff(linear, 2, axis=0)).max() / DT**2
    assert jerk_c * 50 < jerk_l
    assert acc_c * 5 < acc_l
    # and the cubic stays close to the underlying smooth motion between the points
    np.testing.assert_allclose(cubic[S:-S], ref(np.arange(S, (H - 2) * S + 1) * DT), atol=2e-4)


def test_delay_tracker_excludes_warmup_and_uses_a_windowed_percentile():
    tr = DelayTracker(window=5, percentile=95.0, warmup=2)
    tr.add(200)  # slow first call
    assert tr.estimate == 200  # only information so far
    tr.add(40)
    assert tr.estimate == 40  # latest warm-up delay, not a running max
    for d in (10, 12, 11):
        tr.add(d)
    assert tr.warmup_excluded == 2
    assert tr.estimate == 12  # the warm-up spikes are not in the window
    for d in (30, 30, 30, 30, 30):  # window of 5 slides: the old samples are gone
        tr.add(d)
    assert tr.estimate == 30
    tr.restart_warmup()
    tr.add(500)
    assert tr.estimate == 30
    assert tr.quantiles() == (30.0, 30.0)
    with pytest.raises(ValueError, match="delay_window"):
        DelayTracker(window=0, percentile=95, warmup=0)


def test_trigger_fires_when_remaining_horizon_reaches_delay_plus_margin():
    sched = make(SchedulerParams(replan_fraction=0.0, trigger_margin_ticks=2), warmup=0)
    assert sched.want_request(0)  # nothing to execute yet
    sched.on_request(0)
    sched.accept(0, chunk_at(0), now_tick=30)  # d = 30
    assert sched.delay_estimate == 30
    end = (H - 1) * S  # 150
    fired = [t for t in range(30, end + 1) if sched.want_request(t)]
    assert fired[0] == end - 30 - 2


def test_steady_cadence_requests_every_fraction_of_the_chunk():
    sched = make(SchedulerParams(replan_fraction=0.25), warmup=0)
    sched.on_request(0)
    sched.accept(0, chunk_at(0), now_tick=5)
    cadence = round(0.25 * (H - 1) * S)
    assert not sched.want_request(cadence - 1)
    assert sched.want_request(cadence)


def test_prefix_is_the_committed_plan_while_the_model_thinks_and_never_zero_padded():
    sched = make(warmup=0, max_prefix=6)
    sched.accept(0, chunk_at(0), now_tick=24)  # d = 24 -> prefix covers steps 0..2 (+1 extra)
    out = np.full((H, D), np.nan, dtype=np.float32)
    n = sched.fill_prefix(40, out, fallback=np.ones(D))
    assert n == 24 // S + 2 == 4
    for k in range(n):
        expected = sched._cur.actions[(40 + k * S) // S]  # on-grid here: the chunk's own action points
        np.testing.assert_allclose(out[k], expected, atol=1e-6)
    np.testing.assert_array_equal(out[n:], np.repeat(out[n - 1 : n], H - n, axis=0))
    assert sched.prefix_len_last == 4


@pytest.mark.parametrize(
    ("delay_ticks", "min_prefix", "expected"),
    [
        (5, 0, 2),  # d/s = 0: the step running now + 1 extra
        (5, 5, 5),  # the minimum wins at a short delay
        (24, 3, 4),  # the delay needs more than the minimum
        (24, 6, 6),
        (55, 4, 6),  # needs 7: capped at max_prefix 6, as without a minimum
    ],
)
def test_min_prefix_steps_is_a_floor_under_what_the_delay_needs(delay_ticks, min_prefix, expected):
    inf = InferenceConfig(delay_percentile=95.0, delay_window=20, warmup_chunks=0, min_prefix_steps=min_prefix)
    sched = ChunkScheduler(H, D, S, 6, DT, inf)
    sched.accept(0, chunk_at(0), now_tick=delay_ticks)
    out = np.zeros((H, D), dtype=np.float32)
    assert sched.fill_prefix(60, out, fallback=np.ones(D)) == expected
    for k in range(expected):
        np.testing.assert_allclose(out[k], sched._cur.actions[(60 + k * S) // S], atol=1e-6)


def test_prefix_is_capped_at_max_prefix_and_the_overflow_is_counted():
    sched = make(warmup=0, max_prefix=2)
    sched.accept(0, chunk_at(0), now_tick=55)  # d = 55 ticks: needs 7 steps
    out = np.zeros((H, D), dtype=np.float32)
    assert sched.fill_prefix(60, out, fallback=np.ones(D)) == 2
    assert sched.counters["prefix_overflows"] == 1
    assert sched.prefix_needed_last == 7


def test_prefix_without_a_chunk_is_empty_and_filled_with_the_state_not_zeros():
    sched = make()
    out = np.zeros((H, D), dtype=np.float32)
    state = np.array([0.3, -0.2, 0.1])
    assert sched.fill_prefix(0, out, fallback=state) == 0
    np.testing.assert_allclose(out, np.repeat(state[None], H, axis=0), atol=1e-7)
    naive = make(SchedulerParams(mode="naive"))
    naive.accept(0, chunk_at(0), now_tick=0)
    assert naive.fill_prefix(5, out, fallback=state) == 0


def _switch(
    params: SchedulerParams, offset: float, prefix_steps: int | None = None
) -> tuple[ChunkScheduler, np.ndarray]:
    """Run chunk A from tick 0, switch at tick 60 to chunk B (obs tick 40) that disagrees by `offset`
    except on its first `prefix_steps` steps (which repeat A's plan, as a prefix-conditioned model does)."""
    sched = make(params, warmup=0)
    sched.accept(0, chunk_at(0), now_tick=0)
    q = [sched.target(t).copy() for t in range(0, 60)]
    b = chunk_at(40, offset=offset)
    if prefix_steps:
        prefix = np.zeros((H, D), dtype=np.float32)
        sched.fill_prefix(40, prefix, fallback=np.zeros(D))
        b[:prefix_steps] = prefix[:prefix_steps]
        # the model returns to its own plan smoothly after the prefix
        fade = np.clip((np.arange(H) - prefix_steps + 1) / 4.0, 0.0, 1.0)
        b = chunk_at(40) + offset * fade[:, None]
    sched.accept(40, b, now_tick=60)
    q += [sched.target(t).copy() for t in range(60, 40 + (H - 1) * S + 1)]
    return sched, np.array(q)


def test_naive_switch_jumps_by_the_disagreement():
    sched, q = _switch(SchedulerParams(mode="naive"), offset=0.02)
    assert sched.seam_gap_last == pytest.approx(0.02, abs=1e-9)
    assert sched.seam_jump_last == pytest.approx(0.02, abs=1e-4)
    assert sched.counters["seams_blended"] == 0


def test_disagreeing_chunk_is_blended_c2_with_bounded_jerk_and_ends_on_the_new_chunk():
    params = SchedulerParams(blend_max_jerk=500.0, blend_max_acc=2.5)
    sched, q = _switch(params, offset=0.02)
    assert sched.counters["seams_blended"] == 1
    assert sched.seam_gap_last == pytest.approx(0.02, abs=1e-9)
    assert sched.seam_jump_last < 1e-4  # continuous position, velocity and acceleration at the seam
    # jerk of the emitted stream: the motion's own (tiny) plus at most the correction's bound
    jerk = np.abs(np.diff(q, 3, axis=0)).max() / DT**3
    assert jerk <= 500.0 * 1.05
    acc = np.abs(np.diff(q, 2, axis=0)).max(axis=0) / DT**2
    ref_acc = 0.4 * np.array([1.3, 2.1, 0.7]) ** 2
    assert np.all(acc <= ref_acc + 2.5)
    # after the blend the target is exactly the new chunk
    end = 60 + sched.blend_ticks_last
    new = make()
    new.accept(40, chunk_at(40, offset=0.02), now_tick=40)
    np.testing.assert_allclose(q[end + 1], new.target(end + 1), atol=1e-12)


def _blend_after_switch(params: SchedulerParams, offset: np.ndarray) -> tuple[ChunkScheduler, np.ndarray]:
    """The arm at rest on chunk A (all zeros) until tick 60, then chunk B (obs tick 40) holding `offset`
    per DOF: the gap is position only, and the emitted targets minus `offset` are the correction."""
    sched = make(params)
    sched.accept(0, np.zeros((H, D)), now_tick=0)
    run(sched, range(0, 60))
    sched.accept(40, np.tile(offset, (H, 1)), now_tick=60)
    return sched, run(sched, range(60, 40 + (H - 1) * S)) - offset


# A gripper finger (m) beside arm joints (rad): its limits are not the arm's and must not become them.
ARM, FINGER = 2.5, 0.125


@pytest.mark.parametrize(
    "offset, per_dof_acc, as_long_as_offset, as_long_as_acc",
    [
        # an arm joint's seam is corrected as fast as the arm's own limit allows, finger or not
        ((0.02, 0.0, 0.0), (ARM, ARM, FINGER), (0.02, 0.0, 0.0), ARM),
        # a finger's seam is as slow as the finger's limit needs
        ((0.0, 0.0, 0.0005), (ARM, ARM, FINGER), (0.0, 0.0, 0.0005), FINGER),
        # both: whichever needs longer against its own limit
        ((0.02, 0.0, 0.0005), (ARM, ARM, FINGER), (0.02, 0.0, 0.0), ARM),
        ((0.002, 0.0, 0.0005), (ARM, ARM, FINGER), (0.0, 0.0, 0.0005), FINGER),
    ],
)  # fmt: skip
def test_seam_correction_is_bounded_by_each_dofs_own_acceleration_limit(
    offset: tuple[float, ...],
    per_dof_acc: tuple[float, ...],
    as_long_as_offset: tuple[float, ...],
    as_long_as_acc: float,
) -> None:
    sched, corr = _blend_after_switch(
        SchedulerParams(blend_max_jerk=1e6, blend_max_acc_per_dof=per_dof_acc), np.array(offset)
    )
    alone, _ = _blend_after_switch(
        SchedulerParams(blend_max_jerk=1e6, blend_max_acc=as_long_as_acc), np.array(as_long_as_offset)
    )
    assert sched.counters["seams_blended"] == 1
    assert sched.blend_ticks_last == alone.blend_ticks_last
    assert sched.blend_ticks_last * DT < 0.25  # within the chunk: not cut short at its end
    # the correction's own acceleration stays within each DOF's own limit
    acc = np.abs(np.diff(corr, 2, axis=0)).max(axis=0) / DT**2
    assert np.all(acc <= np.array(per_dof_acc) * 1.05)


def test_per_dof_seam_limits_must_match_the_dofs_and_be_positive() -> None:
    with pytest.raises(ValueError, match="2 per-DOF seam limits for 3 DOFs"):
        make(SchedulerParams(blend_max_acc_per_dof=(1.0, 1.0)))
    with pytest.raises(ValueError, match="blend_max_jerk_per_dof"):
        SchedulerParams(blend_max_jerk_per_dof=(1.0, 0.0, 1.0))


def test_prefix_conditioned_chunk_needs_no_blend_and_has_no_seam():
    sched, q = _switch(SchedulerParams(), offset=0.02, prefix_steps=4)
    assert sched.seam_gap_last < 1e-3
    assert sched.seam_jump_last < 1e-5


def test_fixed_blend_averages_overlapping_chunks_and_halves_the_jump():
    sched, q = _switch(SchedulerParams(mode="fixed_blend", fixed_blend_weight=0.5), offset=0.02)
    assert sched.seam_jump_last == pytest.approx(0.01, abs=1e-4)
    # a second seam where the old chunk ends (tick 150): the other half of the disagreement
    step = np.abs(np.diff(q, 2, axis=0))[148:152].max()
    assert step == pytest.approx(0.01, abs=2e-4)


def test_starvation_returns_none_and_is_counted_once_per_event():
    sched = make()
    assert sched.target(0) is None  # before the first chunk: waiting, not starving
    assert sched.counters["starved_ticks"] == 0
    sched.accept(0, chunk_at(0), now_tick=0)
    run(sched, range(0, (H - 1) * S + 11))
    assert sched.counters["starved_ticks"] == 10
    assert sched.counters["starvation_events"] == 1
    assert sched.starving
    # a late chunk ends the starvation, blending from the held state
    hold = (chunk_at(0)[-1], np.zeros(D), np.zeros(D))
    assert sched.accept(200, chunk_at(200), now_tick=210, hold=hold) is None
    assert sched.target(210) is not None
    np.testing.assert_allclose(sched.target(211), hold[0], atol=0.05)
    assert sched.counters["seams_blended"] == 1


def test_stale_and_expired_chunks_are_dropped_with_a_reason():
    sched = make()
    sched.accept(100, chunk_at(100), now_tick=100)
    why = sched.accept(90, chunk_at(90), now_tick=101)
    assert why is not None and "not newer" in why
    why = sched.accept(120, chunk_at(120), now_tick=120 + (H - 1) * S + 1)
    assert why is not None and "ended before" in why
    assert sched.counters["chunks_stale"] == 1 and sched.counters["chunks_expired"] == 1
    assert sched.version == 1


def test_reset_drops_chunks_but_keeps_delay_statistics():
    sched = make(warmup=0)
    sched.accept(0, chunk_at(0), now_tick=17)
    sched.reset()
    assert sched.target(20) is None and sched.version == 0
    assert sched.counters["starved_ticks"] == 0
    assert sched.delay_estimate == 17


def test_predicted_chunk_times_are_relative_to_now():
    sched = make()
    assert sched.predicted(0) is None
    sched.accept(100, chunk_at(100), now_tick=105)
    version, t, pos = sched.predicted(105)
    assert version == 1
    assert t[0] == pytest.approx(-5 * DT) and t[1] == pytest.approx(5 * DT)
    np.testing.assert_allclose(pos, chunk_at(100))


def test_invalid_parameters_name_the_field():
    with pytest.raises(ValueError, match="mode"):
        SchedulerParams(mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_prefix"):
        ChunkScheduler(H, D, S, H, DT)
    with pytest.raises(ValueError, match="ticks_per_step"):
        ChunkScheduler(H, D, math.nan, 2, DT)


def test_start_at_arrival_places_step_zero_at_the_arrival_tick_and_keeps_the_measured_delay():
    sched = make()
    actions = chunk_at(0)
    assert sched.accept(0, actions, now_tick=37, start_at_arrival=True) is None
    np.testing.assert_allclose(sched.target(37), actions[0], atol=1e-12)
    np.testing.assert_allclose(sched.target(37 + 3 * S), actions[3], atol=1e-12)
    assert sched.counters["actions_dropped"] == 0
    assert sched.counters["chunks_started_at_arrival"] == 1
    assert sched.delay.last == 37
    assert sched.current_obs_tick == 0
    assert sched.remaining_ticks(37) == (H - 1) * S
    # Freshness is judged by observation tick, not by where the chunk was placed: a chunk observed
    # after tick 0 is newer even though it is observed before the arrival tick 37.
    assert sched.accept(20, chunk_at(20), now_tick=60) is None
    assert sched.accept(10, chunk_at(10), now_tick=61) is not None
    assert sched.counters["chunks_stale"] == 1
