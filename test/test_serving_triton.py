"""Split deployment against a REAL Triton Inference Server (nvidia-pytriton's tritonserver, child process).

No mock of the protocol: every test talks gRPC to a server started here on a free loopback port. One
session server serves the bundled model; the fault tests that kill, freeze or restart a server get their
own.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ([triton] extra) talks to the server")
pytest.importorskip("pytriton", reason="nvidia-pytriton ([serve] extra) provides the Triton server")

from wam_control.config import load_config, preset_path
from wam_control.policy import ContractError, example_input, load_backend, read_contract
from wam_control.policy.triton_backend import TritonBackend, TritonUnavailable
from wam_control.runtime.clock import MonotonicClock
from wam_control.runtime.worker import InferenceRequest, make_worker
from wam_control.serving.server import LocalServer, free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "wam_reach_wrist.onnx"
OTHER_MODEL = REPO / "models" / "wam_reach.onnx"
MODEL_NAME = "wam-reach-wrist"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    srv = LocalServer(MODEL, max_batch=8)
    srv.start(timeout_s=90)
    try:
        yield srv
    finally:
        srv.close()
    assert not srv.alive()


@pytest.fixture
def own_server() -> Iterator[LocalServer]:
    """A server this test may kill, freeze or restart."""
    srv = LocalServer(MODEL, max_batch=4)
    srv.start(timeout_s=90)
    try:
        yield srv
    finally:
        srv._signal(signal.SIGCONT)
        pgid = srv.proc.pid if srv.proc else -1
        srv.close()
    assert not srv.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # nothing of the server (tritonserver, its backend stub) is left
    with socket.socket() as s:  # and nobody listens on its port any more (TIME_WAIT is allowed)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", srv.port))
        s.listen(1)


def _request(contract, rid: int, tick: int, seed: int = 0) -> InferenceRequest:
    x = example_input(contract, seed=seed, prefix_len=2)
    return InferenceRequest(rid, tick, x.images, x.state, x.action_prefix, x.prefix_len)


def test_remote_outputs_equal_in_process_onnxruntime(server: LocalServer) -> None:
    remote = load_backend(MODEL, "triton", server=server.url, warmup=1)
    local = load_backend(MODEL, "onnxruntime", warmup=0)
    try:
        assert remote.contract == read_contract(MODEL)
        assert f"127.0.0.1:{server.port}" in remote.describe() and MODEL_NAME in remote.describe()
        # The server publishes the contract; it equals the robot's file.
        assert "(= server's)" in remote.describe()
        for seed in range(3):
            x = example_input(remote.contract, seed=seed)
            a, b = remote.infer(x), local.infer(x)
            np.testing.assert_array_equal(a.actions, b.actions)
            np.testing.assert_array_equal(a.latent_pred, b.latent_pred)
        stats = remote.server_statistics()  # Triton's statistics extension: counts what really ran there
        assert stats["inference_count"] >= 4 and stats["compute_infer_ns"] > 0
    finally:
        remote.close()
        local.close()


def test_default_server_runs_onnxruntime_in_the_python_backend_stub(server: LocalServer) -> None:
    """`serve`'s default runtime is `direct`: the served model is a Python-backend model.py (no pytriton proxy
    process), whose batched outputs equal in-process ONNX Runtime's, request by request."""
    import tritonclient.grpc as grpcclient

    assert server.runtime == "direct"
    be = TritonBackend(MODEL, server=server.url)
    try:
        assert be.platform == "python" and be.max_batch_size == 8
    finally:
        be.close()
    client = grpcclient.InferenceServerClient(server.url)
    try:
        cfg = client.get_model_config(MODEL_NAME, as_json=True)["config"]
        assert cfg["backend"] == "python" and "dynamic_batching" in cfg
        assert cfg["parameters"]["onnx_path"]["string_value"] == str(MODEL.resolve())
    finally:
        client.close()


def test_direct_runtime_batches_requests_and_splits_the_replies(tmp_path: Path) -> None:
    """Requests that queue together run as ONE model execution (a long queue delay makes them queue) and
    every robot gets its own rows back, equal to in-process ONNX Runtime on its own input."""
    import threading

    with LocalServer(MODEL, max_batch=4, queue_delay_us=400_000, runtime="direct") as srv:
        backends = [TritonBackend(MODEL, server=srv.url, request_timeout_s=10.0) for _ in range(4)]
        ref = load_backend(MODEL, "onnxruntime", warmup=0)
        try:
            s0 = backends[0].server_statistics()
            inputs = [example_input(ref.contract, seed=10 + i, prefix_len=i) for i in range(4)]
            outs: list = [None] * 4

            def call(i: int) -> None:
                outs[i] = backends[i].infer(inputs[i])

            threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            s1 = backends[0].server_statistics()
            assert s1["inference_count"] - s0["inference_count"] == 4
            assert s1["execution_count"] - s0["execution_count"] < 4  # batched
            for x, out in zip(inputs, outs, strict=True):
                want = ref.infer(x)
                np.testing.assert_array_equal(out.actions, want.actions)
                np.testing.assert_array_equal(out.latent, want.latent)
                np.testing.assert_array_equal(out.latent_pred, want.latent_pred)
        finally:
            for be in backends:
                be.close()
            ref.close()


def test_contract_from_the_server_alone(server: LocalServer) -> None:
    be = TritonBackend("", server=server.url, model_name=MODEL_NAME)
    try:
        assert be.contract == read_contract(MODEL)
        assert "contract from server" in be.describe()
    finally:
        be.close()


def test_served_model_must_match_the_robots_model_file(server: LocalServer) -> None:
    # The robot's file is another model (wam_reach: one camera) than the one served under that name.
    with pytest.raises(ContractError) as err:
        TritonBackend(OTHER_MODEL, server=server.url, model_name=MODEL_NAME)
    assert err.value.field == "model_name"  # the first field that differs, named
    assert f"127.0.0.1:{server.port}" in str(err.value) and 'file "wam-reach"' in str(err.value)


def test_unreachable_at_start_names_host_port_and_model() -> None:
    port = free_port()  # nobody listens there
    contract = read_contract(MODEL)
    t0 = time.monotonic()
    with pytest.raises(TritonUnavailable) as err:
        make_worker(
            "thread", MODEL, contract, MonotonicClock(), backend="triton",
            backend_options={"server": f"127.0.0.1:{port}", "connect_timeout_s": 2.0},
        )  # fmt: skip
    msg = str(err.value)
    assert "127.0.0.1" in msg and str(port) in msg and MODEL_NAME in msg and "unreachable" in msg
    assert time.monotonic() - t0 < 10


def test_unknown_model_name_is_a_start_up_error(server: LocalServer) -> None:
    with pytest.raises(TritonUnavailable, match="no-such-model"):
        TritonBackend(MODEL, server=server.url, model_name="no-such-model")


def test_config_keys_reach_the_backend(server: LocalServer, tmp_path: Path) -> None:
    from wam_control.policy.triton_backend import triton_options

    cfg = load_config(preset_path("fr3"), overrides={
        "inference": {"model": str(MODEL), "backend": "triton", "server": server.url,
                      "triton": {"request_timeout_s": 0.5, "connect_timeout_s": 3.0}},
    })  # fmt: skip
    opts = triton_options(cfg)
    assert opts["server"] == server.url and opts["request_timeout_s"] == 0.5
    be = load_backend(MODEL, cfg.inference.backend, warmup=0, **opts)
    try:
        assert be.name == "triton" and be.request_timeout_s == 0.5
    finally:
        be.close()


def test_late_reply_is_never_used_for_a_later_request(server: LocalServer) -> None:
    be = TritonBackend(MODEL, server=server.url)
    ref = load_backend(MODEL, "onnxruntime", warmup=0)
    try:
        old, new = example_input(be.contract, seed=1), example_input(be.contract, seed=2)
        be.request_timeout_s = 1e-4  # gives up before any reply can arrive
        with pytest.raises(TritonUnavailable, match="no reply"):
            be.infer(old)
        time.sleep(0.3)  # the given-up request is still computed by the server meanwhile
        be.request_timeout_s = 5.0
        out = be.infer(new)  # answered with its own reply, not the old request's
        np.testing.assert_array_equal(out.actions, ref.infer(new).actions)
        assert not np.array_equal(out.actions, ref.infer(old).actions)
        assert be.replies_dropped == 0  # the echoed request id matched
    finally:
        be.close()
        ref.close()


def test_thread_worker_carries_request_id_and_tick(server: LocalServer) -> None:
    contract = read_contract(MODEL)
    w = make_worker("thread", MODEL, contract, MonotonicClock(), backend="triton",
                    backend_options={"server": server.url}, warmup=1)  # fmt: skip
    w.start()
    try:
        assert w.wait_ready(30), w.health()
        assert w.submit(_request(contract, 7, 1234))
        res = w.wait_result(10)
        assert res is not None and res.error is None, res
        assert (res.request_id, res.obs_tick) == (7, 1234)
        assert w.health()["backend"].startswith("triton")
    finally:
        w.close()


def _controller(server: LocalServer, deadline_s: float = 2.0, request_timeout_s: float = 1.0):  # type: ignore[no-untyped-def]
    from wam_control.runtime.controller import Controller

    config = load_config(preset_path("fr3"))
    contract = read_contract(MODEL)
    clock = MonotonicClock()
    worker = make_worker(
        "thread", MODEL, contract, clock, deadline_s=deadline_s, backend="triton",
        backend_options={"server": server.url, "request_timeout_s": request_timeout_s},
        warmup=1, backoff_initial_s=0.2, backoff_max_s=0.5,
    )  # fmt: skip
    return Controller(config, contract, worker, clock), config, contract


class _Rig:
    """Ticks a Controller in real time with a still arm's joint states and camera frames."""

    def __init__(self, controller, config, contract) -> None:  # type: ignore[no-untyped-def]
        self.c, self.config = controller, config
        self.q = np.array([0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8])
        rng = np.random.default_rng(0)
        self.img = rng.integers(0, 255, (contract.image_height, contract.image_width, 3), np.uint8)
        self.tick = 0
        self.t0 = time.monotonic()

    def run(self, seconds: float, until=None) -> bool:  # type: ignore[no-untyped-def]
        end = time.monotonic() + seconds
        period = 1.0 / self.config.control_hz
        while time.monotonic() < end:
            now = time.monotonic()
            self.c.on_joint_state(self.config.joints, self.q, None, now)
            for cam in self.config.cameras:
                self.c.on_image(cam, self.img, now)
            self.c.tick(self.tick)
            self.tick += 1
            if until is not None and until():
                return True
            time.sleep(period)
        return False


def test_server_killed_then_restarted_brakes_latches_and_recovers(own_server: LocalServer) -> None:
    controller, config, contract = _controller(own_server)
    rig = _Rig(controller, config, contract)
    controller.start()
    try:
        assert controller.worker.wait_ready(30), controller.worker.health()
        assert rig.run(10, lambda: controller.status().values["scheduler.chunks_accepted"] >= 2)
        own_server.kill()  # the GPU host dies
        assert rig.run(10, lambda: controller.status().values["fault"] != "")
        v = controller.status().values
        assert "inference worker failed" in v["fault"] and "unavailable" in v["fault"], v["fault"]
        assert v["worker.crashes"] >= 1 and v["worker.restarts"] >= 1
        assert v["filter.holding"] == 1 or controller.filter.fault is not None
        # While the server is down the worker keeps retrying (backoff) and stays not ready.
        rig.run(0.5)
        assert controller.worker.health()["state"] in ("backoff", "starting")
        own_server.start(timeout_s=90)  # the host comes back, same port
        assert rig.run(20, lambda: controller.worker.health()["state"] == "ready"), controller.worker.health()
        # Recovery as after any worker restart: the fault stays latched until re-arm, then chunks flow.
        rig.run(0.3)
        ok, why = controller.rearm()
        assert ok, why
        before = controller.status().values["scheduler.chunks_accepted"]
        assert rig.run(10, lambda: controller.status().values["scheduler.chunks_accepted"] > before)
        assert controller.status().values["fault"] == ""
    finally:
        controller.close()


def test_frozen_server_is_too_slow_worker_fault_then_recovers(own_server: LocalServer) -> None:
    contract = read_contract(MODEL)
    w = make_worker("thread", MODEL, contract, MonotonicClock(), deadline_s=2.0, backend="triton",
                    backend_options={"server": own_server.url, "request_timeout_s": 0.3}, warmup=1,
                    backoff_initial_s=0.2, backoff_max_s=0.5)  # fmt: skip
    w.start()
    try:
        assert w.wait_ready(30), w.health()
        own_server._signal(signal.SIGSTOP)  # alive, listening, never answering: too slow
        t0 = time.monotonic()
        assert w.submit(_request(contract, 1, 10))
        res = w.wait_result(5)
        assert res is not None and res.output is None and "no reply" in (res.error or ""), res
        assert time.monotonic() - t0 < 2.0  # the backend's timeout, not the worker's deadline
        h = w.health()
        assert h["crashes"] == 1 and h["abandoned"] == 1
        own_server._signal(signal.SIGCONT)
        assert w.wait_ready(30), w.health()
        assert w.submit(_request(contract, 2, 20))
        res = w.wait_result(10)
        assert res is not None and res.error is None and res.obs_tick == 20, res
    finally:
        w.close()


def test_build_runtime_reads_the_server_from_the_config(server: LocalServer) -> None:
    from wam_control.transport.adapter import build_runtime

    def cfg(address: str):  # type: ignore[no-untyped-def]
        inference = {"model": str(MODEL), "backend": "triton", "server": address}
        return load_config(preset_path("fr3"), overrides={"inference": inference})

    runtime = build_runtime(cfg(server.url))
    try:
        assert runtime.controller.worker is not None
    finally:
        runtime.close()
    port = free_port()
    with pytest.raises(TritonUnavailable, match=f"127.0.0.1:{port}"):
        build_runtime(cfg(f"127.0.0.1:{port}"))


@pytest.mark.parametrize("runtime", ["direct", "pytriton"])
def test_contract_v2_prompted_gripper_model_without_optional_parts(tmp_path: Path, runtime: str) -> None:
    """A user's contract v2 model (byom_models: images, state and a prompt in; 7 arm joints + the gripper
    out; no prefix inputs, no world-model head) served by both runtimes (`serve --runtime pytriton` is kept
    for comparison; this is its only test): the client sends exactly the model's inputs (the prompt's
    tokens included), and the replies equal in-process ONNX Runtime's, prompt by prompt."""
    from byom_models import VOCAB, build_model

    path = build_model(tmp_path / "prompt_gripper.onnx", prompt=True, extra=["gripper"], extra_goal=[0.035])
    contract = read_contract(path)
    assert contract.has_instruction and not contract.has_prefix and not contract.has_world_model
    with LocalServer(path, max_batch=4, runtime=runtime) as srv:
        remote = TritonBackend(path, server=srv.url)
        local = load_backend(path, "onnxruntime", warmup=0)
        try:
            assert "(= server's)" in remote.describe()
            outs = {}
            for word in ("left", "right"):
                x = example_input(contract, seed=3)
                x.instruction_tokens[:] = 0
                x.instruction_tokens[:2] = (VOCAB[word], VOCAB["target"])
                got, want = remote.infer(x), local.infer(x)
                assert got.actions.shape == (contract.horizon, 8)
                np.testing.assert_array_equal(got.actions, want.actions)
                assert got.latent.size == 0 and got.latent_pred.size == 0
                outs[word] = got.actions
            # The prompt reached the served model: joint 1's goal moves with the word.
            assert not np.allclose(outs["left"][:, 0], outs["right"][:, 0])
        finally:
            remote.close()
            local.close()
