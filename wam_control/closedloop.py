"""Closed-loop episodes: the MuJoCo arm driven by the real runtime Controller, in one process.

Shared by `wam-control demo` and `wam-control bench closed-loop`. The sim plays the robot and the
transport at once: every tick it hands the controller a joint state through `on_joint_state` and
camera frames through `on_image`, exactly the calls the DDS / rclpy adapters make, and applies the
returned command as a forward position controller would. Only serialization is missing.

Two clocks:

- realtime: a `FixedRateLoop` on the monotonic clock calls `ClosedLoopEpisode.tick`, the inference
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
from wam_control.runtime.replay import BackendModel
from wam_control.runtime.worker import InferenceRequest, InferenceResult

__all__ = ["BackendModel"]  # re-exported: the lockstep drivers' model

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
# One episode


@dataclass
class EpisodeTrace:
    """Per tick (row i = tick i from the episode start): the command sent and the measured position."""

    t: np.ndarray
    q_cmd: np.ndarray
    q_meas: np.ndarray
    qd_meas: np.ndarray
    version: np.ndarray
    busy: np.ndarray
    """The model was computing a chunk at the end of this tick."""
    images: list[tuple[float, str, np.ndarray]] = field(default_factory=list)
    """(sim time, camera, frame) of every frame the controller received (kept when asked)."""


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

    @property
    def interventions_total(self) -> int:
        return int(sum(self.interventions.values()))


class ClosedLoopEpisode:
    """The per-tick work of one episode: sim catch-up, joint state in, controller tick, command out.

    `tick(k)` is what the fixed-rate loop (or the lockstep driver) calls with the grid index k; row k of
    the trace is filled. The episode is `done` once success held for `settle_s` or the horizon passed.
    """

    def __init__(
        self,
        arm: Any,
        controller: Any,
        horizon_s: float,
        *,
        settle_s: float = SETTLE_S,
        camera: CameraThread | None = None,
        keep_images: bool = False,
    ) -> None:
        self.arm = arm
        self.c = controller
        self.t0_clock = 0.0
        """Clock reading at tick 0, to turn result arrival times into ticks."""
        self.dt = arm.control_period
        self.max_ticks = int(round(horizon_s / self.dt))
        self.settle_ticks = max(1, int(round(settle_s / self.dt)))
        self.camera = camera
        self.cameras = tuple(controller.config.cameras)
        n, d = self.max_ticks + 1, len(arm.joint_names)
        self.trace = EpisodeTrace(
            t=np.arange(n) * self.dt,
            q_cmd=np.full((n, d), np.nan),
            q_meas=np.full((n, d), np.nan),
            qd_meas=np.full((n, d), np.nan),
            version=np.zeros(n, np.int64),
            busy=np.zeros(n, bool),
        )
        self.keep_images = keep_images
        self._cmd = arm.joint_state()[1]
        self._sim_tick = 0
        self._held = 0
        self.success_tick = -1
        self.done = threading.Event()
        self.last_tick = -1
        self._seams_seen = 0
        self._seam_due: list[int] = []
        self.seam_jumps = np.zeros(4096)
        self.seam_jerks = np.zeros(4096)
        self.n_seams = 0
        self._camera_period = 1.0 / 15.0
        self._next_frame_t = 0.0
        if camera is None:
            self._feed_frames(self.cameras)  # the frame rendered at reset
        else:
            camera.capture(arm.time)
            self._next_frame_t = self._camera_period

    def _feed_frames(self, rendered: Sequence[str]) -> None:
        for cam in rendered:
            image, stamp = self.arm.frame(cam)
            self.c.on_image(cam, image, stamp)
            if self.keep_images:
                self.trace.images.append((stamp, cam, image.copy()))

    def _step_sim(self) -> None:
        rendered = self.arm.step(self._cmd)
        self._sim_tick += 1
        if self.camera is None:
            if rendered:
                self._feed_frames(rendered)
        elif self.arm.time >= self._next_frame_t - 1e-9:
            self.camera.capture(self.arm.time)
            self._next_frame_t += self._camera_period

    def tick(self, k: int) -> None:
        if self.done.is_set():
            return
        k = min(int(k), self.max_ticks)
        if self.last_tick < 0:
            # Tick 0 is when the loop started, which is not when this object was made.
            self.t0_clock = self.c.clock.now() - k * self.dt
        # Slots the loop missed: the robot kept executing the last command meanwhile.
        while self._sim_tick < k:
            self._step_sim()
        names, q, qd = self.arm.joint_state()
        self.c.on_joint_state(names, q, qd, self.arm.time)
        cmd = self.c.tick(k)
        if cmd is not None:
            np.copyto(self._cmd, cmd.positions)
        tr = self.trace
        tr.q_cmd[k] = self._cmd
        tr.q_meas[k] = q
        tr.qd_meas[k] = qd
        sched = self.c.scheduler
        tr.version[k] = sched.version
        tr.busy[k] = self.c.worker.busy
        self._track_seams(k, sched)
        self.last_tick = k
        if self.arm.task.success():
            self._held += 1
            if self._held == 1:
                self.success_tick = k
            if self._held >= self.settle_ticks:
                self.done.set()
                return
        else:
            self._held = 0
            self.success_tick = -1
        if k >= self.max_ticks:
            self.done.set()
            return
        self._step_sim()

    def _track_seams(self, k: int, sched: Any) -> None:
        seams = sched.counters["seams"]
        if seams != self._seams_seen:
            self._seams_seen = seams
            self._seam_due.append(k + 3)  # jerk is measured over the seam tick and the two after it
        while self._seam_due and k >= self._seam_due[0]:
            self._seam_due.pop(0)
            if self.n_seams < len(self.seam_jumps):
                self.seam_jumps[self.n_seams] = sched.seam_jump_last
                self.seam_jerks[self.n_seams] = sched.seam_jerk_last
                self.n_seams += 1

    def result(
        self, seed: int, mode: str, rec: RecordingWorker, loop: Any = None, keep_trace: bool = False
    ) -> EpisodeResult:
        c = self.c
        sched = c.scheduler.counters
        n = rec.n
        obs = rec.obs_tick[:n].copy()
        arrival_tick = np.rint((rec.arrival_s[:n] - self.t0_clock) / self.dt).astype(np.int64)
        success = self.success_tick >= 0 and self._held >= self.settle_ticks
        info = self.arm.task.info()
        return EpisodeResult(
            seed=seed,
            mode=mode,
            success=bool(success),
            task_time_s=self.success_tick * self.dt if success else math.nan,
            duration_s=self.last_tick * self.dt,
            ticks=self.last_tick + 1,
            seam_jumps=self.seam_jumps[: self.n_seams].copy(),
            seam_jerks=self.seam_jerks[: self.n_seams].copy(),
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


def make_arm(config: RobotConfig, contract: ModelContract, task: str, *, camera_hz: float) -> Any:
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
    )


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
) -> EpisodeResult:
    """One deterministic episode on a SimClock: the controller from the runtime builder (`spec`, with
    the `mode` execution strategy), the real model called through a `ScriptedWorker` with a fixed
    latency of `lat_ticks`. The async controller gets a fresh surprise monitor when the spec runs one;
    the sync baseline gets none (see runtime.builder)."""
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
    controller.start()
    ep = ClosedLoopEpisode(arm, controller, horizon_s or arm.task.horizon_s, keep_images=keep_images)
    k = 0
    while not ep.done.is_set():
        clock.set(k * dt)
        ep.tick(k)
        if progress is not None and k % 250 == 0:
            progress(ep)
        k += 1
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
) -> EpisodeResult:
    """One episode in real time: `controller` (started, its worker ready) ticked by a FixedRateLoop in
    its own thread, frames from a camera thread. Blocks until the episode is done."""
    from wam_control.runtime.loop import FixedRateLoop

    arm.reset(seed)
    rec.clear()
    camera = CameraThread(arm, controller.config.cameras, controller.on_image)
    if keep_images:
        camera.keep = []
    ep = ClosedLoopEpisode(arm, controller, horizon_s or arm.task.horizon_s, camera=camera)
    loop = FixedRateLoop(
        controller.config.control_hz, ep.tick, controller.clock, controller.config.loop, name="wam-demo-loop"
    )
    try:
        loop.start()
        while not ep.done.wait(0.25):
            if progress is not None:
                progress(ep)
        stats = loop.stop()
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
