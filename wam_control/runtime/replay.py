"""Replay mode: the real Controller driven tick by tick on a simulated clock.

Pieces, all deterministic and sleep-free:
- `ScriptedWorker`: an `InferenceWorker` whose "model" is any callable and whose latency is scripted in
  ticks (a constant or a function of the request number); crashes and hangs can be injected.
- `ReferenceModel`: a stand-in policy that predicts a known smooth motion from its observation tick,
  with per-chunk disagreement (real model samples differ from call to call) and, when given a prefix,
  continues it the way a model trained with real-time chunking does.
- `FirstOrderPlant`: joint positions that follow the commands with a first-order lag.
- `Replay`: an environment of the episode driver (runtime.episode): feeds joint states (from the plant
  or a recording) and images into the controller; `run` drives it in lockstep on the `SimClock`
  (`run_lockstep`) and logs every command.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wam_control.config.schema import RobotConfig
from wam_control.policy.base import PolicyInput, PolicyOutput
from wam_control.policy.contract import ModelContract
from wam_control.runtime.clock import Clock, SimClock
from wam_control.runtime.controller import Controller
from wam_control.runtime.scheduler import SchedulerParams
from wam_control.runtime.worker import InferenceRequest, InferenceResult

Model = Callable[[InferenceRequest], PolicyOutput]


class ScriptedWorker:
    """`InferenceWorker` on a simulated clock.

    A request submitted at tick t with latency L ticks is returned by the first `poll()` at or after
    tick t + L (the controller polls before it submits, so the measured delay is max(L, 1)). The model
    runs inside `submit`, on copies of the request arrays, so results do not depend on buffer reuse.
    """

    def __init__(
        self,
        model: Model,
        clock: Clock,
        dt: float,
        latency_ticks: int | Callable[[int], int] = 1,
        *,
        deadline_s: float = math.inf,
        restart_s: float = 0.5,
    ) -> None:
        self.model = model
        self.clock = clock
        self.dt = float(dt)
        self.latency_ticks = latency_ticks
        self.deadline_s = deadline_s
        self.restart_s = restart_s
        self.state = "stopped"
        self.busy = False
        self.requests: list[InferenceRequest] = []
        """Copies of every request submitted (for assertions on prefixes and observation ticks)."""
        self._pending: InferenceResult | None = None
        self._ready_at = 0.0
        self._submit_t = 0.0
        self._restart_at = 0.0
        self._hang = False
        self._n = {"submitted": 0, "completed": 0, "model_errors": 0, "crashes": 0, "hangs": 0, "restarts": 0}
        self._last_error = ""

    # -- protocol
    def start(self) -> None:
        self.state = "ready"

    def close(self) -> None:
        self.state = "closed"
        self.busy = False
        self._pending = None

    def submit(self, request: InferenceRequest) -> bool:
        if self.state != "ready" or self.busy:
            return False
        copy = InferenceRequest(
            request.request_id,
            request.obs_tick,
            request.images.copy(),
            request.state.copy(),
            request.action_prefix.copy(),
            int(request.prefix_len),
            None if request.instruction_tokens is None else request.instruction_tokens.copy(),
        )
        self.requests.append(copy)
        n = self._n["submitted"]
        self._n["submitted"] += 1
        lat = self.latency_ticks(n) if callable(self.latency_ticks) else self.latency_ticks
        now = self.clock.now()
        try:
            out: PolicyOutput | None = self.model(copy)
            err = None
        except Exception as exc:  # the model's failure is a result, exactly as a real worker reports it
            out, err = None, f"{type(exc).__name__}: {exc}"
        self._pending = InferenceResult(copy.request_id, copy.obs_tick, out, err, lat * self.dt)
        # Half a tick early so that float rounding of the clock cannot push it one tick late.
        self._ready_at = now + (lat - 0.5) * self.dt
        self._submit_t = now
        self.busy = True
        return True

    def poll(self) -> InferenceResult | None:
        if not self.busy or self._pending is None or self._hang or self.clock.now() < self._ready_at:
            return None
        res, self._pending, self.busy = self._pending, None, False
        if res.error is None:
            self._n["completed"] += 1
        else:
            self._n["model_errors"] += 1
            self._last_error = res.error
        return res

    def check(self, now: float) -> None:
        if self.state == "backoff" and now >= self._restart_at:
            self.state = "ready"
        elif self.state == "ready" and self.busy and now - self._submit_t > self.deadline_s:
            self._fail(
                "hang", f"request in flight {now - self._submit_t:.3f} s > deadline {self.deadline_s} s"
            )

    @property
    def restarts(self) -> int:
        return self._n["restarts"]

    @property
    def last_error(self) -> str:
        return self._last_error

    def health(self) -> dict[str, float | int | str]:
        h: dict[str, float | int | str] = {
            "mode": "scripted",
            "state": self.state,
            "last_error": self._last_error,
        }
        h.update(self._n)
        h["inflight_s"] = self.clock.now() - self._submit_t if self.busy else 0.0
        return h

    # -- fault injection
    def kill(self) -> None:
        """The worker dies: the request in flight is lost; `check()` reports it and restarts later."""
        self._fail("crash", "worker killed")

    def hang(self) -> None:
        """The request in flight never returns (until the deadline abandons it)."""
        self._hang = True

    def _fail(self, kind: str, message: str) -> None:
        now = self.clock.now()
        self._n["crashes" if kind == "crash" else "hangs"] += 1
        self._n["restarts"] += 1
        self._last_error = f"{kind}: {message}"
        self.busy = False
        self._pending = None
        self._hang = False
        self.state = "backoff"
        self._restart_at = now + self.restart_s


class BackendModel:
    """`ScriptedWorker` model: a real `PolicyBackend` run on the request's arrays, the prompt's tokens
    included (its output copied, the frame check's error included); the compute time of every call is
    kept."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.compute_s: list[float] = []

    def __call__(self, req: InferenceRequest) -> PolicyOutput:
        t0 = time.perf_counter()
        out = self.backend.infer(
            PolicyInput(
                req.images, req.state, req.action_prefix, int(req.prefix_len),
                request_id=int(req.request_id), obs_tick=int(req.obs_tick),
                instruction_tokens=req.instruction_tokens,  # a prompted model's (None for others)
            )
        )  # fmt: skip
        self.compute_s.append(time.perf_counter() - t0)
        return PolicyOutput(out.actions.copy(), out.latent.copy(), out.latent_pred.copy(), out.frame_error)


def scripted_worker_factory(
    model: Model, latency_ticks: int | Callable[[int], int] = 1, **kw: Any
) -> Callable[[Any, Clock], ScriptedWorker]:
    """Worker factory for `runtime.builder.build`: a `ScriptedWorker` around `model` with the
    configured inference deadline."""

    def make(spec: Any, clock: Clock) -> ScriptedWorker:
        cfg = spec.config
        kw.setdefault("deadline_s", cfg.timeouts.inference_deadline_s)
        return ScriptedWorker(model, clock, cfg.control_period, latency_ticks, **kw)

    return make


class ReferenceModel:
    """A policy stand-in that knows the motion: action k of a chunk observed at tick t0 is
    motion((t0 + k * s) * dt), plus a per-chunk disagreement (an offset and a drift, drawn from a seeded
    generator) like the spread between samples of a real generative policy.

    With `follow_prefix`, the first prefix_len actions reproduce the prefix and the chunk then returns
    smoothly from the prefix's last action to its own plan, over `fade_steps` steps (default: the rest
    of the chunk, as a model trained with real-time chunking blends guidance over the whole overlap).
    """

    def __init__(
        self,
        contract: ModelContract,
        motion: Callable[[np.ndarray], np.ndarray],
        control_hz: float,
        *,
        noise_rad: float = 0.0,
        follow_prefix: bool = True,
        fade_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        self.contract = contract
        self.motion = motion
        self.dt = 1.0 / control_hz
        self.s = contract.action_dt * control_hz
        self.noise = float(noise_rad)
        self.follow_prefix = follow_prefix
        self.fade_steps = fade_steps
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        h = contract.horizon
        self._k = np.arange(h, dtype=float)

    def own_plan(self, obs_tick: int) -> np.ndarray:
        t = (obs_tick + self._k * self.s) * self.dt
        plan = np.asarray(self.motion(t), dtype=float)
        if self.noise > 0:
            d = self.contract.num_joints
            offset = self.rng.normal(0.0, self.noise, d)
            drift = self.rng.normal(0.0, self.noise, d) / max(1, self.contract.horizon - 1)
            plan = plan + offset + self._k[:, None] * drift
        return plan

    def __call__(self, req: InferenceRequest) -> PolicyOutput:
        self.calls += 1
        plan = self.own_plan(req.obs_tick)
        p = int(req.prefix_len)
        if self.follow_prefix and p > 0:
            prefix = req.action_prefix[:p].astype(float)
            # Continue the prefix with its own position and velocity, then return to the own plan
            # along a cubic Hermite (C1 at the junction: a model does not kink its own output).
            gap = prefix[-1] - plan[p - 1]
            slope = (prefix[-1] - prefix[-2]) - (plan[p - 1] - plan[p - 2]) if p >= 2 else 0.0 * gap
            fade_steps = max(1, self.fade_steps if self.fade_steps is not None else self.contract.horizon - p)
            x = np.clip((self._k - (p - 1)) / fade_steps, 0.0, 1.0)[:, None]
            plan = plan + gap * (1.0 - 3.0 * x**2 + 2.0 * x**3) + slope * fade_steps * (x - 2.0 * x**2 + x**3)
            plan[:p] = prefix
        c = self.contract
        return PolicyOutput(
            actions=plan.astype(np.float32),
            latent=np.zeros(c.latent_dim, np.float32),
            latent_pred=np.zeros((c.latent_steps, c.latent_dim), np.float32),
        )


def sinusoid_motion(
    dof: int, center: Sequence[float] | np.ndarray | None = None, amplitude: float = 0.3, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """A sum of two sinusoids per joint around `center` (rad): smooth, periodic, non-trivial."""
    rng = np.random.default_rng(seed)
    c = np.zeros(dof) if center is None else np.asarray(center, dtype=float)
    w1, w2 = rng.uniform(0.5, 1.5, dof), rng.uniform(1.5, 3.0, dof)
    p1, p2 = rng.uniform(0, 2 * np.pi, (2, dof))
    a1, a2 = amplitude * 0.7, amplitude * 0.3

    def motion(t: np.ndarray) -> np.ndarray:
        tt = np.asarray(t, dtype=float)[:, None]
        return c + a1 * (np.sin(w1 * tt + p1) - np.sin(p1)) + a2 * (np.sin(w2 * tt + p2) - np.sin(p2))

    return motion


class FirstOrderPlant:
    """q_measured follows q_cmd with time constant `tau_s` (a position-controlled joint, roughly)."""

    def __init__(self, q0: Sequence[float] | np.ndarray, dt: float, tau_s: float = 0.01) -> None:
        self.q = np.array(q0, dtype=float)
        self.alpha = 1.0 - math.exp(-dt / tau_s) if tau_s > 0 else 1.0

    def step(self, q_cmd: np.ndarray) -> np.ndarray:
        self.q += self.alpha * (q_cmd - self.q)
        return self.q


@dataclass
class ReplayLog:
    """Everything the controller emitted, one row per tick (NaN rows: no command that tick)."""

    ticks: np.ndarray
    q_cmd: np.ndarray
    v_cmd: np.ndarray
    a_cmd: np.ndarray
    q_meas: np.ndarray
    holding: np.ndarray
    faulted: np.ndarray
    version: np.ndarray

    def jerk(self, dt: float) -> np.ndarray:
        """Jerk of the command stream by backward differences, as the robot would measure it."""
        return np.diff(self.q_cmd, 3, axis=0) / dt**3

    def acc(self, dt: float) -> np.ndarray:
        return np.diff(self.q_cmd, 2, axis=0) / dt**2

    def vel(self, dt: float) -> np.ndarray:
        return np.diff(self.q_cmd, 1, axis=0) / dt


class Replay:
    """Drive `controller` for `n` ticks on `clock` (a SimClock at tick * dt + t0).

    Inputs each tick, before `tick()`: a joint state from the plant every `joint_every` ticks (stamped
    with sim time + `stamp_offset`) unless `joints_enabled` is False, and an image every `image_every`
    ticks unless `images_enabled` is False. `joint_names` can be changed to send reordered, missing or
    extra joints. `hooks[tick]` runs before that tick (fault injection). A recording (`recorded`:
    (time_s, kind, payload) with kind "joint" -> (names, positions) or "image" -> (camera, rgb)) is fed
    instead of the plant's states when given.
    """

    def __init__(
        self,
        controller: Controller,
        clock: SimClock,
        plant: FirstOrderPlant,
        *,
        joint_every: int = 1,
        image_every: int = 17,
        t0: float = 100.0,
        recorded: Sequence[tuple[float, str, tuple]] | None = None,
    ) -> None:
        self.c = controller
        self.clock = clock
        self.plant = plant
        self.dt = controller.dt
        self.t0 = t0
        self.joint_every = joint_every
        self.image_every = image_every
        self.joints_enabled = True
        self.images_enabled = True
        self.joint_names: list[str] = list(controller.tracked_joints)
        """Joints sent in each joint state: the command joints follow the plant (arm joints, then extra
        DOFs such as a gripper); any other (a state-only extra DOF) reads `extra_state` (default 0)."""
        self.extra_state: dict[str, float] = {}
        self.stamp_offset = 0.0
        self.hooks: dict[int, list[Callable[[Replay], None]]] = {}
        self.recorded = sorted(recorded, key=lambda e: e[0]) if recorded else None
        self._rec_i = 0
        h, w = controller.contract.image_height, controller.contract.image_width
        self._image = np.zeros((h, w, 3), np.uint8)
        self.tick_now = 0

    def at(self, tick: int, fn: Callable[[Replay], None]) -> None:
        self.hooks.setdefault(tick, []).append(fn)

    def _feed(self, tick: int, now: float) -> None:
        c = self.c
        if self.recorded is not None:
            while self._rec_i < len(self.recorded) and self.recorded[self._rec_i][0] <= now - self.t0 + 1e-12:
                t, kind, payload = self.recorded[self._rec_i]
                self._rec_i += 1
                if kind == "joint":
                    c.on_joint_state(payload[0], payload[1], None, t + self.stamp_offset)
                elif kind == "image":
                    c.on_image(payload[0], payload[1], t + self.stamp_offset)
                else:
                    raise ValueError(f"recorded event kind must be 'joint' or 'image', got {kind!r}")
            return
        stamp = now - self.t0 + self.stamp_offset
        if self.joints_enabled and tick % self.joint_every == 0:
            idx = {n: i for i, n in enumerate(c.command_joints)}
            q = [self.plant.q[idx[n]] if n in idx else self.extra_state.get(n, 0.0) for n in self.joint_names]
            c.on_joint_state(self.joint_names, q, None, stamp)
        if self.images_enabled and tick % self.image_every == 0:
            self._image[...] = tick % 251
            for cam in c.config.cameras:
                c.on_image(cam, self._image, stamp)

    # -- the Environment protocol (runtime.episode): the plant follows the command within its tick
    def begin(self, controller: Any) -> None:
        return None

    def observe(self, controller: Any, tick: int) -> None:
        self._feed(tick, self.t0 + tick * self.dt)

    def act(self, command: Any) -> None:
        if command is not None:
            self.plant.step(command.positions)

    def step(self, controller: Any) -> None:
        return None

    def success(self) -> bool:
        return False

    def run(
        self, n: int, start: int | None = None, after_tick: Callable[[int], None] | None = None
    ) -> ReplayLog:
        from wam_control.runtime.episode import CallbackObserver, EpisodeStepper, run_lockstep

        start = self.tick_now if start is None else start
        d = self.c.dof
        log = ReplayLog(
            ticks=np.arange(start, start + n),
            q_cmd=np.full((n, d), np.nan),
            v_cmd=np.full((n, d), np.nan),
            a_cmd=np.full((n, d), np.nan),
            q_meas=np.zeros((n, d)),
            holding=np.zeros(n, bool),
            faulted=np.zeros(n, bool),
            version=np.zeros(n, int),
        )

        def before(tick: int) -> None:
            self.tick_now = tick + 1
            for fn in self.hooks.pop(tick, ()):
                fn(self)

        def record(tick: int, cmd: Any) -> None:
            i = tick - start
            if cmd is not None:
                log.q_cmd[i] = cmd.positions
                log.v_cmd[i] = cmd.velocities
                log.a_cmd[i] = cmd.accelerations
            log.q_meas[i] = self.plant.q
            log.holding[i] = self.c.filter.holding
            log.faulted[i] = self.c.filter.fault is not None
            log.version[i] = self.c.scheduler.version
            if after_tick is not None:
                after_tick(tick)

        stepper = EpisodeStepper(self, self.c, [CallbackObserver(before, record)], dt=self.dt)
        run_lockstep(stepper, self.clock, t0=self.t0, start=start, ticks=n)
        return log


# ---------------------------------------------------------------------------------------------------
# A ready-made rig: FR3 preset, a small contract, the reference model, plant and replay.


def make_contract(
    config: RobotConfig,
    *,
    action_dt: float = 0.02,
    horizon: int = 16,
    max_prefix: int = 8,
    image_hw: tuple[int, int] = (32, 32),
    prefix: bool = True,
) -> ModelContract:
    """A contract matching `config` (joints, cameras) for replays: no model file behind it. `prefix`
    False: a contract v2 model without the prefix inputs (max_prefix 0, seams blended)."""
    common = dict(
        joint_names=tuple(config.joint_names),
        camera_names=tuple(config.cameras),
        image_height=image_hw[0],
        image_width=image_hw[1],
        action_dt=action_dt,
        horizon=horizon,
        latent_steps=1,
        latent_offsets=(1,),
        latent_dim=4,
    )
    if not prefix:
        return ModelContract(contract_version=2, model_name="replay-reference-no-prefix", has_prefix=False,
                             **common)  # type: ignore[arg-type]  # fmt: skip
    return ModelContract(contract_version=1, model_name="replay-reference", max_prefix=max_prefix,
                         weights_sha256="0" * 64, **common)  # type: ignore[arg-type]  # fmt: skip


def home_pose(config: RobotConfig, joints: Sequence[str] | None = None) -> np.ndarray:
    """Middle of each joint's position range (0 where a joint has no limits); `joints` defaults to the
    arm joints (give the controller's `command_joints` to include extra DOFs)."""
    if joints is not None:
        import dataclasses

        config = dataclasses.replace(config, joints=tuple(joints))
    lim = config.limit_arrays()
    mid = (lim.q_min + lim.q_max) / 2.0
    return np.where(np.isfinite(mid), mid, 0.0)


@dataclass
class Rig:
    config: RobotConfig
    contract: ModelContract
    clock: SimClock
    model: ReferenceModel
    worker: ScriptedWorker
    controller: Controller
    plant: FirstOrderPlant
    replay: Replay
    motion: Callable[[np.ndarray], np.ndarray]


def build_rig(
    config: RobotConfig | None = None,
    *,
    latency_ticks: int | Callable[[int], int] = 20,
    noise_rad: float = 0.002,
    amplitude: float = 0.25,
    follow_prefix: bool = True,
    params: SchedulerParams | None = None,
    contract: ModelContract | None = None,
    deadline_s: float = math.inf,
    seed: int = 0,
) -> Rig:
    """Controller + scripted reference model + first-order plant on a SimClock, started."""
    if config is None:
        from wam_control.config import load_config, preset_path

        config = load_config(preset_path("fr3"))
    contract = contract or make_contract(config)
    clock = SimClock(100.0)
    center = home_pose(config)
    motion = sinusoid_motion(config.dof, center, amplitude, seed=seed)
    model = ReferenceModel(
        contract, motion, config.control_hz, noise_rad=noise_rad, follow_prefix=follow_prefix, seed=seed
    )
    from wam_control.runtime.builder import Overrides, build, resolve

    spec = resolve(config, overrides=Overrides(surprise="off", imagination=False), contract=contract)
    parts = build(
        spec, clock, scripted_worker_factory(model, latency_ticks, deadline_s=deadline_s), scheduler_params=params
    )
    worker, controller = parts.worker, parts.controller
    plant = FirstOrderPlant(center, config.control_period)
    replay = Replay(controller, clock, plant)
    controller.start()
    return Rig(config, contract, clock, model, worker, controller, plant, replay, motion)


class EchoBackend:
    """A `PolicyBackend` that plans to stay where the arm is (continuing any prefix): for process-worker
    tests that need a real child process but no model file. Load with
    `wam_control.runtime.replay:echo_backend`."""

    name = "echo"
    releases_gil = False

    def __init__(self, contract: ModelContract) -> None:
        self.contract = contract

    def warmup(self, n: int = 3) -> None:
        return None

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        c = self.contract
        actions = np.repeat(inp.state[None, :].astype(np.float32), c.horizon, axis=0)
        p = int(inp.prefix_len)
        if p > 0:
            actions[:p] = inp.action_prefix[:p]
            actions[p:] = inp.action_prefix[p - 1]
        return PolicyOutput(
            actions, np.zeros(c.latent_dim, np.float32), np.zeros((c.latent_steps, c.latent_dim), np.float32)
        )

    def describe(self) -> str:
        return "echo backend (test)"

    def close(self) -> None:
        return None


def echo_backend(model_path: str, **options: object) -> EchoBackend:
    """Loader for `ProcessWorker(loader=...)`: `model_path` is ignored; `contract` (its metadata dict)
    comes through the options."""
    meta = options.get("contract_metadata")
    if not isinstance(meta, dict):
        raise ValueError("echo_backend needs option contract_metadata (ModelContract.to_metadata())")
    return EchoBackend(ModelContract.from_metadata(meta, source="echo_backend"))
