# mypy: disable-error-code="type-arg,assignment,valid-type"
"""ROS 2 message types as Cyclone DDS IDL structs, named and laid out exactly as ROS 2 puts them on the wire.

Each class is `<pkg>::msg::dds_::<Type>_` with the fields of the ROS 2 message in declaration order, so
a plain Cyclone DDS participant interoperates with ROS 2 nodes (rmw_cyclonedds, rmw_fastrtps via the
DDS-RTPS wire protocol) without a ROS install. Serialization is XCDR1 (plain CDR): the test suite checks
every type byte-for-byte against the `rosbags` ROS 2 CDR serializer.

Performance: cyclonedds 11.0.1 serializes a `sequence[uint8]` element by element (a 640x480 rgb8 image
takes ~30 ms and comes back as a Python list). The octet payload of `Image.data` is therefore switched to
cyclonedds' `BytesMachine` (same wire bytes: uint32 length + raw octets) after the type object is built.
That is private API, which is why `setup.py` pins `cyclonedds==11.0.1` and `test_transport_cdr.py`
guards the bytes. `Image_.data` takes a flat bytes-like value (bytes, bytearray, or
`memoryview(array).cast("B")` of a C-contiguous uint8 array, which avoids a copy) and reads back as `bytes`.
"""

# No `from __future__ import annotations`: cyclonedds resolves the field annotations at runtime.
from dataclasses import dataclass, field
from typing import Any

from cyclonedds.idl import IdlStruct
from cyclonedds.idl import types as t


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: t.int32 = 0
    nanosec: t.uint32 = 0


@dataclass
class Duration_(IdlStruct, typename="builtin_interfaces::msg::dds_::Duration_"):
    sec: t.int32 = 0
    nanosec: t.uint32 = 0


@dataclass
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_ = field(default_factory=Time_)
    frame_id: str = ""


@dataclass
class Bool_(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False


@dataclass
class Float64_(IdlStruct, typename="std_msgs::msg::dds_::Float64_"):
    data: t.float64 = 0.0


@dataclass
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str = ""


@dataclass
class Empty_(IdlStruct, typename="std_msgs::msg::dds_::Empty_"):
    # ROS 2's IDL generator adds this member because an IDL struct may not be empty.
    structure_needs_at_least_one_member: t.uint8 = 0


@dataclass
class MultiArrayDimension_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: t.uint32 = 0
    stride: t.uint32 = 0


@dataclass
class MultiArrayLayout_(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: t.sequence[MultiArrayDimension_] = field(default_factory=list)
    data_offset: t.uint32 = 0


@dataclass
class Float64MultiArray_(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout_ = field(default_factory=MultiArrayLayout_)
    data: t.sequence[t.float64] = field(default_factory=list)


@dataclass
class JointState_(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header_ = field(default_factory=Header_)
    name: t.sequence[str] = field(default_factory=list)
    position: t.sequence[t.float64] = field(default_factory=list)
    velocity: t.sequence[t.float64] = field(default_factory=list)
    effort: t.sequence[t.float64] = field(default_factory=list)


@dataclass
class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_ = field(default_factory=Header_)
    height: t.uint32 = 0
    width: t.uint32 = 0
    encoding: str = ""
    is_bigendian: t.uint8 = 0
    step: t.uint32 = 0
    # Declared as sequence<octet> so the XTypes type object builds; serialized by BytesMachine (see top).
    data: t.sequence[t.uint8] = field(default_factory=bytes)  # type: ignore[assignment]


@dataclass
class RegionOfInterest_(IdlStruct, typename="sensor_msgs::msg::dds_::RegionOfInterest_"):
    x_offset: t.uint32 = 0
    y_offset: t.uint32 = 0
    height: t.uint32 = 0
    width: t.uint32 = 0
    do_rectify: bool = False


@dataclass
class CameraInfo_(IdlStruct, typename="sensor_msgs::msg::dds_::CameraInfo_"):
    header: Header_ = field(default_factory=Header_)
    height: t.uint32 = 0
    width: t.uint32 = 0
    distortion_model: str = ""
    d: t.sequence[t.float64] = field(default_factory=list)
    k: t.array[t.float64, 9] = field(default_factory=lambda: [0.0] * 9)
    r: t.array[t.float64, 9] = field(default_factory=lambda: [0.0] * 9)
    p: t.array[t.float64, 12] = field(default_factory=lambda: [0.0] * 12)
    binning_x: t.uint32 = 0
    binning_y: t.uint32 = 0
    roi: RegionOfInterest_ = field(default_factory=RegionOfInterest_)


@dataclass
class JointTrajectoryPoint_(IdlStruct, typename="trajectory_msgs::msg::dds_::JointTrajectoryPoint_"):
    positions: t.sequence[t.float64] = field(default_factory=list)
    velocities: t.sequence[t.float64] = field(default_factory=list)
    accelerations: t.sequence[t.float64] = field(default_factory=list)
    effort: t.sequence[t.float64] = field(default_factory=list)
    time_from_start: Duration_ = field(default_factory=Duration_)


@dataclass
class JointTrajectory_(IdlStruct, typename="trajectory_msgs::msg::dds_::JointTrajectory_"):
    header: Header_ = field(default_factory=Header_)
    joint_names: t.sequence[str] = field(default_factory=list)
    points: t.sequence[JointTrajectoryPoint_] = field(default_factory=list)


@dataclass
class KeyValue_(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus_(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: t.byte = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: t.sequence[KeyValue_] = field(default_factory=list)


@dataclass
class DiagnosticArray_(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header_ = field(default_factory=Header_)
    status: t.sequence[DiagnosticStatus_] = field(default_factory=list)


@dataclass
class Clock_(IdlStruct, typename="rosgraph_msgs::msg::dds_::Clock_"):
    clock: Time_ = field(default_factory=Time_)


# ROS 2 type name (as `ros2 topic info` prints it) -> IDL struct.
TYPES: dict[str, type[Any]] = {
    "builtin_interfaces/msg/Time": Time_,
    "builtin_interfaces/msg/Duration": Duration_,
    "std_msgs/msg/Header": Header_,
    "std_msgs/msg/Bool": Bool_,
    "std_msgs/msg/Float64": Float64_,
    "std_msgs/msg/String": String_,
    "std_msgs/msg/Empty": Empty_,
    "std_msgs/msg/MultiArrayDimension": MultiArrayDimension_,
    "std_msgs/msg/MultiArrayLayout": MultiArrayLayout_,
    "std_msgs/msg/Float64MultiArray": Float64MultiArray_,
    "sensor_msgs/msg/JointState": JointState_,
    "sensor_msgs/msg/Image": Image_,
    "sensor_msgs/msg/RegionOfInterest": RegionOfInterest_,
    "sensor_msgs/msg/CameraInfo": CameraInfo_,
    "trajectory_msgs/msg/JointTrajectoryPoint": JointTrajectoryPoint_,
    "trajectory_msgs/msg/JointTrajectory": JointTrajectory_,
    "diagnostic_msgs/msg/KeyValue": KeyValue_,
    "diagnostic_msgs/msg/DiagnosticStatus": DiagnosticStatus_,
    "diagnostic_msgs/msg/DiagnosticArray": DiagnosticArray_,
    "rosgraph_msgs/msg/Clock": Clock_,
}


def ros_type_name(cls: type[Any]) -> str:
    """`sensor_msgs::msg::dds_::JointState_` -> `sensor_msgs/msg/JointState`."""
    pkg, _msg, _dds, name = cls.__idl_typename__.split("::")
    return f"{pkg}/msg/{name[:-1]}"


def _install_bytes_machine(cls: type[Any], member: str) -> None:
    from cyclonedds.idl._machinery import BytesMachine, Machine

    idl = cls.__idl__
    idl.populate()
    for machine in (idl.v1_machine, idl.v2_machine):
        members = getattr(machine, "members_machines", None)
        if not isinstance(members, dict) or not isinstance(members.get(member), Machine):
            raise RuntimeError(
                f"cyclonedds internals changed: cannot install BytesMachine on {cls.__name__}.{member}; "
                "wam_control needs cyclonedds==11.0.1 (pip install 'wam_control[dds]')"
            )
        members[member] = BytesMachine()


_install_bytes_machine(Image_, "data")
