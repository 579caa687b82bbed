"""`wam-control bench surprise`: does the world-model surprise monitor see disturbances, and only them?

Closed loop in the MuJoCo sim, lockstep on simulated time (deterministic for a seed): the real
Controller (buffers, scheduler, safety filter) with the surprise monitor attached, driven tick by tick;
the model runs in-process with a fixed latency in ticks (`--latency-ms` compute + `--delay-ms`
injected). Model, cameras and the monitor's settings come from the deployment configuration
(`--config`, default fr3, fr3_hand for pick_place: the model, cameras scene + wrist, its `surprise:`
section); the sim renders every configured camera. A model with a prompt input gets each episode's
task prompt through the path `~/instruction` takes (closedloop.give_prompt); the hand scene is used when
the task, model or config has the gripper (closedloop.wants_hand). Per seed, one nominal episode and one
episode per disturbance kind:

- teleport: the task's object jumps 15-25 cm inside the workspace (pick_place: the prompted cube, to a
            free spot on the table);
- camera:   the scene camera is shifted 5-10 cm in a random direction ("knocked off its mount");
- occluder: a dark panel appears between the scene camera and the workspace;
- joint:    a shoulder/elbow joint freezes where it is (the robot stops following the commands);
- drop:     (pick_place only) the cube falls out of the gripper: state-triggered, it fires when the
            prompted cube is carried (bottom > 5 cm above the table, a finger touching it) and drives
            the fingers open for 0.3 s whatever the commands (closedloop.DisturbedArm). Episodes in
            which the cube is never lifted have no drop: counted as `drop_not_triggered`, not as misses.

Disturbances start at a seeded time in [--inject-min-s, --inject-max-s] (default 0.6-1.4 s; pick_place
1-5 s: approach and grasp), drop when it fires; an episode counts as detected when the score reaches
`slow_threshold` (the first response) within --window-s after the injection. detect_latency is sim time
from the injection to that tick. A nominal episode that ever reaches `slow_threshold` is a false alarm.
Alarms before the injection in disturbed episodes are reported as early_alarm_rate. Nominal episodes
run the task's horizon, or (`--nominal-until success`, the default for pick_place, whose 25 s horizon
is mostly the arm at rest after the place) until the task's success has held 0.5 s.

Calibration: `--calibration` (default: the configuration's `surprise.calibration`, else
`<model>.surprise.json`, the model card's file), or `--calibrate N` nominal episodes first, on seeds
`--calibration-seed + i` (default 100100 + i: never trained on, disjoint from the evaluation seeds you
pass with --seed; the bench refuses an overlap); `--write-calibration` stores that file;
`--calibrate-only` (default 40 episodes) stops there. `--calibration-tasks reach,push,pick_place` cycles
the calibration episodes over several tasks (a multi-task model's one calibration file serves every
task it is prompted for).

Final line ends with `detect_rate=... false_alarm_rate=... detect_latency_ms_p50=...`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.closedloop import DISTURBANCES as KINDS
from wam_control.runtime.episode import Observer

TASKS = ("reach", "push", "pick_place")
TRIGGERED = ("drop",)
"""Kinds that fire on the sim's state (closedloop.DisturbedArm), not at a drawn time."""
HAND_KINDS = {"drop": ("pick_place",)}
"""Kinds that only make sense for some tasks."""
INJECT_S = {"pick_place": (1.0, 5.0)}
"""Default injection range per task (others: 0.6-1.4 s)."""


def kinds_for(task: str) -> tuple[str, ...]:
    """The disturbance kinds that make sense for `task`."""
    return tuple(k for k in KINDS if task in HAND_KINDS.get(k, TASKS))

CALIBRATION_SEED = 100100
"""First calibration seed: evaluation seeds of the sim start at 100000, training data stays below 10000;
100100-100149 is the model card's calibration range."""
FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))


@dataclass
class Episode:
    seed: int
    kind: str  # "nominal" or one of KINDS
    inject_tick: int
    ticks: int
    task: str = ""
    fired: bool = True
    """Whether the disturbance happened (a drop only when the cube was carried); True for nominal."""
    first_alarm_tick: int = -1
    first_alarm_after_inject: int = -1
    tripped_after_inject: bool = False
    peak_before: float = 0.0
    peak_after: float = 0.0
    success: bool = False
    scores: list[float] = field(default_factory=list)
    raw_ticks: list[int] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    """The monitor's unsmoothed latent score per scored observation (offline tuning of smoothing/thresholds)."""
    frame_ticks: list[int] = field(default_factory=list)
    frame_z: list[float] = field(default_factory=list)
    """The frame channel's z per observation (when the frame check runs)."""


class SurpriseRig:
    """Sim + controller + monitor, rebuilt per episode (runtime.builder) on one backend and one SimArm
    per task (`arm` is `task`'s; `arm_for(other)` builds another's on first use)."""

    def __init__(
        self,
        model_path: str,
        config: Any,
        task: str,
        latency_ms: float,
        surprise_config: Any,
        decoder: str = "",
    ) -> None:
        from wam_control.policy.contract import ContractError
        from wam_control.runtime.builder import Overrides, resolve
        from wam_control.runtime.replay import BackendModel
        from wam_control.sim.arm import CAMERAS

        # The monitor is the bench's own (it calibrates and records); the frame check runs in the
        # backend as a deployment would, with `decoder` ("": none).
        config = replace(config, surprise=replace(surprise_config, decoder=decoder, frame_check=bool(decoder)))
        self.config = config
        try:
            self.spec = resolve(
                config, model_path, Overrides(backend="onnxruntime", surprise="caller", imagination=False)
            )
        except ContractError as exc:
            raise SystemExit(f"bench surprise: {model_path} does not fit the configuration: {exc}") from None
        unknown = [cam for cam in config.cameras if cam not in CAMERAS]
        if unknown:
            raise SystemExit(f"bench surprise: cameras {unknown} are not sim cameras {list(CAMERAS)}")
        self.backend = self.spec.load_backend(warmup=2)
        self.model = BackendModel(self.backend)
        self.frame_camera = getattr(getattr(self.backend, "check", None), "camera", "")
        self.contract = self.spec.contract
        self.cameras = tuple(config.cameras)
        self.task = task
        self._arms: dict[str, Any] = {}
        self._cam0: dict[str, np.ndarray] = {}
        self.arm = self.arm_for(task)
        self.dt = config.control_period
        self.latency_ms = float(latency_ms)
        self.latency_ticks = max(1, int(round(latency_ms * 1e-3 * config.control_hz)))
        self.surprise_config = surprise_config
        self._cam_pos0 = self._cam0[task]

    def arm_for(self, task: str) -> Any:
        """The sim arm of `task` (the model's cameras and image size; the hand scene when the task,
        model or config has the gripper), made on first use."""
        if task not in self._arms:
            from wam_control.closedloop import wants_hand
            from wam_control.sim.arm import SimArm

            c = self.contract
            self._arms[task] = SimArm(
                task=task,
                control_hz=self.config.control_hz,
                camera_hz=15.0,
                image_hw=(c.image_height, c.image_width),
                cameras=self.cameras,
                hand=wants_hand(self.config, c, task),
            )
            self._cam0[task] = self._arms[task].model.cam_pos.copy()
        return self._arms[task]

    def run(
        self,
        seed: int,
        kind: str,
        inject_s: float,
        duration_s: float,
        calibration: Any,
        record: dict[int, list[float]] | None = None,
        record_ramp: dict[int, list[float]] | None = None,
        record_frame: list[float] | None = None,
        *,
        task: str = "",
        window_s: float = 1.5,
        until_success: bool = False,
    ) -> Episode:
        """One episode of `duration_s` (of `task`, default the rig's): nominal, or `kind` injected at
        `inject_s`. A state-triggered kind (drop) is armed from `inject_s` on and the episode ends
        `window_s` after it fired (or at `duration_s`: not fired). `until_success`: a nominal episode
        ends once the task's success held SETTLE_S."""
        from wam_control.closedloop import SETTLE_S, DisturbedArm, give_prompt
        from wam_control.runtime.builder import build
        from wam_control.runtime.clock import SimClock
        from wam_control.runtime.episode import (
            EpisodeStepper,
            SuccessObserver,
            SurpriseObserver,
            run_lockstep,
        )
        from wam_control.runtime.replay import scripted_worker_factory
        from wam_control.runtime.surprise import SurpriseMonitor

        task = task or self.task
        arm = self.arm_for(task)
        arm.model.cam_pos[:] = self._cam0[task]
        arm.set_occluder(False)
        arm.reset(seed)
        rng = np.random.default_rng([seed, KINDS.index(kind) + 1 if kind in KINDS else 0])
        t0 = 1000.0
        clock = SimClock(t0)
        monitor = SurpriseMonitor(
            self.contract,
            self.config.control_hz,
            calibration,
            self.surprise_config,
            record=record,
            record_ramp=record_ramp,
            record_frame=record_frame,
        )
        parts = build(self.spec, clock, scripted_worker_factory(self.model, self.latency_ticks), monitor=monitor)
        ctl, worker = parts.controller, parts.worker
        give_prompt(ctl, self.spec.tokenizer, arm)
        ctl.start()
        n = int(round(duration_s / self.dt))
        inject = int(round(inject_s / self.dt)) if kind != "nominal" else n
        env = DisturbedArm(arm, self.cameras, kind, inject, rng)
        triggered = kind in TRIGGERED
        watch = SurpriseObserver(monitor, self.surprise_config.slow_threshold, n if triggered else inject)
        observers: list[Any] = []
        if triggered:
            observers.append(_FollowTrigger(env, watch, int(round(window_s / self.dt))))
        observers.append(watch)
        if until_success and kind == "nominal":
            observers.append(SuccessObserver(env, max(1, int(round(SETTLE_S / self.dt))), n))
        stepper = EpisodeStepper(env, ctl, observers, dt=self.dt)
        run_lockstep(stepper, clock, t0=t0, ticks=n, dt=self.dt)
        ep = Episode(
            seed, kind, env.inject_tick if triggered and env.fired else inject, stepper.last_tick + 1,
            task=task,
            fired=env.fired or kind == "nominal",
            first_alarm_tick=watch.first_alarm_tick,
            first_alarm_after_inject=watch.first_alarm_after_inject,
            tripped_after_inject=watch.tripped_after_inject,
            peak_before=watch.peak_before,
            peak_after=watch.peak_after,
            success=env.success(),
            scores=watch.scores,
            raw_ticks=watch.raw_ticks,
            raw=watch.raw,
            frame_ticks=watch.frame_ticks,
            frame_z=watch.frame_z,
        )  # fmt: skip
        worker.close()
        return ep

    def close(self) -> None:
        for arm in self._arms.values():
            arm.close()
        self.backend.close()


class _FollowTrigger(Observer):
    """A state-triggered disturbance: once it fired, the surprise watch counts from its tick and the
    episode ends `window` ticks later."""

    def __init__(self, env: Any, watch: Any, window: int) -> None:
        self.env = env
        self.watch = watch
        self.window = window

    def after_tick(self, tick: int, command: Any) -> bool:
        if not self.env.fired:
            return False
        self.watch.inject_tick = self.env.inject_tick
        return tick >= self.env.inject_tick + self.window


def calibrate(
    rig: SurpriseRig,
    episodes: int,
    first_seed: int,
    duration_s: float,
    log: Any = print,
    *,
    tasks: tuple[str, ...] = (),
    until_success: bool = False,
    keep_failed: bool = False,
) -> Any:
    """Nominal closed-loop episodes (seeds first_seed + i) through the runtime's own controller and
    matching -> SurpriseCalibration of the model (only the offsets that cadence matches). Episodes
    whose task failed are not nominal and are left out (reported). `tasks` (default: the rig's task):
    episode i runs tasks[i % len(tasks)]; `duration_s` 0: each task's horizon. `until_success`: an
    episode ends once its success held (SurpriseRig.run). `keep_failed`: failed episodes count too
    (plumbing checks with a random-init model only)."""
    from wam_control.runtime.calibration import SurpriseCalibration

    tasks = tuple(tasks) or (rig.task,)

    samples: dict[int, list[float]] = {}
    ramp: dict[int, list[float]] = {}
    frame: list[float] = []
    seeds = [first_seed + i for i in range(episodes)]
    used: list[int] = []
    failed: list[int] = []
    per_task = dict.fromkeys(tasks, 0)
    for i, s in enumerate(seeds):
        ep_samples: dict[int, list[float]] = {}
        ep_ramp: dict[int, list[float]] = {}
        ep_frame: list[float] = []
        task = tasks[i % len(tasks)]
        dur = duration_s or rig.arm_for(task).task.horizon_s
        ep = rig.run(s, "nominal", 0.0, dur, None, record=ep_samples, record_ramp=ep_ramp,
                     record_frame=ep_frame, task=task, until_success=until_success)  # fmt: skip
        if not ep.success:
            failed.append(s)
            if not keep_failed:
                continue
        used.append(s)
        per_task[task] += 1
        for dst, src in ((samples, ep_samples), (ramp, ep_ramp)):
            for o, v in src.items():
                dst.setdefault(o, []).extend(v)
        frame.extend(ep_frame)
    log(
        f"calibration: {episodes} nominal episodes, task success {episodes - len(failed)}/{episodes}"
        + (f" (failed, {'kept' if keep_failed else 'left out'}: {failed})" if failed else "")
        + (" (" + ", ".join(f"{t} {n}" for t, n in per_task.items()) + ")" if len(tasks) > 1 else "")
        + ", matched predictions "
        + ", ".join(f"offset {o}: {len(v)}" for o, v in sorted(samples.items()))
        + ", during ramp-in "
        + ", ".join(f"offset {o}: {len(v)}" for o, v in sorted(ramp.items()))
        + f", frame errors {len(frame)}"
    )
    return SurpriseCalibration.from_samples(
        samples,
        ramp_samples=ramp,
        frame_samples=frame,
        frame_camera=rig.frame_camera,
        episodes=len(used),
        seeds=used,
        weights_sha256=rig.contract.weights_sha256,
        extra={
            "source": "wam-control bench surprise --calibrate (closed-loop, lockstep sim)",
            "task": ",".join(tasks),
            "episodes_per_task": per_task,
            "nominal_until": "success" if until_success else "horizon",
            "control_hz": rig.config.control_hz,
            "cameras": list(rig.cameras),
            "latency_ms": rig.latency_ms,
            "latency_ticks": rig.latency_ticks,
            "match_tolerance_steps": rig.surprise_config.match_tolerance_steps,
            "nominal_success_rate": len(used) / max(1, episodes),
            "failed_seeds_left_out": [] if keep_failed else failed,
            **({"failed_seeds_kept": failed} if keep_failed else {}),
        },
    )


def _random_model(config: Any) -> Path:
    """A random-init model for the configuration: its cameras; with a gripper DOF (fr3_hand) a contract
    v2 model with the gripper and a 16-token prompt input, as the multi-task model has."""
    from wam_control.model.export import make_test_model
    from wam_control.sim.arm import FINGER_NAMES

    cams = tuple(config.cameras)
    grip = tuple(n for n in config.extra_dofs if config.extra_joint(n) in FINGER_NAMES)[:1]
    extra: dict[str, Any] = {"extra_dofs": grip, "max_instruction_tokens": 16} if grip else {}
    out = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / "wam_control_bench"
        / f"surprise_random_{'_'.join(cams)}{'_gripper_prompt' if grip else ''}.onnx"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    return make_test_model(
        out, joint_names=tuple(config.joint_names), camera_names=cams, image_hw=(96, 96), **extra
    )


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3f}"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench surprise", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=20, help="seeds; each runs nominal + every disturbance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="", help="ONNX model (default: the configuration's inference.model)")
    ap.add_argument("--random-init", action="store_true", help="use a random-init test model (plumbing only)")
    ap.add_argument(
        "--config",
        default=None,
        help="deployment YAML or preset name (cameras, model, surprise:); default fr3, fr3_hand for pick_place",
    )
    ap.add_argument("--task", default="reach", choices=TASKS)
    ap.add_argument("--calibration", default="", help="default: <model>.surprise.json")
    ap.add_argument("--calibrate", type=int, default=0, help="calibrate on N nominal episodes first")
    ap.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED, help="first calibration seed")
    ap.add_argument(
        "--calibration-tasks",
        default="",
        help="comma-separated tasks the calibration episodes cycle over (default: --task)",
    )
    ap.add_argument("--write-calibration", action="store_true", help="write the calibration beside the model")
    ap.add_argument(
        "--keep-failed",
        action="store_true",
        help="calibrate on failed nominal episodes too (plumbing checks with a random-init model only)",
    )
    ap.add_argument(
        "--calibrate-only", action="store_true", help="calibrate (default 40 episodes), write, exit"
    )
    ap.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated subset of {','.join(KINDS)} (default: those that fit the task; drop: pick_place)",
    )
    ap.add_argument("--slow", type=float, default=None, help="override slow_threshold")
    ap.add_argument("--stop", type=float, default=None, help="override stop_threshold")
    ap.add_argument("--smoothing", type=float, default=None, help="override smoothing")
    ap.add_argument("--no-latch", action="store_true", help="slow down only (measure without stopping)")
    ap.add_argument(
        "--frame-check",
        choices=("config", "on", "off"),
        default="config",
        help="the frame-check channel (decoder vs camera frame): as configured, or forced on/off",
    )
    ap.add_argument(
        "--decoder", default="", help="decoder ONNX (default: surprise.decoder, else beside the model)"
    )
    ap.add_argument("--latency-ms", type=float, default=20.0, help="simulated inference compute latency")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="inference delay injected on top")
    ap.add_argument("--inject-min-s", type=float, default=None, help="default 0.6 (pick_place 1.0)")
    ap.add_argument("--inject-max-s", type=float, default=None, help="default 1.4 (pick_place 5.0)")
    ap.add_argument("--window-s", type=float, default=1.5, help="detection window after the injection")
    ap.add_argument(
        "--duration-s", type=float, default=0.0, help="nominal (and drop) episode length (default: task)"
    )
    ap.add_argument(
        "--nominal-until",
        choices=("horizon", "success"),
        default=None,
        help="nominal episodes end at the task's horizon, or once its success held 0.5 s "
        "(default: success for pick_place, else horizon)",
    )
    ap.add_argument("--scores-out", default="", help="write per-episode score traces (.npz)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.latency_ms < 0 or args.delay_ms < 0:
        ap.error("--latency-ms and --delay-ms must be >= 0")
    kinds = kinds_for(args.task) if args.kinds is None else tuple(k for k in args.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: unknown {bad}; expected a subset of {list(KINDS)}")
    unfit = [k for k in kinds if k not in kinds_for(args.task)]
    if unfit:
        ap.error(f"--kinds: {unfit} do not fit task {args.task} (it takes {list(kinds_for(args.task))})")
    cal_tasks = tuple(t for t in args.calibration_tasks.split(",") if t) or (args.task,)
    bad = [t for t in cal_tasks if t not in TASKS]
    if bad:
        ap.error(f"--calibration-tasks: unknown {bad}; expected a subset of {list(TASKS)}")
    inject_min, inject_max = INJECT_S.get(args.task, (0.6, 1.4))
    inject_min = inject_min if args.inject_min_s is None else args.inject_min_s
    inject_max = inject_max if args.inject_max_s is None else args.inject_max_s
    until_success = (args.nominal_until or ("success" if args.task == "pick_place" else "horizon")) == "success"

    from wam_control.config import ConfigError, load_config, preset_path
    from wam_control.runtime.calibration import (
        CalibrationError,
        SurpriseCalibration,
        default_calibration_path,
    )

    try:
        config = load_config(preset_path(args.config or ("fr3_hand" if args.task == "pick_place" else "fr3")))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"bench surprise: --config {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.random_init:
        model = _random_model(config)
    else:
        model = Path(args.model) if args.model else Path(config.inference.model)
        if not model.is_file():
            print(
                f"bench surprise: model {model} does not exist (train/export it, or pass --random-init "
                "to exercise the pipeline with a random-init model)",
                file=sys.stderr,
            )
            return 2
    scfg = config.surprise
    overrides: dict[str, Any] = {}
    if args.slow is not None:
        overrides["slow_threshold"] = args.slow
    if args.stop is not None:
        overrides["stop_threshold"] = args.stop
    if args.smoothing is not None:
        overrides["smoothing"] = args.smoothing
    if args.no_latch:
        overrides["latch"] = False
    if args.frame_check != "config":
        overrides["frame_check"] = args.frame_check == "on"
    if args.decoder:
        overrides["decoder"] = args.decoder
    if args.random_init and scfg.frame_check and args.frame_check != "on":
        overrides["frame_check"] = False  # a random-init model has no decoder
    try:
        scfg = replace(scfg, **overrides)
    except ValueError as exc:
        ap.error(str(exc))
    if args.calibration:
        cal_path = Path(args.calibration)
    elif scfg.calibration and not args.model and not args.random_init:
        cal_path = Path(scfg.calibration)
    else:
        cal_path = default_calibration_path(model)
    n_cal = args.calibrate or (40 if args.calibrate_only else 0)
    cal_seeds = range(args.calibration_seed, args.calibration_seed + n_cal)
    overlap = sorted(set(cal_seeds) & set(range(args.seed, args.seed + args.episodes)))
    if n_cal and not args.calibrate_only and overlap:
        ap.error(f"calibration seeds {overlap[0]}..{overlap[-1]} overlap the evaluation seeds (--seed)")

    from wam_control.imagination import DecoderError, default_decoder_path

    decoder = ""
    if scfg.frame_check:
        decoder = scfg.decoder or str(default_decoder_path(model))
        if not Path(decoder).is_file():
            print(
                f"bench surprise: surprise.frame_check is on but the decoder {decoder} does not exist "
                "(train it with `wam-control train-decoder`, or pass --frame-check off)",
                file=sys.stderr,
            )
            return 2
    try:
        rig = SurpriseRig(str(model), config, args.task, args.latency_ms + args.delay_ms, scfg, decoder)
    except DecoderError as exc:
        print(f"bench surprise: {exc}", file=sys.stderr)
        return 2
    horizon = args.duration_s or rig.arm.task.horizon_s
    print(
        f"model={model.name} ({rig.contract.model_name}, sha {rig.contract.weights_sha256[:12]}, cameras "
        f"{','.join(rig.cameras)}, offsets {list(rig.contract.latent_offsets)} steps of "
        f"{rig.contract.action_dt * config.control_hz:g} ticks) control_hz={config.control_hz:g} "
        f"latency_ticks={rig.latency_ticks} ({args.latency_ms:g} ms compute + {args.delay_ms:g} ms delay) "
        f"slow={scfg.slow_threshold:g} stop={scfg.stop_threshold:g} smoothing={scfg.smoothing:g} "
        f"task={args.task} kinds={','.join(kinds)} inject {inject_min:g}-{inject_max:g} s "
        f"nominal until {'success' if until_success else 'horizon'}"
        + (" prompt: each episode's task prompt" if rig.spec.tokenizer is not None else "")
        + (f" calibration tasks {','.join(cal_tasks)}" if n_cal else "")
        + "; "
        + (
            f"calibration seeds {cal_seeds.start}..{cal_seeds.stop - 1}"
            if args.calibrate_only
            else f"seeds {args.seed}..{args.seed + args.episodes - 1}"
        )
    )
    start = time.perf_counter()
    try:
        if n_cal:
            try:
                cal = calibrate(
                    rig,
                    n_cal,
                    args.calibration_seed,
                    args.duration_s,
                    tasks=cal_tasks,
                    until_success=until_success,
                    keep_failed=args.keep_failed,
                )
            except CalibrationError as exc:
                print(f"bench surprise: {exc}", file=sys.stderr)
                return 2
            if args.write_calibration or args.calibrate_only:
                cal.save(cal_path)
                print(f"wrote {cal_path}")
            if args.calibrate_only:
                print(
                    f"calibration_episodes={n_cal} offsets={','.join(map(str, cal.offsets))} "
                    + " ".join(
                        f"mean_o{o}={m:.4f} std_o{o}={s:.4f}"
                        for o, m, s in zip(cal.offsets, cal.mean, cal.std)
                    )
                )
                return 0
        else:
            try:
                cal = SurpriseCalibration.load(cal_path, rig.contract)
            except CalibrationError as exc:
                print(f"bench surprise: {exc} (or pass --calibrate N)", file=sys.stderr)
                return 2
        print(
            "calibration: "
            + ", ".join(
                f"offset {o}: mean {m:.4f} std {s:.4f}" for o, m, s in zip(cal.offsets, cal.mean, cal.std)
            )
            + (
                "; ramp-in "
                + ", ".join(
                    f"offset {o}: mean {m:.4f} std {s:.4f}"
                    for o, m, s in zip(cal.ramp_offsets, cal.ramp.mean, cal.ramp.std)
                )
                if cal.ramp is not None
                else "; ramp-in predictions not scored (no ramp_in section)"
            )
            + (
                f"; frame ({cal.frame.camera}) mean {cal.frame.mean:.4f} std {cal.frame.std:.4f}"
                + ("" if scfg.frame_check else " (frame check off)")
                if cal.frame is not None
                else "; no frame section"
            )
        )
        if scfg.frame_check and cal.frame is None:
            print(
                f"bench surprise: frame check on but {cal_path} has no 'frame' section: recalibrate "
                "(--calibrate-only) or pass --frame-check off",
                file=sys.stderr,
            )
            return 2
        episodes: list[Episode] = []
        rng = np.random.default_rng(args.seed)
        for i in range(args.episodes):
            seed = args.seed + i
            episodes.append(rig.run(seed, "nominal", 0.0, horizon, cal, until_success=until_success))
            for kind in kinds:
                inject_s = float(rng.uniform(inject_min, inject_max))
                if kind in TRIGGERED:  # armed from the start, fires on the sim's state
                    episodes.append(rig.run(seed, kind, 0.0, horizon, cal, window_s=args.window_s))
                else:
                    episodes.append(rig.run(seed, kind, inject_s, inject_s + args.window_s, cal))
    finally:
        rig.close()
    wall = time.perf_counter() - start

    dt_ms = rig.dt * 1e3
    nominal = [e for e in episodes if e.kind == "nominal"]
    disturbed = [e for e in episodes if e.kind != "nominal" and e.fired]
    not_fired = {k: [e.seed for e in episodes if e.kind == k and not e.fired] for k in kinds if k in TRIGGERED}
    false_alarms = [e for e in nominal if e.first_alarm_tick >= 0]
    lat_all: list[float] = []
    per_kind: dict[str, float] = {}
    for kind in kinds:
        eps = [e for e in disturbed if e.kind == kind]
        per_kind[kind] = sum(e.first_alarm_after_inject >= 0 for e in eps) / len(eps) if eps else math.nan
        lat = [
            (e.first_alarm_after_inject - e.inject_tick) * dt_ms
            for e in eps
            if e.first_alarm_after_inject >= 0
        ]
        lat_all += lat
        print(
            f"{kind:>9}: detected {len(lat)}/{len(eps)}, latency p50 {_pct(lat, 50):.0f} ms "
            f"p90 {_pct(lat, 90):.0f} ms, latched {sum(e.tripped_after_inject for e in eps)}/{len(eps)}, "
            f"peak score p50 {_pct([e.peak_after for e in eps], 50):.1f}"
            + (
                f", not triggered {len(not_fired[kind])} (seeds {not_fired[kind]}; cube never carried)"
                if kind in not_fired
                else ""
            )
            + (f", fired at {_pct([e.inject_tick * dt_ms / 1e3 for e in eps], 50):.2f} s p50" if kind in TRIGGERED else "")
        )
    peaks = [max(e.scores) if e.scores else 0.0 for e in nominal]
    print(
        f"  nominal: false alarms {len(false_alarms)}/{len(nominal)} (seeds {[e.seed for e in false_alarms]}), "
        f"peak score p50 {_pct(peaks, 50):.2f} max {max(peaks):.2f}, task success "
        f"{sum(e.success for e in nominal)}/{len(nominal)}; {wall:.0f} s wall"
    )
    if args.scores_out:
        np.savez(
            args.scores_out,
            kinds=np.array([e.kind for e in episodes]),
            seeds=np.array([e.seed for e in episodes]),
            inject_ticks=np.array([e.inject_tick for e in episodes]),
            success=np.array([e.success for e in episodes]),
            fired=np.array([e.fired for e in episodes]),
            tasks=np.array([e.task for e in episodes]),
            dt_s=rig.dt,
            latency_ticks=rig.latency_ticks,
            window_ticks=int(round(args.window_s / rig.dt)),
            **{f"scores_{i}": np.asarray(e.scores, np.float32) for i, e in enumerate(episodes)},
            **{f"raw_ticks_{i}": np.asarray(e.raw_ticks, np.int64) for i, e in enumerate(episodes)},
            **{f"raw_{i}": np.asarray(e.raw, np.float32) for i, e in enumerate(episodes)},
            **{f"frame_ticks_{i}": np.asarray(e.frame_ticks, np.int64) for i, e in enumerate(episodes)},
            **{f"frame_z_{i}": np.asarray(e.frame_z, np.float32) for i, e in enumerate(episodes)},
        )
    detected = sum(e.first_alarm_after_inject >= 0 for e in disturbed)
    early = sum(e.first_alarm_tick >= 0 for e in disturbed)
    stop_rate = sum(e.tripped_after_inject for e in disturbed) / max(1, len(disturbed))
    print(
        f"episodes={len(episodes)} nominal_episodes={len(nominal)} disturbed_episodes={len(disturbed)} "
        f"nominal_success_rate={sum(e.success for e in nominal) / len(nominal):.3f} "
        f"early_alarm_rate={early / max(1, len(disturbed)):.3f} stop_rate={stop_rate:.3f} "
        + "".join(f"{k}_not_triggered={len(v)} " for k, v in not_fired.items())
        + "".join(f"detect_rate_{k}={_fmt(v)} " for k, v in per_kind.items())
        + f"task={args.task} "
        f"detect_latency_ms_p90={_pct(lat_all, 90):.0f} "
        f"detect_rate={detected / max(1, len(disturbed)):.3f} "
        f"false_alarm_rate={len(false_alarms) / len(nominal):.3f} detect_latency_ms_p50={_pct(lat_all, 50):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
