"""The controller: observation buffers + inference worker + chunk scheduler + safety filter in one tick.

Threads: transport callbacks call the `on_*` inputs (they store the latest value and return); the
fixed-rate loop calls `tick()`; a diagnostics publisher calls `status()` / `predicted_chunk()`;
a service calls `rearm()`. One lock serialises tick, start/stop, re-arm and status snapshots; the
inputs go through the buffers' own lock, so a camera callback never waits for a tick.

Per tick: supervise the worker (at a lower rate), take every finished result, maybe start the next
request, look up this tick's target, run the safety filter. Nothing per tick logs or allocates more
than a few scalars; problems become counters, and `status()` turns them into a level and a message.

Faults latch in the safety filter (brake to hold until `rearm()`): e-stop, a worker crash or hang
(DESIGN.md §5), and `max_consecutive_bad_targets` unusable model results in a row. A single bad result
is dropped and counted; the current chunk keeps running meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from wam_control.config.schema import LimitArrays, RobotConfig, SafetyConfig
from wam_control.policy.contract import ModelContract, check_contract
from wam_control.runtime.clock import Clock
from wam_control.runtime.scheduler import ChunkScheduler, SchedulerParams
from wam_control.runtime.worker import InferenceRequest, InferenceResult, InferenceWorker

if TYPE_CHECKING:
    from wam_control.runtime.surprise import SurpriseMonitor

log = logging.getLogger(__name__)

OK, WARN, ERROR = 0, 1, 2


@dataclass
class JointCommand:
    """One command. The arrays are views of the safety filter's state: copy them to keep them."""

    tick: int
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray


@dataclass
class ControllerStatus:
    level: int
    """0 OK, 1 WARN, 2 ERROR (diagnostic_msgs/DiagnosticStatus levels)."""
    message: str
    values: dict[str, float | int | str] = field(default_factory=dict)


class _Filter(Protocol):
    """The part of runtime.safety.SafetyFilter the controller uses."""

    fault: str | None
    holding: bool

    @property
    def ramp(self) -> float: ...

    @property
    def q(self) -> np.ndarray: ...

    @property
    def v(self) -> np.ndarray: ...

    @property
    def a(self) -> np.ndarray: ...

    def reset(self, q_measured: np.ndarray) -> None: ...

    def step(
        self, target: np.ndarray | None, q_measured: np.ndarray | None, state_age_s: float
    ) -> np.ndarray: ...

    def latch(self, reason: str) -> None: ...

    def set_velocity_scale(self, scale: float) -> None: ...

    def rearm(self, q_measured: np.ndarray) -> bool: ...

    def interventions(self) -> dict[str, int]: ...


def default_scheduler_params(limits: LimitArrays) -> SchedulerParams:
    """Seam corrections may use a quarter of each DOF's own acceleration and jerk limits (the
    scheduler's defaults on a DOF without one).

    Per DOF, not the tightest of all: with a gripper finger among the DOFs (0.5 m/s^2) a common limit
    held the arm's corrections to 0.125 rad/s^2, so every seam was stretched over blend_max_s and the
    arm left the prefix the model had been promised (docs/benchmarks/closed_loop.md, "Runtime fixes
    behind these numbers", 3)."""
    base = SchedulerParams()

    def quarter(limit: np.ndarray, default: float) -> tuple[float, ...]:
        return tuple(0.25 * float(v) if math.isfinite(v) and v > 0 else default for v in limit)

    return SchedulerParams(
        blend_max_acc_per_dof=quarter(limits.a_max, base.blend_max_acc),
        blend_max_jerk_per_dof=quarter(limits.j_max, base.blend_max_jerk),
    )


class Controller:
    """See the module docstring. `buffers` and `safety_filter` may be injected (tests, replays); by
    default they are built from the configuration."""

    def __init__(
        self,
        config: RobotConfig,
        contract: ModelContract,
        worker: InferenceWorker,
        clock: Clock,
        *,
        scheduler_params: SchedulerParams | None = None,
        buffers: Any = None,
        safety_filter: _Filter | None = None,
        latch_on_worker_failure: bool = True,
        surprise_monitor: SurpriseMonitor | None = None,
        result_hook: Callable[[InferenceResult], None] | None = None,
        execution: ExecutionStrategy | None = None,
    ) -> None:
        # Joint names, camera names, the tick grid and, for extra DOFs (contract v2 action_names /
        # state_names, e.g. a gripper), their mapping in config.extra_dofs.
        check_contract(contract, config)
        self.config = config
        self.contract = contract
        self.worker = worker
        self.clock = clock
        self.dt = config.control_period
        # The command vector: the arm joints, then the model's extra action DOFs (their joints in
        # /joint_states). Scheduler and safety filter run on all of it; each extra DOF has its own limits.
        self.command_joints: tuple[str, ...] = tuple(config.joint_names) + tuple(
            config.extra_joint(n) for n in contract.extra_actions
        )
        state_joints = tuple(config.joint_names) + tuple(config.extra_joint(n) for n in contract.extra_states)
        tracked = list(config.joint_names)
        for j in (*self.command_joints, *state_joints):
            if j not in tracked:
                tracked.append(j)
        self.tracked_joints: tuple[str, ...] = tuple(tracked)
        """Every joint read from /joint_states (arm joints first)."""
        self.dof = len(self.command_joints)
        self.horizon = contract.horizon
        self.latch_on_worker_failure = latch_on_worker_failure
        # Index maps from the tracked joints to the command and model-state vectors (None: identity).
        self._cmd_idx = None if self.command_joints == self.tracked_joints else np.array(
            [tracked.index(j) for j in self.command_joints]
        )
        self._state_idx = None if state_joints == self.tracked_joints else np.array(
            [tracked.index(j) for j in state_joints]
        )
        cmd_config = (
            dataclasses.replace(config, joints=self.command_joints) if contract.extra_actions else config
        )
        limits = cmd_config.limit_arrays()
        self.limits = limits
        if buffers is None:
            from wam_control.runtime.buffers import ObservationBuffers

            buffers = ObservationBuffers(
                self.tracked_joints,
                config.cameras,
                (contract.image_height, contract.image_width),
                clock,
                config.timeouts,
            )
        self.buffers = buffers
        if safety_filter is None:
            from wam_control.runtime.safety import SafetyFilter

            self.filter: _Filter = SafetyFilter(limits, config.safety, self.dt, self.command_joints)
        else:
            self.filter = safety_filter
        # Optional WAM consumers of every usable result (surprise monitor, imagination preview).
        self.surprise = surprise_monitor
        if surprise_monitor is not None:
            if not contract.has_world_model:
                raise ValueError(
                    f"model {contract.model_name} has no world-model head (latent, latent_pred outputs): "
                    "the surprise monitor has nothing to compare"
                )
            surprise_monitor.attach(self.filter)
        self.result_hook = result_hook
        self.execution: ExecutionStrategy = execution if execution is not None else AsyncExecution()
        """How chunks are executed (async with prefix, or synchronous): see ExecutionStrategy."""
        self.scheduler = ChunkScheduler(
            contract.horizon,
            self.dof,
            contract.action_dt * config.control_hz,
            contract.max_prefix,
            self.dt,
            config.inference,
            scheduler_params or self.execution.scheduler_params(limits),
        )
        from wam_control.runtime.buffers import ObservationSnapshot

        self._snap = ObservationSnapshot(
            len(config.cameras), (contract.image_height, contract.image_width), len(self.tracked_joints)
        )
        self._prefix = np.zeros((contract.horizon, self.dof), np.float32)
        # The model's state vector (a view of the snapshot when it is the same joints in the same order).
        self._state = self._snap.state if self._state_idx is None else np.zeros(contract.state_dim, np.float32)
        self._obs_cmd = np.zeros(self.dof, np.float32)
        """The measured command-vector state of the observation being submitted (delta actions)."""
        # Delta actions are relative to the observed state of their request: kept per request id.
        self._delta_ref: dict[int, np.ndarray] = {}
        self._instruction = _Instruction(contract.max_instruction_tokens) if contract.has_instruction else None
        self._request = InferenceRequest(
            0,
            0,
            self._snap.images,
            self._state,
            self._prefix,
            0,
            self._instruction.tokens if self._instruction is not None else None,
        )
        self._q_meas = np.zeros(self.dof)
        self._q_tracked = self._q_meas if self._cmd_idx is None else np.zeros(len(self.tracked_joints))
        self._cmd: JointCommand | None = None
        self._lock = threading.RLock()
        self._safety: SafetyConfig = config.safety
        self._check_every = max(1, int(round(0.01 * config.control_hz)))

        self._started = False
        self._running = False
        self._seeded = False
        self._estop = False
        self._estop_pending = False
        self._next_id = 1
        self._epoch_first_id = 1  # results of requests older than this are from before a reset
        self._inflight_id = 0
        self._rest_request_id = 0
        self._last_tick = -1
        self._last_check_tick = -(10**9)
        self._worker_restarts = 0
        self._worker_crashes = 0
        self._bad_in_row = 0
        self._fault: str | None = None
        self._fault_tick = -1
        self._last_result_error = ""
        self._last_reject = ""
        self._input_reject = ""
        self.counters: dict[str, int] = {
            "ticks": 0,
            "commands": 0,
            "results": 0,
            "results_discarded": 0,
            "model_errors": 0,
            "rejected_nonfinite": 0,
            "rejected_shape": 0,
            "chunks_dropped": 0,
            "submit_refused": 0,
            "obs_not_ready_ticks": 0,
            "joint_state_rejected": 0,
            "image_rejected": 0,
            "faults": 0,
            "rearms": 0,
            "estops": 0,
            "waiting_instruction_ticks": 0,
        }
        self._rate_t = clock.now()
        self._rate_ticks = 0
        self._rate_chunks = 0
        self._rates = (0.0, 0.0)
        self._last_logged = ""

    # ------------------------------------------------------------------ inputs (any thread)

    def on_joint_state(
        self,
        names: Sequence[str],
        positions: Sequence[float] | np.ndarray,
        velocities: Sequence[float] | np.ndarray | None,
        stamp_s: float,
    ) -> str | None:
        why: str | None = self.buffers.put_joint_state(names, positions, velocities, stamp_s)
        if why is not None:
            self.counters["joint_state_rejected"] += 1
            self._input_reject = why
        return why

    def on_image(self, camera: str, rgb: np.ndarray, stamp_s: float) -> str | None:
        why: str | None = self.buffers.put_image(camera, rgb, stamp_s)
        if why is not None:
            self.counters["image_rejected"] += 1
            self._input_reject = why
        return why

    def on_estop(self, engaged: bool) -> None:
        """E-stop input: engaging latches a fault at the next tick (brake to hold); releasing does not
        re-arm by itself."""
        if engaged and not self._estop:
            self._estop_pending = True
        self._estop = bool(engaged)

    def rearm(self) -> tuple[bool, str]:
        with self._lock:
            if self._estop:
                return False, "e-stop is still engaged: release it first"
            if self.filter.fault is None and self._fault is None:
                return True, "nothing to re-arm: no fault latched"
            q, age = self._measured()
            if q is None or age > self._safety.max_state_age_s:
                return False, f"no fresh joint state (age {age:.3f} s): cannot re-arm"
            if not self.filter.rearm(q):
                return False, "the commanded motion has not stopped yet: retry when the arm holds"
            self._fault = None
            self._fault_tick = -1
            self._bad_in_row = 0
            self._reset_motion()
            self.counters["rearms"] += 1
            return True, "re-armed"

    def set_instruction(self, text: str, token_ids: np.ndarray) -> None:
        """A new language prompt, already tokenized (int64 [max_instruction_tokens], padded) by the
        caller, off the control path. It takes effect with the next request; any thread."""
        if self._instruction is None:
            raise ValueError(f"model {self.contract.model_name} takes no language prompt (no instruction_tokens input)")
        self._instruction.set(text, token_ids)

    def _measured(self) -> tuple[np.ndarray | None, float]:
        """Measured positions of the command vector (arm joints, then extra DOFs) and their age."""
        q, age = self.buffers.joint_positions(self._q_tracked)
        if q is not None and self._cmd_idx is not None:
            np.take(q, self._cmd_idx, out=self._q_meas)
            return self._q_meas, age
        return q, age

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start (or resume after stop()): inference begins once joint states and images arrive."""
        with self._lock:
            if self.worker.health().get("state") == "stopped":
                self.worker.start()
            if not self._running:
                self._reset_motion()
            self._started = True
            self._running = True

    def stop(self) -> None:
        """Brake to hold and idle: no new requests; commands keep holding the stopped position."""
        with self._lock:
            self._running = False
            self._reset_motion()

    def close(self) -> None:
        self.stop()
        self.worker.close()

    def _reset_motion(self, keep_surprise_score: bool = False) -> None:
        self.scheduler.reset()
        if self.surprise is not None:
            # After a fault the score that caused (or saw) it stays readable (~/surprise, diagnostics)
            # until the next start or re-arm; only the predictions of the abandoned motion go.
            if keep_surprise_score:
                self.surprise.forget_predictions()
            else:
                self.surprise.reset()
        # Anything already in flight was planned for a motion that is being abandoned.
        self._epoch_first_id = self._next_id

    # ------------------------------------------------------------------ the tick

    def tick(self, tick: int) -> JointCommand | None:
        with self._lock:
            return self._tick(int(tick))

    def _tick(self, tick: int) -> JointCommand | None:
        c = self.counters
        c["ticks"] += 1
        self._last_tick = tick
        if not self._started:
            return None
        q, age = self._measured()
        if not self._seeded:
            if q is None or age > self._safety.max_state_age_s:
                return None
            self.filter.reset(q)
            self._seeded = True
            self._cmd = JointCommand(tick, self.filter.q, self.filter.v, self.filter.a)

        if self._estop_pending:
            self._estop_pending = False
            c["estops"] += 1
            self.filter.latch("e-stop engaged")

        if tick - self._last_check_tick >= self._check_every:
            self._last_check_tick = tick
            self._supervise_worker()

        while True:
            res = self.worker.poll()
            if res is None:
                break
            self._on_result(res, tick)

        if self.filter.fault is not None and self._fault is None:
            self._fault = self.filter.fault
            self._fault_tick = tick
            c["faults"] += 1
            self._reset_motion(keep_surprise_score=True)

        target = self.execution.select_target(self, tick) if self._running and self._fault is None else None

        self.filter.step(target, q, age)
        cmd = self._cmd
        assert cmd is not None
        cmd.tick = tick
        cmd.positions, cmd.velocities, cmd.accelerations = self.filter.q, self.filter.v, self.filter.a
        c["commands"] += 1
        return cmd

    # ------------------------------------------------------------------ execution strategy
    # What an execution strategy (AsyncExecution, SyncExecution below) may use; buffers, worker
    # supervision, result validation and the filter stay the controller's.

    def request_chunk(self, tick: int) -> None:
        """Submit a request for this tick's observation (with the committed prefix) if the inputs are
        ready; the worker must not be busy."""
        self._maybe_submit(tick)

    def requested_at_rest(self, request_id: int) -> bool:
        """This request was made while the arm was commanded to stand still."""
        return request_id == self._rest_request_id

    @property
    def waiting_ticks(self) -> int:
        """Ticks the strategy held the arm still waiting for the model (0 for async execution)."""
        return int(self.execution.waiting_ticks)

    def _supervise_worker(self) -> None:
        self.worker.check(self.clock.now())
        restarts = self.worker.restarts
        if restarts != self._worker_restarts:
            self._worker_restarts = restarts
            # A restarted model is slow for its first calls again.
            self.scheduler.delay.restart_warmup()
            if self.latch_on_worker_failure and self.filter.fault is None:
                self.filter.latch(f"inference worker failed: {self.worker.last_error}")

    def _on_result(self, res: InferenceResult, tick: int) -> None:
        c = self.counters
        c["results"] += 1
        delta_ref = self._delta_ref.pop(res.request_id, None) if self.contract.delta_actions else None
        if res.request_id == self._inflight_id:
            self._inflight_id = 0
        if res.request_id < self._epoch_first_id or self._fault is not None or not self._running:
            c["results_discarded"] += 1
            return
        out = res.output
        if res.error is not None or out is None:
            c["model_errors"] += 1
            self._last_result_error = res.error or "no output"
            self._bad_result()
            return
        actions = out.actions
        if not isinstance(actions, np.ndarray) or actions.shape != (self.horizon, self.dof):
            c["rejected_shape"] += 1
            shape = list(actions.shape) if isinstance(actions, np.ndarray) else type(actions).__name__
            self._last_result_error = f"actions shape {shape}, expected {[self.horizon, self.dof]}"
            self._bad_result()
            return
        if self.contract.delta_actions:
            # action_type delta: relative to the state observed for this chunk's request; the scheduler
            # and the safety filter only ever see absolute targets.
            if delta_ref is None:
                c["model_errors"] += 1
                self._last_result_error = f"delta chunk of request {res.request_id} without its observed state"
                self._bad_result()
                return
            actions = actions + delta_ref
        if not np.isfinite(actions).all():
            c["rejected_nonfinite"] += 1
            self._last_result_error = "actions contain NaN/Inf"
            self._bad_result()
            return
        self._bad_in_row = 0
        at_arrival = self.execution.starts_at_arrival(self, res, tick)
        if self.surprise is not None:
            # The latent predictions are timed from the moment the chunk starts: `offset` steps after
            # the arrival for a chunk started at its arrival. Keyed from the observation tick instead,
            # every first chunk after a rest looked surprising by the whole inference delay (at
            # 200 ms: trips in 3 of 50 nominal episodes).
            start = tick if at_arrival else res.obs_tick
            self.surprise.on_result(
                res.obs_tick, out.latent, out.latent_pred, start_tick=start, frame_error=out.frame_error
            )
        if self.result_hook is not None:
            self.result_hook(res)
        why = self.execution.install(self, res, actions, tick, at_arrival)
        if why is not None:
            c["chunks_dropped"] += 1
            self._last_reject = why
            self.scheduler.on_request_failed()

    def _bad_result(self) -> None:
        self.scheduler.on_request_failed()
        self._bad_in_row += 1
        if self._bad_in_row >= self._safety.max_consecutive_bad_targets and self.filter.fault is None:
            self.filter.latch(
                f"{self._bad_in_row} unusable model results in a row ({self._last_result_error})"
            )

    def _maybe_submit(self, tick: int) -> None:
        snap = self._snap
        if not self.buffers.snapshot(snap):
            self.counters["obs_not_ready_ticks"] += 1
            return
        if self._instruction is not None and not self._instruction.apply():
            # The model needs a prompt and has none: no request, so nothing moves (status says why).
            self.counters["waiting_instruction_ticks"] += 1
            return
        if self._state_idx is not None:
            np.take(snap.state, self._state_idx, out=self._state)
        if self._cmd_idx is None:
            np.copyto(self._obs_cmd, snap.state)
        else:
            np.take(snap.state, self._cmd_idx, out=self._obs_cmd)
        req = self._request
        req.request_id = self._next_id
        req.obs_tick = tick
        req.prefix_len = self.scheduler.fill_prefix(tick, self._prefix, self._obs_cmd)
        if self.contract.delta_actions:
            self._prefix -= self._obs_cmd  # the model's prefix is in its own (delta) terms
        # Commanded to stand still now (start, after a stop or re-arm): see AsyncExecution.starts_at_arrival.
        at_rest = self.filter.holding and not self.filter.v.any()
        if self.worker.submit(req):
            if self.contract.delta_actions:
                self._delta_ref[self._next_id] = self._obs_cmd.copy()
                while len(self._delta_ref) > 8:  # results of abandoned requests never come back
                    del self._delta_ref[min(self._delta_ref)]
            self._inflight_id = self._next_id
            if at_rest:
                self._rest_request_id = self._next_id
            self._next_id += 1
            self.scheduler.on_request(tick)
        else:
            self.counters["submit_refused"] += 1

    # ------------------------------------------------------------------ outputs (any thread)

    def predicted_chunk(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(version, seconds from now per action step [H], action points [H, D]) of the executing chunk."""
        with self._lock:
            return self.scheduler.predicted(self._last_tick)

    def status(self) -> ControllerStatus:
        with self._lock:
            values: dict[str, float | int | str] = {}
            values.update(self.counters)
            sched = self.scheduler.metrics()
            values.update({f"scheduler.{k}": v for k, v in sched.items()})
            interventions = self.filter.interventions()
            values.update({f"filter.{k}": v for k, v in interventions.items()})
            values["filter.interventions_total"] = int(sum(interventions.values()))
            values["filter.holding"] = int(self.filter.holding)
            health = self.worker.health()
            values.update({f"worker.{k}": v for k, v in health.items()})
            values.update({f"obs.{k}": v for k, v in self.buffers.status().items()})
            values["fault"] = self._fault or ""
            values["estop"] = int(self._estop)
            values["running"] = int(self._running)
            if self.surprise is not None:
                values.update(self.surprise.values())
            now = self.clock.now()
            span = now - self._rate_t
            if span >= 0.5:
                chunks = int(sched["chunks_accepted"])
                self._rates = (
                    (self.counters["ticks"] - self._rate_ticks) / span,
                    (chunks - self._rate_chunks) / span,
                )
                self._rate_t, self._rate_ticks, self._rate_chunks = now, self.counters["ticks"], chunks
            values["ticks_per_s"], values["inferences_per_s"] = self._rates
            values.update(self.model_values())
            level, message = self._summary(sched, health)
        if message != self._last_logged:
            log.log(logging.WARNING if level else logging.INFO, "controller: %s", message)
            self._last_logged = message
        return ControllerStatus(level, message, values)

    def model_values(self) -> dict[str, str]:
        """What the runtime does with each optional part of the model's contract (diagnostics)."""
        c = self.contract
        out = {
            "model.name": c.model_name,
            "model.contract_version": str(c.contract_version),
            "model.prefix": f"prefix (max_prefix {c.max_prefix})" if c.has_prefix
            else "none: no prefix input, chunk seams blended by the scheduler",
            "model.world_model": "on" if c.has_world_model
            else "none: no world-model head, surprise monitor and imagination preview off",
            "model.surprise": "on" if self.surprise is not None else "off",
            "model.action_type": c.action_type,
        }
        if c.extra_actions or c.extra_states:
            out["model.extra_dofs"] = ", ".join(
                f"{n}->{self.config.extra_joint(n)}" for n in dict.fromkeys((*c.extra_actions, *c.extra_states))
            )
        if self._instruction is not None:
            out["model.instruction"] = self._instruction.text if self._instruction.text is not None else ""
        return out

    def _summary(
        self, sched: dict[str, float | int], health: dict[str, float | int | str]
    ) -> tuple[int, str]:
        if self._fault is not None:
            return ERROR, f"fault latched: {self._fault}; holding, re-arm required"
        if not self._started:
            return WARN, "not started"
        if not self._seeded:
            return WARN, "waiting for the first joint state"
        if not self._running:
            return OK, "stopped: holding position"
        warnings = []
        if self._instruction is not None and self._instruction.text is None:
            warnings.append(
                f"waiting for an instruction: model {self.contract.model_name} needs a language prompt "
                "(instruction: in the config, or std_msgs/String on ~/instruction); not moving"
            )
        state = health.get("state", "")
        if state != "ready":
            warnings.append(f"inference worker {state}")
        if self.scheduler.starving:
            warnings.append(
                f"starving: no action for this tick (delay {sched['delay_ticks_last']} ticks, "
                f"chunk {self.scheduler.chunk_ticks:g} ticks); braking to hold"
            )
        if self.contract.has_prefix and self.scheduler.prefix_needed_last > self.contract.max_prefix:
            warnings.append(
                f"inference delay {sched['delay_ticks_estimate']} ticks needs a "
                f"{self.scheduler.prefix_needed_last}-step prefix but the model was trained with max_prefix "
                f"{self.contract.max_prefix}; prefix capped ({sched['prefix_overflows']} times), seams blended"
            )
        if (
            self.counters["obs_not_ready_ticks"]
            and not self._snap.ok
            and self.scheduler.want_request(self._last_tick)
        ):
            stale = [n for n, s in self.buffers.stale().items() if s]
            if stale:
                warnings.append(f"stale inputs {stale}: no new inference")
        surprise = self.surprise.warning() if self.surprise is not None else None
        if surprise is not None:
            warnings.append(surprise)
        if warnings:
            return WARN, "; ".join(warnings)
        return OK, "running"


class _Instruction:
    """The language prompt of a model with `instruction_tokens`: set from any thread (already tokenized,
    off the control path), copied into the request buffer by the control thread at the next request."""

    def __init__(self, length: int) -> None:
        self.tokens = np.zeros(length, np.int64)
        """The request's buffer (the worker copies it at submit)."""
        self.text: str | None = None
        """The prompt in force: the one the latest request carried (None: none yet)."""
        self.changes = 0
        self._pending: tuple[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def set(self, text: str, token_ids: np.ndarray) -> None:
        ids = np.asarray(token_ids)
        if ids.shape != self.tokens.shape or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"instruction tokens must be integers of shape {list(self.tokens.shape)}, got "
                             f"{ids.dtype} {list(ids.shape)}")  # fmt: skip
        with self._lock:
            self._pending = (str(text), ids.astype(np.int64))

    def apply(self) -> bool:
        """Take a pending prompt into the request buffer; whether a prompt is in force."""
        if self._pending is not None:
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None:
                np.copyto(self.tokens, pending[1])
                self.text = pending[0]
                self.changes += 1
        return self.text is not None


# ---------------------------------------------------------------------------------------------------
# Execution strategies


class ExecutionStrategy(Protocol):
    """How the controller turns chunks into targets; given to the `Controller` (`execution=`).

    `select_target` runs every tick while running and not faulted (None: brake to hold) and starts
    requests through `controller.request_chunk`; `starts_at_arrival` says whether a validated chunk
    runs from its arrival tick rather than its observation tick; `install` hands it to the scheduler
    (None when installed, else why it was dropped)."""

    waiting_ticks: int

    def scheduler_params(self, limits: LimitArrays) -> SchedulerParams: ...

    def select_target(self, c: Controller, tick: int) -> np.ndarray | None: ...

    def starts_at_arrival(self, c: Controller, res: InferenceResult, tick: int) -> bool: ...

    def install(
        self, c: Controller, res: InferenceResult, actions: np.ndarray, tick: int, at_arrival: bool
    ) -> str | None: ...


class AsyncExecution:
    """Chunks execute while the next one is computed; the committed prefix goes to the model and
    seams are corrected where needed (this runtime's default)."""

    waiting_ticks = 0

    def scheduler_params(self, limits: LimitArrays) -> SchedulerParams:
        return default_scheduler_params(limits)

    def select_target(self, c: Controller, tick: int) -> np.ndarray | None:
        if not c.worker.busy and c.scheduler.want_request(tick):
            c.request_chunk(tick)
        return c.scheduler.target(tick)

    def starts_at_arrival(self, c: Controller, res: InferenceResult, tick: int) -> bool:
        """True for a chunk requested while the arm held still, and still holding now: nothing moved
        while the model thought, so its observation is still current and none of its actions is in
        the past. Dropping them instead would start the arm mid-motion, i.e. a seam from rest to the
        chunk's velocity, blended by a catch-up move the model never planned (and then committed to
        it as the next prefix)."""
        return c.requested_at_rest(res.request_id) and c.scheduler.remaining_ticks(tick) < 0 and c.filter.holding

    def install(
        self, c: Controller, res: InferenceResult, actions: np.ndarray, tick: int, at_arrival: bool
    ) -> str | None:
        f = c.filter
        return c.scheduler.accept(res.obs_tick, actions, tick, (f.q, f.v, f.a), start_at_arrival=at_arrival)


class SyncExecution:
    """Observe, hold still while the model thinks, then execute the whole chunk; repeat (the openpi /
    ALOHA default).

    The chunk is started at its arrival tick (the arm was still, so the observation is still valid)
    and runs to its last action; meanwhile no new request is made. Between chunks the target is the
    last action of the previous chunk, so the arm comes to rest there. Same buffers, worker handling,
    scheduler (interpolation, seam correction from the held state) and safety filter as async
    execution."""

    def __init__(self) -> None:
        self._hold_target: np.ndarray | None = None
        self.waiting_ticks = 0
        """Ticks spent holding still for the model (after the first chunk)."""

    def scheduler_params(self, limits: LimitArrays) -> SchedulerParams:
        return dataclasses.replace(default_scheduler_params(limits), mode="prefix", replan_fraction=0.0)

    def select_target(self, c: Controller, tick: int) -> np.ndarray | None:
        if c.scheduler.remaining_ticks(tick) >= 0:
            return c.scheduler.target(tick)
        # No chunk covers this tick, so the request goes out without a prefix.
        if not c.worker.busy:
            c.request_chunk(tick)
        if self._hold_target is None:
            return None
        self.waiting_ticks += 1
        return self._hold_target

    def starts_at_arrival(self, c: Controller, res: InferenceResult, tick: int) -> bool:
        return True  # the arm held still while the model thought, by construction

    def install(
        self, c: Controller, res: InferenceResult, actions: np.ndarray, tick: int, at_arrival: bool
    ) -> str | None:
        f = c.filter
        why = c.scheduler.accept(res.obs_tick, actions, tick, (f.q, f.v, f.a), start_at_arrival=True)
        if why is None:
            if self._hold_target is None:
                self._hold_target = np.zeros(c.dof)
            np.copyto(self._hold_target, actions[-1])
        return why


def execution_strategy(name: str) -> ExecutionStrategy:
    """"async" -> AsyncExecution, "sync" -> SyncExecution (a fresh one: it keeps per-run state)."""
    if name == "async":
        return AsyncExecution()
    if name == "sync":
        return SyncExecution()
    raise ValueError(f"execution must be 'async' or 'sync', got {name!r}")
