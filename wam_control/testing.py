"""Scripted policy backends for the worker tests (imported by the tests and by spawned worker children).

No tests here: this module is importable by name ("test_runtime_worker_fakes:load_fake") from a child
process started with multiprocessing "spawn", which inherits the test's sys.path.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from wam_control.policy import ModelContract, PolicyInput, PolicyOutput

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
