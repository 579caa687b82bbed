"""ROS 2 bags of sim episodes: `BagRecorder` writes them, `read_bag` loads one into numpy arrays.

Topics and types are those a Gazebo + ros_gz_bridge + gz_ros2_control setup publishes, so a bag
plays back into the controller, opens in Foxglove, and works with `ros2 bag` (rosbag2 format 8):

| topic | type | stamp |
|---|---|---|
| /clock | rosgraph_msgs/msg/Clock | sim time |
| /joint_states | sensor_msgs/msg/JointState (name, position, velocity) | header = sim time of the measurement |
| /camera/image_raw, /wrist_camera/image_raw | sensor_msgs/msg/Image, rgb8 | header = sim time of the render |
| /camera/camera_info, /wrist_camera/camera_info | sensor_msgs/msg/CameraInfo | as the image |
| /forward_position_controller/commands | std_msgs/msg/Float64MultiArray (joint order = metadata command_joint_names, else joint_names) | bag time = sim time it was sent |
| /gripper_controller/commands | std_msgs/msg/Float64MultiArray, one value per metadata gripper_joint_names (m per finger), only with a gripper | as the command |
| /instruction | std_msgs/msg/String: the task's prompt (the controller's ~/instruction input), when given | bag time = sim time it was given |

Bag (receive) timestamps are sim time in ns, as `ros2 bag record --use-sim-time` writes them.
Storage: MCAP by default (rosbags >= 0.10 writes it), sqlite3 on request. Episode facts (task, seed,
success, rates, joint order) go in metadata.yaml `custom_data` as strings. With a hand, /joint_states
carries the finger joints after the arm's (`state_names`), the arm command stays the arm joints.

`read_bag(path) -> Demo`:
- `joint_names` tuple[str]; `joint_t` float64 [N] s; `joint_q`, `joint_qd` float64 [N, D] in
  `joint_names` order (messages are matched by name, whatever order they carry).
- `command_t` float64 [M] s; `command_q` float64 [M, D_cmd] in `command_names` order (the arm joints;
  = `joint_names` for a bag without a hand).
- `gripper_t` float64 [G] s; `gripper_q` float64 [G, len(gripper_names)] (empty without a gripper).
- `instruction_t` float64 [P] s; `instructions` list[str] (the prompts given, in order).
- `images[camera]` -> `CameraStream(t float64 [K] s, frames uint8 [K, H, W, 3], k float64 [3, 3])`,
  camera = topic namespace without the slash ("camera", "wrist_camera").
- `clock_t` float64 [C] s; `metadata` dict[str, str].
- `state_at(t)`, `command_at(t)`: zero-order hold (last sample at or before each time in `t`),
  vectorised; times before the first sample raise ValueError. Use them to align actions and joint
  states to image times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TOPIC_CLOCK = "/clock"
TOPIC_JOINT_STATES = "/joint_states"
TOPIC_COMMAND = "/forward_position_controller/commands"
TOPIC_GRIPPER_COMMAND = "/gripper_controller/commands"
TOPIC_INSTRUCTION = "/instruction"
CAMERA_NAMESPACES = {"scene": "/camera", "wrist": "/wrist_camera"}

_T_CLOCK = "rosgraph_msgs/msg/Clock"
_T_JOINT = "sensor_msgs/msg/JointState"
_T_IMAGE = "sensor_msgs/msg/Image"
_T_INFO = "sensor_msgs/msg/CameraInfo"
_T_F64 = "std_msgs/msg/Float64MultiArray"
_T_STR = "std_msgs/msg/String"

_TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@dataclass(frozen=True)
class CameraSpec:
    """What a camera_info message says about one camera."""

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    frame_id: str


def _ns(t: float) -> int:
    return int(round(t * 1e9))


class BagRecorder:
    """Write one episode. Call the `write_*` methods in time order, then `close()` (or use `with`)."""

    def __init__(
        self,
        path: str | Path,
        joint_names: tuple[str, ...] | list[str],
        cameras: dict[str, CameraSpec],
        storage: str = "mcap",
        metadata: dict[str, str] | None = None,
        state_names: tuple[str, ...] | list[str] | None = None,
        gripper_joints: tuple[str, ...] | list[str] = (),
    ) -> None:
        """`joint_names`: the arm command's joints; `state_names`: /joint_states' names (default: the
        same; with a hand, the arm's then the fingers'); `gripper_joints`: the gripper command's joints
        (a /gripper_controller/commands topic is added when given)."""
        if storage not in _STORAGE:
            raise ValueError(f"storage must be one of {list(_STORAGE)}, got {storage!r}")
        unknown = [c for c in cameras if c not in CAMERA_NAMESPACES]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; expected a subset of {list(CAMERA_NAMESPACES)}")
        self.path = Path(path)
        self.joint_names = list(joint_names)
        self._state_names = list(state_names) if state_names is not None else None
        self.gripper_joints = list(gripper_joints)
        self.cameras = dict(cameras)
        self._types = _TYPESTORE.types
        self._writer = Writer(self.path, version=8, storage_plugin=_STORAGE[storage])
        meta = {"joint_names": ",".join(self.state_names)}
        if self.state_names != self.joint_names:
            meta["command_joint_names"] = ",".join(self.joint_names)
        if self.gripper_joints:
            meta["gripper_joint_names"] = ",".join(self.gripper_joints)
        meta.update(metadata or {})
        for key, value in meta.items():
            self._writer.set_custom_data(str(key), str(value))
        self._writer.open()
        add = self._writer.add_connection
        self._c_clock = add(TOPIC_CLOCK, _T_CLOCK, typestore=_TYPESTORE)
        self._c_joint = add(TOPIC_JOINT_STATES, _T_JOINT, typestore=_TYPESTORE)
        self._c_cmd = add(TOPIC_COMMAND, _T_F64, typestore=_TYPESTORE)
        self._c_grip = (
            add(TOPIC_GRIPPER_COMMAND, _T_F64, typestore=_TYPESTORE) if self.gripper_joints else None
        )
        self._c_instr: object | None = None  # added with the first prompt
        self._c_img = {
            c: add(CAMERA_NAMESPACES[c] + "/image_raw", _T_IMAGE, typestore=_TYPESTORE) for c in cameras
        }
        self._c_info = {
            c: add(CAMERA_NAMESPACES[c] + "/camera_info", _T_INFO, typestore=_TYPESTORE) for c in cameras
        }
        self._empty = np.zeros(0)
        self._closed = False

    @property
    def state_names(self) -> list[str]:
        """/joint_states' names: `state_names` as given, else (following it) `joint_names`."""
        return self._state_names if self._state_names is not None else self.joint_names

    def set_metadata(self, key: str, value: str) -> None:
        """Add or replace a custom_data entry (e.g. the outcome, known only at the end)."""
        self._writer.set_custom_data(str(key), str(value))

    def _header(self, t: float, frame_id: str) -> object:
        ns = _ns(t)
        stamp = self._types["builtin_interfaces/msg/Time"](
            sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000
        )
        return self._types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def _write(self, conn: object, t: float, msg: object, msgtype: str) -> None:
        self._writer.write(conn, _ns(t), _TYPESTORE.serialize_cdr(msg, msgtype))  # type: ignore[arg-type]

    def write_clock(self, t: float) -> None:
        ns = _ns(t)
        stamp = self._types["builtin_interfaces/msg/Time"](
            sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000
        )
        self._write(self._c_clock, t, self._types[_T_CLOCK](clock=stamp), _T_CLOCK)

    def write_joint_state(self, t: float, q: np.ndarray, qd: np.ndarray) -> None:
        msg = self._types[_T_JOINT](
            header=self._header(t, ""),
            name=self.state_names,
            position=np.ascontiguousarray(q, dtype=np.float64),
            velocity=np.ascontiguousarray(qd, dtype=np.float64),
            effort=self._empty,
        )
        self._write(self._c_joint, t, msg, _T_JOINT)

    def write_command(self, t: float, q: np.ndarray) -> None:
        q = np.ascontiguousarray(q, dtype=np.float64)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"command must have {len(self.joint_names)} values, got shape {q.shape}")
        dim = self._types["std_msgs/msg/MultiArrayDimension"](label="", size=len(q), stride=len(q))
        layout = self._types["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
        self._write(self._c_cmd, t, self._types[_T_F64](layout=layout, data=q), _T_F64)

    def write_gripper_command(self, t: float, values: np.ndarray | float) -> None:
        """The gripper's setpoint (one value per gripper joint, or one for all) as the runtime sends it."""
        if self._c_grip is None:
            raise ValueError("write_gripper_command: this recorder has no gripper_joints")
        v = np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float64), (len(self.gripper_joints),)))
        dim = self._types["std_msgs/msg/MultiArrayDimension"](label="", size=len(v), stride=len(v))
        layout = self._types["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
        self._write(self._c_grip, t, self._types[_T_F64](layout=layout, data=v), _T_F64)

    def write_instruction(self, t: float, text: str) -> None:
        """The prompt in force from `t` on (std_msgs/String on /instruction)."""
        if self._c_instr is None:
            self._c_instr = self._writer.add_connection(TOPIC_INSTRUCTION, _T_STR, typestore=_TYPESTORE)
        self._write(self._c_instr, t, self._types[_T_STR](data=str(text)), _T_STR)

    def write_image(self, camera: str, t: float, rgb: np.ndarray) -> None:
        spec = self.cameras[camera]
        if rgb.shape != (spec.height, spec.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"image for camera {camera!r} must be uint8 ({spec.height}, {spec.width}, 3), got {rgb.dtype} {rgb.shape}"
            )
        header = self._header(t, spec.frame_id)
        img = self._types[_T_IMAGE](
            header=header,
            height=spec.height,
            width=spec.width,
            encoding="rgb8",
            is_bigendian=0,
            step=spec.width * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )
        self._write(self._c_img[camera], t, img, _T_IMAGE)
        k = np.array([spec.fx, 0.0, spec.cx, 0.0, spec.fy, spec.cy, 0.0, 0.0, 1.0])
        p = np.array([spec.fx, 0.0, spec.cx, 0.0, 0.0, spec.fy, spec.cy, 0.0, 0.0, 0.0, 1.0, 0.0])
        roi = self._types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        info = self._types[_T_INFO](
            header=header,
            height=spec.height,
            width=spec.width,
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k,
            r=np.eye(3).reshape(-1),
            p=p,
            binning_x=0,
            binning_y=0,
            roi=roi,
        )
        self._write(self._c_info[camera], t, info, _T_INFO)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class CameraStream:
    t: np.ndarray
    frames: np.ndarray
    k: np.ndarray


@dataclass
class Demo:
    """One recorded episode as numpy arrays; see the module docstring for shapes and units."""

    path: Path
    joint_names: tuple[str, ...]
    joint_t: np.ndarray
    joint_q: np.ndarray
    joint_qd: np.ndarray
    command_t: np.ndarray
    command_q: np.ndarray
    clock_t: np.ndarray
    images: dict[str, CameraStream] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    command_names: tuple[str, ...] = ()
    gripper_names: tuple[str, ...] = ()
    gripper_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gripper_q: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    instruction_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    instructions: list[str] = field(default_factory=list)

    @staticmethod
    def _hold(src_t: np.ndarray, values: np.ndarray, t: np.ndarray | float, what: str) -> np.ndarray:
        t_arr = np.asarray(t, dtype=float)
        if len(src_t) == 0:
            raise ValueError(f"{what}: the bag has no samples")
        idx = np.searchsorted(src_t, t_arr + 1e-9, side="right") - 1
        if np.any(idx < 0):
            raise ValueError(
                f"{what}: time {float(np.min(t_arr)):.6f} s is before the first sample at {src_t[0]:.6f} s"
            )
        return values[idx]

    def state_at(self, t: np.ndarray | float) -> np.ndarray:
        """Joint positions at time(s) `t` (zero-order hold)."""
        return self._hold(self.joint_t, self.joint_q, t, "state_at")

    def command_at(self, t: np.ndarray | float) -> np.ndarray:
        """Joint position command in force at time(s) `t` (zero-order hold)."""
        return self._hold(self.command_t, self.command_q, t, "command_at")

    def gripper_at(self, t: np.ndarray | float) -> np.ndarray:
        """Gripper command in force at time(s) `t` (zero-order hold); needs a bag with a gripper."""
        return self._hold(self.gripper_t, self.gripper_q, t, "gripper_at")


def _stamp_s(header: object) -> float:
    stamp = header.stamp  # type: ignore[attr-defined]
    return stamp.sec + stamp.nanosec * 1e-9


def _custom_data(path: Path) -> dict[str, str]:
    meta_file = path / "metadata.yaml"
    if not meta_file.is_file():
        return {}
    with meta_file.open() as fh:
        meta = yaml.safe_load(fh) or {}
    info = meta.get("rosbag2_bagfile_information", {}) or {}
    return {str(k): str(v) for k, v in (info.get("custom_data") or {}).items()}


def read_bag(path: str | Path) -> Demo:
    """Load a bag written by BagRecorder (or any bag with these topics) into a Demo."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    custom = _custom_data(path)
    with Reader(path) as reader:
        order = tuple(n for n in custom.get("joint_names", "").split(",") if n)
        joint_t: list[float] = []
        joint_q: list[np.ndarray] = []
        joint_qd: list[np.ndarray] = []
        cmd_t: list[float] = []
        cmd_q: list[np.ndarray] = []
        grip_t: list[float] = []
        grip_q: list[np.ndarray] = []
        instr_t: list[float] = []
        instr: list[str] = []
        clock_t: list[float] = []
        cams: dict[str, tuple[list[float], list[np.ndarray]]] = {}
        cam_k: dict[str, np.ndarray] = {}
        for conn, stamp_ns, raw in reader.messages():
            topic = conn.topic
            if conn.msgtype not in (_T_CLOCK, _T_JOINT, _T_F64, _T_IMAGE, _T_INFO, _T_STR):
                continue
            msg = _TYPESTORE.deserialize_cdr(raw, conn.msgtype)
            if conn.msgtype == _T_JOINT:
                names = tuple(msg.name)
                if not order:
                    order = names
                if names != order:
                    missing = [n for n in order if n not in names]
                    if missing:
                        raise ValueError(f"bag {path}: {topic} message lacks joints {missing}")
                    pick = [names.index(n) for n in order]
                    pos, vel = np.asarray(msg.position)[pick], np.asarray(msg.velocity)[pick]
                else:
                    pos, vel = np.asarray(msg.position), np.asarray(msg.velocity)
                joint_t.append(_stamp_s(msg.header))
                joint_q.append(pos)
                joint_qd.append(vel if len(vel) else np.full(len(order), np.nan))
            elif conn.msgtype == _T_F64 and topic == TOPIC_COMMAND:
                cmd_t.append(stamp_ns * 1e-9)
                cmd_q.append(np.asarray(msg.data, dtype=np.float64))
            elif conn.msgtype == _T_F64 and topic == TOPIC_GRIPPER_COMMAND:
                grip_t.append(stamp_ns * 1e-9)
                grip_q.append(np.asarray(msg.data, dtype=np.float64))
            elif conn.msgtype == _T_STR and topic == TOPIC_INSTRUCTION:
                instr_t.append(stamp_ns * 1e-9)
                instr.append(str(msg.data))
            elif conn.msgtype == _T_CLOCK:
                clock_t.append(msg.clock.sec + msg.clock.nanosec * 1e-9)
            elif conn.msgtype == _T_IMAGE:
                if msg.encoding != "rgb8":
                    raise ValueError(f"bag {path}: {topic} has encoding {msg.encoding!r}, expected 'rgb8'")
                name = topic.rsplit("/", 1)[0].lstrip("/")
                frame = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
                ts, frames = cams.setdefault(name, ([], []))
                ts.append(_stamp_s(msg.header))
                frames.append(frame.reshape(msg.height, msg.width, 3).copy())
            elif conn.msgtype == _T_INFO:
                cam_k.setdefault(
                    topic.rsplit("/", 1)[0].lstrip("/"), np.asarray(msg.k, dtype=float).reshape(3, 3)
                )
    d = len(order)
    command_names = tuple(n for n in custom.get("command_joint_names", "").split(",") if n) or order
    gripper_names = tuple(n for n in custom.get("gripper_joint_names", "").split(",") if n)
    images = {
        name: CameraStream(
            t=np.asarray(ts, dtype=float),
            frames=np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8),
            k=cam_k.get(name, np.full((3, 3), np.nan)),
        )
        for name, (ts, frames) in cams.items()
    }
    return Demo(
        path=path,
        joint_names=order,
        joint_t=np.asarray(joint_t, dtype=float),
        joint_q=np.asarray(joint_q, dtype=float).reshape(-1, d),
        joint_qd=np.asarray(joint_qd, dtype=float).reshape(-1, d),
        command_t=np.asarray(cmd_t, dtype=float),
        command_q=np.asarray(cmd_q, dtype=float).reshape(-1, len(command_names)),
        clock_t=np.asarray(clock_t, dtype=float),
        images=images,
        metadata=custom,
        command_names=command_names,
        gripper_names=gripper_names,
        gripper_t=np.asarray(grip_t, dtype=float),
        gripper_q=(
            np.asarray(grip_q, dtype=float).reshape(len(grip_q), -1)
            if grip_q
            else np.zeros((0, len(gripper_names)))
        ),
        instruction_t=np.asarray(instr_t, dtype=float),
        instructions=instr,
    )
