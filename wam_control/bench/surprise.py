"""`wam-control bench surprise`: does the world-model surprise monitor see disturbances, and only them?

Closed loop in the MuJoCo sim, lockstep on simulated time (deterministic for a seed): the real
Controller (buffers, scheduler, safety filter) with the surprise monitor attached, driven tick by tick;
the model runs in-process with a fixed latency in ticks (`--latency-ms` compute + `--delay-ms`
injected). Model, cameras and the monitor's settings come from the deployment configuration
(`--config`, default fr3: `models/wam_reach_wrist.onnx`, cameras scene + wrist, its `surprise:`
section); the sim renders every configured camera. Per seed, one nominal episode and one episode per
disturbance kind:

- teleport: the task's object jumps 15-25 cm inside the workspace;
- camera:   the scene camera is shifted 5-10 cm in a random direction ("knocked off its mount");
- occluder: a dark panel appears between the scene camera and the workspace;
- joint:    a shoulder/elbow joint freezes where it is (the robot stops following the commands).

Disturbances start at a seeded time in [--inject-min-s, --inject-max-s]; an episode counts as detected
when the score reaches `slow_threshold` (the first response) within --window-s after the injection.
detect_latency is sim time from the injection to that tick. A nominal episode that ever reaches
`slow_threshold` is a false alarm. Alarms before the injection in disturbed episodes are reported as
early_alarm_rate.

Calibration: `--calibration` (default: the configuration's `surprise.calibration`, else
`<model>.surprise.json`, the model card's file), or `--calibrate N` nominal episodes first, on seeds
`--calibration-seed + i` (default 100100 + i: never trained on, disjoint from the evaluation seeds you
pass with --seed; the bench refuses an overlap); `--write-calibration` stores that file;
`--calibrate-only` (default 40 episodes) stops there.

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
    """Sim + controller + monitor, rebuilt per episode (runtime.builder) on one SimArm and one backend."""

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
        from wam_control.sim.arm import CAMERAS, SimArm

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
        self.contract = c = self.spec.contract
        self.cameras = tuple(config.cameras)
        self.arm = SimArm(
            task=task,
            control_hz=config.control_hz,
            camera_hz=15.0,
            image_hw=(c.image_height, c.image_width),
            cameras=self.cameras,
        )
        self.dt = config.control_period
        self.latency_ms = float(latency_ms)
        self.latency_ticks = max(1, int(round(latency_ms * 1e-3 * config.control_hz)))
        self.surprise_config = surprise_config
        self._cam_pos0 = self.arm.model.cam_pos.copy()

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
    ) -> Episode:
        from wam_control.closedloop import DisturbedArm
        from wam_control.runtime.builder import build
        from wam_control.runtime.clock import SimClock
        from wam_control.runtime.episode import EpisodeStepper, SurpriseObserver, run_lockstep
        from wam_control.runtime.replay import scripted_worker_factory
        from wam_control.runtime.surprise import SurpriseMonitor

        arm = self.arm
        arm.model.cam_pos[:] = self._cam_pos0
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
        ctl.start()
        n = int(round(duration_s / self.dt))
        inject = int(round(inject_s / self.dt)) if kind != "nominal" else n
        env = DisturbedArm(arm, self.cameras, kind, inject, rng)
        watch = SurpriseObserver(monitor, self.surprise_config.slow_threshold, inject)
        run_lockstep(EpisodeStepper(env, ctl, [watch], dt=self.dt), clock, t0=t0, ticks=n, dt=self.dt)
        ep = Episode(
            seed, kind, inject, n,
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
        self.arm.close()
        self.backend.close()


def calibrate(rig: SurpriseRig, episodes: int, first_seed: int, duration_s: float, log: Any = print) -> Any:
    """Nominal closed-loop episodes (seeds first_seed + i) through the runtime's own controller and
    matching -> SurpriseCalibration of the model (only the offsets that cadence matches). Episodes
    whose task failed are not nominal and are left out (reported)."""
    from wam_control.runtime.calibration import SurpriseCalibration

    samples: dict[int, list[float]] = {}
    ramp: dict[int, list[float]] = {}
    frame: list[float] = []
    seeds = [first_seed + i for i in range(episodes)]
    used: list[int] = []
    failed: list[int] = []
    for s in seeds:
        ep_samples: dict[int, list[float]] = {}
        ep_ramp: dict[int, list[float]] = {}
        ep_frame: list[float] = []
        ep = rig.run(s, "nominal", 0.0, duration_s, None, record=ep_samples, record_ramp=ep_ramp,
                     record_frame=ep_frame)  # fmt: skip
        if not ep.success:
            failed.append(s)
            continue
        used.append(s)
        for dst, src in ((samples, ep_samples), (ramp, ep_ramp)):
            for o, v in src.items():
                dst.setdefault(o, []).extend(v)
        frame.extend(ep_frame)
    log(
        f"calibration: {episodes} nominal episodes, task success {len(used)}/{episodes}"
        + (f" (failed, left out: {failed})" if failed else "")
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
            "task": rig.arm.task.name,
            "control_hz": rig.config.control_hz,
            "cameras": list(rig.cameras),
            "latency_ms": rig.latency_ms,
            "latency_ticks": rig.latency_ticks,
            "match_tolerance_steps": rig.surprise_config.match_tolerance_steps,
            "nominal_success_rate": len(used) / max(1, episodes),
            "failed_seeds_left_out": failed,
        },
    )


def _random_model(config: Any) -> Path:
    from wam_control.model.export import make_test_model

    cams = tuple(config.cameras)
    out = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / "wam_control_bench"
        / f"surprise_random_{'_'.join(cams)}.onnx"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    return make_test_model(out, joint_names=tuple(config.joint_names), camera_names=cams, image_hw=(96, 96))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench surprise", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=20, help="seeds; each runs nominal + every disturbance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="", help="ONNX model (default: the configuration's inference.model)")
    ap.add_argument("--random-init", action="store_true", help="use a random-init test model (plumbing only)")
    ap.add_argument(
        "--config", default="fr3", help="deployment YAML or preset name (cameras, model, surprise:)"
    )
    ap.add_argument("--task", default="reach", choices=("reach", "push"))
    ap.add_argument("--calibration", default="", help="default: <model>.surprise.json")
    ap.add_argument("--calibrate", type=int, default=0, help="calibrate on N nominal episodes first")
    ap.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED, help="first calibration seed")
    ap.add_argument("--write-calibration", action="store_true", help="write the calibration beside the model")
    ap.add_argument(
        "--calibrate-only", action="store_true", help="calibrate (default 40 episodes), write, exit"
    )
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
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
    ap.add_argument("--inject-min-s", type=float, default=0.6)
    ap.add_argument("--inject-max-s", type=float, default=1.4)
    ap.add_argument("--window-s", type=float, default=1.5, help="detection window after the injection")
    ap.add_argument("--duration-s", type=float, default=0.0, help="nominal episode length (default: task)")
    ap.add_argument("--scores-out", default="", help="write per-episode score traces (.npz)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.latency_ms < 0 or args.delay_ms < 0:
        ap.error("--latency-ms and --delay-ms must be >= 0")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: unknown {bad}; expected a subset of {list(KINDS)}")

    from wam_control.config import ConfigError, load_config, preset_path
    from wam_control.runtime.calibration import (
        CalibrationError,
        SurpriseCalibration,
        default_calibration_path,
    )

    try:
        config = load_config(preset_path(args.config))
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
        + (
            f"calibration seeds {cal_seeds.start}..{cal_seeds.stop - 1}"
            if args.calibrate_only
            else f"seeds {args.seed}..{args.seed + args.episodes - 1}"
        )
    )
    start = time.perf_counter()
    try:
        if n_cal:
            cal = calibrate(rig, n_cal, args.calibration_seed, horizon)
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
            episodes.append(rig.run(seed, "nominal", 0.0, horizon, cal))
            for kind in kinds:
                inject_s = float(rng.uniform(args.inject_min_s, args.inject_max_s))
                episodes.append(rig.run(seed, kind, inject_s, inject_s + args.window_s, cal))
    finally:
        rig.close()
    wall = time.perf_counter() - start

    dt_ms = rig.dt * 1e3
    nominal = [e for e in episodes if e.kind == "nominal"]
    disturbed = [e for e in episodes if e.kind != "nominal"]
    false_alarms = [e for e in nominal if e.first_alarm_tick >= 0]
    lat_all: list[float] = []
    for kind in kinds:
        eps = [e for e in disturbed if e.kind == kind]
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
            dt_s=rig.dt,
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
        f"detect_latency_ms_p90={_pct(lat_all, 90):.0f} "
        f"detect_rate={detected / max(1, len(disturbed)):.3f} "
        f"false_alarm_rate={len(false_alarms) / len(nominal):.3f} detect_latency_ms_p50={_pct(lat_all, 50):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
