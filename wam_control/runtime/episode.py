"""One episode driver: an environment, the runtime Controller and observers, stepped in lockstep or in
real time.

Every closed loop of the project is the same per-tick work, done here once (`EpisodeStepper.tick`):

    observers.before_tick(k)      fault / disturbance injection
    env.observe(controller, k)    joint state (and frames due) in, as the transport adapters would
    cmd = controller.tick(k)
    env.act(cmd)                  the command of this tick (None: the environment holds the last one)
    observers.after_tick(k, cmd)  trace, seams, surprise, success; any of them may end the episode
    env.step(controller)          one control period of the plant (frames it renders go in)

Environments (the `Environment` protocol) live where their plant does: the first-order plant of the
replays in runtime.replay, the MuJoCo arm (nominal or disturbed) outside the runtime (closedloop.py),
so this layer imports no sim. Two drivers: `run_lockstep` (a SimClock set to t0 + k * dt before tick
k; deterministic) and `run_realtime` (a FixedRateLoop on the controller's clock; slots the loop missed
are caught up by stepping the plant with the held command, so plant time stays equal to wall time).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from wam_control.runtime.clock import SimClock


class Environment(Protocol):
    """What a driver needs of a plant (robot + cameras)."""

    def begin(self, controller: Any) -> None:
        """The observation at reset (frames rendered then), before tick 0."""

    def observe(self, controller: Any, tick: int) -> None:
        """Feed this tick's joint state (and any frames due) through `on_joint_state` / `on_image`."""

    def act(self, command: Any) -> None:
        """The controller's command of this tick (a JointCommand, or None: no command this tick)."""

    def step(self, controller: Any) -> None:
        """Advance one control period; frames rendered meanwhile go to the controller."""

    def success(self) -> bool:
        """The task's success condition now (False where there is no task)."""


class Observer:
    """Called by the stepper around every tick; `after_tick` returning True ends the episode (after
    every observer of that tick ran, before the plant steps)."""

    def before_tick(self, tick: int) -> None:
        return None

    def after_tick(self, tick: int, command: Any) -> bool:
        return False


class EpisodeStepper:
    """The per-tick work of one episode (see the module docstring). `tick(k)` is what either driver
    calls with the grid index k; `max_tick` clamps k (a real-time loop may skip past the horizon)."""

    def __init__(
        self,
        env: Environment,
        controller: Any,
        observers: Sequence[Observer] = (),
        *,
        dt: float,
        max_tick: int | None = None,
        catch_up: bool = False,
    ) -> None:
        self.env = env
        self.catch_up = catch_up
        """Before tick k, step the plant up to k periods (slots a real-time loop missed)."""
        self.c = controller
        self.observers = list(observers)
        self.dt = float(dt)
        self.max_tick = max_tick
        self.done = threading.Event()
        self.last_tick = -1
        self.steps = 0
        """Control periods the plant was stepped (catch-up included)."""
        self.t0_clock = 0.0
        """Clock reading at tick 0, to turn result arrival times into ticks."""
        env.begin(controller)

    def clamp(self, k: int) -> int:
        k = int(k)
        return k if self.max_tick is None else min(k, self.max_tick)

    def step_plant(self) -> None:
        self.env.step(self.c)
        self.steps += 1

    def tick(self, k: int) -> None:
        if self.done.is_set():
            return
        k = self.clamp(k)
        if self.last_tick < 0:
            # Tick 0 is when the loop started, which is not when this object was made.
            self.t0_clock = self.c.clock.now() - k * self.dt
        if self.catch_up:
            while self.steps < k:  # the robot kept executing the last command meanwhile
                self.step_plant()
        for o in self.observers:
            o.before_tick(k)
        self.env.observe(self.c, k)
        cmd = self.c.tick(k)
        self.env.act(cmd)
        self.last_tick = k
        stop = False
        for o in self.observers:
            stop = bool(o.after_tick(k, cmd)) or stop
        if stop:
            self.done.set()
            return
        self.step_plant()


def run_lockstep(
    stepper: EpisodeStepper,
    clock: SimClock,
    *,
    t0: float = 0.0,
    start: int = 0,
    ticks: int | None = None,
    dt: float | None = None,
    progress: Callable[[EpisodeStepper], None] | None = None,
    progress_every: int = 250,
) -> int:
    """Tick `stepper` on a SimClock (set to t0 + k * dt before tick k, never backwards) from `start`
    until it is done or `ticks` ticks ran; returns the next tick."""
    dt = stepper.dt if dt is None else float(dt)
    k = start
    end = math.inf if ticks is None else start + ticks
    while k < end and not stepper.done.is_set():
        now = t0 + k * dt
        if now > clock.now():
            clock.set(now)
        stepper.tick(k)
        if progress is not None and k % progress_every == 0:
            progress(stepper)
        k += 1
    return k


def run_realtime(
    stepper: EpisodeStepper,
    hz: float,
    loop_config: Any = None,
    *,
    progress: Callable[[EpisodeStepper], None] | None = None,
    poll_s: float = 0.25,
    name: str = "wam-episode-loop",
) -> Any:
    """Tick `stepper` from a FixedRateLoop on the controller's clock until it is done; slots the loop
    missed are caught up with the held command first (`catch_up`). Blocks; returns the loop's stats."""
    from wam_control.runtime.loop import FixedRateLoop

    stepper.catch_up = True
    loop = FixedRateLoop(hz, stepper.tick, stepper.c.clock, loop_config, name=name)
    loop.start()
    try:
        while not stepper.done.wait(poll_s):
            if progress is not None:
                progress(stepper)
    finally:
        stats = loop.stop()
    return stats


# ---------------------------------------------------------------------------------------------------
# Generic observers


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


class TraceObserver(Observer):
    """Fills an `EpisodeTrace`: `state()` -> (q, qd) fed this tick, `command()` -> the command held."""

    def __init__(
        self,
        controller: Any,
        n: int,
        dof: int,
        dt: float,
        state: Callable[[], tuple[np.ndarray, np.ndarray]],
        command: Callable[[], np.ndarray],
    ) -> None:
        self.c = controller
        self.state = state
        self.command = command
        self.trace = EpisodeTrace(
            t=np.arange(n) * dt,
            q_cmd=np.full((n, dof), np.nan),
            q_meas=np.full((n, dof), np.nan),
            qd_meas=np.full((n, dof), np.nan),
            version=np.zeros(n, np.int64),
            busy=np.zeros(n, bool),
        )

    def after_tick(self, tick: int, command: Any) -> bool:
        tr = self.trace
        q, qd = self.state()
        tr.q_cmd[tick] = self.command()
        tr.q_meas[tick] = q
        tr.qd_meas[tick] = qd
        tr.version[tick] = self.c.scheduler.version
        tr.busy[tick] = self.c.worker.busy
        return False


class SeamObserver(Observer):
    """Jump and jerk of every seam between chunks (the scheduler's, read three ticks after the seam:
    the jerk is measured over the seam tick and the two after it)."""

    def __init__(self, controller: Any, capacity: int = 4096) -> None:
        self.c = controller
        self._seen = 0
        self._due: list[int] = []
        self.jumps = np.zeros(capacity)
        self.jerks = np.zeros(capacity)
        self.n = 0

    def after_tick(self, tick: int, command: Any) -> bool:
        sched = self.c.scheduler
        seams = sched.counters["seams"]
        if seams != self._seen:
            self._seen = seams
            self._due.append(tick + 3)
        while self._due and tick >= self._due[0]:
            self._due.pop(0)
            if self.n < len(self.jumps):
                self.jumps[self.n] = sched.seam_jump_last
                self.jerks[self.n] = sched.seam_jerk_last
                self.n += 1
        return False


class SuccessObserver(Observer):
    """Ends the episode once the environment's success held `settle_ticks` ticks, or at `max_tick`."""

    def __init__(self, env: Environment, settle_ticks: int, max_tick: int) -> None:
        self.env = env
        self.settle_ticks = max(1, int(settle_ticks))
        self.max_tick = int(max_tick)
        self.held = 0
        self.success_tick = -1

    @property
    def succeeded(self) -> bool:
        return self.success_tick >= 0 and self.held >= self.settle_ticks

    def after_tick(self, tick: int, command: Any) -> bool:
        if self.env.success():
            self.held += 1
            if self.held == 1:
                self.success_tick = tick
            if self.held >= self.settle_ticks:
                return True
        else:
            self.held = 0
            self.success_tick = -1
        return tick >= self.max_tick


class SurpriseObserver(Observer):
    """The surprise monitor's view per tick: its score (a trip resets the monitor within the tick that
    reached it, so the peak is read too), every raw latent score and frame z as they are scored, and,
    around `inject_tick`, the first alarm before and after it (an alarm: score >= `slow` or a trip;
    after the injection only observations taken after it count)."""

    def __init__(self, monitor: Any, slow: float, inject_tick: int) -> None:
        self.m = monitor
        self.slow = float(slow)
        self.inject_tick = int(inject_tick)
        self.scores: list[float] = []
        self.raw_ticks: list[int] = []
        self.raw: list[float] = []
        self.frame_ticks: list[int] = []
        self.frame_z: list[float] = []
        self.first_alarm_tick = -1
        self.first_alarm_after_inject = -1
        self.tripped_after_inject = False
        self.peak_before = 0.0
        self.peak_after = 0.0
        self._scored = 0
        self._frames = 0
        self._last_peak = 0.0
        self._trips_before = 0

    def after_tick(self, tick: int, command: Any) -> bool:
        m = self.m
        if m.counters["observations_scored"] != self._scored:
            self._scored = m.counters["observations_scored"]
            self.raw_ticks.append(tick)
            self.raw.append(m.raw)
        if m.counters["frames_scored"] != self._frames:
            self._frames = m.counters["frames_scored"]
            self.frame_ticks.append(tick)
            self.frame_z.append(m.frame_z)
        trips = m.counters["trips"]
        score = m.peak_score if m.peak_score > self._last_peak else m.score
        self._last_peak = m.peak_score
        if tick < self.inject_tick:
            self.peak_before = max(self.peak_before, score)
            if (score >= self.slow or trips > 0) and self.first_alarm_tick < 0:
                self.first_alarm_tick = tick
            self._trips_before = trips
        else:
            self.peak_after = max(self.peak_after, score)
            seen = score >= self.slow and m.last_update_tick >= self.inject_tick
            if (seen or trips > self._trips_before) and self.first_alarm_after_inject < 0:
                self.first_alarm_after_inject = tick
            self.tripped_after_inject = trips > self._trips_before
        self.scores.append(score)
        return False


class CallbackObserver(Observer):
    """Observer from plain functions (hooks, logs): `before(tick)`, `after(tick, command)`."""

    def __init__(
        self,
        before: Callable[[int], None] | None = None,
        after: Callable[[int, Any], bool | None] | None = None,
    ) -> None:
        self._before = before
        self._after = after

    def before_tick(self, tick: int) -> None:
        if self._before is not None:
            self._before(tick)

    def after_tick(self, tick: int, command: Any) -> bool:
        return bool(self._after(tick, command)) if self._after is not None else False
