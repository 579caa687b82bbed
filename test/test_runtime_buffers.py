"""ObservationBuffers: name matching, rejections with reasons, stamps, staleness, resize, snapshots."""

from __future__ import annotations

import math
import threading
import tracemalloc

import numpy as np
import pytest

from wam_control.config.schema import TimeoutsConfig
from wam_control.runtime.buffers import ObservationBuffers, ObservationSnapshot
from wam_control.runtime.clock import SimClock

JOINTS = ("a1", "a2", "a3")
TIMEOUTS = TimeoutsConfig(joint_state_s=0.05, image_s=0.5)


def make(cameras: tuple[str, ...] = ("scene",), hw: tuple[int, int] = (4, 6), resize: str = "nearest"):
    clock = SimClock(10.0)
    buf = ObservationBuffers(JOINTS, cameras, hw, clock, TIMEOUTS, resize=resize)  # type: ignore[arg-type]
    snap = ObservationSnapshot(len(cameras), hw, len(JOINTS))
    return clock, buf, snap


def image(hw: tuple[int, int], value: int = 7) -> np.ndarray:
    return np.full((*hw, 3), value, np.uint8)


def test_joint_state_matched_by_name_extra_ignored_reordered() -> None:
    clock, buf, _ = make()
    assert buf.joint_positions() == (None, math.inf)
    names = ["gripper", "a3", "a1", "a2"]
    assert buf.put_joint_state(names, [9.0, 3.0, 1.0, 2.0], [0.9, 0.3, 0.1, 0.2], 1.0) is None
    clock.advance(0.01)
    q, age = buf.joint_positions()
    np.testing.assert_array_equal(q, [1.0, 2.0, 3.0])
    assert age == pytest.approx(0.01)
    # A NaN in a joint the controller does not use is none of its business.
    assert buf.put_joint_state(names, [math.nan, 3.5, 1.5, 2.5], None, 1.1) is None
    out = np.zeros(3)
    q2, age2 = buf.joint_positions(out)
    assert q2 is out and age2 == 0.0
    np.testing.assert_array_equal(out, [1.5, 2.5, 3.5])
    # Another publisher order works too (the cached mapping is rebuilt).
    assert buf.put_joint_state(["a1", "a2", "a3"], np.array([4.0, 5.0, 6.0]), None, 1.2) is None
    np.testing.assert_array_equal(buf.joint_positions()[0], [4.0, 5.0, 6.0])
    assert buf.status()["joint_state.received"] == 3


@pytest.mark.parametrize(
    ("names", "positions", "velocities", "needle", "key"),
    [
        (["a1", "a3"], [0.0, 0.0], None, "lacks joint 'a2'", "missing_joint"),
        (["a1", "a2", "a3", "a2"], [0.0] * 4, None, "joint 'a2' twice", "duplicate_joint"),
        (["a1", "a2", "a3"], [0.0, math.nan, 0.0], None, "joint 'a2' position is nan", "nonfinite"),
        (["a1", "a2", "a3"], [0.0, 0.0], None, "3 names but 2 positions", "length"),
        (["a1", "a2", "a3"], [0.0] * 3, [0.0], "3 names but 1 velocities", "length"),
    ],
)
def test_bad_joint_states_rejected_with_reason(names, positions, velocities, needle, key) -> None:
    _, buf, _ = make()
    assert buf.put_joint_state(["a1", "a2", "a3"], [1.0, 2.0, 3.0], None, 1.0) is None
    reason = buf.put_joint_state(names, positions, velocities, 2.0)
    assert reason is not None and needle in reason
    st = buf.status()
    assert st[f"joint_state.rejected.{key}"] == 1 and st["rejected_total"] == 1
    # Rejected whole: the last good state stays.
    np.testing.assert_array_equal(buf.joint_positions()[0], [1.0, 2.0, 3.0])


def test_missing_joints_are_all_named() -> None:
    _, buf, _ = make()
    reason = buf.put_joint_state(["x"], [0.0], None, 0.0)
    assert reason is not None and "'a1'" in reason and "['a2', 'a3']" in reason


def test_velocities_optional_and_nonfinite_velocity_marks_unknown() -> None:
    _, buf, snap = make()
    buf.put_image("scene", image((4, 6)), 0.0)
    assert buf.put_joint_state(JOINTS, [1, 2, 3], [0.1, 0.2, 0.3], 1.0) is None
    buf.snapshot(snap)
    assert snap.velocities_valid
    np.testing.assert_allclose(snap.velocities, [0.1, 0.2, 0.3])
    assert buf.put_joint_state(JOINTS, [1, 2, 3], [], 1.1) is None  # ROS leaves it empty
    buf.snapshot(snap)
    assert not snap.velocities_valid
    assert buf.put_joint_state(JOINTS, [1, 2, 3], [0.0, math.inf, 0.0], 1.2) is None
    buf.snapshot(snap)
    assert not snap.velocities_valid


def test_stamps_backwards_rejected_forward_jump_fine_stale_source_may_restart() -> None:
    clock, buf, _ = make()
    assert buf.put_joint_state(JOINTS, [0, 0, 0], None, 100.0) is None
    reason = buf.put_joint_state(JOINTS, [1, 1, 1], None, 99.9)
    assert reason is not None and "older than the last accepted" in reason
    assert buf.put_joint_state(JOINTS, [2, 2, 2], None, 100.0) is None  # same stamp: not backwards
    assert buf.put_joint_state(JOINTS, [3, 3, 3], None, 5000.0) is None  # clock jumped forward
    assert buf.put_joint_state(JOINTS, [4, 4, 4], None, 4999.0) is not None
    # After the source went stale, an older stamp is a restarted clock (sim reset), not reordering.
    clock.advance(TIMEOUTS.joint_state_s + 0.001)
    assert buf.put_joint_state(JOINTS, [5, 5, 5], None, 1.0) is None
    st = buf.status()
    assert st["joint_state.rejected.stamp_backwards"] == 2 and st["joint_state.stamp_resets"] == 1
    np.testing.assert_array_equal(buf.joint_positions()[0], [5, 5, 5])

    assert buf.put_image("scene", image((4, 6), 1), 50.0) is None
    reason = buf.put_image("scene", image((4, 6), 2), 49.0)
    assert reason is not None and "'scene'" in reason and "older" in reason
    assert buf.status()["image.scene.rejected.stamp_backwards"] == 1


def test_bad_images_rejected_with_reason() -> None:
    _, buf, _ = make()
    r = buf.put_image("wrist", image((4, 6)), 0.0)
    assert r is not None and "unknown camera 'wrist'" in r and "['scene']" in r
    r = buf.put_image("scene", np.zeros((4, 6, 3), np.float32), 0.0)
    assert r is not None and "uint8" in r and "float32" in r
    r = buf.put_image("scene", np.zeros((4, 6), np.uint8), 0.0)
    assert r is not None and "[4, 6]" in r
    r = buf.put_image("scene", np.zeros((0, 6, 3), np.uint8), 0.0)
    assert r is not None and "empty" in r
    st = buf.status()
    assert st["image.unknown.rejected.unknown_camera"] == 1 and st["image.scene.rejected.format"] == 3
    assert st["image.scene.received"] == 0


def test_snapshot_needs_every_source_fresh() -> None:
    clock, buf, snap = make(cameras=("scene", "wrist"))
    assert buf.snapshot(snap) is False and not snap.state_ready and not snap.images_ready.any()
    buf.put_joint_state(JOINTS, [1, 2, 3], None, 7.0)
    buf.put_image("scene", image((4, 6), 11), 3.0)
    assert buf.snapshot(snap) is False
    assert snap.state_ready and not snap.state_stale
    assert list(snap.images_ready) == [True, False] and list(snap.images_stale) == [False, True]
    buf.put_image("wrist", image((4, 6), 22), 3.5)
    clock.advance(0.02)
    assert buf.snapshot(snap) is True and snap.ok
    np.testing.assert_array_equal(snap.state, np.float32([1, 2, 3]))
    assert snap.state.dtype == np.float32 and snap.images.dtype == np.uint8
    assert (snap.images[0] == 11).all() and (snap.images[1] == 22).all()
    assert snap.state_stamp == 7.0 and list(snap.image_stamps) == [3.0, 3.5]
    assert snap.state_arrival == 10.0 and snap.state_age == pytest.approx(0.02)
    assert snap.oldest_age == pytest.approx(0.02) and snap.time == pytest.approx(10.02)

    clock.advance(TIMEOUTS.joint_state_s)  # joint states stop
    assert buf.snapshot(snap) is False and snap.state_stale and not snap.images_stale.any()
    assert buf.stale() == {"joint_state": True, "image.scene": False, "image.wrist": False}
    buf.put_joint_state(JOINTS, [1, 2, 3], None, 7.1)
    assert buf.snapshot(snap) is True
    clock.advance(TIMEOUTS.image_s + 0.001)  # cameras stop
    buf.put_joint_state(JOINTS, [1, 2, 3], None, 7.2)
    assert buf.snapshot(snap) is False and snap.images_stale.all() and not snap.state_stale
    st = buf.status()
    assert st["image.wrist.stale"] == 1 and st["joint_state.stale"] == 0
    assert st["image.wrist.age_s"] == pytest.approx(0.571)


def test_nearest_resize_samples_pixel_centres() -> None:
    _, buf, snap = make(hw=(2, 3))
    src = np.zeros((4, 6, 3), np.uint8)
    src[:, :, 0] = np.arange(6)[None, :] * 10  # column index
    src[:, :, 1] = np.arange(4)[:, None]  # row index
    buf.put_image("scene", src, 0.0)
    buf.put_joint_state(JOINTS, [0, 0, 0], None, 0.0)
    assert buf.snapshot(snap)
    np.testing.assert_array_equal(snap.images[0, 0, :, 0], [10, 30, 50])
    np.testing.assert_array_equal(snap.images[0, :, 0, 1], [1, 3])
    # Upscaling repeats pixels.
    _, up, snap_up = make(hw=(4, 4))
    up.put_image("scene", np.arange(12, dtype=np.uint8).reshape(2, 2, 3), 0.0)
    up.put_joint_state(JOINTS, [0, 0, 0], None, 0.0)
    up.snapshot(snap_up)
    np.testing.assert_array_equal(
        snap_up.images[0, :, :, 0], [[0, 0, 3, 3], [0, 0, 3, 3], [6, 6, 9, 9], [6, 6, 9, 9]]
    )


def test_area_resize_is_the_block_mean() -> None:
    _, buf, snap = make(hw=(3, 4), resize="area")
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (9, 8, 3), np.uint8)
    buf.put_image("scene", src, 0.0)
    buf.put_joint_state(JOINTS, [0, 0, 0], None, 0.0)
    assert buf.snapshot(snap)
    expected = src.reshape(3, 3, 4, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(snap.images[0].astype(np.float64) - expected).max() <= 0.5


def test_resize_does_not_allocate_per_frame() -> None:
    _, buf, _ = make(hw=(96, 96))
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), np.uint8)
    buf.put_image("scene", frame, 0.0)  # first frame of this resolution builds the index map
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(1, 6):
            assert buf.put_image("scene", frame, float(i)) is None
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 96 * 96 * 3 // 2, f"put_image allocated {peak} bytes per frame (an image is 27648)"


def test_snapshots_are_never_torn_under_concurrent_writers() -> None:
    """Each message is uniform (every joint and pixel equal to its stamp); a snapshot must be too."""
    clock, buf, snap = make(hw=(16, 16))
    n = 3000
    go = threading.Event()

    def joints() -> None:
        go.wait()
        for k in range(1, n):
            buf.put_joint_state(JOINTS, [float(k)] * 3, None, float(k))

    def images() -> None:
        go.wait()
        for k in range(1, n):
            buf.put_image("scene", np.full((32, 32, 3), k % 256, np.uint8), float(k))

    writers = [threading.Thread(target=joints), threading.Thread(target=images)]
    for t in writers:
        t.start()
    go.set()
    seen = 0
    while any(t.is_alive() for t in writers) or seen == 0:
        if buf.snapshot(snap):
            seen += 1
            assert (snap.state == snap.state[0]).all() and snap.state[0] == snap.state_stamp
            img = snap.images[0]
            assert (img == img[0, 0, 0]).all() and img[0, 0, 0] == int(snap.image_stamps[0]) % 256
    for t in writers:
        t.join(10.0)
    assert buf.status()["joint_state.received"] == n - 1 and buf.status()["image.scene.received"] == n - 1


def test_constructor_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate joint names"):
        ObservationBuffers(("a", "a"), ("scene",), (2, 2), SimClock(), TIMEOUTS)
    with pytest.raises(ValueError, match="duplicate camera names"):
        ObservationBuffers(("a",), ("c", "c"), (2, 2), SimClock(), TIMEOUTS)
