"""`wam-control bench scheduler`: chunk seams of three switching strategies, on a simulated clock.

The "model" is `ReferenceModel`: it predicts a smooth sum of sinusoids from its observation tick, with
a per-chunk offset and drift (`--noise-rad`) so that chunks disagree as samples of a real policy do.
Latency is scripted in ticks, from 0 to 40% of the chunk horizon. Strategies:

- naive: switch to the newest chunk as is (tick-aligned, no prefix, no blending);
- fixed_blend: average the old and new chunk with fixed weights while they overlap;
- ours: this scheduler; the model is given the committed prefix and continues it; the seam is
  corrected (C2, jerk-bounded) only where it is still not smooth.
An ablation (ours_no_prefix: the same scheduler with a model that ignores the prefix) shows which part
of the gain comes from the prefix and which from the seam correction. no_prefix_model is what the
runtime does with a contract v2 model that has no prefix inputs at all (max_prefix 0: no prefix is
computed or sent; every seam is joined by the C2 blend).

Measured on the scheduler's target stream (before the safety filter, which would otherwise hide the
seams by clipping them): per seam, the largest |second difference| of the target between this switch
and the next (rad; a smooth stream has ~acc*dt^2 there, a naive switch the full disagreement), the
largest |jerk| in the ticks around the switch, starved ticks, and the reaction time in ticks from an
observation to the first target computed from its chunk.

`--faults` instead runs the fault scenarios of the full controller (replay rig, real safety filter)
and prints one row per fault: detection latency in ticks, peak |acc| and |jerk| from the fault on, how
it ended, and whether every limit held on the command stream; `--write-md PATH` writes that table.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wam_control.config import RobotConfig, load_config, preset_path
from wam_control.runtime.replay import (
    ReferenceModel,
    Rig,
    build_rig,
    home_pose,
    make_contract,
    sinusoid_motion,
)
from wam_control.runtime.scheduler import ChunkScheduler, SchedulerParams
from wam_control.runtime.worker import InferenceRequest

STRATEGIES = ("naive", "fixed_blend", "ours", "ours_no_prefix", "no_prefix_model")


@dataclass
class SeamRun:
    strategy: str
    latency_ticks: int
    seam_jumps: np.ndarray  # rad, one per switch
    seam_jerks: np.ndarray  # rad/s^3, one per switch
    seam_gaps: np.ndarray  # rad, disagreement of new and old plan at each switch (before correction)
    starved_ticks: int
    reactions: np.ndarray  # ticks, one per chunk used
    blended: int
    switches: int
    expired: int = 0


def simulate(
    cfg: RobotConfig, strategy: str, latency_ticks: int, ticks: int, noise_rad: float, seed: int
) -> SeamRun:
    contract = make_contract(cfg, prefix=strategy != "no_prefix_model")
    dt = cfg.control_period
    mode = {"naive": "naive", "fixed_blend": "fixed_blend"}.get(strategy, "prefix")
    params = SchedulerParams(mode=mode)  # type: ignore[arg-type]
    s = contract.action_dt * cfg.control_hz
    sched = ChunkScheduler(contract.horizon, cfg.dof, s, contract.max_prefix, dt, cfg.inference, params)
    motion = sinusoid_motion(cfg.dof, home_pose(cfg), 0.25, seed=seed)
    model = ReferenceModel(
        contract, motion, cfg.control_hz, noise_rad=noise_rad, follow_prefix=strategy == "ours", seed=seed
    )
    images = np.zeros((1, contract.image_height, contract.image_width, 3), np.uint8)
    prefix = np.zeros((contract.horizon, cfg.dof), np.float32)
    zeros = np.zeros(cfg.dof)
    hold = motion(np.array([0.0]))[0]
    targets = np.full((ticks, cfg.dof), np.nan)
    version = np.zeros(ticks, int)
    obs_of: dict[int, int] = {}
    switches: list[int] = []
    gaps: list[float] = []
    pending: tuple[int, int, np.ndarray] | None = None
    lat = max(1, latency_ticks)
    rid = 0
    for t in range(ticks):
        if pending is not None and t >= pending[0]:
            before = sched.version
            sched.accept(pending[1], pending[2], t, (hold, zeros, zeros))
            if sched.version != before:
                obs_of[sched.version] = pending[1]
                if before > 0:
                    switches.append(t)
                    gaps.append(sched.seam_gap_last)
            pending = None
        if pending is None and sched.want_request(t):
            state = motion(np.array([t * dt]))[0].astype(np.float32)
            n = sched.fill_prefix(t, prefix, state)
            rid += 1
            out = model(InferenceRequest(rid, t, images, state, prefix, n))
            pending = (t + lat, t, out.actions.astype(np.float64))
            sched.on_request(t)
        q = sched.target(t)
        if q is not None:
            targets[t] = q
            hold = q.copy()
        version[t] = sched.version
    d2 = np.full(ticks, np.nan)
    d2[2:] = np.abs(np.diff(targets, 2, axis=0)).max(axis=1)
    d3 = np.full(ticks, np.nan)
    d3[3:] = np.abs(np.diff(targets, 3, axis=0)).max(axis=1) / dt**3
    jumps, jerks = [], []
    for i, sw in enumerate(switches):
        end = switches[i + 1] if i + 1 < len(switches) else ticks
        jumps.append(np.nanmax(d2[sw:end]))
        jerks.append(np.nanmax(d3[sw : sw + 3]))
    first_use: dict[int, int] = {}
    for t, v in enumerate(version):
        if v > 0 and v not in first_use:
            first_use[v] = t
    reactions = np.array([first_use[v] - obs_of[v] for v in first_use])
    return SeamRun(
        strategy,
        latency_ticks,
        np.array(jumps),
        np.array(jerks),
        np.array(gaps),
        int(sched.counters["starved_ticks"]),
        reactions,
        int(sched.counters["seams_blended"]),
        len(switches),
        int(sched.counters["chunks_expired"]),
    )


# ----------------------------------------------------------------------------------------- faults


@dataclass
class FaultResult:
    name: str
    detection_ticks: int | None
    peak_acc: float
    peak_jerk: float
    ending: str  # "stopped" (held at rest) or "running"
    limits_held: bool
    note: str


def _limits_held(rig: Rig, q: np.ndarray) -> bool:
    lim = rig.config.limit_arrays()
    dt = rig.controller.dt
    q = q[~np.isnan(q).any(axis=1)]
    tol = 1 + 1e-6
    v = np.abs(np.diff(q, 1, axis=0)) / dt
    a = np.abs(np.diff(q, 2, axis=0)) / dt**2
    j = np.abs(np.diff(q, 3, axis=0)) / dt**3
    return bool(
        (v <= lim.v_max * tol).all()
        and (a <= np.minimum(lim.a_max, lim.d_max) * tol + 1e-9).all()
        and (j <= lim.j_max * tol + 1e-6).all()
        and (q >= lim.q_min - 1e-9).all()
        and (q <= lim.q_max + 1e-9).all()
    )


def run_fault(
    name: str, warm_ticks: int = 1000, after_ticks: int = 1200
) -> tuple[FaultResult, Rig, np.ndarray]:
    """Run one scenario; returns the result row, the rig and the full command stream."""
    spec = FAULTS[name]
    rig = build_rig(latency_ticks=spec.latency, deadline_s=spec.deadline_s)
    log0 = rig.replay.run(warm_ticks)
    t_fault = warm_ticks
    c = rig.controller
    base = {k: v for k, v in c.counters.items()}
    base_sched = dict(c.scheduler.counters)
    spec.inject(rig, t_fault)
    detected: list[int] = []

    def watch(tick: int) -> None:
        if detected:
            return
        changed = any(c.counters[k] != base[k] for k in spec.counters) or any(
            c.scheduler.counters[k] != base_sched[k] for k in spec.sched_counters
        )
        if changed or (spec.detect_hold and c.filter.holding) or c.filter.fault is not None:
            detected.append(tick)

    log1 = rig.replay.run(after_ticks, after_tick=watch)
    q = np.concatenate([log0.q_cmd, log1.q_cmd])
    dt = c.dt
    seg = q[t_fault - 3 :]
    seg = seg[~np.isnan(seg).any(axis=1)]
    acc = float(np.abs(np.diff(seg, 2, axis=0)).max() / dt**2)
    jerk = float(np.abs(np.diff(seg, 3, axis=0)).max() / dt**3)
    at_rest = bool(np.abs(log1.v_cmd[-50:]).max() == 0.0)
    result = FaultResult(
        name=name,
        detection_ticks=(detected[0] - t_fault) if detected else None,
        peak_acc=acc,
        peak_jerk=jerk,
        ending="stopped" if at_rest else "running",
        limits_held=_limits_held(rig, q),
        note=spec.note,
    )
    return result, rig, q


@dataclass
class FaultSpec:
    inject: Callable[[Rig, int], None]
    note: str
    counters: tuple[str, ...] = ()
    sched_counters: tuple[str, ...] = ()
    detect_hold: bool = True
    latency: int = 20
    deadline_s: float = math.inf


def _model_raises(times: int | None) -> Callable[[Rig, int], None]:
    def inject(rig: Rig, tick: int) -> None:
        model = rig.worker.model
        left = [times]

        def failing(req: InferenceRequest):  # type: ignore[no-untyped-def]
            if left[0] is None or left[0] > 0:
                if left[0] is not None:
                    left[0] -= 1
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return model(req)

        rig.worker.model = failing

    return inject


def _model_output(kind: str, times: int | None) -> Callable[[Rig, int], None]:
    def inject(rig: Rig, tick: int) -> None:
        model = rig.worker.model
        left = [times]

        def bad(req: InferenceRequest):  # type: ignore[no-untyped-def]
            out = model(req)
            if left[0] is None or left[0] > 0:
                if left[0] is not None:
                    left[0] -= 1
                if kind == "nan":
                    out.actions[3:, 2] = np.nan
                elif kind == "inf":
                    out.actions[5, 0] = np.inf
                else:
                    out.actions = out.actions[:, :-1]
            return out

        rig.worker.model = bad

    return inject


def _slow(rig: Rig, tick: int) -> None:
    chunk = rig.controller.scheduler.chunk_ticks
    rig.worker.latency_ticks = int(1.5 * chunk)


def _kill(rig: Rig, tick: int) -> None:
    rig.replay.at(tick, lambda r: r.c.worker.kill())  # type: ignore[attr-defined]


def _cameras_stop(rig: Rig, tick: int) -> None:
    rig.replay.images_enabled = False


def _joints_stop(rig: Rig, tick: int) -> None:
    rig.replay.joints_enabled = False


def _joints_missing(rig: Rig, tick: int) -> None:
    rig.replay.joint_names = rig.replay.joint_names[:-1]


def _joints_extra_reordered(rig: Rig, tick: int) -> None:
    names = list(reversed(rig.replay.joint_names))
    rig.replay.joint_names = [*names[:3], "gripper_finger_joint1", *names[3:]]


def _stamps_jump_back(rig: Rig, tick: int) -> None:
    rig.replay.stamp_offset = -50.0


def _stamps_jump_forward(rig: Rig, tick: int) -> None:
    rig.replay.stamp_offset = 3600.0


def _estop(rig: Rig, tick: int) -> None:
    rig.controller.on_estop(True)


def _rearm(rig: Rig, tick: int) -> None:
    rig.controller.on_estop(True)
    results: list[tuple[bool, str]] = []
    rig.replay.at(tick + 400, lambda r: r.c.on_estop(False))
    rig.replay.at(tick + 450, lambda r: results.append(r.c.rearm()))
    rig.rearm_results = results  # type: ignore[attr-defined]


def _hang(rig: Rig, tick: int) -> None:
    rig.replay.at(tick, lambda r: r.c.worker.hang() if r.c.worker.busy else None)  # type: ignore[attr-defined]
    rig.worker.latency_ticks = 10**6


FAULTS: dict[str, FaultSpec] = {
    "model_exception_once": FaultSpec(
        _model_raises(2),
        "2 exceptions: dropped, counted; current chunk continues",
        ("model_errors",),
        (),
        False,
    ),
    "model_exception_repeated": FaultSpec(
        _model_raises(None), "every call raises: fault latched after 5 in a row", ("model_errors",)
    ),
    "nan_output_once": FaultSpec(
        _model_output("nan", 1),
        "one NaN chunk rejected whole; operation continues",
        ("rejected_nonfinite",),
        (),
        False,
    ),
    "inf_output_repeated": FaultSpec(
        _model_output("inf", None), "Inf in every chunk: latched", ("rejected_nonfinite",)
    ),
    "wrong_shape_repeated": FaultSpec(
        _model_output("shape", None), "wrong action shape: latched", ("rejected_shape",)
    ),
    "inference_slower_than_chunk": FaultSpec(
        _slow,
        "latency 1.5x chunk: each chunk runs out before the next arrives, the arm brakes to hold; the "
        "next chunk (computed at rest) runs from its arrival: stop-and-go (moving ~60 % of the time), no fault",
        (),
        ("chunks_expired", "starved_ticks"),
    ),
    "inference_hang": FaultSpec(
        _hang,
        "request never returns: chunk runs out (starvation), deadline latches",
        (),
        ("starved_ticks",),
        deadline_s=0.5,
    ),
    "worker_killed": FaultSpec(_kill, "scripted worker crash: detected by check(), latched", ()),
    "camera_frames_stop": FaultSpec(
        _cameras_stop,
        "images stale after 0.5 s: no new requests, chunk runs out, hold",
        (),
        ("starved_ticks",),
    ),
    "joint_states_stop": FaultSpec(_joints_stop, "state older than max_state_age_s: filter brakes", ()),
    "joint_states_missing_joint": FaultSpec(
        _joints_missing,
        "messages rejected (missing joint): state goes stale, brake",
        ("joint_state_rejected",),
    ),
    "joint_states_extra_reordered": FaultSpec(
        _joints_extra_reordered, "matched by name: no effect", ("joint_state_rejected",), (), False
    ),
    "stamps_jump_back": FaultSpec(
        _stamps_jump_back,
        "older stamps rejected until stale, then accepted as a restart",
        ("joint_state_rejected",),
    ),
    "stamps_jump_forward": FaultSpec(
        _stamps_jump_forward, "ages come from arrival time: no effect", ("joint_state_rejected",), (), False
    ),
    "estop_while_moving": FaultSpec(_estop, "latched next tick, jerk-limited brake to hold", ("estops",)),
    "rearm_after_fault": FaultSpec(_rearm, "e-stop, release, re-arm at rest: motion resumes", ("estops",)),
}


def format_faults(rows: list[FaultResult]) -> str:
    lines = [
        "| fault | detection (ticks) | peak abs acc (rad/s^2) | peak abs jerk (rad/s^3) | ends | limits held | what happens |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        det = "-" if r.detection_ticks is None else str(r.detection_ticks)
        lines.append(
            f"| {r.name} | {det} | {r.peak_acc:.2f} | {r.peak_jerk:.0f} | {r.ending} | "
            f"{'yes' if r.limits_held else 'NO'} | {r.note} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control bench scheduler", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="fr3", help="preset name or deployment YAML (default fr3)")
    ap.add_argument("--seconds", type=float, default=20.0, help="simulated seconds per run")
    ap.add_argument(
        "--noise-rad", type=float, default=0.005, help="per-chunk disagreement of the model (rad)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", action="store_true", help="run the fault scenarios instead")
    ap.add_argument("--write-md", default="", help="with --faults: write the table to this markdown file")
    args = ap.parse_args(argv)
    cfg = load_config(preset_path(args.config))

    if args.faults:
        rows = []
        for name in FAULTS:
            rows.append(run_fault(name)[0])
        table = format_faults(rows)
        print(table)
        if args.write_md:
            with open(args.write_md, "w", encoding="utf-8") as f:
                f.write(_FAULTS_MD_HEAD + table + "\n" + _FAULTS_MD_TAIL)
        held = all(r.limits_held for r in rows)
        det = [r.detection_ticks for r in rows if r.detection_ticks is not None]
        print(
            f"faults={len(rows)} limits_held={int(held)} detection_ticks_max={max(det)} "
            f"peak_acc_max={max(r.peak_acc for r in rows):.2f} peak_jerk_max={max(r.peak_jerk for r in rows):.0f}"
        )
        return 0 if held else 1

    contract = make_contract(cfg)
    chunk_ticks = (contract.horizon - 1) * contract.action_dt * cfg.control_hz
    fractions = (0.0, 0.1, 0.2, 0.3, 0.4)
    ticks = int(args.seconds * cfg.control_hz)
    t0 = time.perf_counter()
    runs: dict[str, list[SeamRun]] = {s: [] for s in STRATEGIES}
    print(
        f"chunk: H={contract.horizon} action_dt={contract.action_dt}s -> {chunk_ticks:g} ticks at "
        f"{cfg.control_hz:g} Hz; model disagreement {args.noise_rad} rad/chunk; {args.seconds:g} s per run"
    )
    print(
        f"{'strategy':<15} {'lat%':>4} {'lat':>4} {'seams':>5} {'jump_p50':>10} {'jump_p95':>10} "
        f"{'gap_p95':>9} {'jerk_p95':>9} {'blended':>7} {'starved':>7} {'react_p99':>9}"
    )
    for frac in fractions:
        lat = max(1, int(round(frac * chunk_ticks)))
        for strategy in STRATEGIES:
            r = simulate(cfg, strategy, lat, ticks, args.noise_rad, args.seed)
            runs[strategy].append(r)
            print(
                f"{strategy:<15} {frac * 100:>4.0f} {lat:>4} {r.switches:>5} {np.median(r.seam_jumps):>10.2e} "
                f"{np.percentile(r.seam_jumps, 95):>10.2e} {np.percentile(r.seam_gaps, 95):>9.2e} "
                f"{np.percentile(r.seam_jerks, 95):>9.0f} "
                f"{r.blended:>7} {r.starved_ticks:>7} {np.percentile(r.reactions, 99):>9.0f}"
            )
    # Latency beyond the chunk: starvation is expected and braking takes over.
    over = simulate(cfg, "ours", int(1.2 * chunk_ticks), ticks, args.noise_rad, args.seed)
    print(
        f"ours at latency 1.2x chunk ({int(1.2 * chunk_ticks)} ticks): chunks_expired={over.expired} "
        f"chunks_used={len(over.reactions)} (every chunk ends before it arrives: no target, the filter holds)"
    )

    def pool(strategy: str, attr: str) -> np.ndarray:
        return np.concatenate([getattr(r, attr) for r in runs[strategy]])

    jn = float(np.percentile(pool("naive", "seam_jumps"), 95))
    jb = float(np.percentile(pool("fixed_blend", "seam_jumps"), 95))
    jo = float(np.percentile(pool("ours", "seam_jumps"), 95))
    jnp = float(np.percentile(pool("ours_no_prefix", "seam_jumps"), 95))
    jm = float(np.percentile(pool("no_prefix_model", "seam_jumps"), 95))
    gm = float(np.percentile(pool("no_prefix_model", "seam_gaps"), 95))
    starv_m = sum(r.starved_ticks for r in runs["no_prefix_model"])
    gn = float(np.percentile(pool("naive", "seam_gaps"), 95))
    go = float(np.percentile(pool("ours", "seam_gaps"), 95))
    gnp = float(np.percentile(pool("ours_no_prefix", "seam_gaps"), 95))
    react = pool("ours", "reactions")
    lat_of = np.concatenate([np.full(len(r.reactions), max(1, r.latency_ticks)) for r in runs["ours"]])
    excess = int((react - lat_of).max())
    starv = sum(r.starved_ticks for r in runs["ours"])
    print(
        f"seam_jump_naive={jn:.3e} seam_jump_blend={jb:.3e} seam_jump_ours={jo:.3e} "
        f"seam_jump_ours_no_prefix={jnp:.3e} seam_ratio={jo / jn:.4f} seam_gap_naive={gn:.3e} "
        f"seam_gap_ours={go:.3e} seam_gap_ours_no_prefix={gnp:.3e} seam_jump_no_prefix_model={jm:.3e} "
        f"seam_gap_no_prefix_model={gm:.3e} starvations_no_prefix_model={starv_m} starvations={starv} "
        f"reaction_ticks_p99={float(np.percentile(react, 99)):.0f} reaction_minus_delay_ticks_max={excess} "
        f"wall_s={time.perf_counter() - t0:.1f}"
    )
    return 0


_FAULTS_MD_HEAD = """# Fault scenarios (controller replay, real safety filter)

Generated by `wam-control bench scheduler --faults --write-md docs/benchmarks/faults.md` (the same
scenarios are asserted by `test/test_runtime_faults.py`). FR3 preset, 500 Hz, a reference-motion model
with 20 ticks of scripted latency, a first-order plant; the fault is injected after 1000 ticks (2 s) of
motion and the run continues for 1200 ticks. Detection = ticks from the injection until the controller
reacted (counter, brake or latched fault). Peak |acc| / |jerk| are backward differences of the command
stream from the injection on (FR3 limits: 10 rad/s^2, 5000 rad/s^3). "ends": stopped = held at rest
(v = 0 for the last 50 ticks), running = still following the model. The worker crash here is the
scripted worker's crash path; the real ProcessWorker is killed with SIGKILL in
`test_runtime_faults.py::test_process_worker_killed_latches_and_stops`.

"""

_FAULTS_MD_TAIL = """
Reading it: peak |acc| = 10 and |jerk| = 5000 are FR3's limits: the safety filter brakes to hold at its
full (certified) deceleration and jerk, never beyond them ("limits held" checks every tick of the
stream). Scenarios that continue show the motion's own values. Detection for camera_frames_stop is the
image timeout (250 ticks) plus what is left of the chunk being executed; for inference_slower_than_chunk
and inference_hang it is the moment the current chunk runs out (starvation).

inference_slower_than_chunk ends "running": the controller does not freeze. A chunk computed while the
arm moved arrives after its own last action (expired) or nearly so, the arm brakes to hold when it runs
out, and the request made while holding is executed from its arrival (nothing moved while the model
thought), so the arm moves again: stop-and-go, like the sync baseline of `bench closed-loop`. No fault
is latched because nothing is wrong with the outputs; `status()` warns ("starving") while it holds.

The real ProcessWorker killed with SIGKILL (`test_process_worker_killed_latches_and_stops`) was
detected 1 tick after the kill (pipe EOF seen by `check()`), latched, and braked to hold within the
limits.
"""
