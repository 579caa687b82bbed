"""Closed-loop episodes: the MuJoCo arm driven by the real runtime Controller, in one process.

Shared by `wam-control demo` and `wam-control bench closed-loop`. The sim plays the robot and the
transport at once: every tick it hands the controller a joint state through `on_joint_state` and
camera frames through `on_image`, exactly the calls the DDS / rclpy adapters make, and applies the
returned command as a forward position controller would. Only serialization is missing.

The per-tick loop and both drivers are runtime.episode's (`EpisodeStepper`, `run_lockstep`,
`run_realtime`); this module makes the arm an environment of them (`ArmEnvironment`, and
`DisturbedArm` for the surprise bench) and adds the trace, seam and success observers (`ClosedLoopEpisode`).

Two clocks:

- realtime: a `FixedRateLoop` on the monotonic clock ticks the episode (`run_realtime`), the inference
  runs in a real `ThreadWorker`, and a camera thread renders frames from snapshots of the sim (as a
  camera would: the control loop never waits for a render). If the loop misses grid slots, the sim
  catches up with the held command, so sim time stays equal to wall time.
- lockstep: a `SimClock` advanced one control period per tick; inference runs the real backend inside
  a `ScriptedWorker` whose latency is a fixed number of ticks (nominal compute + injected delay), so
  a run is deterministic whatever the machine load.

Two execution strategies of the one `Controller` (runtime.controller): `AsyncExecution` (chunks
execute while the next one is computed, prefix + seam handling) and `SyncExecution` (the openpi /
ALOHA default: observe, hold still while the model thinks, execute the whole chunk, repeat).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wam_control.config.schema import RobotConfig
from wam_control.policy.base import PolicyOutput
from wam_control.policy.contract import ModelContract
from wam_control.runtime.builder import RuntimeSpec
from wam_control.runtime.clock import Clock, SimClock
from wam_control.runtime.controller import Controller
from wam_control.runtime.episode import (
    EpisodeStepper,
    EpisodeTrace,
    Observer,
    SeamObserver,
    SuccessObserver,
    TraceObserver,
    run_lockstep,
    run_realtime,
)
from wam_control.runtime.replay import BackendModel
from wam_control.runtime.worker import InferenceRequest, InferenceResult

__all__ = ["BackendModel", "EpisodeTrace"]  # re-exported: the lockstep drivers' model, the trace

EVAL_SEED_BASE = 100_000
"""Evaluation episodes use seeds from here on; training data uses seeds 0-9999 (see models/)."""
SETTLE_S = 0.5
"""An episode succeeds once the task's success condition has held this long (as the expert bench)."""


# ---------------------------------------------------------------------------------------------------
# Workers


class RecordingWorker:
    """Wraps an `InferenceWorker`: passes every call through and keeps, for each model result, the
    observation tick, arrival time, compute time, latent and latent prediction (preallocated)."""

    def __init__(self, inner: Any, contract: ModelContract, clock: Clock, capacity: int = 4096) -> None:
        self.inner = inner
        self.clock = clock
        self.capacity = int(capacity)
        self.obs_tick = np.zeros(self.capacity, np.int64)
        self.arrival_s = np.zeros(self.capacity)
        self.compute_s = np.zeros(self.capacity)
        self.latent = np.zeros((self.capacity, contract.latent_dim), np.float32)
        self.latent_pred = np.zeros((self.capacity, contract.latent_steps, contract.latent_dim), np.float32)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def busy(self) -> bool:
        return bool(self.inner.busy)

    def start(self) -> None:
        self.inner.start()

    def close(self) -> None:
        self.inner.close()

    def submit(self, request: InferenceRequest) -> bool:
        return bool(self.inner.submit(request))

    def poll(self) -> InferenceResult | None:
        res: InferenceResult | None = self.inner.poll()
        if res is not None and res.output is not None and self.n < self.capacity:
            i = self.n
            self.obs_tick[i] = res.obs_tick
            self.arrival_s[i] = self.clock.now()
            self.compute_s[i] = res.compute_s
            out = res.output
            if (
                out.latent.shape == self.latent.shape[1:]
                and out.latent_pred.shape == self.latent_pred.shape[1:]
            ):
                self.latent[i] = out.latent
                self.latent_pred[i] = out.latent_pred
            self.n += 1
        return res

    def check(self, now: float) -> None:
        self.inner.check(now)

    def health(self) -> dict[str, float | int | str]:
        h: dict[str, float | int | str] = self.inner.health()
        return h

    def __getattr__(self, name: str) -> Any:  # wait_ready / wait_result of the real workers
        return getattr(self.inner, name)


def latency_ticks(compute_ms: float, delay_ms: float, control_hz: float) -> int:
    """Ticks from submit to the first poll that sees the result (at least one)."""
    return max(1, int(math.ceil((compute_ms + delay_ms) * 1e-3 * control_hz - 1e-9)))


# ---------------------------------------------------------------------------------------------------
# Camera (realtime mode)


class CameraThread:
    """Renders the arm's cameras in a thread of its own from snapshots the control thread takes.

    `capture(t)` copies the sim state (a few hundred floats) and returns at once; the thread renders
    from a private MjData and delivers the frame through `deliver(camera, rgb, stamp_s)` (the
    controller's `on_image`), stamped with the sim time of the snapshot, like a camera driver would.
    """

    def __init__(
        self, arm: Any, cameras: Sequence[str], deliver: Callable[[str, np.ndarray, float], Any]
    ) -> None:
        import mujoco

        self._mj = mujoco
        self.arm = arm
        self.cameras = tuple(cameras)
        self.deliver = deliver
        self._data = mujoco.MjData(arm.model)
        self._qpos = np.zeros(arm.model.nq)
        self._mocap_pos = np.zeros_like(arm.data.mocap_pos)
        self._mocap_quat = np.zeros_like(arm.data.mocap_quat)
        self._stamp = 0.0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error = ""
        self.frames = 0
        self.render_s: list[float] = []
        self.keep: list[tuple[float, str, np.ndarray]] | None = None
        """When a list: every delivered frame is also appended here (copies; for bags and plots)."""
        h, w = arm.image_hw
        self._bufs = {c: np.zeros((h, w, 3), np.uint8) for c in self.cameras}
        self._ids = {c: arm.model.camera(c).id for c in self.cameras}
        self._thread = threading.Thread(target=self._run, name="wam-demo-camera", daemon=True)
        self._thread.start()
        self._ready.wait(30.0)
        if self.error:
            raise RuntimeError(f"camera thread: {self.error}")

    def capture(self, stamp_s: float) -> None:
        d = self.arm.data
        with self._lock:
            np.copyto(self._qpos, d.qpos)
            np.copyto(self._mocap_pos, d.mocap_pos)
            np.copyto(self._mocap_quat, d.mocap_quat)
            self._stamp = stamp_s
        self._due.set()

    def _run(self) -> None:
        from wam_control.sim.gl import OffscreenRenderer

        try:
            h, w = self.arm.image_hw
            renderer = OffscreenRenderer(self.arm.model, h, w)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        mj, data = self._mj, self._data
        try:
            while not self._stop.is_set():
                if not self._due.wait(0.1):
                    continue
                self._due.clear()
                with self._lock:
                    np.copyto(data.qpos, self._qpos)
                    np.copyto(data.mocap_pos, self._mocap_pos)
                    np.copyto(data.mocap_quat, self._mocap_quat)
                    stamp = self._stamp
                t0 = time.perf_counter()
                mj.mj_kinematics(self.arm.model, data)
                mj.mj_camlight(self.arm.model, data)
                for cam in self.cameras:
                    renderer.render(data, self._ids[cam], self._bufs[cam])
                self.render_s.append(time.perf_counter() - t0)
                for cam in self.cameras:
                    self.deliver(cam, self._bufs[cam], stamp)
                    if self.keep is not None:
                        self.keep.append((stamp, cam, self._bufs[cam].copy()))
                self.frames += 1
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            renderer.close()

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        self._thread.join(5.0)


# ---------------------------------------------------------------------------------------------------
# The arm as an environment of the episode driver (runtime.episode)

DISTURBANCES = ("teleport", "camera", "occluder", "joint", "drop")
"""What `DisturbedArm` can do to the arm (see `disturb`); "drop" needs the hand and pick_place."""
DROP_LIFT_M = 0.05
"""drop: fires once the prompted cube's bottom is this far above the table and a finger touches it."""
DROP_HOLD_S = 0.3
"""drop: how long the grip stays lost (fingers driven open); the cube falls 5 cm in ~0.1 s."""


class ArmEnvironment:
    """The MuJoCo arm as a forward position controller would run it (runtime.episode's `Environment`):
    the joint state in each tick, the command held until the next one, frames as they are rendered
    (lockstep: the arm's own renders; real time: a `CameraThread` from snapshots at 15 Hz)."""

    def __init__(
        self, arm: Any, cameras: Sequence[str], *, camera: CameraThread | None = None,
        images: list[tuple[float, str, np.ndarray]] | None = None,
    ) -> None:  # fmt: skip
        self.arm = arm
        self.cameras = tuple(cameras)
        self.camera = camera
        self.images = images
        """When a list: every frame the controller receives from the arm is appended (copies)."""
        self.cmd = arm.joint_state()[1]
        """The command the servos hold (the position at reset until the first command)."""
        self.q = self.cmd.copy()
        self.qd = np.zeros_like(self.q)
        self.gripper: float | None = None
        """The gripper setpoint of the last command (m per finger); None: none sent yet (the arm's own
        setpoint holds)."""
        self._gripper_col: int | None = None
        self._full_state = False
        self._camera_period = 1.0 / 15.0
        self._next_frame_t = 0.0

    def _bind(self, controller: Any) -> None:
        """What /joint_states carries and where the gripper is in the command vector, from the
        controller's joints: the arm's finger joints join the joint state when the controller tracks
        any joint beyond the arm's (a model with a gripper state); the command column of a finger joint
        is the gripper setpoint (config extra_dofs, e.g. gripper -> fr3_finger_joint1)."""
        arm_joints = set(self.arm.joint_names)
        tracked = tuple(getattr(controller, "tracked_joints", ()))
        fingers = tuple(getattr(self.arm, "finger_names", ()))
        self._full_state = bool(fingers) and any(j not in arm_joints for j in tracked)
        cols = [i for i, j in enumerate(getattr(controller, "command_joints", ())) if j in fingers]
        self._gripper_col = cols[0] if cols else None

    def _feed_frames(self, controller: Any, rendered: Sequence[str]) -> None:
        for cam in rendered:
            image, stamp = self.arm.frame(cam)
            controller.on_image(cam, image, stamp)
            if self.images is not None:
                self.images.append((stamp, cam, image.copy()))

    def begin(self, controller: Any) -> None:
        self._bind(controller)
        if self.camera is None:
            self._feed_frames(controller, self.cameras)  # the frame rendered at reset
        else:
            self.camera.capture(self.arm.time)
            self._next_frame_t = self._camera_period

    def observe(self, controller: Any, tick: int) -> None:
        if self._full_state:  # arm + finger joints, as the sim bridge publishes /joint_states
            names, q, qd = self.arm.all_joint_state()
            controller.on_joint_state(names, q, qd, self.arm.time)
            n = len(self.arm.joint_names)
            self.q, self.qd = q[:n], qd[:n]
        else:
            names, self.q, self.qd = self.arm.joint_state()
            controller.on_joint_state(names, self.q, self.qd, self.arm.time)

    def act(self, command: Any) -> None:
        if command is not None:
            np.copyto(self.cmd, command.positions[: len(self.cmd)])
            if self._gripper_col is not None:
                self.gripper = float(command.positions[self._gripper_col])

    def step(self, controller: Any) -> None:
        rendered = self.arm.step(self.cmd, gripper=self.gripper)
        if self.camera is None:
            if rendered:
                self._feed_frames(controller, rendered)
        elif self.arm.time >= self._next_frame_t - 1e-9:
            self.camera.capture(self.arm.time)
            self._next_frame_t += self._camera_period

    def success(self) -> bool:
        return bool(self.arm.task.success())

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.q, self.qd

    def command(self) -> np.ndarray:
        return self.cmd


def disturb(arm: Any, kind: str, rng: np.random.Generator) -> None:
    """One disturbance of `DISTURBANCES`, drawn from `rng`: the task's object jumps 15-25 cm (pick_place:
    the prompted cube, to a free spot on the table), the scene camera moves 5-10 cm, an occluder
    appears, a shoulder/elbow joint freezes, or the hand loses its grip (`SimArm.lose_grip`; ended by
    the caller, see `DisturbedArm`)."""
    if kind == "teleport" and hasattr(arm.task, "cube"):  # pick_place: the prompted cube jumps
        arm.teleport_object(_cube_jump(arm.task, rng))
    elif kind == "teleport":
        task = arm.task
        cur = task.target() if hasattr(task, "target") else task.object()
        low = getattr(task, "low", None)
        high = getattr(task, "high", None)
        for _ in range(100):
            if low is not None and high is not None:
                p = rng.uniform(low, high)
            else:
                p = cur + np.append(rng.uniform(-0.2, 0.2, 2), 0.0)
            if 0.15 <= float(np.linalg.norm(p - cur)) <= 0.25:
                break
        arm.teleport_object(p)
    elif kind == "camera":
        d = rng.normal(size=3)
        arm.move_camera(d / np.linalg.norm(d) * rng.uniform(0.05, 0.10))
    elif kind == "occluder":
        arm.set_occluder(True)
    elif kind == "joint":
        arm.block_joint(int(rng.choice([0, 1, 3])), True)
    elif kind == "drop":
        arm.lose_grip(True)
    else:
        raise ValueError(f"unknown disturbance {kind!r}; expected one of {list(DISTURBANCES)}")


def _cube_jump(task: Any, rng: np.random.Generator) -> np.ndarray:
    """pick_place teleport: a spot on the table 15-25 cm (xy) from the prompted cube, inside the cubes'
    area and clear of the other cubes."""
    from wam_control.sim.tasks import CUBE_COLOURS

    cur = task.cube()
    others = [task.cube(i)[:2] for i in range(len(CUBE_COLOURS)) if i != task.target_index]
    xy = cur[:2]
    for _ in range(1000):
        xy = rng.uniform(task.cube_low, task.cube_high)
        if 0.15 <= float(np.linalg.norm(xy - cur[:2])) <= 0.25 and all(
            float(np.linalg.norm(xy - o)) >= task.min_cube_gap for o in others
        ):
            break
    return np.array([xy[0], xy[1], task.cube_half + 0.0005])


def cube_carried(arm: Any) -> bool:
    """pick_place: the prompted cube's bottom is more than DROP_LIFT_M above the table and a finger
    touches it (what arms the drop disturbance)."""
    task = arm.task
    return bool(float(task.cube()[2]) - task.cube_half > DROP_LIFT_M and task.touching())


class DisturbedArm(ArmEnvironment):
    """The arm with one disturbance (`disturb`) applied just before tick `inject_tick` is observed.

    "drop" is state-triggered: armed from `inject_tick` on, it fires just before the first tick the
    prompted cube is carried (`cube_carried`) is observed, and the grip stays lost for DROP_HOLD_S
    (then the fingers follow the commands again); `inject_tick` becomes the tick it fired at. `fired`:
    whether the disturbance happened (a drop never fires in an episode where the cube is not lifted)."""

    def __init__(
        self, arm: Any, cameras: Sequence[str], kind: str, inject_tick: int, rng: np.random.Generator
    ) -> None:
        super().__init__(arm, cameras)
        self.kind = kind
        self.inject_tick = int(inject_tick)
        self.rng = rng
        self.fired = False
        self._regrip_tick = -1
        self._hold_ticks = max(1, int(round(DROP_HOLD_S / arm.control_period)))

    def observe(self, controller: Any, tick: int) -> None:
        if self.kind == "drop":
            if not self.fired and tick >= self.inject_tick and cube_carried(self.arm):
                self.inject_tick, self.fired = tick, True
                self._regrip_tick = tick + self._hold_ticks
                disturb(self.arm, self.kind, self.rng)
            elif tick == self._regrip_tick:
                self.arm.lose_grip(False)
        elif tick == self.inject_tick:
            disturb(self.arm, self.kind, self.rng)
            self.fired = True
        super().observe(controller, tick)


# ---------------------------------------------------------------------------------------------------
# Prompts and what the policy did with the task's objects

LIFT_M = 0.02
"""A cube counts as lifted once its bottom was this far above the table."""
MOVED_M = 0.02
"""A cube counts as moved once its centre left its start by this much (xy) or it was lifted."""
VISIT_XY_M = 0.03
VISIT_ABOVE_M = 0.13
"""The tool visits a cube once it is within VISIT_XY_M of the cube's centre in the table plane and at
most VISIT_ABOVE_M above it: the expert's approach ends 0.10 m above the cube (sim.expert.PICK_HOVER_M),
so passing over a cube on the way to another at carrying height does not count."""


def prompt_colour(prompt: str) -> str:
    """The one cube colour `prompt` names ("" when it names none or several)."""
    from wam_control.sim.tasks import CUBE_COLOURS

    words = set(prompt.lower().replace(",", " ").replace(".", " ").split())
    named = [c for c in CUBE_COLOURS if c in words]
    return named[0] if len(named) == 1 else ""


def give_prompt(controller: Any, tokenizer: Any, arm: Any, prompt: str | None = None) -> str:
    """The episode's prompt to a controller whose model takes one, through the path `~/instruction`
    takes (policy.instruction.InstructionInput): `prompt` when given (an override, e.g. the wrong-prompt
    control), else the task's own (`arm.task.prompt`, drawn by the seed). A model without a prompt
    input gets none ("" returned); an override for such a model is an error."""
    from wam_control.policy.instruction import InstructionInput

    if tokenizer is None:
        if prompt:
            raise ValueError(f"a prompt was given ({prompt!r}) but the model takes no language prompt")
        return ""
    text = prompt if prompt else str(getattr(arm.task, "prompt", ""))
    problem = InstructionInput(controller, tokenizer).set(text)
    if problem:
        raise ValueError(f"prompt {text!r}: {problem}")
    return text.strip()


class CubeObserver(Observer):
    """pick_place: per cube, how high its bottom got (lifted?) and how far it left its start, and the
    first cube the tool visited (went for), from tick 0 on; `outcome(prompt)` then says what the
    policy did with the cubes (EpisodeResult.extras)."""

    def __init__(self, arm: Any) -> None:
        from wam_control.sim.tasks import CUBE_COLOURS

        self.task = arm.task
        self.colours = CUBE_COLOURS
        n = len(CUBE_COLOURS)
        self.start = np.array([self.task.cube(i) for i in range(n)])
        self.max_lift = np.zeros(n)
        self.max_shift = np.zeros(n)
        self.first_visit = -1  # index of the first cube the tool visited (VISIT_XY_M), -1: none yet
        # How low the tool got over each cube (tool minus cube centre height, m, while within
        # VISIT_XY_M of it) and the narrowest finger setpoint the sim received: a policy that stops
        # short of the grasp or never closes shows here.
        self.lowest_above = np.full(n, np.inf)
        self._hand = arm if getattr(arm, "has_hand", False) else None  # where the finger setpoint is read
        self.gripper_min = np.inf

    def after_tick(self, tick: int, command: Any) -> bool:
        tool = self.task.ee()
        for i in range(len(self.colours)):
            c = self.task.cube(i)
            self.max_lift[i] = max(self.max_lift[i], float(c[2]) - self.task.cube_half)
            self.max_shift[i] = max(self.max_shift[i], float(np.linalg.norm(c[:2] - self.start[i, :2])))
            if float(np.linalg.norm(tool[:2] - c[:2])) <= VISIT_XY_M:
                above = float(tool[2] - c[2])
                self.lowest_above[i] = min(self.lowest_above[i], above)
                if self.first_visit < 0 and above <= VISIT_ABOVE_M:
                    self.first_visit = i
        if self._hand is not None:
            self.gripper_min = min(self.gripper_min, float(np.min(self._hand.gripper_command())))
        return False

    def outcome(self, prompt: str) -> dict[str, float | int | str]:
        task, cols = self.task, self.colours
        zone = task.zone()
        cubes = np.array([task.cube(i) for i in range(len(cols))])
        d = np.abs(cubes[:, :2] - zone[:2])
        inside = np.all(d <= task.zone_half - task.zone_margin, axis=1)
        dist = np.linalg.norm(cubes[:, :2] - zone[:2], axis=1)
        lifted = self.max_lift > LIFT_M
        moved = lifted | (self.max_shift > MOVED_M)

        def names(mask: np.ndarray) -> str:
            return "+".join(c for c, m in zip(cols, mask) if m) or "none"

        target = task.colour
        asked = prompt_colour(prompt) if prompt else target
        ti = cols.index(target)
        pi = cols.index(asked) if asked else -1
        others = np.ones(len(cols), bool)
        others[ti] = False
        if pi >= 0:
            others[pi] = False
        return {
            "task_target": target,
            "prompt_target": asked or "none",
            "lifted": names(lifted),
            "in_zone": names(inside),
            "closest_to_zone": cols[int(np.argmin(dist))],
            "went_to": cols[self.first_visit] if self.first_visit >= 0 else "none",
            "prompt_target_visited_first": int(self.first_visit == pi) if pi >= 0 else -1,
            "other_visited_first": int(self.first_visit >= 0 and self.first_visit != pi),
            # cm above the prompted cube's centre at the lowest over it (inf: never over it); mm of the
            # narrowest finger setpoint (per finger; fr3_hand.yaml's filter passes 4-36 mm, the cube stops them at 20)
            "lowest_above_prompt_cm": round(100.0 * float(self.lowest_above[pi]), 1) if pi >= 0 else math.inf,
            "gripper_min_mm": round(1000.0 * self.gripper_min, 1),
            "task_target_lifted": int(lifted[ti]),
            "task_target_in_zone": int(inside[ti]),
            "prompt_target_lifted": int(lifted[pi]) if pi >= 0 else -1,
            "prompt_target_in_zone": int(inside[pi]) if pi >= 0 else -1,
            "other_lifted": int(bool(np.any(lifted & others))),
            "nothing_moved": int(not np.any(moved)),
        }


EXTRA_RATES = (
    "task_target_lifted", "task_target_in_zone", "prompt_target_lifted", "prompt_target_in_zone",
    "other_lifted", "nothing_moved", "prompt_target_visited_first", "other_visited_first",
)  # fmt: skip
"""Per-episode 0/1 extras (`EpisodeResult.extras`, pick_place) whose rate `extras_summary` gives."""


def extras_summary(results: Sequence[EpisodeResult]) -> dict[str, float]:
    """`<key>_rate` over the episodes for each of EXTRA_RATES the episodes have (pick_place; -1 = not
    applicable, e.g. a prompt that names no cube, is left out of its rate); {} for reach and push."""
    out: dict[str, float] = {}
    for key in EXTRA_RATES:
        vals = [int(r.extras[key]) for r in results if key in r.extras and int(r.extras[key]) >= 0]
        if any(key in r.extras for r in results):
            out[f"{key}_rate"] = float(np.mean(vals)) if vals else math.nan
    return out


def describe_extras(extras: dict[str, float | int | str]) -> str:
    """A few words for the per-episode line ("" without extras)."""
    if "lifted" not in extras:
        return ""
    return (
        f"[task {extras['task_target']}, prompt {extras['prompt_target']}: lifted {extras['lifted']}, "
        f"in zone {extras['in_zone']}, went to {extras['went_to']}, lowest {extras['lowest_above_prompt_cm']} cm "
        f"over it, fingers to {extras['gripper_min_mm']} mm, closest to zone {extras['closest_to_zone']}]"
    )


# ---------------------------------------------------------------------------------------------------
# The gripper over time (the demo's plots)


@dataclass
class GripperTrace:
    """Per tick (row i = tick i, NaN where the episode had ended): the gripper setpoint the controller
    sent (NaN until its first command with a gripper column), the sim's servo setpoint (after the
    finger speed limit), both finger positions (m from the centre) and, in pick_place, the height of
    the prompted cube's bottom above the table (m)."""

    t: np.ndarray
    commanded: np.ndarray
    servo: np.ndarray
    fingers: np.ndarray
    cube_lift: np.ndarray | None = None


class GripperObserver(Observer):
    """Fills a `GripperTrace` from the environment's last gripper command and the arm's hand."""

    def __init__(self, env: ArmEnvironment, n: int, dt: float) -> None:
        self.env = env
        self.arm = env.arm
        n_f = len(getattr(self.arm, "finger_names", ()))
        task = self.arm.task
        pick = getattr(task, "name", "") == "pick_place"
        self.trace = GripperTrace(
            t=np.arange(n) * dt,
            commanded=np.full(n, np.nan),
            servo=np.full(n, np.nan),
            fingers=np.full((n, n_f), np.nan),
            cube_lift=np.full(n, np.nan) if pick else None,
        )

    def after_tick(self, tick: int, command: Any) -> bool:
        tr, arm = self.trace, self.arm
        if tick >= tr.t.size:
            return False
        g = self.env.gripper
        tr.commanded[tick] = math.nan if g is None else g
        tr.servo[tick] = float(arm.gripper_command()[0])
        tr.fingers[tick] = arm.gripper_state()[1]
        if tr.cube_lift is not None:
            tr.cube_lift[tick] = float(arm.task.cube()[2]) - float(arm.task.cube_half)
        return False


# ---------------------------------------------------------------------------------------------------
# One episode


@dataclass
class EpisodeResult:
    seed: int
    mode: str
    success: bool
    task_time_s: float
    """Sim time at which the held success began (nan on failure)."""
    duration_s: float
    ticks: int
    seam_jumps: np.ndarray
    seam_jerks: np.ndarray
    interventions: dict[str, int]
    starvation_events: int
    starved_ticks: int
    chunks: int
    waiting_ticks: int
    compute_s: np.ndarray
    delay_ticks: np.ndarray
    obs_ticks: np.ndarray
    latents: np.ndarray
    latent_preds: np.ndarray
    status: dict[str, float | int | str]
    trace: EpisodeTrace | None = None
    loop: Any = None
    final_distance_m: float = math.nan
    prompt: str = ""
    """The prompt the model was given ("" for a model without a prompt input)."""
    extras: dict[str, float | int | str] = field(default_factory=dict)
    """Per-task outcome (pick_place: `CubeObserver.outcome`); printable as key=value."""
    gripper: GripperTrace | None = None
    """The gripper over the episode (an arm with the hand); None without the hand."""
    task: str = ""
    """The sim task of the episode ("reach", "push", "pick_place")."""

    @property
    def interventions_total(self) -> int:
        return int(sum(self.interventions.values()))


class ClosedLoopEpisode:
    """One episode of the arm: an `ArmEnvironment`, the trace, seam and success observers and the
    episode stepper (runtime.episode) that either driver ticks (`tick(k)`, grid index k; row k of the
    trace is filled). The episode is `done` once success held for `settle_s` or the horizon passed."""

    def __init__(
        self,
        arm: Any,
        controller: Any,
        horizon_s: float,
        *,
        settle_s: float = SETTLE_S,
        camera: CameraThread | None = None,
        keep_images: bool = False,
        prompt: str = "",
    ) -> None:
        self.arm = arm
        self.c = controller
        self.dt = arm.control_period
        self.max_ticks = int(round(horizon_s / self.dt))
        self.camera = camera
        images: list[tuple[float, str, np.ndarray]] = []
        self.env = ArmEnvironment(
            arm, controller.config.cameras, camera=camera, images=images if keep_images else None
        )
        self.tracer = TraceObserver(
            controller, self.max_ticks + 1, len(arm.joint_names), self.dt, self.env.state, self.env.command
        )
        self.trace = self.tracer.trace
        self.trace.images = images
        self.seams = SeamObserver(controller)
        self.success = SuccessObserver(self.env, max(1, int(round(settle_s / self.dt))), self.max_ticks)
        self.prompt = prompt
        self.cubes = CubeObserver(arm) if getattr(arm.task, "name", "") == "pick_place" else None
        self.gripper = (
            GripperObserver(self.env, self.max_ticks + 1, self.dt) if getattr(arm, "has_hand", False) else None
        )
        observers: list[Any] = [self.tracer, self.seams]
        if self.gripper is not None:
            observers.append(self.gripper)
        if self.cubes is not None:
            observers.append(self.cubes)
        observers.append(self.success)
        self.stepper = EpisodeStepper(self.env, controller, observers, dt=self.dt, max_tick=self.max_ticks)
        self.done = self.stepper.done

    @property
    def last_tick(self) -> int:
        return self.stepper.last_tick

    @property
    def t0_clock(self) -> float:
        return self.stepper.t0_clock

    @property
    def success_tick(self) -> int:
        return self.success.success_tick

    def tick(self, k: int) -> None:
        self.stepper.tick(k)

    def result(
        self, seed: int, mode: str, rec: RecordingWorker, loop: Any = None, keep_trace: bool = False
    ) -> EpisodeResult:
        c = self.c
        sched = c.scheduler.counters
        n = rec.n
        obs = rec.obs_tick[:n].copy()
        arrival_tick = np.rint((rec.arrival_s[:n] - self.t0_clock) / self.dt).astype(np.int64)
        success = self.success.succeeded
        info = self.arm.task.info()
        return EpisodeResult(
            seed=seed,
            mode=mode,
            success=bool(success),
            task_time_s=self.success_tick * self.dt if success else math.nan,
            duration_s=self.last_tick * self.dt,
            ticks=self.last_tick + 1,
            seam_jumps=self.seams.jumps[: self.seams.n].copy(),
            seam_jerks=self.seams.jerks[: self.seams.n].copy(),
            interventions=dict(c.filter.interventions()),
            starvation_events=int(sched["starvation_events"]),
            starved_ticks=int(sched["starved_ticks"]),
            chunks=int(sched["chunks_accepted"]),
            waiting_ticks=int(c.waiting_ticks),
            compute_s=rec.compute_s[:n].copy(),
            delay_ticks=arrival_tick - obs,
            obs_ticks=obs,
            latents=rec.latent[:n].copy(),
            latent_preds=rec.latent_pred[:n].copy(),
            status=dict(c.status().values),
            trace=self.trace if keep_trace else None,
            loop=loop,
            final_distance_m=float(info.get("distance", math.nan)),  # type: ignore[arg-type]
            prompt=self.prompt,
            extras=self.cubes.outcome(self.prompt) if self.cubes is not None else {},
            gripper=self.gripper.trace if self.gripper is not None else None,
            task=str(getattr(self.arm.task, "name", "")),
        )


# ---------------------------------------------------------------------------------------------------
# Drivers


def surprise_summary(results: Sequence[EpisodeResult]) -> str | None:
    """One line: the surprise score range over the episodes and any slow-downs or trips (None when
    no episode ran a monitor)."""
    rows = [r.status for r in results if "surprise.peak" in r.status]
    if not rows:
        return None
    peaks = [float(st["surprise.peak"]) for st in rows]
    slow = sum(int(st.get("surprise.slowdowns", 0)) for st in rows)
    trips = sum(int(st.get("surprise.trips", 0)) for st in rows)
    slowed = sum(1 for st in rows if int(st.get("surprise.slowdowns", 0)) > 0)
    line = f"peak score {min(peaks):.1f}..{max(peaks):.1f} (z) over {len(rows)} episode(s); "
    if slow == 0 and trips == 0:
        return line + "no slow-downs"
    return line + f"{slow} slow-down(s) in {slowed} episode(s), {trips} trip(s) (brake + latch)"


def wants_hand(config: RobotConfig, contract: ModelContract, task: str) -> bool:
    """The hand scene: the task needs the hand (pick_place), or the model or the config has a gripper
    (an extra DOF mapped to a finger joint of the sim's hand)."""
    from wam_control.sim.arm import FINGER_NAMES
    from wam_control.sim.tasks import HAND_TASKS

    if task in HAND_TASKS:
        return True
    extra = {*contract.extra_actions, *contract.extra_states}
    if any(n in config.extra_dofs and config.extra_joint(n) in FINGER_NAMES for n in extra):
        return True
    return any(config.extra_joint(n) in FINGER_NAMES for n in config.extra_dofs)


def make_oracle(arm: Any, spec: RuntimeSpec) -> Any:
    """The privileged expert oracle (sim/oracle.py) for `spec`'s contract, its gripper setpoints inside
    the safety filter's envelope of the gripper joint (position margin included)."""
    import dataclasses

    from wam_control.sim.oracle import ExpertOracle

    config, contract = spec.config, spec.contract
    grip_range = None
    if contract.extra_actions:
        joint = config.extra_joint(contract.extra_actions[0])
        lim = dataclasses.replace(config, joints=(joint,)).limit_arrays()
        grip_range = (float(lim.q_min[0]), float(lim.q_max[0]))
    return ExpertOracle(arm, contract, config.control_hz, gripper_range=grip_range)


def make_arm(
    config: RobotConfig, contract: ModelContract, task: str, *, camera_hz: float, hand: bool | None = None
) -> Any:
    """The sim arm for `task` with the model's cameras and image size; `hand` None: `wants_hand`."""
    from wam_control.sim.arm import CAMERAS, SimArm

    unknown = [c for c in contract.camera_names if c not in CAMERAS]
    if unknown:
        raise ValueError(f"model cameras {unknown} are not sim cameras {list(CAMERAS)}")
    return SimArm(
        task=task,
        seed=EVAL_SEED_BASE,
        control_hz=config.control_hz,
        camera_hz=camera_hz,
        image_hw=(contract.image_height, contract.image_width),
        cameras=tuple(contract.camera_names),
        hand=wants_hand(config, contract, task) if hand is None else hand,
    )


def oracle_contract(config: RobotConfig, contract: ModelContract, task: str) -> ModelContract:
    """The contract the expert oracle plays with: `contract` (a model's: cameras, horizon, prefix), plus
    the config's gripper as an extra action and state DOF when the arm has the hand and the contract
    has none (pick_place needs it); no prompt input (the oracle knows the task)."""
    import dataclasses

    from wam_control.sim.arm import FINGER_NAMES

    grip = [n for n in config.extra_dofs if config.extra_joint(n) in FINGER_NAMES]
    out = dataclasses.replace(contract, max_instruction_tokens=0)
    if contract.extra_actions or not grip or not wants_hand(config, contract, task):
        return out
    names = (*contract.joint_names, grip[0])
    return dataclasses.replace(out, contract_version=2, action_names=names, state_names=names)


def run_lockstep_episode(
    arm: Any,
    spec: RuntimeSpec,
    model: Callable[[InferenceRequest], PolicyOutput],
    seed: int,
    *,
    mode: str = "async",
    lat_ticks: int = 1,
    horizon_s: float | None = None,
    keep_trace: bool = False,
    keep_images: bool = False,
    progress: Callable[[ClosedLoopEpisode], None] | None = None,
    prompt: str | None = None,
) -> EpisodeResult:
    """One deterministic episode on a SimClock: the controller from the runtime builder (`spec`, with
    the `mode` execution strategy), the real model called through a `ScriptedWorker` with a fixed
    latency of `lat_ticks`. The async controller gets a fresh surprise monitor when the spec runs one;
    the sync baseline gets none (see runtime.builder). A model with a prompt input gets the task's
    prompt, or `prompt` (`give_prompt`)."""
    from wam_control.runtime.builder import build
    from wam_control.runtime.replay import scripted_worker_factory

    arm.reset(seed)
    clock = SimClock(0.0)
    config = spec.config
    dt = config.control_period
    rec: RecordingWorker | None = None

    def worker(s: RuntimeSpec, clk: Clock) -> Any:
        nonlocal rec
        rec = RecordingWorker(scripted_worker_factory(model, lat_ticks)(s, clk), s.contract, clk)
        return rec

    controller = build(spec, clock, worker, execution=mode).controller
    assert rec is not None
    given = give_prompt(controller, spec.tokenizer, arm, prompt)
    controller.start()
    ep = ClosedLoopEpisode(
        arm, controller, horizon_s or arm.task.horizon_s, keep_images=keep_images, prompt=given
    )
    run_lockstep(ep.stepper, clock, dt=dt, progress=None if progress is None else (lambda _s: progress(ep)))
    controller.close()
    return ep.result(seed, mode, rec, keep_trace=keep_trace)


def run_realtime_episode(
    arm: Any,
    controller: Controller,
    rec: RecordingWorker,
    seed: int,
    *,
    horizon_s: float | None = None,
    keep_trace: bool = True,
    keep_images: bool = False,
    progress: Callable[[ClosedLoopEpisode], None] | None = None,
    tokenizer: Any = None,
    prompt: str | None = None,
) -> EpisodeResult:
    """One episode in real time: `controller` (started, its worker ready) ticked by a FixedRateLoop in
    its own thread, frames from a camera thread. Blocks until the episode is done. With `tokenizer`
    (a model with a prompt input) the controller gets the task's prompt, or `prompt` (`give_prompt`)."""
    arm.reset(seed)
    rec.clear()
    given = give_prompt(controller, tokenizer, arm, prompt)
    camera = CameraThread(arm, controller.config.cameras, controller.on_image)
    if keep_images:
        camera.keep = []
    ep = ClosedLoopEpisode(arm, controller, horizon_s or arm.task.horizon_s, camera=camera, prompt=given)
    try:
        stats = run_realtime(
            ep.stepper, controller.config.control_hz, controller.config.loop, name="wam-demo-loop",
            progress=None if progress is None else (lambda _s: progress(ep)),
        )  # fmt: skip
    finally:
        camera.close()
    if camera.error:
        raise RuntimeError(f"camera thread failed: {camera.error}")
    if camera.keep is not None:
        ep.trace.images = camera.keep
    result = ep.result(seed, "async", rec, loop=stats, keep_trace=keep_trace)
    result.status["camera.render_ms_p50"] = (
        float(np.median(camera.render_s) * 1e3) if camera.render_s else math.nan
    )
    return result


def run_lockstep_episodes(
    arm: Any,
    spec: RuntimeSpec,
    model: Callable[[InferenceRequest], PolicyOutput],
    seeds: Sequence[int],
    *,
    modes: Sequence[str] = ("async",),
    lat_ticks: int = 1,
    horizon_s: float | None = None,
    keep_trace: bool = False,
    keep_images: bool = False,
    progress: Callable[[ClosedLoopEpisode], None] | None = None,
    on_result: Callable[[int, str, EpisodeResult], None] | None = None,
    prompt: str | None = None,
) -> dict[str, list[EpisodeResult]]:
    """`run_lockstep_episode` for every seed, in every mode per seed (the same seed for each mode);
    `on_result(seed, mode, result)` after each (printing). Results per mode."""
    out: dict[str, list[EpisodeResult]] = {m: [] for m in modes}
    for seed in seeds:
        for mode in modes:
            r = run_lockstep_episode(
                arm, spec, model, seed, mode=mode, lat_ticks=lat_ticks, horizon_s=horizon_s,
                keep_trace=keep_trace, keep_images=keep_images, progress=progress, prompt=prompt,
            )  # fmt: skip
            out[mode].append(r)
            if on_result is not None:
                on_result(seed, mode, r)
    return out


def run_realtime_episodes(
    arm: Any,
    spec: RuntimeSpec,
    rec: RecordingWorker,
    seeds: Sequence[int],
    *,
    horizon_s: float | None = None,
    keep_images: bool = False,
    progress: Callable[[ClosedLoopEpisode], None] | None = None,
    on_result: Callable[[int, str, EpisodeResult], None] | None = None,
    prompt: str | None = None,
) -> list[EpisodeResult]:
    """`run_realtime_episode` for every seed on one started, ready worker (`rec` around it): a fresh
    controller (and surprise monitor) per episode from the runtime builder; a request still in flight
    at the end of an episode is waited for, so it cannot land in the next one."""
    from wam_control.runtime.builder import build

    results = []
    for seed in seeds:
        controller = build(spec, rec.clock, rec).controller
        controller.start()
        r = run_realtime_episode(
            arm, controller, rec, seed, horizon_s=horizon_s, keep_images=keep_images, progress=progress,
            tokenizer=spec.tokenizer, prompt=prompt,
        )  # fmt: skip
        controller.stop()
        if rec.busy:
            rec.wait_result(spec.config.timeouts.inference_deadline_s)
        results.append(r)
        if on_result is not None:
            on_result(seed, "async", r)
    return results


# ---------------------------------------------------------------------------------------------------
# Aggregates


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if a.size else math.nan


def summarize(results: Sequence[EpisodeResult]) -> dict[str, float]:
    """Aggregate numbers over episodes (time over successful episodes only)."""
    n = len(results)
    ok = [r for r in results if r.success]
    jumps = np.concatenate([r.seam_jumps for r in results]) if results else np.zeros(0)
    jerks = np.concatenate([r.seam_jerks for r in results]) if results else np.zeros(0)
    compute = np.concatenate([r.compute_s for r in results]) if results else np.zeros(0)
    return {
        "episodes": float(n),
        "success_rate": len(ok) / n if n else math.nan,
        "mean_time_s": float(np.mean([r.task_time_s for r in ok])) if ok else math.nan,
        "seam_jump_p99": percentile(jumps, 99),
        "seam_jerk_p99": percentile(jerks, 99),
        "interventions": float(sum(r.interventions_total for r in results)),
        "starvations": float(sum(r.starvation_events for r in results)),
        "starved_ticks": float(sum(r.starved_ticks for r in results)),
        "chunks": float(sum(r.chunks for r in results)),
        "compute_ms_p50": percentile(compute, 50) * 1e3,
        "compute_ms_p99": percentile(compute, 99) * 1e3,
    }


def latent_prediction_errors(
    results: EpisodeResult,
    contract: ModelContract,
    control_hz: float,
    encode: Callable[[int], np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every chunk and every predicted offset: (sim time the prediction is for [s], offset index,
    |latent_pred - latent observed then|, |latent at the chunk's observation - latent observed then|).

    The second distance is the "nothing changes" baseline a useful world model must beat. `encode(tick)`
    returns the model's latent of the observation at that tick (None if out of range).
    """
    s = contract.action_dt * control_hz
    ts, ks, err, base = [], [], [], []
    cache: dict[int, np.ndarray | None] = {}
    for i, t0 in enumerate(results.obs_ticks):
        for k, off in enumerate(contract.latent_offsets):
            tick = int(round(t0 + off * s))
            if tick not in cache:
                cache[tick] = encode(tick)
            later = cache[tick]
            if later is None:
                continue
            ts.append(tick / control_hz)
            ks.append(k)
            err.append(float(np.linalg.norm(results.latent_preds[i, k] - later)))
            base.append(float(np.linalg.norm(results.latents[i] - later)))
    return np.array(ts), np.array(ks, np.int64), np.array(err), np.array(base)
