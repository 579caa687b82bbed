"""Message <-> value converters: duck typing across implementations, image layouts, bad input."""

from __future__ import annotations

import array
import logging
from types import SimpleNamespace as NS

import numpy as np
import pytest

from wam_control.transport import messages as M


def _stamp(t: float) -> NS:
    sec, nanosec = M.split_s(t)
    return NS(sec=sec, nanosec=nanosec)


def _js(names, pos, vel=(), stamp=0.0) -> NS:
    return NS(
        header=NS(stamp=_stamp(stamp), frame_id=""), name=list(names), position=pos, velocity=vel, effort=[]
    )


def _img(pixels_rows: np.ndarray, h: int, w: int, encoding: str, step: int, data_kind: str = "bytes") -> NS:
    raw = pixels_rows.tobytes()
    data = {
        "bytes": raw,
        "array": array.array("B", raw),
        "numpy": np.frombuffer(raw, np.uint8),
        "list": list(raw),
        "memoryview": memoryview(raw),
    }[data_kind]
    return NS(
        header=NS(stamp=_stamp(1.0), frame_id=""),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=data,
    )


# -- time ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 1e-9, 0.999999999, 1.5, -0.25, 1_700_000_000.5])
def test_split_s_roundtrip(t: float) -> None:
    sec, ns = M.split_s(t)
    assert 0 <= ns < 1_000_000_000
    assert abs(sec + ns * 1e-9 - t) < 1e-6


def test_split_s_rejects_nan() -> None:
    with pytest.raises(ValueError, match="not finite"):
        M.split_s(float("nan"))


# -- JointState ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [list, lambda v: array.array("d", v), lambda v: np.asarray(v, np.float64)])
def test_joint_state_reads_any_sequence_kind(seq) -> None:
    msg = _js(["b", "a", "gripper"], seq([2.0, 1.0, float("nan")]), seq([0.2, 0.1, 0.0]), stamp=3.5)
    v = M.joint_state_from_msg(msg, required=["a", "b"])
    assert v.names == ("b", "a", "gripper")
    np.testing.assert_array_equal(v.positions[:2], [2.0, 1.0])
    np.testing.assert_array_equal(v.velocities, [0.2, 0.1, 0.0])
    assert v.stamp_s == pytest.approx(3.5)


@pytest.mark.parametrize(
    "msg,required,problem",
    [
        (_js(["a", "b"], [1.0]), None, "1 values for 2 names"),
        (_js(["a", "a"], [1.0, 2.0]), None, "duplicated joint name.*'a'"),
        (_js(["a"], [1.0]), ["a", "b"], "missing joint.*'b'"),
        (_js(["a", "b"], [1.0, float("nan")]), ["a", "b"], "position of 'b' is nan"),
        (_js(["a", "b"], [float("inf"), 0.0]), None, "non-finite position for 'a'"),
    ],
)
def test_joint_state_rejects(msg, required, problem) -> None:
    with pytest.raises(M.MessageError, match=problem):
        M.joint_state_from_msg(msg, required=required)


def test_joint_state_drops_unusable_velocities() -> None:
    assert M.joint_state_from_msg(_js(["a"], [1.0], [float("nan")])).velocities is None
    assert M.joint_state_from_msg(_js(["a"], [1.0], [1.0, 2.0])).velocities is None
    assert M.joint_state_from_msg(_js(["a"], [1.0], [])).velocities is None


# -- Image --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 255, (4, 5, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, pad: int) -> tuple[np.ndarray, int]:
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    out = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    return out, out.shape[1]


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("data_kind", ["bytes", "array", "numpy", "memoryview", "list"])
@pytest.mark.parametrize(
    "encoding,make",
    [
        ("rgb8", lambda p: p),
        ("bgr8", lambda p: p[..., ::-1]),
        ("rgba8", lambda p: np.concatenate([p, np.full(p.shape[:2] + (1,), 9, np.uint8)], axis=2)),
        ("bgra8", lambda p: np.concatenate([p[..., ::-1], np.full(p.shape[:2] + (1,), 9, np.uint8)], axis=2)),
    ],
)
def test_image_encodings_and_stride(encoding, make, pad, data_kind) -> None:
    wire = np.ascontiguousarray(make(RGB))
    rows, step = _padded(wire, pad)
    v = M.image_from_msg(_img(rows, 4, 5, encoding, step, data_kind))
    assert v.rgb.shape == (4, 5, 3)
    np.testing.assert_array_equal(v.rgb, RGB)
    assert v.zero_copy == (data_kind != "list")


def test_image_zero_copy_shares_the_message_buffer() -> None:
    buf = bytearray(RGB.tobytes())
    msg = _img(RGB.reshape(4, -1), 4, 5, "rgb8", 15, "bytes")
    msg.data = buf
    v = M.image_from_msg(msg)
    buf[0] = (int(RGB[0, 0, 0]) + 1) % 256
    assert v.rgb[0, 0, 0] == buf[0]


def test_image_mono8() -> None:
    gray = RNG.integers(0, 255, (3, 2), dtype=np.uint8)
    rows, step = _padded(gray, 2)
    v = M.image_from_msg(_img(rows, 3, 2, "mono8", step))
    assert v.rgb.shape == (3, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(v.rgb[..., c], gray)


@pytest.mark.parametrize(
    "h,w,encoding,step,nbytes,problem",
    [
        (4, 5, "yuv422", 10, 40, "encoding 'yuv422' not supported"),
        (4, 5, "rgb8", 14, 56, "step 14 is smaller than width\\*channels"),
        (4, 5, "rgb8", 15, 59, "59 bytes, expected step\\*height = 15\\*4 = 60"),
        (4, 5, "rgb8", 15, 61, "61 bytes"),
        (0, 5, "rgb8", 15, 0, "empty image"),
    ],
)
def test_image_rejects(h, w, encoding, step, nbytes, problem) -> None:
    msg = _img(np.zeros((1, nbytes), np.uint8), h, w, encoding, step)
    with pytest.raises(M.MessageError, match=problem):
        M.image_from_msg(msg)


def test_image_msg_roundtrip_through_reader() -> None:
    from wam_control.transport.messages import MsgTypes

    T = MsgTypes(**{f: NS for f in MsgTypes.__dataclass_fields__ if f not in ("floats", "octets", "byte")},
                 floats=list, octets=bytes, byte=int)  # fmt: skip
    for encoding, pix in (("rgb8", RGB), ("mono8", RGB[..., 0])):
        msg = M.image_msg(T, pix, encoding, 2.0, "cam")
        back = M.image_from_msg(msg)
        assert back.stamp_s == 2.0 and msg.step == 5 * (3 if encoding == "rgb8" else 1)
        np.testing.assert_array_equal(back.rgb[..., 0], pix if pix.ndim == 2 else pix[..., 0])
    with pytest.raises(ValueError, match="do not match encoding"):
        M.image_msg(T, RGB, "rgba8")


# -- CameraInfo, Bool, Clock, Float64MultiArray -------------------------------------------------------


def test_camera_info_reads_matrices() -> None:
    msg = NS(header=NS(stamp=_stamp(1.0), frame_id="cam"), width=640, height=480, distortion_model="plumb_bob",
             d=[0.1], k=list(range(9)), r=[0.0] * 9, p=list(range(12)))  # fmt: skip
    v = M.camera_info_from_msg(msg)
    assert v.k[2, 1] == 7 and v.p[2, 3] == 11 and v.frame_id == "cam"
    msg.k = [1.0] * 8
    with pytest.raises(M.MessageError, match="k has 8 values"):
        M.camera_info_from_msg(msg)


def test_bool_and_clock() -> None:
    assert M.bool_from_msg(NS(data=True)) is True
    assert M.clock_from_msg(NS(clock=_stamp(12.5))) == pytest.approx(12.5)


def test_float64_multi_array_layout() -> None:
    dim = [NS(label="rows", size=2, stride=6), NS(label="cols", size=3, stride=3)]
    msg = NS(layout=NS(dim=dim, data_offset=1), data=[9.0, 1, 2, 3, 4, 5, 6, 8])
    np.testing.assert_array_equal(M.float64_multi_array_from_msg(msg), [[1, 2, 3], [4, 5, 6]])
    msg.layout.data_offset = 3
    with pytest.raises(M.MessageError, match="6 values from offset 3"):
        M.float64_multi_array_from_msg(msg)
    flat = NS(layout=NS(dim=[], data_offset=0), data=array.array("d", [1.0, 2.0]))
    np.testing.assert_array_equal(M.float64_multi_array_from_msg(flat), [1.0, 2.0])


# -- JointTrajectory ----------------------------------------------------------------------------------


def _pt(q, t, v=()) -> NS:
    return NS(positions=q, velocities=v, accelerations=[], effort=[], time_from_start=_stamp(t))


def test_joint_trajectory_reader() -> None:
    msg = NS(header=NS(stamp=_stamp(0.0)), joint_names=["a", "b"],
             points=[_pt([1.0, 2.0], 0.002, [0.1, 0.2]), _pt([1.5, 2.5], 0.004, [0.0, 0.0])])  # fmt: skip
    v = M.joint_trajectory_from_msg(msg)
    np.testing.assert_allclose(v.times, [0.002, 0.004])
    assert v.positions.shape == (2, 2) and v.velocities is not None and v.accelerations is None
    msg.points[1].time_from_start = _stamp(0.001)
    with pytest.raises(M.MessageError, match="increase strictly"):
        M.joint_trajectory_from_msg(msg)
    msg.points = [_pt([1.0], 0.1)]
    with pytest.raises(M.MessageError, match="1 values for 2 joints"):
        M.joint_trajectory_from_msg(msg)


# -- InputMonitor -------------------------------------------------------------------------------------


def test_input_monitor_rate_limits_logs_and_counts(caplog) -> None:
    now = [0.0]
    mon = M.InputMonitor(logger=logging.getLogger("t"), clock=lambda: now[0], log_period_s=5.0)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(100):
            mon.reject("/joint_states", "position of 'a' is nan")
            now[0] += 0.01
        now[0] = 10.0
        mon.reject("/joint_states", "missing joint(s) 'b'")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "/joint_states" in lines[0] and "nan" in lines[0]
    assert "99 more" in lines[1] and "missing joint" in lines[1]
    c = mon.counters()
    assert c["rx/joint_states.rejected"] == 101
    assert c["rx/joint_states.last_problem"] == "missing joint(s) 'b'"


def test_input_monitor_stamps_backwards_then_resync() -> None:
    mon = M.InputMonitor(resync_after=3)
    assert mon.check_stamp("js", 10.0) is None
    assert mon.check_stamp("js", 10.0) is None  # equal stamps (unstamped publishers) are fine
    assert "older than the previous" in (mon.check_stamp("js", 9.0) or "")
    assert mon.check_stamp("js", 9.1) is not None
    assert mon.check_stamp("js", 9.2) is None  # third in a row: a restarted source, follow it
    assert mon.check_stamp("js", 9.3) is None
    assert mon.check_stamp("other", 1.0) is None
