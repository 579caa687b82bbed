"""Wire-format guard: every DDS struct serializes to the bytes of rosbags' ROS 2 CDR serializer.

Each message is built twice through the same `messages` writer (once with the DDS structs, once with
rosbags classes) and both serializations must be identical; then the DDS bytes must deserialize in
rosbags and back into the DDS struct. This also guards the private BytesMachine swap on Image.data.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="cyclonedds (pip install 'wam_control[dds]') is not installed")
rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags is not installed")

from wam_control.transport import dds_types as D  # noqa: E402
from wam_control.transport import messages as M  # noqa: E402

TS = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)
RB = M.rosbags_msg_types(TS)
DDS = M.dds_msg_types()

UNICODE = "gelenk_ü_関節_🤖"


def _check(build, ros_type: str) -> bytes:
    dds_msg = build(DDS)
    rb_msg = build(RB)
    dds_bytes = dds_msg.serialize()
    rb_bytes = bytes(TS.serialize_cdr(rb_msg, ros_type))
    assert dds_bytes == rb_bytes, f"{ros_type}: CDR differs"
    assert D.ros_type_name(type(dds_msg)) == ros_type
    # Both directions of interop: rosbags reads the DDS bytes, the DDS struct reads them back.
    TS.deserialize_cdr(dds_bytes, ros_type)
    assert type(dds_msg).deserialize(dds_bytes).serialize() == dds_bytes
    return dds_bytes


@pytest.mark.parametrize("stamp", [0.0, 1.5, 1_700_000_000.123456789])
def test_joint_state(stamp: float) -> None:
    names = [f"fr3_joint{i}" for i in range(1, 8)] + [UNICODE]
    q = np.linspace(-1, 1, 8)
    _check(lambda T: M.joint_state_msg(T, names, q, q * 2, None, stamp, "base"), "sensor_msgs/msg/JointState")


def test_joint_state_empty() -> None:
    _check(lambda T: M.joint_state_msg(T, [], np.zeros(0)), "sensor_msgs/msg/JointState")


@pytest.mark.parametrize("encoding,shape", [("rgb8", (3, 5, 3)), ("mono8", (2, 3)), ("bgra8", (1, 1, 4))])
def test_image(encoding: str, shape: tuple[int, ...]) -> None:
    pixels = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    _check(lambda T: M.image_msg(T, pixels, encoding, 3.25, "cam_ü"), "sensor_msgs/msg/Image")


def test_image_empty_data() -> None:
    def build(T: M.MsgTypes):
        return T.Image(
            header=M.header_msg(T, 0.0), height=0, width=0, encoding="", is_bigendian=0, step=0,
            data=T.octets(np.zeros(0, np.uint8)),
        )  # fmt: skip

    _check(build, "sensor_msgs/msg/Image")


def test_image_large_roundtrips_as_bytes() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    raw = _check(lambda T: M.image_msg(T, pixels, "rgb8"), "sensor_msgs/msg/Image")
    back = D.Image_.deserialize(raw)
    assert isinstance(back.data, bytes)  # the BytesMachine is in place (not a list of ints)
    np.testing.assert_array_equal(M.image_from_msg(back).rgb, pixels)


def test_camera_info() -> None:
    k = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    _check(
        lambda T: M.camera_info_msg(T, 640, 480, k, 2.0, "cam", d=[0.1, -0.2, 0, 0, 0]),
        "sensor_msgs/msg/CameraInfo",
    )
    _check(
        lambda T: M.camera_info_msg(T, 1, 1, np.eye(3), d=[], distortion_model=""),
        "sensor_msgs/msg/CameraInfo",
    )


@pytest.mark.parametrize("value", [True, False])
def test_bool(value: bool) -> None:
    _check(lambda T: M.bool_msg(T, value), "std_msgs/msg/Bool")


@pytest.mark.parametrize("value", [0.0, -1.5, 3.25e300, 5e-324, float("inf"), float("nan")])
def test_float64(value: float) -> None:
    data = _check(lambda T: M.float64_msg(T, value), "std_msgs/msg/Float64")
    back = M.float64_from_msg(D.Float64_.deserialize(data))
    assert back == value or (np.isnan(back) and np.isnan(value))


@pytest.mark.parametrize("value", ["", "pick up the red cube", UNICODE])
def test_string(value: str) -> None:
    _check(lambda T: M.string_msg(T, value), "std_msgs/msg/String")


def test_empty() -> None:
    _check(lambda T: T.Empty(structure_needs_at_least_one_member=0), "std_msgs/msg/Empty")


def test_clock() -> None:
    _check(lambda T: M.clock_msg(T, 12.000000001), "rosgraph_msgs/msg/Clock")


def test_joint_trajectory() -> None:
    names = ["a", "b", UNICODE]
    q = np.arange(6.0).reshape(2, 3)
    _check(
        lambda T: M.joint_trajectory_msg(T, names, [0.002, 0.5], q, q * 0.1, q * 0.01, 0.0),
        "trajectory_msgs/msg/JointTrajectory",
    )
    _check(lambda T: M.joint_trajectory_msg(T, names, [1.0], q[:1]), "trajectory_msgs/msg/JointTrajectory")
    _check(
        lambda T: M.joint_trajectory_msg(T, [], [], np.zeros((0, 0))), "trajectory_msgs/msg/JointTrajectory"
    )


def test_float64_multi_array() -> None:
    v = np.array([0.1, -2.5, 3e300, 0.0])
    _check(lambda T: M.float64_multi_array_msg(T, v), "std_msgs/msg/Float64MultiArray")
    _check(lambda T: M.float64_multi_array_msg(T, v, label=None), "std_msgs/msg/Float64MultiArray")
    _check(
        lambda T: M.float64_multi_array_msg(T, np.zeros(0), label=UNICODE), "std_msgs/msg/Float64MultiArray"
    )


def test_diagnostic_array() -> None:
    statuses = [
        M.DiagnosticValue(
            M.WARN, "wam_controller: control", "starved ü", "fr3", {"rate_hz": 499.5, UNICODE: "x"}
        ),
        M.DiagnosticValue(M.OK, "empty", "", "", {}),
    ]
    _check(lambda T: M.diagnostic_array_msg(T, 5.0, statuses), "diagnostic_msgs/msg/DiagnosticArray")
    _check(lambda T: M.diagnostic_array_msg(T, 0.0, []), "diagnostic_msgs/msg/DiagnosticArray")


def test_every_dds_type_has_a_rosbags_twin() -> None:
    for ros_type, cls in D.TYPES.items():
        assert ros_type in TS.types, ros_type
        assert D.ros_type_name(cls) == ros_type
        assert cls.__idl_typename__.split("::")[2] == "dds_"
