"""`wam-control bench jitter`: control-loop lateness while the model runs flat out, thread vs process.

Three variants of the same tick run on the same `FixedRateLoop` in one run:
- baseline: the per-tick work of the controller without inference (joint state into the buffers, an
  image every ~30 Hz, the safety filter step on a moving target);
- thread: the same, plus a `ThreadWorker` kept busy (a new request as soon as the previous answer is
  polled, so the model runs back to back);
- process: the same with a `ProcessWorker` (spawned child, shared memory).

Both workers are started and warm before measuring. The measured time per variant is split into
`--repeats` segments run interleaved (order rotated each round) so that load from neighbours hits all
variants alike; each variant's figure is the median over its segments of the per-segment p99 lateness.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODES = ("baseline", "thread", "process")


class _Tick:
    """One controller-like tick; `worker` None is the baseline."""

    def __init__(self, config: Any, contract: Any, worker: Any, clock: Any) -> None:
        from wam_control.runtime.buffers import ObservationBuffers, ObservationSnapshot
        from wam_control.runtime.safety import SafetyFilter
        from wam_control.runtime.worker import InferenceRequest

        self.clock = clock
        self.worker = worker
        self.names = list(config.joint_names)
        hw = (contract.image_height, contract.image_width)
        self.buffers = ObservationBuffers(
            contract.joint_names, contract.camera_names, hw, clock, config.timeouts
        )
        self.snap = ObservationSnapshot(contract.num_cameras, hw, contract.num_joints)
        lim = config.limit_arrays()
        self.center = np.where(np.isfinite(lim.q_min + lim.q_max), 0.5 * (lim.q_min + lim.q_max), 0.0)
        self.filter = SafetyFilter(lim, config.safety, config.control_period, config.joint_names)
        self.filter.reset(self.center)
        self.q_meas = self.center.copy()
        self.target = self.center.copy()
        self.phase = np.linspace(0.0, math.pi, len(self.names))
        self.image = np.random.default_rng(0).integers(0, 256, (*hw, 3), np.uint8)
        self.cameras = list(contract.camera_names)
        self.prefix = np.zeros((contract.horizon, contract.num_joints), np.float32)
        self.request = InferenceRequest(0, 0, self.snap.images, self.snap.state, self.prefix, 0)
        self.dt = config.control_period
        self.image_every = max(1, round(1.0 / (30.0 * self.dt)))
        self.results = 0
        self.errors = 0
        self.busy_ticks = 0
        self.t0 = clock.now()

    def __call__(self, k: int) -> None:
        now = self.clock.now()
        self.q_meas[:] = self.filter.q
        self.buffers.put_joint_state(self.names, self.q_meas, None, now)
        if k % self.image_every == 0:
            for cam in self.cameras:
                self.buffers.put_image(cam, self.image, now)
        w = self.worker
        if w is not None:
            w.check(now)
            res = w.poll()
            if res is not None:
                if res.output is None:
                    self.errors += 1
                else:
                    self.results += 1
            if w.busy:
                self.busy_ticks += 1
            elif self.buffers.snapshot(self.snap):
                req = self.request
                req.request_id += 1
                req.obs_tick = k
                w.submit(req)
        t = k * self.dt
        np.sin(self.phase + 2.0 * math.pi * 0.5 * t, out=self.target)
        self.target *= 0.3
        self.target += self.center
        self.filter.step(self.target, self.q_meas, 0.0)


def _default_model(config: Any) -> Path:
    from wam_control.model.export import make_test_model

    cache = Path(tempfile.gettempdir()) / "wam_control_bench"
    cache.mkdir(parents=True, exist_ok=True)
    return make_test_model(
        cache / "jitter_model.onnx", joint_names=config.joint_names, camera_names=("scene",)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wam-control bench jitter", description=__doc__.splitlines()[0])
    p.add_argument("--hz", type=float, default=500.0, help="control rate (Hz)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per variant (s)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved segments per variant")
    p.add_argument("--config", default="fr3", help="preset name or deployment YAML (joints, limits, loop)")
    p.add_argument("--model", default="", help="ONNX model (default: a random-init test model, built once)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the backend")
    p.add_argument(
        "--spin-us",
        type=float,
        default=None,
        help="hybrid-sleep spin before each deadline (us); default: the config's loop.spin_s. 0 = pure "
        "sleep, which exposes wake-up latency and GIL contention that the spin otherwise hides",
    )
    args = p.parse_args(argv)
    if args.repeats < 1 or args.seconds <= 0 or args.hz <= 0:
        p.error("--repeats must be >= 1 and --seconds, --hz > 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from wam_control.config import load_config
    from wam_control.config.presets import preset_path
    from wam_control.policy import read_contract
    from wam_control.runtime.clock import MonotonicClock
    from wam_control.runtime.loop import FixedRateLoop
    from wam_control.runtime.worker import make_worker

    cfg_path = Path(args.config) if args.config.endswith((".yaml", ".yml")) else preset_path(args.config)
    config = load_config(cfg_path)
    if args.spin_us is not None:
        config = dataclasses.replace(
            config, loop=dataclasses.replace(config.loop, spin_s=args.spin_us * 1e-6)
        )
    model = Path(args.model) if args.model else _default_model(config)
    contract = read_contract(model)
    clock = MonotonicClock()
    options = {"providers": "cpu", "intra_op_threads": args.threads} if args.backend == "onnxruntime" else {}
    workers = {
        mode: make_worker(
            mode,  # type: ignore[arg-type]
            model,
            contract,
            clock,
            deadline_s=config.timeouts.inference_deadline_s,
            backend=args.backend,
            backend_options=options,
        )
        for mode in ("thread", "process")
    }
    try:
        for w in workers.values():
            w.start()
        for mode, w in workers.items():
            if not w.wait_ready(300.0):
                print(f"error: {mode} worker did not become ready: {w.health()}", file=sys.stderr)
                return 1
        print(f"model={model} backend={workers['thread'].health()['backend']}")
        ticks = max(1, round(args.seconds * args.hz / args.repeats))
        p99: dict[str, list[float]] = {m: [] for m in MODES}
        p50: dict[str, list[float]] = {m: [] for m in MODES}
        late_max: dict[str, list[float]] = {m: [] for m in MODES}
        misses: dict[str, int] = dict.fromkeys(MODES, 0)
        infer_rate: dict[str, list[float]] = {m: [] for m in MODES}
        busy: dict[str, list[float]] = {m: [] for m in MODES}
        errors: dict[str, int] = dict.fromkeys(MODES, 0)
        for r in range(args.repeats):
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                tick = _Tick(config, contract, workers.get(mode), clock)
                loop = FixedRateLoop(args.hz, tick, clock=clock, loop=config.loop, name=f"jitter-{mode}")
                st = loop.run(max_ticks=ticks)
                # Let an in-flight request finish so that the next segment starts from an idle worker.
                w = workers.get(mode)
                if w is not None and w.busy:
                    w.wait_result(config.timeouts.inference_deadline_s + 1.0)
                p99[mode].append(st.late_p99_us)
                p50[mode].append(st.late_p50_us)
                late_max[mode].append(st.late_max_us)
                misses[mode] += st.misses
                infer_rate[mode].append(tick.results / (ticks / args.hz))
                busy[mode].append(tick.busy_ticks / ticks)
                errors[mode] += tick.errors
        for mode in MODES:
            line = (
                f"mode={mode} p50_late_us={statistics.median(p50[mode]):.1f} "
                f"p99_late_us={statistics.median(p99[mode]):.1f} "
                f"p99_late_us_segments=[{','.join(f'{x:.0f}' for x in p99[mode])}] "
                f"max_late_us={max(late_max[mode]):.0f} misses={misses[mode]}"
            )
            if mode != "baseline":
                h = workers[mode].health()
                line += (
                    f" inferences_per_s={statistics.median(infer_rate[mode]):.1f}"
                    f" worker_busy_frac={statistics.median(busy[mode]):.2f} errors={errors[mode]}"
                    f" restarts={h['restarts']}"
                )
            print(line)
    finally:
        for w in workers.values():
            w.close()
    base = statistics.median(p99["baseline"])
    thr = statistics.median(p99["thread"])
    proc = statistics.median(p99["process"])
    best = "thread" if thr <= proc else "process"
    # With the hybrid spin, p99 lateness is a fraction of a microsecond in every mode: there the
    # ratio is quantisation noise, so the absolute excess over the baseline is printed as well.
    print(
        f"spin_us={config.loop.spin_s * 1e6:.0f} baseline_p99_late_us={base:.1f} thread_p99_late_us={thr:.1f} "
        f"process_p99_late_us={proc:.1f} thread_excess_us={thr - base:.1f} process_excess_us={proc - base:.1f} "
        f"thread_ratio={thr / base:.3f} process_ratio={proc / base:.3f} best_mode={best} "
        f"best_within_10pct={int(min(thr, proc) <= 1.1 * base)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
