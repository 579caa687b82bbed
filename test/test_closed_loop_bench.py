"""Closed-loop evaluation: the bench runs both modes and ends with its key=value line; the sync
baseline really holds still while the model computes; a seed fixes the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")


def _render_ok() -> bool:
    from wam_control.sim.gl import prepare

    return prepare() is not None


pytestmark = pytest.mark.skipif(
    not _render_ok(), reason="no offscreen OpenGL (EGL/OSMesa) for the sim cameras"
)


@pytest.fixture(scope="module")
def rig(test_model_path: Path) -> Any:
    from wam_control.closedloop import BackendModel, make_arm
    from wam_control.config import load_config, preset_path
    from wam_control.policy import load_backend, read_contract

    config = load_config(preset_path("fr3"))
    contract = read_contract(test_model_path)
    backend = load_backend(test_model_path, "onnxruntime", warmup=1)
    arm = make_arm(config, contract, "reach", camera_hz=15.0)
    from wam_control.runtime.builder import Overrides, resolve

    spec = resolve(config, test_model_path, Overrides(surprise="off", imagination=False))
    yield spec, contract, BackendModel(backend), arm
    arm.close()
    backend.close()


def test_bench_runs_both_modes_and_prints_final_line(
    test_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wam_control.bench.closed_loop import main

    rc = main(["--episodes", "2", "--seed", "100000", "--delay-ms", "40", "--mode", "both",
               "--model", str(test_model_path), "--horizon-s", "1.0"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    last = out.strip().splitlines()[-1]
    values = dict(kv.split("=", 1) for kv in last.split())
    for key in ("success_rate", "mean_time_s", "seam_jump_p99", "interventions", "starvations",
                "sync_success_rate", "sync_mean_time_s"):  # fmt: skip
        assert key in values, key
    assert values["mode"] == "both" and values["episodes"] == "2"
    assert int(values["latency_ticks"]) == 23  # (5 ms compute + 40 ms) at 500 Hz, rounded up
    assert 0.0 <= float(values["success_rate"]) <= 1.0
    rows = {ln.split()[0] for ln in out.splitlines() if ln.startswith(("async ", "sync "))}
    assert rows == {"async", "sync"}


def test_sync_holds_still_while_the_model_computes(rig: Any) -> None:
    from wam_control.closedloop import run_lockstep_episode

    spec, contract, model, arm = rig
    lat = 400  # 0.8 s at 500 Hz: long enough for the filter to brake from a chunk's end speed
    res = {
        "sync": run_lockstep_episode(
            arm, spec, model, 100003, mode="sync", lat_ticks=lat, horizon_s=3.5, keep_trace=True
        ),
        # Async with a latency it can hide (below the chunk's 0.75 s): it never waits.
        "async": run_lockstep_episode(
            arm, spec, model, 100003, mode="async", lat_ticks=100, horizon_s=2.0, keep_trace=True
        ),
    }
    sync = res["sync"].trace
    assert sync is not None
    busy = sync.busy[: res["sync"].ticks]
    starts = np.flatnonzero(np.diff(busy.astype(int)) == 1) + 1
    assert len(starts) >= 1  # a wait after a chunk ran (the first request, from tick 0, is not a start)
    still = 0
    for s in starts:
        window = sync.q_cmd[s : s + lat - 1]
        if np.isnan(window).any() or len(window) < lat - 1:
            continue  # cut by the episode's end
        # It brakes within the jerk/deceleration limits, then does not move until the chunk arrives.
        tail = window[-lat // 4 :]
        assert np.max(np.abs(np.diff(tail, axis=0))) < 1e-6
        still += 1
    assert still >= 1
    assert res["sync"].waiting_ticks >= lat
    # The async controller keeps executing its chunk while the next one is computed.
    a = res["async"].trace
    assert a is not None
    n = res["async"].ticks
    first = int(np.argmax(a.version[:n] > 0))
    busy_moving = np.abs(np.diff(a.q_cmd[first:n], axis=0)).max(axis=1) > 0
    assert a.busy[first + 1 : n].mean() > 0.5  # a request is in flight most of the time
    assert busy_moving[a.busy[first + 1 : n]].all()  # and the arm moves all the while
    assert res["async"].waiting_ticks == 0


def test_same_seed_same_result(rig: Any) -> None:
    from wam_control.closedloop import run_lockstep_episode

    spec, contract, model, arm = rig

    def once(seed: int) -> Any:
        return run_lockstep_episode(
            arm, spec, model, seed, mode="async", lat_ticks=12, horizon_s=1.5, keep_trace=True
        )

    a, b = once(100001), once(100001)
    assert a.trace is not None and b.trace is not None
    assert a.success == b.success and a.ticks == b.ticks and a.chunks == b.chunks
    np.testing.assert_array_equal(a.trace.q_cmd, b.trace.q_cmd)
    np.testing.assert_array_equal(a.seam_jumps, b.seam_jumps)
    np.testing.assert_array_equal(a.delay_ticks, b.delay_ticks)
    assert set(a.delay_ticks.tolist()) == {12}
    assert a.interventions == b.interventions
    # A different seed is a different episode (start pose and target).
    c = once(100002)
    assert c.trace is not None and not np.array_equal(c.trace.q_meas[0], a.trace.q_meas[0])
