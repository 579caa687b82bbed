"""ProcessWorker: real child processes (spawn), shared memory in and out, crash/hang recovery, cleanup.

Each spawn costs about a second here, so the tests share few workers and bound every wait.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from wam_control import testing
from wam_control.runtime.clock import SimClock
from wam_control.runtime.worker import InferenceRequest, InferenceResult, ProcessWorker, make_worker
from wam_control.testing import FAKE_LOADER, FakeBackend, fake_contract

# A child's events take longer than a thread's: the shared helpers with longer bounds.
settle = functools.partial(testing.settle, timeout=20.0)
fake_request = functools.partial(testing.fake_request, pixel=50)

pytestmark = pytest.mark.slow
SPAWN_TIMEOUT = 60.0


def next_result(w: ProcessWorker, timeout: float = 20.0) -> InferenceResult:
    r = w.wait_result(timeout)
    assert r is not None, f"no result within {timeout} s: {w.health()}"
    return r


def shm_exists(name: str) -> bool:
    return Path("/dev/shm", name.lstrip("/")).exists()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; its state in /proc says whether it has really gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_real_model_through_shared_memory_survives_sigkill(test_model_path: Path) -> None:
    from wam_control.policy import example_input, load_backend, read_contract

    contract = read_contract(test_model_path)
    clock = SimClock(0.0)
    w = make_worker(
        "process",
        test_model_path,
        contract,
        clock,
        deadline_s=5.0,
        backend="onnxruntime",
        warmup=1,
        backoff_initial_s=0.25,
    )
    assert isinstance(w, ProcessWorker)
    reference = load_backend(test_model_path, "onnxruntime", warmup=0)
    inp = example_input(contract, seed=3, prefix_len=4)
    expected = reference.infer(inp)
    reference.close()
    req = InferenceRequest(1, 5, inp.images, inp.state, inp.action_prefix, inp.prefix_len)

    w.start()
    names = w.shm_names
    try:
        assert all(shm_exists(n) for n in names)
        assert w.wait_ready(SPAWN_TIMEOUT), w.health()
        assert "onnxruntime" in str(w.health()["backend"])
        first_pid = w.pid
        assert first_pid is not None and first_pid != os.getpid()

        assert w.submit(req)
        r = next_result(w)
        assert (r.request_id, r.obs_tick, r.error) == (1, 5, None) and r.output is not None
        np.testing.assert_allclose(r.output.actions, expected.actions, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.output.latent_pred, expected.latent_pred, rtol=1e-5, atol=1e-6)

        os.kill(first_pid, signal.SIGKILL)
        settle(w, lambda: w.state == "backoff")
        h = w.health()
        assert h["crashes"] == 1 and "SIGKILL" in str(h["last_error"])
        assert w.submit(req) is False
        clock.advance(0.25)
        w.check(clock.now())
        assert w.state == "starting"
        assert w.wait_ready(SPAWN_TIMEOUT), w.health()
        assert w.pid != first_pid and not pid_alive(first_pid)

        req.request_id = 2
        assert w.submit(req)
        r = next_result(w)
        assert r.request_id == 2 and r.output is not None
        np.testing.assert_allclose(r.output.actions, expected.actions, rtol=1e-5, atol=1e-6)
        second_pid = w.pid
    finally:
        w.close()
    assert not any(shm_exists(n) for n in names), "shared memory leaked after close()"
    assert second_pid is not None and not pid_alive(second_pid)


def test_scripted_backend_errors_and_hang_in_a_child() -> None:
    clock = SimClock(0.0)
    w = ProcessWorker(
        "unused.onnx",
        {"hw": (8, 8)},
        fake_contract(),
        clock,
        deadline_s=2.0,
        loader=FAKE_LOADER,
        backoff_initial_s=1.0,
    )
    w.start()
    names = w.shm_names
    pids = []
    try:
        assert w.wait_ready(SPAWN_TIMEOUT), w.health()
        pids.append(w.pid)
        assert w.submit(fake_request(1, prefix_len=2, value=0.25))
        r = next_result(w)
        assert r.error is None and r.output is not None
        np.testing.assert_allclose(r.output.actions[:, 1], 0.25 + 2 + 0.05 + np.arange(4), rtol=1e-6)
        np.testing.assert_array_equal(r.output.latent, [2.0, 2.0])

        assert w.submit(fake_request(2, prefix_len=FakeBackend.RAISE))
        r = next_result(w)
        assert r.output is None and r.error == "ValueError: scripted model failure"
        assert w.submit(fake_request(3, prefix_len=FakeBackend.BAD_SHAPE))
        r = next_result(w)
        assert r.output is None and "'actions'" in str(r.error)
        assert w.state == "ready" and w.health()["model_errors"] == 2

        assert w.submit(fake_request(4, prefix_len=FakeBackend.HANG))
        clock.advance(2.5)
        w.check(clock.now())
        h = w.health()
        assert (h["state"], h["hangs"], h["abandoned"]) == ("backoff", 1, 1)
        r = w.poll()
        assert r is not None and r.request_id == 4 and str(r.error).startswith("abandoned: hang")
        clock.advance(1.0)
        w.check(clock.now())
        assert w.wait_ready(SPAWN_TIMEOUT), w.health()
        pids.append(w.pid)
        assert pids[0] != pids[1]
        settle(w, lambda: not pid_alive(pids[0]), timeout=10.0)  # the hung child was killed and reaped

        assert w.submit(fake_request(5))
        assert next_result(w).request_id == 5
    finally:
        w.close()
    assert not any(shm_exists(n) for n in names)
    assert not any(pid_alive(p) for p in pids if p is not None)


def test_close_while_the_child_is_still_starting() -> None:
    w = ProcessWorker(
        "unused.onnx",
        {"start_delay_s": 30.0},
        fake_contract(),
        SimClock(0.0),
        deadline_s=1.0,
        loader=FAKE_LOADER,
    )
    w.start()
    names = w.shm_names
    assert w.state == "starting"
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 20.0
    assert w.state == "closed"
    assert not any(shm_exists(n) for n in names)
    assert w.pid is None
    assert not [p for p in mp.active_children() if p.name.startswith("wam-inference")]
