"""The `InferenceWorker` protocol, one suite run against every worker kind: thread, process (a spawned
child) and the scripted worker of the replays (runtime/replay.py).

What the controller relies on, whatever the worker: nothing runs before start(); a result carries the
request's identity and the model's answer, computed on a copy of the request; one request in flight at a
time; a model exception is an error result, not a crash; a request in flight past the deadline is
abandoned on the injected clock and the worker restarts; health() and the counters say so; close() ends
it. Kind-specific behaviour (backoff, shared memory, SIGKILL, fault injection) stays in the per-kind tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from wam_control.runtime.clock import SimClock
from wam_control.runtime.replay import BackendModel, ScriptedWorker
from wam_control.runtime.worker import InferenceRequest, InferenceResult, ProcessWorker, ThreadWorker
from wam_control.testing import (
    FAKE_LOADER,
    FakeBackend,
    fake_actions,
    fake_contract,
    fake_request,
    poll_until,
    settle,
)

C = fake_contract()
DEADLINE = 2.0
DT = 0.002  # the scripted worker's tick


@dataclasses.dataclass
class Harness:
    """One worker kind behind the same few verbs."""

    kind: str
    worker: Any
    clock: SimClock
    wait_ready: Callable[[], None]
    next_result: Callable[[], InferenceResult]
    hang: Callable[[InferenceRequest], None]
    """Submit a request whose answer never comes (until the deadline abandons it)."""


def _real_harness(kind: str, worker: Any, clock: SimClock, timeout: float) -> Harness:
    def wait_ready() -> None:
        settle(worker, lambda: worker.state == "ready", timeout)

    def next_result() -> InferenceResult:
        box: list[InferenceResult] = []

        def got() -> bool:
            r = worker.poll()
            if r is not None:
                box.append(r)
            return bool(box)

        settle(worker, got, timeout)
        return box[0]

    def hang(req: InferenceRequest) -> None:
        assert worker.submit(dataclasses.replace(req, prefix_len=FakeBackend.HANG))

    return Harness(kind, worker, clock, wait_ready, next_result, hang)


def _scripted_harness(clock: SimClock) -> Harness:
    model = BackendModel(FakeBackend(C))
    worker = ScriptedWorker(model, clock, DT, latency_ticks=3, deadline_s=DEADLINE, restart_s=0.5)

    def wait_ready() -> None:
        for _ in range(10_000):
            worker.check(clock.now())
            if worker.state == "ready":
                return
            clock.advance(DT)
        raise AssertionError(f"scripted worker not ready: {worker.health()}")

    def next_result() -> InferenceResult:
        return poll_until(worker, lambda: clock.advance(DT))

    def hang(req: InferenceRequest) -> None:
        assert worker.submit(req)
        worker.hang()

    return Harness("scripted", worker, clock, wait_ready, next_result, hang)


@pytest.fixture(params=["thread", pytest.param("process", marks=pytest.mark.slow), "scripted"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = SimClock(100.0)
    kind = request.param
    backends: list[FakeBackend] = []

    def factory() -> FakeBackend:
        backends.append(FakeBackend(C))
        return backends[-1]

    if kind == "thread":
        w: Any = ThreadWorker(factory, clock, DEADLINE, warmup=1, backoff_initial_s=0.5)
        h = _real_harness(kind, w, clock, 5.0)
    elif kind == "process":
        w = ProcessWorker("unused.onnx", {}, C, clock, DEADLINE, loader=FAKE_LOADER, backoff_initial_s=0.5)
        h = _real_harness(kind, w, clock, 60.0)
    else:
        h = _scripted_harness(clock)
    try:
        yield h
    finally:
        h.worker.close()
        for be in backends:  # let an abandoned, hung thread-mode call end
            be.release.set()


def _ready(h: Harness) -> Any:
    assert h.worker.submit(fake_request(0)) is False, "a worker that is not started took a request"
    h.worker.start()
    h.wait_ready()
    return h.worker


def test_result_carries_identity_and_the_model_answer(harness: Harness) -> None:
    w = _ready(harness)
    assert not w.busy
    assert w.submit(fake_request(1, prefix_len=2, value=0.25, tick=77))
    assert w.busy
    assert w.submit(fake_request(2)) is False, "a second request was taken while one is in flight"
    r = harness.next_result()
    assert (r.request_id, r.obs_tick, r.error) == (1, 77, None)
    assert r.output is not None and r.compute_s >= 0.0
    np.testing.assert_allclose(r.output.actions[:, 1], fake_actions(0.25, 2, 100), rtol=1e-6)
    np.testing.assert_array_equal(r.output.latent, [2.0, 2.0])
    assert not w.busy
    assert w.poll() is None


def test_submit_copies_the_request(harness: Harness) -> None:
    w = _ready(harness)
    req = fake_request(1, value=0.5)
    assert w.submit(req)
    req.state[:] = 9.0  # the caller reuses its buffers right after submit
    req.images[:] = 0
    r = harness.next_result()
    assert r.output is not None
    np.testing.assert_allclose(r.output.actions[:, 0], fake_actions(0.5, 1, 100), rtol=1e-6)


def test_model_exception_is_an_error_result_not_a_crash(harness: Harness) -> None:
    w = _ready(harness)
    assert w.submit(fake_request(1, prefix_len=FakeBackend.RAISE))
    r = harness.next_result()
    assert r.request_id == 1 and r.output is None
    assert r.error == "ValueError: scripted model failure"
    assert w.restarts == 0
    h = w.health()
    assert h["model_errors"] == 1 and h["state"] == "ready"
    assert w.submit(fake_request(2))
    assert harness.next_result().error is None


def test_request_past_the_deadline_is_abandoned_and_the_worker_restarts(harness: Harness) -> None:
    w = _ready(harness)
    harness.hang(fake_request(1))
    harness.clock.advance(DEADLINE / 2)
    w.check(harness.clock.now())
    assert w.restarts == 0 and w.busy
    harness.clock.advance(DEADLINE)
    w.check(harness.clock.now())
    assert w.restarts == 1 and not w.busy
    assert w.last_error.startswith("hang")
    h = w.health()
    assert h["hangs"] == 1 and h["state"] == "backoff"
    assert w.submit(fake_request(2)) is False, "a worker in backoff took a request"
    if harness.kind != "scripted":  # the real workers hand the abandoned request back as an error
        r = w.poll()
        assert r is not None and r.request_id == 1 and str(r.error).startswith("abandoned: hang")
    harness.clock.advance(1.0)  # past the backoff
    harness.wait_ready()
    assert w.submit(fake_request(3))
    r = harness.next_result()
    assert (r.request_id, r.error) == (3, None)


def test_health_and_close(harness: Harness) -> None:
    w = _ready(harness)
    h = w.health()
    for key in ("state", "last_error", "restarts", "hangs", "crashes", "model_errors"):
        assert key in h, key
    assert isinstance(w.restarts, int) and w.last_error == ""
    w.close()
    assert w.submit(fake_request(1)) is False
    assert w.poll() is None
