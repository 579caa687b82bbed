"""ThreadWorker: results, model errors, hang and crash detection, restart with backoff (SimClock)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from wam_control.runtime.clock import SimClock
from wam_control.runtime.worker import ThreadWorker, make_worker
from wam_control.testing import FakeBackend, fake_contract, next_result, settle
from wam_control.testing import fake_request as request

C = fake_contract()
DEADLINE = 1.0


@pytest.fixture
def clock() -> SimClock:
    return SimClock(100.0)


def started(
    clock: SimClock, backends: list[FakeBackend], gate: threading.Event | None = None
) -> ThreadWorker:
    def factory() -> FakeBackend:
        be = FakeBackend(C, gate)
        backends.append(be)
        return be

    w = ThreadWorker(factory, clock, DEADLINE, warmup=2, backoff_initial_s=0.5, backoff_max_s=2.0)
    assert w.submit(request(0)) is False  # not started
    w.start()
    settle(w, lambda: w.ready)
    return w


def test_result_carries_model_output_and_request_identity(clock: SimClock) -> None:
    backends: list[FakeBackend] = []
    w = started(clock, backends)
    try:
        assert backends[0].warmups == 2
        assert w.health()["backend"] == "fake backend" and w.health()["releases_gil"] == 1
        assert w.submit(request(1, prefix_len=2, value=0.25, tick=42))
        assert w.busy and w.submit(request(2)) is False  # one in flight at a time
        r = next_result(w)
        assert (r.request_id, r.obs_tick, r.error) == (1, 42, None)
        assert r.output is not None
        np.testing.assert_allclose(r.output.actions[:, 0], 0.25 + 2 + 0.1 + np.arange(C.horizon), rtol=1e-6)
        assert not w.busy
        # The backend reuses its output buffer; the first result must not change under the second.
        first = r.output.actions.copy()
        assert w.submit(request(2, prefix_len=1, value=-1.0))
        r2 = next_result(w)
        np.testing.assert_array_equal(r.output.actions, first)
        assert r2.output is not None and r2.output.actions[0, 0] == pytest.approx(-1.0 + 1 + 0.1)
        assert w.health()["completed"] == 2
    finally:
        w.close()
    assert backends[0].closed


def test_submit_copies_the_request(clock: SimClock) -> None:
    gate = threading.Event()
    backends: list[FakeBackend] = []
    w = started(clock, backends, gate)
    try:
        gate.clear()
        req = request(1, value=2.0)
        assert w.submit(req)
        req.state[:] = 99.0  # the caller reuses its snapshot buffers while the model runs
        req.images[:] = 0
        gate.set()
        r = next_result(w)
        assert r.output is not None and r.output.actions[0, 0] == pytest.approx(2.0 + 1 + 0.1)
    finally:
        w.close()


def test_wrong_request_shape_is_named(clock: SimClock) -> None:
    w = started(clock, [])
    try:
        bad = request(1)
        bad.state = np.zeros(4, np.float32)
        with pytest.raises(ValueError, match=r"InferenceRequest.state: expected shape \[3\]"):
            w.submit(bad)
        assert not w.busy
    finally:
        w.close()


def test_model_exception_and_bad_shape_come_back_as_errors(clock: SimClock) -> None:
    w = started(clock, [])
    try:
        assert w.submit(request(1, prefix_len=FakeBackend.RAISE))
        r = next_result(w)
        assert r.output is None and r.error == "ValueError: scripted model failure"
        assert w.submit(request(2, prefix_len=FakeBackend.BAD_SHAPE))
        r = next_result(w)
        assert r.output is None and r.error is not None and "'actions'" in r.error and "[4, 3]" in r.error
        h = w.health()
        assert (h["state"], h["model_errors"], h["restarts"]) == ("ready", 2, 0)
        assert w.submit(request(3))  # still serving
        assert next_result(w).error is None
    finally:
        w.close()


def test_hang_is_detected_on_the_clock_abandoned_restarted_and_late_result_discarded(clock: SimClock) -> None:
    backends: list[FakeBackend] = []
    w = started(clock, backends)
    try:
        old_thread = w._inst.thread  # type: ignore[union-attr]
        assert w.submit(request(1, prefix_len=FakeBackend.HANG, tick=7))
        clock.advance(DEADLINE)  # exactly at the deadline: not yet
        w.check(clock.now())
        assert w.state == "ready" and w.busy
        assert w.health()["inflight_s"] == pytest.approx(DEADLINE)
        clock.advance(0.01)
        w.check(clock.now())  # returns at once although the model is still blocked
        h = w.health()
        assert (h["state"], h["hangs"], h["restarts"], h["abandoned"]) == ("backoff", 1, 1, 1)
        assert "hang" in str(h["last_error"]) and not w.busy
        r = w.poll()
        assert r is not None and (r.request_id, r.obs_tick, r.output) == (1, 7, None)
        assert r.error is not None and r.error.startswith("abandoned: hang")
        assert w.submit(request(2)) is False  # down until restarted

        clock.advance(0.49)
        w.check(clock.now())
        assert w.state == "backoff"
        clock.advance(0.02)
        w.check(clock.now())
        settle(w, lambda: w.ready)
        assert len(backends) == 2

        # The hung call finally returns: its result belongs to an abandoned request.
        backends[0].release.set()
        old_thread.join(5.0)
        assert not old_thread.is_alive() and backends[0].closed
        assert w.poll() is None
        assert w.health()["discarded"] == 1

        assert w.submit(request(3))
        assert next_result(w).request_id == 3
    finally:
        w.close()


def test_startup_crash_restarts_with_exponential_backoff(clock: SimClock) -> None:
    attempts: list[int] = []

    def factory() -> FakeBackend:
        attempts.append(1)
        if len(attempts) <= 3:
            raise OSError(f"device busy #{len(attempts)}")
        return FakeBackend(C)

    w = ThreadWorker(factory, clock, DEADLINE, backoff_initial_s=0.5, backoff_max_s=1.5)
    w.start()
    try:
        expected = [0.5, 1.0, 1.5]  # doubling, capped
        for i, backoff in enumerate(expected, start=1):
            settle(w, lambda i=i: w.health()["crashes"] == i)
            h = w.health()
            assert h["state"] == "backoff" and h["backoff_s"] == pytest.approx(backoff)
            assert f"device busy #{i}" in str(h["last_error"])
            clock.advance(backoff - 0.01)
            w.check(clock.now())
            assert w.state == "backoff"
            clock.advance(0.01)
            w.check(clock.now())
        settle(w, lambda: w.ready)
        assert w.health()["restarts"] == 3
        # A success resets the backoff ladder.
        assert w.submit(request(1))
        next_result(w)
        assert w._failures_in_row == 0
    finally:
        w.close()


def test_dead_thread_is_detected(clock: SimClock) -> None:
    class Fatal(BaseException):
        pass

    class Dying(FakeBackend):
        def infer(self, inp):  # type: ignore[no-untyped-def]
            raise Fatal("interpreter-level failure")

    w = ThreadWorker(lambda: Dying(C), clock, DEADLINE)
    w.start()
    try:
        settle(w, lambda: w.ready)
        assert w.submit(request(1))
        settle(w, lambda: w.state == "backoff")
        h = w.health()
        assert h["crashes"] == 1 and "Fatal" in str(h["last_error"])
        r = w.poll()
        assert r is not None and r.error is not None and r.error.startswith("abandoned: crash")
    finally:
        w.close()


def test_startup_timeout(clock: SimClock) -> None:
    gate = threading.Event()

    def slow_factory() -> FakeBackend:
        gate.wait(10.0)
        return FakeBackend(C)

    w = ThreadWorker(slow_factory, clock, DEADLINE, startup_timeout_s=30.0)
    w.start()
    try:
        clock.advance(30.01)
        w.check(clock.now())
        assert w.health()["startup_timeouts"] == 1 and w.state == "backoff"
    finally:
        gate.set()
        w.close()


def test_make_worker_rejects_unknown_mode(clock: SimClock) -> None:
    with pytest.raises(ValueError, match="'thread' or 'process'"):
        make_worker("fiber", "m.onnx", C, clock)  # type: ignore[arg-type]
