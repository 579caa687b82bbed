"""Faults the controller must survive: each ends in a safe, smooth stop or in continued operation, and the
safety filter's limits hold on the whole emitted command stream (backward differences, as the robot
measures them). Scenarios live in wam_control/bench/scheduler.py (`--faults` prints the table)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from wam_control.bench.scheduler import FAULTS, format_faults, run_fault

# Upper bounds on detection latency (ticks after injection) that follow from the configuration:
# latency 20 ticks, worker checked every 5 ticks, max_state_age_s 0.1 s = 50 ticks, images stale after
# 0.5 s = 250 ticks, chunk 150 ticks, e-stop handled at the next tick.
DETECTION_BOUND = {
    "model_exception_once": 100,
    "model_exception_repeated": 100,
    "nan_output_once": 100,
    "inf_output_repeated": 100,
    "wrong_shape_repeated": 100,
    "inference_slower_than_chunk": 200,
    "inference_hang": 200,
    "worker_killed": 5,
    "camera_frames_stop": 250 + 150,
    "joint_states_stop": 52,
    "joint_states_missing_joint": 1,
    "stamps_jump_back": 1,
    "estop_while_moving": 1,
    "rearm_after_fault": 1,
}
CONTINUES = {
    "model_exception_once",
    "nan_output_once",
    "joint_states_extra_reordered",
    "stamps_jump_forward",
    "stamps_jump_back",
    "rearm_after_fault",
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_ends_safely_with_limits_held(name: str):
    result, rig, q = run_fault(name)
    print("\n" + format_faults([result]))
    assert result.limits_held, f"{name}: a limit was violated on the command stream"
    assert np.isfinite(q[~np.isnan(q).any(axis=1)]).all()
    if name in DETECTION_BOUND:
        assert result.detection_ticks is not None, f"{name}: never detected"
        assert result.detection_ticks <= DETECTION_BOUND[name]
    else:
        assert result.detection_ticks is None  # nothing to detect: the input was fine
    c = rig.controller
    if name == "inference_slower_than_chunk":
        # Every chunk computed while the arm moved expires; the arm brakes to hold. A chunk computed
        # while it then stood still is executed from its arrival (nothing moved meanwhile), so the
        # controller degrades to stop-and-go (the sync baseline's behaviour) instead of freezing.
        assert c.scheduler.counters["chunks_expired"] > 0
        assert c.scheduler.counters["starvation_events"] >= 2
        assert c.scheduler.counters["chunks_started_at_arrival"] >= 2
        assert c.filter.fault is None
    elif name in CONTINUES:
        assert result.ending == "running"
        assert c.filter.fault is None
        dt = c.dt
        ticks = np.arange(len(q) - 200, len(q))
        err = np.abs(q[-200:] - rig.motion(ticks * dt)).max()
        assert err < 0.03, f"{name}: not following the model any more (error {err:.3f} rad)"
    else:
        assert result.ending == "stopped"
        # stopped smoothly: the brake stays inside the deceleration and jerk limits (checked above)
        # and the arm holds where the brake ended, not at some other pose
        assert np.abs(np.diff(q[-50:], axis=0)).max() == 0.0


def test_latching_faults_need_a_rearm_and_name_the_reason():
    _, rig, _ = run_fault("model_exception_repeated")
    st = rig.controller.status()
    assert st.level == 2 and "unusable model results" in st.message and "RuntimeError" in st.message
    ok, why = rig.controller.rearm()
    assert ok, why
    rig.replay.run(1500)
    assert rig.controller.counters["model_errors"] > 0  # still raising after the re-arm...
    assert rig.controller.filter.fault is not None  # ...so it latches again


def test_rearm_is_refused_while_estop_engaged_or_moving():
    _, rig, _ = run_fault("estop_while_moving", after_ticks=3)
    c = rig.controller
    assert c.rearm() == (False, "e-stop is still engaged: release it first")
    c.on_estop(False)
    ok, why = c.rearm()
    assert not ok and "not stopped" in why  # still braking
    rig.replay.run(600)
    ok, why = c.rearm()
    assert ok, why
    n = len(rig.worker.requests)
    log = rig.replay.run(1000)
    assert len(rig.worker.requests) > n and not log.holding[-100:].any()


def test_rearm_after_fault_resumes_motion():
    result, rig, q = run_fault("rearm_after_fault")
    assert rig.rearm_results == [(True, "re-armed")]  # type: ignore[attr-defined]
    assert rig.controller.counters["rearms"] == 1
    assert result.ending == "running"


def test_prefix_overflow_is_reported_and_handled():
    from wam_control.config import load_config, preset_path
    from wam_control.runtime.replay import build_rig, make_contract

    cfg = load_config(preset_path("fr3"))
    # 5 steps of delay need a 7-step prefix; the model was trained with max_prefix 3
    rig = build_rig(cfg, latency_ticks=50, contract=make_contract(cfg, max_prefix=3))
    log = rig.replay.run(3000)
    c = rig.controller
    m = c.scheduler.metrics()
    assert m["prefix_overflows"] > 0 and m["prefix_len_last"] == rig.contract.max_prefix
    st = c.status()
    assert st.level == 1 and "max_prefix 3" in st.message
    assert m["starved_ticks"] == 0
    lim = rig.config.limit_arrays()
    acc = np.abs(log.acc(c.dt))[1000:]
    assert (acc <= lim.a_max).all()
    # still smooth: the seams are corrected, the filter does not have to brake
    assert not log.holding[1000:].any()


@pytest.mark.slow
def test_process_worker_killed_latches_and_stops():
    """The real ProcessWorker (spawned child, shared memory) killed with SIGKILL while the arm moves."""
    from wam_control.config import load_config, preset_path
    from wam_control.runtime.clock import SimClock
    from wam_control.runtime.controller import Controller
    from wam_control.runtime.replay import FirstOrderPlant, Replay, home_pose, make_contract
    from wam_control.runtime.worker import ProcessWorker

    cfg = load_config(preset_path("fr3"))
    contract = make_contract(cfg)
    clock = SimClock(100.0)
    worker = ProcessWorker(
        "unused",
        {"contract_metadata": contract.to_metadata()},
        contract,
        clock,
        deadline_s=5.0,
        loader="wam_control.runtime.replay:echo_backend",
    )
    c = Controller(cfg, contract, worker, clock)
    plant = FirstOrderPlant(home_pose(cfg), c.dt)
    replay = Replay(c, clock, plant)
    try:
        c.start()
        assert worker.wait_ready(60.0), worker.health()

        def step(n: int) -> None:
            # Real time must pass for the child to answer; sim ticks otherwise outrun it.
            for _ in range(n):
                replay.run(1)
                if worker.busy:
                    time.sleep(0.0005)

        step(300)
        assert c.scheduler.counters["chunks_accepted"] > 0, c.status().values
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        t_kill = replay.tick_now
        deadline = time.monotonic() + 20.0
        while c.filter.fault is None and time.monotonic() < deadline:
            step(1)
            time.sleep(0.001)
        assert c.filter.fault is not None and "inference worker failed" in c.filter.fault
        detected = replay.tick_now - t_kill
        log = replay.run(600)
        assert np.abs(np.diff(log.q_cmd[-50:], axis=0)).max() == 0.0
        lim = cfg.limit_arrays()
        assert (np.abs(log.acc(c.dt)) <= lim.a_max * (1 + 1e-6)).all()
        print(f"\nprocess worker SIGKILL: detected after {detected} ticks, state {worker.health()['state']}")
    finally:
        c.close()
