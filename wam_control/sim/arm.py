"""MuJoCo FR3-like 7-DoF arm: the simulator other layers drive.

API (everything a controller, demo, recorder or bridge needs)::

    from wam_control.sim.arm import SimArm
    arm = SimArm(task="reach", seed=0, control_hz=500.0, camera_hz=15.0, image_hw=(96, 96),
                 cameras=("scene",))
    arm.reset(seed=3)                   # new episode; same seed -> same initial state
    rendered = arm.step(q_target)       # advance one control period; returns the cameras rendered
    names, q, qd = arm.joint_state()    # joint names fr3_joint1..7, positions rad, velocities rad/s
    image, stamp = arm.frame("scene")   # latest rendered frame (uint8 HxWx3) and its sim time
    image = arm.render("wrist")         # render now, whatever the camera rate
    arm.time                            # sim time in seconds (0 at reset)
    arm.task.success(), arm.task.info() # task outcome and state (see wam_control.sim.tasks)

Command semantics: `q_target` (7 joint positions, rad, joint order of `JOINT_NAMES`) is what a
ros2_control forward position controller would receive. Each joint has a stiff position servo
(kp/kv in assets/fr3_scene.xml, effort-limited to the FR3 torques, gravity compensated), so the
measured position follows the command with ~20 ms lag, like a position interface with a tuned PD.
Targets outside the joint range are clamped by the actuator; non-finite or wrongly sized targets are
rejected with ValueError.

Cameras render only when a frame is due (every 1/camera_hz of sim time, on a fixed grid from the
reset) into buffers allocated once. Returned images are read-only views of those buffers, valid until
that camera renders again: copy them to keep them. `camera_hz=0` renders only on explicit `render()`.

Disturbance hooks (for the surprise monitor): `teleport_object(pos)`, `move_camera(delta)`,
`set_occluder(on)`, `block_joint(j, on)`, and with the hand `lose_grip(on)` (the fingers driven open
whatever the setpoint: a grasped cube falls).

Hand (`hand=True`, the default for task "pick_place"): the scene is assets/fr3_hand_scene.xml, the
same arm and cameras with a parallel two-finger gripper like the Franka Hand instead of the pusher rod
(docs/sim.md). Without it the scene is assets/fr3_scene.xml, byte for byte what the bundled models were
trained on. With the hand::

    arm.finger_names                    # ("fr3_finger_joint1", "fr3_finger_joint2")
    arm.step(q_target, gripper=0.04)    # finger setpoint, m from the centre per finger (0 = closed,
                                        # 0.04 = open); one value for both or one per finger; None keeps it
    arm.set_gripper(0.0)                # the same, without stepping
    names, q, qd = arm.gripper_state()  # the finger joints (m, m/s)
    names, q, qd = arm.all_joint_state()  # arm joints then finger joints: what /joint_states carries

`joint_state()` stays the 7 arm joints either way. The finger setpoints are clamped to the finger range
and move at most FINGER_MAX_SPEED (0.05 m/s, the Franka Hand's finger speed) towards the commanded one;
the finger servos are force-limited to 70 N, so a closed command on an object squeezes it.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import mujoco
import numpy as np

from wam_control.sim.gl import OffscreenRenderer, RenderUnavailableError
from wam_control.sim.tasks import HAND_TASKS, HOME_Q, Task, make_task

__all__ = [
    "CAMERAS",
    "DEFAULT_CONTROL_HZ",
    "FINGER_MAX_SPEED",
    "FINGER_NAMES",
    "GRIPPER_OPEN",
    "HOME_Q",
    "JOINT_NAMES",
    "RenderUnavailableError",
    "SimArm",
    "asset_path",
]

JOINT_NAMES: tuple[str, ...] = tuple(f"fr3_joint{i}" for i in range(1, 8))
CAMERAS: tuple[str, ...] = ("scene", "wrist")
DEFAULT_CONTROL_HZ = 500.0  # control_hz of config/fr3.yaml
NOMINAL_PHYSICS_DT = 0.002
FINGER_NAMES: tuple[str, ...] = ("fr3_finger_joint1", "fr3_finger_joint2")
GRIPPER_OPEN = 0.04  # m per finger: Franka Hand max opening 80 mm
FINGER_MAX_SPEED = 0.05  # m/s per finger: Franka Hand finger speed
HAND_ASSET = "fr3_hand_scene.xml"


def asset_path(name: str = "fr3_scene.xml") -> Path:
    return Path(str(resources.files("wam_control.sim") / "assets" / name))


class SimArm:
    """One simulated FR3-like arm with a task; see the module docstring for the API."""

    def __init__(
        self,
        task: str = "reach",
        seed: int = 0,
        control_hz: float = DEFAULT_CONTROL_HZ,
        camera_hz: float = 15.0,
        image_hw: tuple[int, int] = (96, 96),
        cameras: tuple[str, ...] | list[str] = ("scene",),
        hand: bool | None = None,
    ) -> None:
        if not (math.isfinite(control_hz) and control_hz > 0):
            raise ValueError(f"control_hz must be a positive number, got {control_hz!r}")
        if not (math.isfinite(camera_hz) and camera_hz >= 0):
            raise ValueError(f"camera_hz must be >= 0 (0 = render on request only), got {camera_hz!r}")
        height, width = (int(v) for v in image_hw)
        if height < 8 or width < 8 or height > 2048 or width > 2048:
            raise ValueError(f"image_hw must be two sizes in [8, 2048], got {image_hw!r}")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; expected a subset of {list(CAMERAS)}")

        self.has_hand = task in HAND_TASKS if hand is None else bool(hand)
        if task in HAND_TASKS and not self.has_hand:
            raise ValueError(f"task {task!r} needs the hand (hand=True)")
        self.model = mujoco.MjModel.from_xml_path(
            str(asset_path(HAND_ASSET if self.has_hand else "fr3_scene.xml"))
        )
        # An integer number of physics steps per control period keeps the control grid exact.
        self.control_hz = float(control_hz)
        self.control_period = 1.0 / self.control_hz
        self.substeps = max(1, round(self.control_period / NOMINAL_PHYSICS_DT))
        self.model.opt.timestep = self.control_period / self.substeps
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, width)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, height)
        self.data = mujoco.MjData(self.model)

        self.joint_names = JOINT_NAMES
        self._qadr = np.array([self.model.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._dadr = np.array([self.model.joint(n).dofadr[0] for n in JOINT_NAMES])
        self._act = np.array([self.model.actuator(n).id for n in JOINT_NAMES])
        self.joint_range = np.array([self.model.joint(n).range for n in JOINT_NAMES])
        self._ee_site = self.model.site("ee").id
        self._occluder = self.model.geom("occluder").id
        self.finger_names: tuple[str, ...] = FINGER_NAMES if self.has_hand else ()
        self._fqadr = np.array([self.model.joint(n).qposadr[0] for n in self.finger_names], dtype=int)
        self._fdadr = np.array([self.model.joint(n).dofadr[0] for n in self.finger_names], dtype=int)
        self._fact = np.array([self.model.actuator(n).id for n in self.finger_names], dtype=int)
        self.finger_range = np.array([self.model.joint(n).range for n in self.finger_names]).reshape(-1, 2)
        self._grip_target = np.full(len(self.finger_names), GRIPPER_OPEN)
        self._grip_cmd = self._grip_target.copy()
        self._grip_lost = False

        self.image_hw = (height, width)
        self.camera_hz = float(camera_hz)
        self.cameras = tuple(cameras)
        self._cam_ids = {c: self.model.camera(c).id for c in CAMERAS}
        self._frames = {c: np.zeros((height, width, 3), np.uint8) for c in CAMERAS}
        self._views = {c: self._frames[c].view() for c in CAMERAS}
        for v in self._views.values():
            v.flags.writeable = False
        self._stamps = dict.fromkeys(CAMERAS, -math.inf)
        self._next_frame_t = 0.0
        self._renderer: OffscreenRenderer | None = None
        self._rendered_all = self.cameras
        self._rendered_none: tuple[str, ...] = ()

        self._cmd = np.zeros(len(JOINT_NAMES))
        self._blocked = np.zeros(len(JOINT_NAMES), dtype=bool)
        self._held = np.zeros(len(JOINT_NAMES))
        self.seed = int(seed)
        self.task: Task = make_task(task, self)
        self.reset(seed)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode. `seed=None` uses the next seed after the current one."""
        self.seed = self.seed + 1 if seed is None else int(seed)
        rng = np.random.default_rng(self.seed)
        mujoco.mj_resetData(self.model, self.data)
        self._blocked[:] = False
        self._grip_lost = False
        if self.has_hand:  # fingers start open (no draw from rng: the task's draws stay as they are)
            self.data.qpos[self._fqadr] = GRIPPER_OPEN
            self._grip_target[:] = GRIPPER_OPEN
            self._grip_cmd[:] = GRIPPER_OPEN
            self.data.ctrl[self._fact] = GRIPPER_OPEN
        self.task.reset(rng)
        self.data.ctrl[self._act] = self.data.qpos[self._qadr]
        self._cmd[:] = self.data.qpos[self._qadr]
        mujoco.mj_forward(self.model, self.data)
        self._stamps = dict.fromkeys(CAMERAS, -math.inf)
        self._next_frame_t = 0.0
        if self.cameras and self.camera_hz > 0:
            self._render_due()

    def step(self, q_target: np.ndarray, gripper: float | np.ndarray | None = None) -> tuple[str, ...]:
        """Apply `q_target` (and `gripper`, with the hand) and advance one control period; return the
        cameras rendered this step."""
        q = np.asarray(q_target, dtype=float)
        if q.shape != (len(JOINT_NAMES),):
            raise ValueError(
                f"q_target must have shape ({len(JOINT_NAMES)},) in order {JOINT_NAMES}, got {q.shape}"
            )
        if not np.all(np.isfinite(q)):
            raise ValueError(f"q_target must be finite, got {q.tolist()}")
        if gripper is not None:  # after the arm's checks: a rejected step changes nothing
            self.set_gripper(gripper)
        np.copyto(self._cmd, q)
        np.copyto(self._cmd, self._held, where=self._blocked)
        self.data.ctrl[self._act] = self._cmd
        if self.has_hand:
            step = FINGER_MAX_SPEED * self.control_period
            self._grip_cmd += np.clip(self._grip_target - self._grip_cmd, -step, step)
            self.data.ctrl[self._fact] = self.finger_range[:, 1] if self._grip_lost else self._grip_cmd
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        if self.cameras and self.camera_hz > 0 and self.data.time >= self._next_frame_t - 1e-9:
            return self._render_due()
        return self._rendered_none

    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """(joint names, positions rad, velocities rad/s); the arrays are fresh copies."""
        return JOINT_NAMES, self.data.qpos[self._qadr].copy(), self.data.qvel[self._dadr].copy()

    def set_gripper(self, target: float | np.ndarray) -> None:
        """Finger setpoint (m from the centre, per finger): one value for both fingers or one each.
        Clamped to the finger range; approached at FINGER_MAX_SPEED from the next step on."""
        if not self.has_hand:
            raise ValueError("set_gripper: this arm has no hand (SimArm(..., hand=True))")
        g = np.asarray(target, dtype=float).reshape(-1)
        if g.shape not in ((1,), (len(FINGER_NAMES),)) or not np.all(np.isfinite(g)):
            raise ValueError(
                f"gripper target must be 1 or {len(FINGER_NAMES)} finite values (m per finger), got {target!r}"
            )
        self._grip_target[:] = np.clip(g, self.finger_range[:, 0], self.finger_range[:, 1])

    def gripper_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """(finger joint names, positions m, velocities m/s); empty without the hand."""
        return self.finger_names, self.data.qpos[self._fqadr].copy(), self.data.qvel[self._fdadr].copy()

    def gripper_command(self) -> np.ndarray:
        """The finger setpoints the servos track now (after the speed limit), m per finger."""
        return self._grip_cmd.copy()

    def all_joint_state(self) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
        """Arm joints then finger joints (what /joint_states carries); the arm's alone without the hand."""
        _, q, qd = self.joint_state()
        if not self.has_hand:
            return JOINT_NAMES, q, qd
        _, fq, fqd = self.gripper_state()
        return JOINT_NAMES + self.finger_names, np.concatenate([q, fq]), np.concatenate([qd, fqd])

    def command(self) -> np.ndarray:
        """The position command the servos are tracking now (after clamping by blocked joints)."""
        return self._cmd.copy()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool-centre-point position (m, world) and rotation matrix (3x3) from the last step."""
        return self.data.site_xpos[self._ee_site].copy(), self.data.site_xmat[self._ee_site].reshape(
            3, 3
        ).copy()

    # ------------------------------------------------------------------ cameras
    def _render_into(self, camera: str) -> None:
        if self._renderer is None:
            self._renderer = OffscreenRenderer(self.model, self.image_hw[0], self.image_hw[1])
        self._renderer.render(self.data, self._cam_ids[camera], self._frames[camera])
        self._stamps[camera] = self.data.time

    def _render_due(self) -> tuple[str, ...]:
        for camera in self.cameras:
            self._render_into(camera)
        period = 1.0 / self.camera_hz
        # Stay on the reset-anchored grid; skip (never burst) frames if a step jumped past several.
        self._next_frame_t = (math.floor(self.data.time / period + 1e-6) + 1) * period
        return self._rendered_all

    def render(self, camera: str = "scene") -> np.ndarray:
        """Render `camera` now and return its (read-only, reused) uint8 HxWx3 buffer."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; expected one of {list(CAMERAS)}")
        self._render_into(camera)
        return self._views[camera]

    def frame(self, camera: str = "scene") -> tuple[np.ndarray, float]:
        """Latest frame of `camera` and its sim-time stamp (-inf if never rendered)."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; expected one of {list(CAMERAS)}")
        return self._views[camera], self._stamps[camera]

    def camera_intrinsics(self, camera: str = "scene") -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the pinhole model MuJoCo renders with (square pixels)."""
        height, width = self.image_hw
        fovy = math.radians(float(self.model.cam_fovy[self._cam_ids[camera]]))
        f = 0.5 * height / math.tan(0.5 * fovy)
        return f, f, 0.5 * width, 0.5 * height

    def project(self, point: np.ndarray, camera: str = "scene") -> tuple[float, float, float]:
        """Pixel (u, v) and depth (m) of a world point in `camera`; depth <= 0 means behind it."""
        cid = self._cam_ids[camera]
        rel = np.asarray(point, float) - self.data.cam_xpos[cid]
        rot = self.data.cam_xmat[cid].reshape(3, 3)
        x, y, z = rot.T @ rel  # camera frame: x right, y up, looking along -z
        fx, fy, cx, cy = self.camera_intrinsics(camera)
        depth = -z
        if depth <= 1e-9:
            return math.nan, math.nan, float(depth)
        return cx + fx * x / depth, cy - fy * y / depth, float(depth)

    # ------------------------------------------------------------------ disturbances
    def teleport_object(self, pos: np.ndarray) -> None:
        """Move the task's object (reach target / push puck) to `pos` (world, m) instantly."""
        p = np.asarray(pos, dtype=float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"teleport_object: pos must be 3 finite numbers, got {pos!r}")
        self.task.teleport(p)
        mujoco.mj_forward(self.model, self.data)

    def move_camera(self, delta: np.ndarray, camera: str = "scene") -> None:
        """Shift a camera by `delta` (m, in its parent body's frame: world for 'scene')."""
        d = np.asarray(delta, dtype=float)
        if d.shape != (3,) or not np.all(np.isfinite(d)):
            raise ValueError(f"move_camera: delta must be 3 finite numbers, got {delta!r}")
        self.model.cam_pos[self._cam_ids[camera]] += d
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    def set_occluder(self, on: bool) -> None:
        """Show or hide a dark panel between the scene camera and the workspace."""
        self.model.geom_rgba[self._occluder, 3] = 1.0 if on else 0.0

    def block_joint(self, joint: int | str, on: bool) -> None:
        """Freeze a joint where it is now (its servo ignores commands), or release it."""
        j = JOINT_NAMES.index(joint) if isinstance(joint, str) and joint in JOINT_NAMES else joint
        if not isinstance(j, int) or not 0 <= j < len(JOINT_NAMES):
            raise ValueError(f"block_joint: unknown joint {joint!r}; expected 0..6 or one of {JOINT_NAMES}")
        if on and not self._blocked[j]:
            self._held[j] = self.data.qpos[self._qadr[j]]
        self._blocked[j] = bool(on)

    def lose_grip(self, on: bool) -> None:
        """Disturbance: the hand loses its grip. While on, both finger servos are driven to the open
        limit whatever the gripper setpoint (no speed limit: a fault, not a command), so a grasped object
        falls; off: they track the setpoint again, from where the commands have left it. `reset` ends it."""
        if not self.has_hand:
            raise ValueError("lose_grip: this arm has no hand (SimArm(..., hand=True))")
        self._grip_lost = bool(on)

    @property
    def grip_lost(self) -> bool:
        """Whether `lose_grip` holds the fingers open now."""
        return self._grip_lost

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Free the GL context (do this before interpreter exit: PyOpenGL breaks in late __del__)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
