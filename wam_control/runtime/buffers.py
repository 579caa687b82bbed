"""Latest-value observation buffers between the transport callbacks and the control thread.

Transport threads write (`put_joint_state`, `put_image`); the control thread reads (`joint_positions`
every tick, `snapshot` when it starts an inference). Every input is validated on the writer side and
either stored whole or rejected whole with a reason; nothing is dropped for being "similar" to the
previous value (apis.md, lessons from other runtimes).

Time: message stamps (ROS / sim time) are only compared with earlier stamps of the same source, to
reject out-of-order messages. Ages and staleness come from the injected monotonic `Clock` and the
arrival time of each message (DESIGN.md §4).

Lock discipline: the one read lock is held only for small copies. Images are resized outside it into
a per-camera back buffer, which is then swapped with the front buffer under the lock, so the lock
hold time does not depend on the camera resolution.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from wam_control.config.schema import TimeoutsConfig
from wam_control.runtime.clock import Clock

ResizeMode = Literal["nearest", "area"]


class ObservationSnapshot:
    """Preallocated destination of `ObservationBuffers.snapshot`; reuse one per control loop.

    Arrays are overwritten in place by every snapshot. `ok` is what `snapshot()` returned: every
    source present and none stale.
    """

    def __init__(self, num_cameras: int, image_hw: tuple[int, int], dof: int) -> None:
        h, w = image_hw
        self.images = np.zeros((num_cameras, h, w, 3), np.uint8)
        self.state = np.zeros(dof, np.float32)
        self.velocities = np.zeros(dof, np.float32)
        self.velocities_valid = False
        self.state_stamp = math.nan
        self.state_arrival = math.nan
        self.state_age = math.inf
        self.state_ready = False
        self.state_stale = True
        self.image_stamps = np.full(num_cameras, math.nan)
        self.image_arrivals = np.full(num_cameras, math.nan)
        self.image_ages = np.full(num_cameras, math.inf)
        self.images_ready = np.zeros(num_cameras, bool)
        self.images_stale = np.ones(num_cameras, bool)
        self.time = math.nan
        """Clock time at which the snapshot was taken."""
        self.ok = False

    @property
    def oldest_age(self) -> float:
        """Age of the oldest input in the snapshot (seconds)."""
        if self.image_ages.size == 0:
            return self.state_age
        return max(self.state_age, float(self.image_ages.max()))


class _ImageSlot:
    """One camera: front buffer (read under the lock), back buffer (written by one writer at a time)."""

    def __init__(self, h: int, w: int) -> None:
        self.front = np.zeros((h, w, 3), np.uint8)
        self.back = np.zeros((h, w, 3), np.uint8)
        self.stamp = -math.inf
        self.arrival = -math.inf
        self.ready = False
        self.received = 0
        self.write_lock = threading.Lock()
        # input (h, w) -> precomputed resizer; a camera rarely changes resolution, so this stays tiny
        self.resizers: dict[tuple[int, int], _Resizer] = {}


class _Resizer:
    """Resize (h_in, w_in, 3) uint8 to (h_out, w_out, 3) with precomputed indices and scratch buffers.

    nearest: pixel-centre sampling, two `np.take` passes (touches only output-sized data).
    area: box average over the source pixels of each output pixel with `np.add.reduceat`, then a
    rounded integer divide; used only when shrinking both axes (nearest otherwise).
    Indices are in range by construction, so np.take runs with mode="clip": with the default "raise"
    it would buffer `out` through a temporary of the full size on every call.
    """

    def __init__(self, hw_in: tuple[int, int], hw_out: tuple[int, int], mode: ResizeMode) -> None:
        (hi, wi), (ho, wo) = hw_in, hw_out
        self.mode: ResizeMode = mode if (hi >= ho and wi >= wo) else "nearest"
        if self.mode == "nearest":
            self.rows = np.minimum(((np.arange(ho) + 0.5) * hi / ho).astype(np.intp), hi - 1)
            self.cols = np.minimum(((np.arange(wo) + 0.5) * wi / wo).astype(np.intp), wi - 1)
            self.tmp = np.empty((ho, wi, 3), np.uint8)
        else:
            r_edges = np.floor(np.arange(ho + 1) * hi / ho).astype(np.intp)
            c_edges = np.floor(np.arange(wo + 1) * wi / wo).astype(np.intp)
            self.r_starts = r_edges[:-1]
            self.c_starts = c_edges[:-1]
            counts = np.diff(r_edges)[:, None] * np.diff(c_edges)[None, :]
            self.counts = counts[:, :, None].astype(np.uint32)
            self.half = self.counts // 2
            self.rsum = np.empty((ho, wi, 3), np.uint32)
            self.csum = np.empty((ho, wo, 3), np.uint32)

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> None:
        if self.mode == "nearest":
            np.take(src, self.rows, axis=0, out=self.tmp, mode="clip")
            np.take(self.tmp, self.cols, axis=1, out=dst, mode="clip")
            return
        np.add.reduceat(src, self.r_starts, axis=0, dtype=np.uint32, out=self.rsum)
        np.add.reduceat(self.rsum, self.c_starts, axis=1, out=self.csum)
        self.csum += self.half
        self.csum //= self.counts
        np.copyto(dst, self.csum, casting="unsafe")


class ObservationBuffers:
    """Latest joint state (by joint name) and latest image per camera, with stamps, arrivals and ages.

    `joint_names` and `camera_names` fix the order of the state vector and of the image stack (the
    model contract's order). `image_hw` is the model's (H, W); other camera resolutions are resized.
    """

    def __init__(
        self,
        joint_names: Sequence[str],
        camera_names: Sequence[str],
        image_hw: tuple[int, int],
        clock: Clock,
        timeouts: TimeoutsConfig,
        resize: ResizeMode = "nearest",
    ) -> None:
        if len(set(joint_names)) != len(joint_names):
            raise ValueError(f"ObservationBuffers: duplicate joint names in {list(joint_names)}")
        if len(set(camera_names)) != len(camera_names):
            raise ValueError(f"ObservationBuffers: duplicate camera names in {list(camera_names)}")
        if resize not in ("nearest", "area"):
            raise ValueError(f"ObservationBuffers: resize must be 'nearest' or 'area', got {resize!r}")
        self.joint_names = tuple(joint_names)
        self.camera_names = tuple(camera_names)
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.clock = clock
        self.timeouts = timeouts
        self.resize: ResizeMode = resize
        self.dof = len(self.joint_names)
        self._joint_index = {n: i for i, n in enumerate(self.joint_names)}
        self._cam_index = {n: i for i, n in enumerate(self.camera_names)}

        self._lock = threading.Lock()
        self._q = np.zeros(self.dof, np.float64)
        self._v = np.zeros(self.dof, np.float64)
        self._v_valid = False
        self._q_stamp = -math.inf
        self._q_arrival = -math.inf
        self._q_ready = False
        self._q_received = 0
        self._images = [_ImageSlot(*self.image_hw) for _ in self.camera_names]
        self._rejected: Counter[str] = Counter()
        self._stamp_resets: Counter[str] = Counter()

        # Joint-name order of the last accepted message -> index array into it; the publisher's order
        # almost never changes, so the mapping is computed once, not per message.
        self._map_key: tuple[str, ...] | None = None
        self._map_idx = np.zeros(self.dof, np.intp)
        self._map_len = 0
        self._q_in = np.zeros(self.dof, np.float64)
        self._v_in = np.zeros(self.dof, np.float64)

    # ---------------------------------------------------------------- writers (transport threads)

    def put_joint_state(
        self,
        names: Sequence[str],
        positions: Sequence[float] | np.ndarray,
        velocities: Sequence[float] | np.ndarray | None,
        stamp_s: float,
    ) -> str | None:
        """Store a joint state; returns None when stored, else the reason it was rejected."""
        now = self.clock.now()
        with self._lock:
            # Writers of joint states are serialised by the read lock itself: the work is a few
            # dozen floats, shorter than a second lock round-trip would be.
            reason = self._joint_state_locked(names, positions, velocities, float(stamp_s), now)
            if reason is not None:
                self._rejected[f"joint_state.{reason[0]}"] += 1
                return reason[1]
            return None

    def _joint_state_locked(
        self,
        names: Sequence[str],
        positions: Sequence[float] | np.ndarray,
        velocities: Sequence[float] | np.ndarray | None,
        stamp: float,
        now: float,
    ) -> tuple[str, str] | None:
        key = tuple(names)
        if key != self._map_key:
            bad = self._build_map(key)
            if bad is not None:
                return bad
        n = self._map_len
        if len(positions) != n:
            return "length", f"joint state has {n} names but {len(positions)} positions"
        have_v = velocities is not None and len(velocities) > 0
        if have_v and len(velocities) != n:  # type: ignore[arg-type]
            return "length", f"joint state has {n} names but {len(velocities)} velocities"  # type: ignore[arg-type]
        if not math.isfinite(stamp):
            return "stamp", f"joint state stamp is not finite ({stamp})"
        pos = np.asarray(positions, dtype=np.float64)
        np.take(pos, self._map_idx, out=self._q_in, mode="clip")
        if not np.isfinite(self._q_in).all():
            j = int(np.flatnonzero(~np.isfinite(self._q_in))[0])
            return "nonfinite", f"joint {self.joint_names[j]!r} position is {self._q_in[j]}"
        if stamp < self._q_stamp:
            if self._fresh(self._q_arrival, self.timeouts.joint_state_s, now):
                return "stamp_backwards", (
                    f"joint state stamp {stamp:.6f} s is older than the last accepted {self._q_stamp:.6f} s"
                )
            # The source was already stale: treat the older stamp as a restarted clock (sim reset,
            # bag loop) rather than locking the source out forever.
            self._stamp_resets["joint_state"] += 1
        v_valid = False
        if have_v:
            vel = np.asarray(velocities, dtype=np.float64)
            np.take(vel, self._map_idx, out=self._v_in, mode="clip")
            # A non-finite velocity does not make the positions wrong: velocity is marked unknown.
            v_valid = bool(np.isfinite(self._v_in).all())
        self._q[:] = self._q_in
        if v_valid:
            self._v[:] = self._v_in
        self._v_valid = v_valid
        self._q_stamp = stamp
        self._q_arrival = now
        self._q_ready = True
        self._q_received += 1
        return None

    def _build_map(self, key: tuple[str, ...]) -> tuple[str, str] | None:
        where: dict[str, int] = {}
        for i, name in enumerate(key):
            if name in where:
                return "duplicate_joint", f"joint state names joint {name!r} twice"
            where[name] = i
        missing = [j for j in self.joint_names if j not in where]
        if missing:
            return "missing_joint", (
                f"joint state lacks joint {missing[0]!r}"
                + (f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else "")
            )
        for k, j in enumerate(self.joint_names):
            self._map_idx[k] = where[j]
        self._map_key = key
        self._map_len = len(key)
        return None

    def put_image(self, camera: str, rgb: np.ndarray, stamp_s: float) -> str | None:
        """Store an RGB uint8 (H, W, 3) image; returns None when stored, else the reason it was rejected."""
        k = self._cam_index.get(camera)
        if k is None:
            return self._reject_image(
                "unknown",
                "unknown_camera",
                f"unknown camera {camera!r}; expected one of {list(self.camera_names)}",
            )
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} {list(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            return self._reject_image(
                camera, "format", f"camera {camera!r}: expected uint8 (H, W, 3) RGB, got {got}"
            )
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            return self._reject_image(camera, "format", f"camera {camera!r}: empty image {list(rgb.shape)}")
        stamp = float(stamp_s)
        if not math.isfinite(stamp):
            return self._reject_image(camera, "stamp", f"camera {camera!r}: stamp is not finite ({stamp})")
        slot = self._images[k]
        with slot.write_lock:
            hw_in = (int(rgb.shape[0]), int(rgb.shape[1]))
            if hw_in == self.image_hw:
                np.copyto(slot.back, rgb)
            else:
                resizer = slot.resizers.get(hw_in)
                if resizer is None:
                    resizer = slot.resizers[hw_in] = _Resizer(hw_in, self.image_hw, self.resize)
                resizer(rgb, slot.back)
            now = self.clock.now()
            with self._lock:
                if stamp < slot.stamp:
                    if self._fresh(slot.arrival, self.timeouts.image_s, now):
                        self._rejected[f"image.{camera}.stamp_backwards"] += 1
                        return (
                            f"camera {camera!r}: stamp {stamp:.6f} s is older than the last accepted "
                            f"{slot.stamp:.6f} s"
                        )
                    self._stamp_resets[f"image.{camera}"] += 1
                slot.front, slot.back = slot.back, slot.front
                slot.stamp = stamp
                slot.arrival = now
                slot.ready = True
                slot.received += 1
        return None

    def _reject_image(self, camera: str, key: str, reason: str) -> str:
        with self._lock:
            self._rejected[f"image.{camera}.{key}"] += 1
        return reason

    @staticmethod
    def _fresh(arrival: float, timeout: float, now: float) -> bool:
        return now - arrival <= timeout

    # ---------------------------------------------------------------- readers (control thread)

    def joint_positions(self, out: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
        """(q in configured joint order, age in seconds); (None, inf) before the first joint state.

        Pass a preallocated float64 `out` (dof,) to avoid an allocation per tick; otherwise a copy.
        """
        now = self.clock.now()
        with self._lock:
            if not self._q_ready:
                return None, math.inf
            if out is None:
                out = self._q.copy()
            else:
                out[:] = self._q
            return out, now - self._q_arrival

    def snapshot(self, out: ObservationSnapshot) -> bool:
        """Copy the latest inputs into `out` consistently; True when all present and none stale.

        Everything present is copied even when the answer is False, so callers can inspect why.
        """
        now = self.clock.now()
        to = self.timeouts
        with self._lock:
            out.time = now
            out.state_ready = self._q_ready
            if self._q_ready:
                out.state[:] = self._q
                out.velocities[:] = self._v
                out.velocities_valid = self._v_valid
                out.state_stamp = self._q_stamp
                out.state_arrival = self._q_arrival
                out.state_age = now - self._q_arrival
            else:
                out.velocities_valid = False
                out.state_stamp = out.state_arrival = math.nan
                out.state_age = math.inf
            out.state_stale = not (self._q_ready and out.state_age <= to.joint_state_s)
            ok = not out.state_stale
            for k, slot in enumerate(self._images):
                out.images_ready[k] = slot.ready
                if slot.ready:
                    out.images[k] = slot.front
                    out.image_stamps[k] = slot.stamp
                    out.image_arrivals[k] = slot.arrival
                    age = now - slot.arrival
                else:
                    out.image_stamps[k] = out.image_arrivals[k] = math.nan
                    age = math.inf
                out.image_ages[k] = age
                stale = not (slot.ready and age <= to.image_s)
                out.images_stale[k] = stale
                ok = ok and not stale
        out.ok = ok
        return ok

    def stale(self) -> dict[str, bool]:
        """Source name ('joint_state', 'image.<camera>') -> stale now (never received counts as stale)."""
        now = self.clock.now()
        with self._lock:
            flags = {
                "joint_state": not (self._q_ready and now - self._q_arrival <= self.timeouts.joint_state_s)
            }
            for cam, slot in zip(self.camera_names, self._images):
                flags[f"image.{cam}"] = not (slot.ready and now - slot.arrival <= self.timeouts.image_s)
        return flags

    def status(self) -> dict[str, float | int]:
        """Counters and ages for diagnostics: '<source>.received', '.age_s', '.stale',
        '.rejected.<reason>' and '.stamp_resets' (source = 'joint_state' or 'image.<camera>')."""
        now = self.clock.now()
        to = self.timeouts
        out: dict[str, float | int] = {}
        with self._lock:
            age = now - self._q_arrival if self._q_ready else math.inf
            out["joint_state.received"] = self._q_received
            out["joint_state.age_s"] = age
            out["joint_state.stale"] = int(age > to.joint_state_s)
            for cam, slot in zip(self.camera_names, self._images):
                age = now - slot.arrival if slot.ready else math.inf
                out[f"image.{cam}.received"] = slot.received
                out[f"image.{cam}.age_s"] = age
                out[f"image.{cam}.stale"] = int(age > to.image_s)
            for key, n in self._rejected.items():
                src, _, reason = key.rpartition(".")
                out[f"{src}.rejected.{reason}"] = n
            for src, n in self._stamp_resets.items():
                out[f"{src}.stamp_resets"] = n
            out["rejected_total"] = sum(self._rejected.values())
        return out
