"""Test helpers shared by the test suite: a scripted policy backend, its contract, requests, and the
bounded waits that drive a worker on a simulated clock.

Part of the package (not a test_* file) so that a worker child started with multiprocessing "spawn" can
import the scripted backend by name ("wam_control.testing:load_fake") whatever its sys.path, and so that
every test file uses the same helpers instead of growing its own. Needs numpy only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wam_control.policy import ModelContract, PolicyInput, PolicyOutput
from wam_control.runtime.worker import InferenceRequest, InferenceResult, InferenceWorker

JOINTS = tuple(f"j{i}" for i in range(3))


def fake_contract(num_cameras: int = 1, hw: tuple[int, int] = (8, 8), horizon: int = 4) -> ModelContract:
    return ModelContract(
        contract_version=1,
        model_name="fake",
        joint_names=JOINTS,
        camera_names=tuple(f"cam{i}" for i in range(num_cameras)),
        image_height=hw[0],
        image_width=hw[1],
        action_dt=0.05,
        horizon=horizon,
        latent_steps=1,
        latent_offsets=(1,),
        max_prefix=2,
        latent_dim=2,
        weights_sha256="0" * 64,
    )


class FakeBackend:
    """actions[k, j] = state[j] + prefix_len + images.mean()/1000 + k, so a test can see what was read.

    Per-prefix_len behaviour (a test selects it through the request): RAISE -> ValueError,
    HANG -> block until `release` is set (thread mode) or forever (process mode), BAD_SHAPE -> wrong
    actions shape. `gate`, when given, is waited on at the start of every call.
    """

    RAISE, HANG, BAD_SHAPE = 5, 7, 6
    name = "fake"
    releases_gil = True

    def __init__(self, contract: ModelContract, gate: threading.Event | None = None) -> None:
        self.contract = contract
        self.gate = gate
        self.release = threading.Event()
        self.calls = 0
        self.warmups = 0
        self.closed = False
        self._actions = np.zeros((contract.horizon, contract.num_joints), np.float32)

    def warmup(self, n: int = 3) -> None:
        self.warmups += n

    def describe(self) -> str:
        return "fake backend"

    def close(self) -> None:
        self.closed = True

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10.0)
        if inp.prefix_len == self.RAISE:
            raise ValueError("scripted model failure")
        if inp.prefix_len == self.HANG:
            while not self.release.wait(0.05):
                pass
        h, d = self._actions.shape
        if inp.prefix_len == self.BAD_SHAPE:
            h += 1
        # One output buffer reused on every call, as a backend with bound outputs would do.
        if self._actions.shape[0] == h:
            actions = self._actions
        else:
            actions = np.zeros((h, d), np.float32)
        actions[:] = (
            inp.state[None, :] + inp.prefix_len + float(inp.images.mean()) / 1000.0 + np.arange(h)[:, None]
        )
        return PolicyOutput(
            actions=actions,
            latent=np.full(self.contract.latent_dim, inp.prefix_len, np.float32),
            latent_pred=np.zeros((self.contract.latent_steps, self.contract.latent_dim), np.float32),
        )


def load_fake(model_path: str, **options: Any) -> FakeBackend:
    """Process-mode loader: `model_path` is ignored; options: hw, horizon, num_cameras, start_delay_s."""
    time.sleep(float(options.pop("start_delay_s", 0.0)))
    options.pop("warmup", None)
    hw = tuple(options.pop("hw", (8, 8)))
    return FakeBackend(fake_contract(hw=(int(hw[0]), int(hw[1])), **options))


FAKE_LOADER = "wam_control.testing:load_fake"
"""`ProcessWorker(loader=...)` for a child that runs `FakeBackend`."""


def fake_request(
    rid: int,
    prefix_len: int = 1,
    value: float = 0.5,
    tick: int | None = None,
    *,
    pixel: int = 100,
    contract: ModelContract | None = None,
) -> InferenceRequest:
    """A request for `fake_contract()` (or `contract`): state all `value`, images all `pixel`,
    observation tick `rid * 10` unless given."""
    c = contract or fake_contract()
    return InferenceRequest(
        request_id=rid,
        obs_tick=rid * 10 if tick is None else tick,
        images=np.full((c.num_cameras, c.image_height, c.image_width, 3), pixel, np.uint8),
        state=np.full(c.num_joints, value, np.float32),
        action_prefix=np.zeros((c.horizon, c.num_joints), np.float32),
        prefix_len=prefix_len,
    )


def fake_actions(value: float, prefix_len: int, pixel: int, horizon: int = 4) -> np.ndarray:
    """What `FakeBackend` answers for one joint of `fake_request(.., prefix_len, value, pixel=pixel)`."""
    return value + prefix_len + pixel / 1000.0 + np.arange(horizon, dtype=np.float64)


def settle(w: Any, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let a worker's events arrive (bounded, real time) without moving its simulated clock: the worker's
    `_wait` (thread and process workers) and `check(now)` until `cond()`."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"worker did not settle: {w.health()}"
        w._wait(0.02)
        w.check(w.clock.now())


def next_result(w: Any, timeout: float = 5.0) -> InferenceResult:
    """The next result of a thread or process worker (bounded wait, clock not moved)."""
    box: list[InferenceResult] = []

    def got() -> bool:
        r = w.poll()
        if r is not None:
            box.append(r)
        return bool(box)

    settle(w, got, timeout)
    return box[0]


def poll_until(w: InferenceWorker, step: Callable[[], None], limit: int = 1000) -> InferenceResult:
    """`step()` (e.g. move a simulated clock one tick) then `poll()`, until a result comes (bounded)."""
    for _ in range(limit):
        r = w.poll()
        if r is not None:
            return r
        step()
    raise AssertionError(f"no result after {limit} steps: {w.health()}")
