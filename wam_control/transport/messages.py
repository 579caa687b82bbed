"""Converters between ROS 2 messages and runtime values: one set for every message implementation.

Readers (`*_from_msg`) access fields by name only, so the same function serves rclpy messages, the
Cyclone DDS structs of `dds_types` and `rosbags` message classes. Sequences may arrive as lists,
`array.array`, numpy arrays, bytes or memoryviews; image pixels are exposed as numpy views without a copy
whenever the layout allows (tight or padded rows, any of the supported encodings).

Writers (`*_msg`) take a `MsgTypes` bundle naming the classes to build and how each field kind is
represented (rclpy wants `array.array` for bulk octets and `bytes` for a `byte` field; rosbags wants
numpy arrays; the DDS structs take lists and bytes-likes). Every field is passed by keyword, which all
three accept.

Readers raise `MessageError` naming the field and what was expected; callers count and rate-limit them
(`InputMonitor`) and never let a bad message reach the controller.
"""

from __future__ import annotations

import array
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class MessageError(ValueError):
    """A message that cannot be used: the text names the field and the problem."""


# -- time ---------------------------------------------------------------------------------------------


def stamp_to_s(stamp: Any) -> float:
    """builtin_interfaces Time/Duration -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def split_s(t: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec) with 0 <= nanosec < 1e9 (sec floors, as rclpy's Duration does)."""
    if not math.isfinite(t):
        raise ValueError(f"time {t!r} is not finite")
    ns = int(round(t * 1e9))
    sec, nanosec = divmod(ns, 1_000_000_000)
    return int(sec), int(nanosec)


# -- message class bundles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MsgTypes:
    """The message classes of one implementation plus the field representations it expects."""

    Time: Any
    Duration: Any
    Header: Any
    Bool: Any
    Float64: Any
    String: Any
    Empty: Any
    MultiArrayDimension: Any
    MultiArrayLayout: Any
    Float64MultiArray: Any
    JointState: Any
    Image: Any
    RegionOfInterest: Any
    CameraInfo: Any
    JointTrajectoryPoint: Any
    JointTrajectory: Any
    KeyValue: Any
    DiagnosticStatus: Any
    DiagnosticArray: Any
    Clock: Any
    floats: Callable[[np.ndarray], Any]
    """float64 sequence / fixed array from a 1-D float64 array."""
    octets: Callable[[np.ndarray], Any]
    """uint8 sequence from a flat C-contiguous uint8 array."""
    byte: Callable[[int], Any]
    """A ROS `byte` field (e.g. DiagnosticStatus.level)."""


def _floats_list(a: np.ndarray) -> list[float]:
    return a.tolist()  # type: ignore[no-any-return]


def _octets_memoryview(a: np.ndarray) -> memoryview:
    return np.ascontiguousarray(a).reshape(-1).data


def _octets_array(a: np.ndarray) -> array.array[int]:
    out = array.array("B")
    out.frombytes(
        np.ascontiguousarray(a).reshape(-1).data
    )  # one memcpy; the rclpy setter would iterate a list
    return out


def _floats_array(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def dds_msg_types() -> MsgTypes:
    from wam_control.transport import dds_types as d

    return MsgTypes(
        Time=d.Time_,
        Duration=d.Duration_,
        Header=d.Header_,
        Bool=d.Bool_,
        Float64=d.Float64_,
        String=d.String_,
        Empty=d.Empty_,
        MultiArrayDimension=d.MultiArrayDimension_,
        MultiArrayLayout=d.MultiArrayLayout_,
        Float64MultiArray=d.Float64MultiArray_,
        JointState=d.JointState_,
        Image=d.Image_,
        RegionOfInterest=d.RegionOfInterest_,
        CameraInfo=d.CameraInfo_,
        JointTrajectoryPoint=d.JointTrajectoryPoint_,
        JointTrajectory=d.JointTrajectory_,
        KeyValue=d.KeyValue_,
        DiagnosticStatus=d.DiagnosticStatus_,
        DiagnosticArray=d.DiagnosticArray_,
        Clock=d.Clock_,
        floats=_floats_list,
        octets=_octets_memoryview,
        byte=int,
    )


def rclpy_msg_types() -> MsgTypes:
    """The generated ROS 2 Python message classes (needs a sourced ROS 2 environment)."""
    from builtin_interfaces.msg import Duration, Time
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, JointState, RegionOfInterest
    from std_msgs.msg import (
        Bool,
        Empty,
        Float64,
        Float64MultiArray,
        Header,
        MultiArrayDimension,
        MultiArrayLayout,
        String,
    )
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    return MsgTypes(
        Time=Time,
        Duration=Duration,
        Header=Header,
        Bool=Bool,
        Float64=Float64,
        String=String,
        Empty=Empty,
        MultiArrayDimension=MultiArrayDimension,
        MultiArrayLayout=MultiArrayLayout,
        Float64MultiArray=Float64MultiArray,
        JointState=JointState,
        Image=Image,
        RegionOfInterest=RegionOfInterest,
        CameraInfo=CameraInfo,
        JointTrajectoryPoint=JointTrajectoryPoint,
        JointTrajectory=JointTrajectory,
        KeyValue=KeyValue,
        DiagnosticStatus=DiagnosticStatus,
        DiagnosticArray=DiagnosticArray,
        Clock=Clock,
        floats=_floats_list,
        octets=_octets_array,
        byte=lambda v: bytes((int(v),)),  # rclpy represents `byte` as a length-1 bytes object
    )


def rosbags_msg_types(typestore: Any) -> MsgTypes:
    """The message classes of a rosbags typestore (e.g. `get_typestore(Stores.ROS2_HUMBLE)`)."""

    def cls(name: str) -> Any:
        return typestore.types[name]

    return MsgTypes(
        Time=cls("builtin_interfaces/msg/Time"),
        Duration=cls("builtin_interfaces/msg/Duration"),
        Header=cls("std_msgs/msg/Header"),
        Bool=cls("std_msgs/msg/Bool"),
        Float64=cls("std_msgs/msg/Float64"),
        String=cls("std_msgs/msg/String"),
        Empty=cls("std_msgs/msg/Empty"),
        MultiArrayDimension=cls("std_msgs/msg/MultiArrayDimension"),
        MultiArrayLayout=cls("std_msgs/msg/MultiArrayLayout"),
        Float64MultiArray=cls("std_msgs/msg/Float64MultiArray"),
        JointState=cls("sensor_msgs/msg/JointState"),
        Image=cls("sensor_msgs/msg/Image"),
        RegionOfInterest=cls("sensor_msgs/msg/RegionOfInterest"),
        CameraInfo=cls("sensor_msgs/msg/CameraInfo"),
        JointTrajectoryPoint=cls("trajectory_msgs/msg/JointTrajectoryPoint"),
        JointTrajectory=cls("trajectory_msgs/msg/JointTrajectory"),
        KeyValue=cls("diagnostic_msgs/msg/KeyValue"),
        DiagnosticStatus=cls("diagnostic_msgs/msg/DiagnosticStatus"),
        DiagnosticArray=cls("diagnostic_msgs/msg/DiagnosticArray"),
        Clock=cls("rosgraph_msgs/msg/Clock"),
        floats=_floats_array,
        octets=lambda a: np.ascontiguousarray(a, dtype=np.uint8).reshape(-1),
        byte=int,
    )


# -- field readers ------------------------------------------------------------------------------------


def as_float64(seq: Any, field_name: str) -> np.ndarray:
    """A float64 sequence field as a 1-D float64 array (no copy for array.array('d') / float64 arrays)."""
    if isinstance(seq, np.ndarray):
        out = seq.astype(np.float64, copy=False).reshape(-1)
    elif isinstance(seq, array.array) and seq.typecode == "d":
        out = np.frombuffer(seq, dtype=np.float64) if len(seq) else np.zeros(0)
    else:
        try:
            out = np.asarray(list(seq), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"{field_name}: expected a sequence of float64 ({exc})") from None
    return out


def as_octets(data: Any, field_name: str = "data") -> np.ndarray:
    """A uint8 sequence field as a flat uint8 array, without a copy unless it arrives as a list."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise MessageError(f"{field_name}: expected uint8 data, got {data.dtype}")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        if isinstance(data, array.array) and data.typecode not in ("B", "b"):
            raise MessageError(f"{field_name}: expected an array of octets, got typecode {data.typecode!r}")
        mv = memoryview(data)
        return np.frombuffer(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv, dtype=np.uint8)
    if isinstance(data, (list, tuple)):
        try:
            return np.asarray(data, dtype=np.uint8)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageError(f"{field_name}: expected octets 0..255 ({exc})") from None
    raise MessageError(f"{field_name}: expected bytes-like data, got {type(data).__name__}")


def _byte_value(v: Any) -> int:
    if isinstance(v, (bytes, bytearray)):
        return v[0] if v else 0
    return int(v)


# -- JointState ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JointStateValue:
    names: tuple[str, ...]
    positions: np.ndarray
    velocities: np.ndarray | None
    """None when the message carries no (or non-finite) velocities."""
    efforts: np.ndarray | None
    stamp_s: float


def joint_state_from_msg(msg: Any, required: Sequence[str] | None = None) -> JointStateValue:
    """Read and check a sensor_msgs/JointState.

    Rejected: position/name count mismatch, duplicated names, a `required` joint missing, or a
    non-finite position of a required joint (of any joint when `required` is None). Joints outside
    `required` (a gripper, say) may carry anything finite or not. Non-finite or wrongly sized
    velocities/efforts make that field None rather than rejecting the positions.
    """
    names = tuple(str(n) for n in msg.name)
    positions = as_float64(msg.position, "position")
    if positions.shape[0] != len(names):
        raise MessageError(f"position has {positions.shape[0]} values for {len(names)} names")
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        raise MessageError(f"duplicated joint name(s) {', '.join(map(repr, dup))}")
    if required is not None:
        index = {n: i for i, n in enumerate(names)}
        missing = [j for j in required if j not in index]
        if missing:
            raise MessageError(f"missing joint(s) {', '.join(map(repr, missing))}")
        for j in required:
            if not math.isfinite(positions[index[j]]):
                raise MessageError(f"position of {j!r} is {positions[index[j]]}")
    elif not np.all(np.isfinite(positions)):
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(positions))]
        raise MessageError(f"non-finite position for {', '.join(map(repr, bad))}")
    return JointStateValue(
        names=names,
        positions=positions,
        velocities=_optional_floats(msg.velocity, len(names), "velocity"),
        efforts=_optional_floats(msg.effort, len(names), "effort"),
        stamp_s=stamp_to_s(msg.header.stamp),
    )


def _optional_floats(seq: Any, n: int, field_name: str) -> np.ndarray | None:
    values = as_float64(seq, field_name)
    if values.shape[0] != n or not np.all(np.isfinite(values)):
        return None
    return values


def joint_state_msg(
    T: MsgTypes,
    names: Sequence[str],
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
    efforts: np.ndarray | None = None,
    stamp_s: float = 0.0,
    frame_id: str = "",
) -> Any:
    empty = np.zeros(0)
    return T.JointState(
        header=header_msg(T, stamp_s, frame_id),
        name=list(names),
        position=T.floats(np.asarray(positions, dtype=np.float64)),
        velocity=T.floats(empty if velocities is None else np.asarray(velocities, dtype=np.float64)),
        effort=T.floats(empty if efforts is None else np.asarray(efforts, dtype=np.float64)),
    )


def time_msg(T: MsgTypes, t_s: float) -> Any:
    sec, nanosec = split_s(t_s)
    return T.Time(sec=sec, nanosec=nanosec)


def duration_msg(T: MsgTypes, t_s: float) -> Any:
    sec, nanosec = split_s(t_s)
    return T.Duration(sec=sec, nanosec=nanosec)


def header_msg(T: MsgTypes, stamp_s: float, frame_id: str = "") -> Any:
    return T.Header(stamp=time_msg(T, stamp_s), frame_id=frame_id)


# -- Image / CameraInfo -------------------------------------------------------------------------------

ENCODING_CHANNELS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


@dataclass(frozen=True)
class ImageValue:
    rgb: np.ndarray
    """(H, W, 3) uint8 RGB; a read-only view of the message buffer when `zero_copy`."""
    stamp_s: float
    encoding: str
    zero_copy: bool


def image_from_msg(msg: Any) -> ImageValue:
    """sensor_msgs/Image -> (H, W, 3) RGB view. Honours `step` (padded rows) and the encodings above."""
    encoding = str(msg.encoding)
    channels = ENCODING_CHANNELS.get(encoding)
    if channels is None:
        raise MessageError(
            f"encoding {encoding!r} not supported; expected one of {', '.join(ENCODING_CHANNELS)}"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise MessageError(f"empty image ({w}x{h})")
    if step < w * channels:
        raise MessageError(f"step {step} is smaller than width*channels = {w}*{channels}")
    data = msg.data
    copied = isinstance(data, (list, tuple))
    flat = as_octets(data)
    if flat.shape[0] != step * h:
        raise MessageError(f"data has {flat.shape[0]} bytes, expected step*height = {step}*{h} = {step * h}")
    # Rows of `step` bytes; slicing the padding off keeps it a view.
    pixels = flat.reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if encoding == "rgb8":
        rgb = pixels
    elif encoding == "bgr8":
        rgb = pixels[..., ::-1]
    elif encoding == "rgba8":
        rgb = pixels[..., :3]
    elif encoding == "bgra8":
        rgb = pixels[..., 2::-1]
    else:  # mono8: a broadcast view, three channels sharing one byte
        rgb = np.broadcast_to(pixels, (h, w, 3))
    return ImageValue(rgb=rgb, stamp_s=stamp_to_s(msg.header.stamp), encoding=encoding, zero_copy=not copied)


def image_msg(
    T: MsgTypes, pixels: np.ndarray, encoding: str = "rgb8", stamp_s: float = 0.0, frame_id: str = ""
) -> Any:
    """(H, W, C) uint8 (C matching `encoding`; (H, W) for mono8) -> sensor_msgs/Image with tight rows."""
    channels = ENCODING_CHANNELS.get(encoding)
    if channels is None:
        raise ValueError(
            f"encoding {encoding!r} not supported; expected one of {', '.join(ENCODING_CHANNELS)}"
        )
    if pixels.dtype != np.uint8:
        raise ValueError(f"image pixels must be uint8, got {pixels.dtype}")
    shape = pixels.shape if pixels.ndim == 3 else (*pixels.shape, 1)
    if len(shape) != 3 or shape[2] != channels:
        raise ValueError(
            f"pixels of shape {pixels.shape} do not match encoding {encoding} ({channels} channels)"
        )
    h, w = int(shape[0]), int(shape[1])
    flat = np.ascontiguousarray(pixels).reshape(-1)
    return T.Image(
        header=header_msg(T, stamp_s, frame_id),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * channels,
        data=T.octets(flat),
    )


@dataclass(frozen=True)
class CameraInfoValue:
    width: int
    height: int
    distortion_model: str
    d: np.ndarray
    k: np.ndarray
    """(3, 3) intrinsics."""
    p: np.ndarray
    """(3, 4) projection."""
    frame_id: str
    stamp_s: float


def camera_info_from_msg(msg: Any) -> CameraInfoValue:
    k = as_float64(msg.k, "k")
    p = as_float64(msg.p, "p")
    if k.shape[0] != 9 or p.shape[0] != 12:
        raise MessageError(f"k has {k.shape[0]} values (expected 9), p has {p.shape[0]} (expected 12)")
    return CameraInfoValue(
        width=int(msg.width),
        height=int(msg.height),
        distortion_model=str(msg.distortion_model),
        d=as_float64(msg.d, "d"),
        k=k.reshape(3, 3),
        p=p.reshape(3, 4),
        frame_id=str(msg.header.frame_id),
        stamp_s=stamp_to_s(msg.header.stamp),
    )


def camera_info_msg(
    T: MsgTypes,
    width: int,
    height: int,
    k: np.ndarray,
    stamp_s: float = 0.0,
    frame_id: str = "",
    d: Sequence[float] = (),
    distortion_model: str = "plumb_bob",
) -> Any:
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return T.CameraInfo(
        header=header_msg(T, stamp_s, frame_id),
        height=int(height),
        width=int(width),
        distortion_model=distortion_model,
        d=T.floats(np.asarray(d, dtype=np.float64)),
        k=T.floats(k.reshape(-1)),
        r=T.floats(np.eye(3).reshape(-1)),
        p=T.floats(p.reshape(-1)),
        binning_x=0,
        binning_y=0,
        roi=T.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


# -- Bool, Float64, Clock --------------------------------------------------------------------------------


def bool_from_msg(msg: Any) -> bool:
    return bool(msg.data)


def bool_msg(T: MsgTypes, value: bool) -> Any:
    return T.Bool(data=bool(value))


def float64_from_msg(msg: Any) -> float:
    return float(msg.data)


def float64_msg(T: MsgTypes, value: float) -> Any:
    return T.Float64(data=float(value))


def string_from_msg(msg: Any) -> str:
    data = msg.data
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if not isinstance(data, str):
        raise MessageError(f"std_msgs/String data must be a string, got {type(data).__name__}")
    return data


def string_msg(T: MsgTypes, value: str) -> Any:
    return T.String(data=str(value))


def clock_from_msg(msg: Any) -> float:
    return stamp_to_s(msg.clock)


def clock_msg(T: MsgTypes, t_s: float) -> Any:
    return T.Clock(clock=time_msg(T, t_s))


# -- JointTrajectory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrajectoryValue:
    joint_names: tuple[str, ...]
    stamp_s: float
    """0 means "start now" (joint_trajectory_controller's convention)."""
    times: np.ndarray
    """(N,) time_from_start of each point, s."""
    positions: np.ndarray
    """(N, D)."""
    velocities: np.ndarray | None
    accelerations: np.ndarray | None


def joint_trajectory_from_msg(msg: Any) -> TrajectoryValue:
    """Read a trajectory_msgs/JointTrajectory; rejects ragged points, non-finite values, times going back."""
    names = tuple(str(n) for n in msg.joint_names)
    d = len(names)
    if len(set(names)) != d:
        raise MessageError("duplicated joint names in joint_names")
    points = list(msg.points)
    n = len(points)
    times = np.empty(n)
    positions = np.empty((n, d))
    vel: list[np.ndarray] = []
    acc: list[np.ndarray] = []
    for i, pt in enumerate(points):
        q = as_float64(pt.positions, f"points[{i}].positions")
        if q.shape[0] != d:
            raise MessageError(f"points[{i}].positions has {q.shape[0]} values for {d} joints")
        if not np.all(np.isfinite(q)):
            raise MessageError(f"points[{i}].positions is not finite")
        positions[i] = q
        times[i] = stamp_to_s(pt.time_from_start)
        for seq, out, what in ((pt.velocities, vel, "velocities"), (pt.accelerations, acc, "accelerations")):
            v = as_float64(seq, f"points[{i}].{what}")
            if v.shape[0] not in (0, d) or not np.all(np.isfinite(v)):
                raise MessageError(f"points[{i}].{what}: expected 0 or {d} finite values, got {v.shape[0]}")
            out.append(v)
    if n > 1 and np.any(np.diff(times) <= 0):
        raise MessageError("time_from_start must increase strictly from point to point")
    return TrajectoryValue(
        joint_names=names,
        stamp_s=stamp_to_s(msg.header.stamp),
        times=times,
        positions=positions,
        velocities=np.stack(vel) if n and all(v.shape[0] == d for v in vel) else None,
        accelerations=np.stack(acc) if n and all(a.shape[0] == d for a in acc) else None,
    )


def joint_trajectory_msg(
    T: MsgTypes,
    joint_names: Sequence[str],
    times: Sequence[float] | np.ndarray,
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
    accelerations: np.ndarray | None = None,
    stamp_s: float = 0.0,
    frame_id: str = "",
) -> Any:
    """positions (N, D); velocities/accelerations (N, D) or None (sent empty)."""
    positions = np.asarray(positions, dtype=np.float64).reshape(len(times), len(joint_names))
    empty = T.floats(np.zeros(0))
    points = []
    for i, t in enumerate(times):
        points.append(
            T.JointTrajectoryPoint(
                positions=T.floats(positions[i]),
                velocities=empty
                if velocities is None
                else T.floats(np.asarray(velocities[i], dtype=np.float64)),
                accelerations=empty
                if accelerations is None
                else T.floats(np.asarray(accelerations[i], dtype=np.float64)),
                effort=empty,
                time_from_start=duration_msg(T, float(t)),
            )
        )
    return T.JointTrajectory(
        header=header_msg(T, stamp_s, frame_id), joint_names=list(joint_names), points=points
    )


# -- Float64MultiArray --------------------------------------------------------------------------------


def float64_multi_array_from_msg(msg: Any) -> np.ndarray:
    """Data honouring layout.data_offset and the dimensions (reshaped to their sizes when given)."""
    data = as_float64(msg.data, "data")
    offset = int(msg.layout.data_offset)
    sizes = [int(dim.size) for dim in msg.layout.dim]
    if not sizes:
        if offset > data.shape[0]:
            raise MessageError(f"layout.data_offset {offset} beyond {data.shape[0]} values")
        return data[offset:]
    count = int(np.prod(sizes))
    if offset + count > data.shape[0]:
        raise MessageError(f"layout says {count} values from offset {offset}, data has {data.shape[0]}")
    return data[offset : offset + count].reshape(sizes)


def float64_multi_array_msg(T: MsgTypes, values: np.ndarray, label: str | None = "joints") -> Any:
    """1-D values; `label=None` sends an empty layout (forward_command_controller reads only `data`)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(values.shape[0])
    dims = [] if label is None else [T.MultiArrayDimension(label=label, size=n, stride=n)]
    return T.Float64MultiArray(layout=T.MultiArrayLayout(dim=dims, data_offset=0), data=T.floats(values))


# -- DiagnosticArray ----------------------------------------------------------------------------------

OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class DiagnosticValue:
    level: int
    name: str
    message: str
    hardware_id: str
    values: dict[str, str]


def diagnostic_array_from_msg(msg: Any) -> tuple[float, list[DiagnosticValue]]:
    out = [
        DiagnosticValue(
            level=_byte_value(s.level),
            name=str(s.name),
            message=str(s.message),
            hardware_id=str(s.hardware_id),
            values={str(kv.key): str(kv.value) for kv in s.values},
        )
        for s in msg.status
    ]
    return stamp_to_s(msg.header.stamp), out


def format_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def diagnostic_array_msg(T: MsgTypes, stamp_s: float, statuses: Iterable[DiagnosticValue]) -> Any:
    return T.DiagnosticArray(
        header=header_msg(T, stamp_s),
        status=[
            T.DiagnosticStatus(
                level=T.byte(s.level),
                name=s.name,
                message=s.message,
                hardware_id=s.hardware_id,
                values=[T.KeyValue(key=k, value=format_value(v)) for k, v in s.values.items()],
            )
            for s in statuses
        ],
    )


# -- bad input accounting -----------------------------------------------------------------------------


class InputMonitor:
    """Counts accepted and rejected messages per topic and logs rejections at a bounded rate.

    The first rejection on a topic is logged at once; later ones at most every `log_period_s`, with
    the number suppressed in between. `check_stamp` rejects stamps going backwards per stream but
    re-synchronises after `resync_after` consecutive backward stamps (a restarted simulator or bag).
    Thread-safe enough for its purpose: counters are only ever incremented.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_period_s: float = 5.0,
        resync_after: int = 10,
    ) -> None:
        self._log = logger or log
        self._clock = clock
        self._period = log_period_s
        self._resync_after = resync_after
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.last_problem: dict[str, str] = {}
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._last_stamp: dict[str, float] = {}
        self._backwards: dict[str, int] = {}

    def accept(self, topic: str) -> None:
        self.accepted[topic] = self.accepted.get(topic, 0) + 1

    def reject(self, topic: str, problem: str) -> None:
        self.rejected[topic] = self.rejected.get(topic, 0) + 1
        self.last_problem[topic] = problem
        now = self._clock()
        last = self._last_log.get(topic)
        if last is None or now - last >= self._period:
            suppressed = self._suppressed.pop(topic, 0)
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self._log.warning("rejected message on %s: %s%s", topic, problem, more)
            self._last_log[topic] = now
        else:
            self._suppressed[topic] = self._suppressed.get(topic, 0) + 1

    def check_stamp(self, stream: str, stamp_s: float) -> str | None:
        """None if `stamp_s` does not go back in time on `stream`, else the problem."""
        last = self._last_stamp.get(stream)
        if last is not None and stamp_s < last:
            count = self._backwards.get(stream, 0) + 1
            if count < self._resync_after:
                self._backwards[stream] = count
                return f"stamp {stamp_s:.6f} s is older than the previous {last:.6f} s"
            self._log.warning("stamps on %s jumped back to %.6f s: re-synchronised", stream, stamp_s)
        self._backwards[stream] = 0
        self._last_stamp[stream] = stamp_s
        return None

    def counters(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        for topic in sorted(set(self.accepted) | set(self.rejected)):
            out[f"rx{topic}.accepted"] = self.accepted.get(topic, 0)
            out[f"rx{topic}.rejected"] = self.rejected.get(topic, 0)
            if topic in self.last_problem:
                out[f"rx{topic}.last_problem"] = self.last_problem[topic]
        return out
