"""`wam-control demo`: the MuJoCo arm, the controller and the bundled model, closed loop, one machine.

    wam-control demo                        # 5 reach episodes, real time, plots under out/demo/
    wam-control demo --episodes 2 --record  # also write each episode as a ROS 2 bag

What runs (default `--clock realtime`): one process. The runtime `Controller` is ticked by the real
`FixedRateLoop` at the configured control rate on the monotonic clock; the model runs in the real
asynchronous `ThreadWorker`, so chunks execute while the next one is computed; the sim is stepped
to the control clock each tick, its joint states and camera frames go in through
`Controller.on_joint_state` / `on_image` (the calls the DDS and rclpy adapters make), and the
commands it gets back drive its position servos. A camera thread renders frames from snapshots of the
sim, so the loop never waits for a render. Only message serialization is left out.

`--transport dds` runs the product path instead: the sim bridge (Gazebo's topics, real time) in this
process and `wam-control run --config ...` as a separate process per episode, over Cyclone DDS on
loopback in a private domain; success comes from the sim, controller health from its /diagnostics.
`--transport ros` is the same with the rclpy lifecycle node `wam_controller` as the controller (ROS 2's
default middleware, Fast DDS, talking to the Cyclone sim), started with the parameters robot.launch.py
gives it and configured/activated through its lifecycle services from this process, as launch does.

`--clock lockstep` runs the same episodes on a simulated clock instead (deterministic, needs no spare
CPU): the real model is called through the replay `ScriptedWorker`, and its measured latency is
mapped to a fixed number of ticks.

A model that takes a language prompt and drives the gripper (contract v2, config/fr3_hand.yaml) runs a
prompted mix of tasks by default (`DEFAULT_MIX`: reach, push and pick_place); `--tasks` picks another
mix (`reach,push,pick_place:2`: a count per task, else `--episodes` or 1). Each episode's task prompt
goes to the controller through the path `~/instruction` takes (inproc: policy.instruction's
InstructionInput; dds/ros: std_msgs/String published on the controller's ~/instruction before it
starts), and the summary has a line per task. The default configuration is `DEFAULT_CONFIG`.

Evaluation seeds start at 100000; training data uses seeds 0-9999.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.closedloop import (
    EVAL_SEED_BASE,
    EpisodeResult,
    percentile,
    summarize,
    surprise_summary,
)

DEFAULT_OUT = Path("out/demo")
DEFAULT_CONFIG = "fr3_hand"
"""The demo's configuration (preset name or YAML) when --config is not given. Its inference.model is the
demo's model: config/fr3_hand.yaml's prompted multi-task model with the gripper, so the demo runs
`DEFAULT_MIX`; `--config fr3` runs the single-task reach model (5 reach episodes)."""
DEFAULT_MIX = "reach,push,pick_place:2"
"""The tasks (and episodes of each) run by default when the model takes a prompt and has the gripper."""
TASK_CHOICES = ("reach", "push", "pick_place")


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="wam-control demo", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="closed-loop episodes (default 5; with a mix: per task without a count, default 1)",
    )
    ap.add_argument(
        "--seed", type=int, default=EVAL_SEED_BASE, help="seed of the first episode; episode i uses seed+i"
    )
    ap.add_argument(
        "--task", choices=TASK_CHOICES, default=None,
        help="one task (default: reach, or the prompted mix DEFAULT_MIX for a model with a prompt and the gripper)",
    )  # fmt: skip
    ap.add_argument(
        "--tasks",
        default=None,
        help=f"a mix of tasks, comma-separated, each with an optional episode count: e.g. {DEFAULT_MIX} "
        "(episodes run task by task; seeds count on over the whole mix)",
    )
    ap.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"deployment YAML or preset name (default {DEFAULT_CONFIG})"
    )
    ap.add_argument("--model", help="ONNX model (default: inference.model of the config, the bundled model)")
    ap.add_argument(
        "--backend",
        default=None,
        help="auto|onnxruntime|tensorrt|torch|triton (default: the config's; triton: a local Triton server "
        "runs the model, split deployment on one machine)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder for plots and bags")
    ap.add_argument(
        "--transport",
        choices=("inproc", "dds", "ros"),
        default="inproc",
        help="inproc: sim and controller in one process (plots, bags); dds: the product path, the sim "
        "bridge here and `wam-control run` in its own process, over Cyclone DDS on loopback; ros: the "
        "same with the rclpy lifecycle node wam_controller (needs rclpy), driven as robot.launch.py does",
    )
    ap.add_argument("--clock", choices=("realtime", "lockstep"), default="realtime")
    ap.add_argument(
        "--domain-id",
        type=int,
        default=None,
        help="with --transport dds: DDS domain (default: a private one, 100 + pid %% 100, so the demo never "
        "talks to a ROS 2 system on this host)",
    )
    ap.add_argument(
        "--startup-timeout-s",
        type=float,
        default=60.0,
        help="with --transport dds: how long to wait for the controller's first command (default 60)",
    )
    ap.add_argument(
        "--horizon-s", type=float, default=None, help="episode length limit (default: the task's)"
    )
    ap.add_argument(
        "--record", action="store_true", help="write every episode as a ROS 2 bag under OUT/bags/"
    )
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--no-surprise",
        action="store_true",
        help="run without the world-model surprise monitor even when the config enables it and the "
        "model has a calibration file (<model>.surprise.json)",
    )
    args = ap.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if args.task is not None and args.tasks is not None:
        ap.error("give --task or --tasks, not both")
    if args.tasks is not None:
        try:
            parse_tasks(args.tasks, args.episodes or 1)
        except ValueError as exc:
            ap.error(str(exc))
    if args.transport in ("dds", "ros"):
        # The controller is a separate process that runs the configuration as deployed: what this
        # process can observe is the sim, the topics and /diagnostics.
        for flag, used in (("--clock lockstep", args.clock == "lockstep"), ("--record", args.record),
                           ("--no-surprise", args.no_surprise)):  # fmt: skip
            if used:
                ap.error(f"{flag} works with --transport inproc only")
        if args.transport == "ros":
            try:
                import rclpy  # noqa: F401
            except ImportError:
                ap.error("--transport ros needs rclpy: pip install 'wam_control[ros]' or source ROS 2")
    return args


def _say(msg: str) -> None:
    print(msg, flush=True)


def parse_tasks(text: str, default_count: int) -> list[tuple[str, int]]:
    """`"reach,push,pick_place:2"` -> [("reach", n), ("push", n), ("pick_place", 2)], n = default_count."""
    out: list[tuple[str, int]] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        name = name.strip()
        if name not in TASK_CHOICES:
            raise ValueError(f"--tasks: unknown task {name!r}; expected some of {', '.join(TASK_CHOICES)}")
        try:
            n = int(count) if count.strip() else int(default_count)
        except ValueError:
            raise ValueError(f"--tasks: {item!r}: the count after ':' must be an integer") from None
        if n < 1:
            raise ValueError(f"--tasks: {item!r}: the count must be >= 1")
        out.append((name, n))
    if not out:
        raise ValueError("--tasks: no task given")
    return out


def prompted_gripper(config: Any, contract: Any) -> bool:
    """The model takes a language prompt and commands a gripper the configuration maps to the sim's hand:
    what the prompted mix needs."""
    from wam_control.sim.arm import FINGER_NAMES

    if not contract.has_instruction:
        return False
    return any(n in config.extra_dofs and config.extra_joint(n) in FINGER_NAMES for n in contract.extra_actions)


def demo_plan(args: argparse.Namespace, config: Any, contract: Any) -> list[tuple[str, int]]:
    """(task, episodes) in the order they run: --tasks, else --task, else `DEFAULT_MIX` for a model with
    a prompt and the gripper, else reach; --episodes is the count of a single task (default 5) and of
    each task of a mix that gives none."""
    if args.tasks is not None:
        return parse_tasks(args.tasks, args.episodes or 1)
    if args.task is not None:
        return [(args.task, args.episodes or 5)]
    if prompted_gripper(config, contract):
        mix = parse_tasks(DEFAULT_MIX, 1)
        return mix if args.episodes is None else [(t, args.episodes) for t, _ in mix]
    return [("reach", args.episodes or 5)]


def _episodes(args: argparse.Namespace, plan: list[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    """Per task of the plan, its seeds: counting on from --seed over the whole plan."""
    out, seed = [], args.seed
    for task, n in plan:
        out.append((task, list(range(seed, seed + n))))
        seed += n
    return out


def _plan_label(plan: list[tuple[str, int]]) -> str:
    return plan[0][0] if len(plan) == 1 else "mix of " + ", ".join(f"{t} x{n}" for t, n in plan)


class _Progress:
    """One status line per episode, rewritten in place on a terminal."""

    def __init__(self, n: int, tasks: bool = False) -> None:
        self.n = n
        self.tty = sys.stdout.isatty()
        self.i = 0
        self.tasks = tasks
        """Name each episode's task (a mix)."""

    def _what(self, task: str) -> str:
        """The task and a space before the seed, in a mix ("" otherwise)."""
        return f"{task} " if (self.tasks and task) else ""

    @staticmethod
    def _prompt(prompt: str, extras: str = "") -> str:
        return (f"; prompt {prompt!r}" if prompt else "") + (f" {extras}" if extras else "")

    def __call__(self, ep: Any) -> None:
        if not self.tty:
            return
        info = ep.arm.task.info()
        line = (
            f"  episode {self.i + 1}/{self.n}  t={ep.last_tick * ep.dt:5.2f} s  "
            f"distance={float(info.get('distance', math.nan)) * 100:5.1f} cm  chunks={ep.c.scheduler.version}"
        )
        print("\r" + line, end="", flush=True)

    def dds(self, arm: Any, t: float) -> None:
        if not self.tty:
            return
        info = arm.task.info()
        line = (
            f"  episode {self.i + 1}/{self.n}  t={t:5.2f} s  "
            f"distance={float(info.get('distance', math.nan)) * 100:5.1f} cm"
        )
        print("\r" + line, end="", flush=True)

    def done_dds(self, r: Any) -> None:
        end = "\r" if self.tty else ""
        how = (
            f"success at {r.task_time_s:.2f} s"
            if r.success
            else f"failed (distance {r.final_distance_m * 100:.1f} cm)"
        )
        grip = f", {r.gripper_commands} gripper commands" if r.has_hand else ""
        print(
            f"{end}  episode {self.i + 1}/{self.n} {self._what(r.task)}seed={r.seed}: {how}; "
            f"{r.commands} commands at {r.command_rate_hz:.0f} Hz{grip}, controller up in {r.startup_s:.1f} s, "
            f"exit code {r.controller_rc}" + self._prompt(r.prompt) + " " * 10,
            flush=True,
        )
        self.i += 1

    def done(self, r: EpisodeResult) -> None:
        end = "\r" if self.tty else ""
        how = (
            f"success at {r.task_time_s:.2f} s"
            if r.success
            else f"failed (distance {r.final_distance_m * 100:.1f} cm)"
        )
        from wam_control.closedloop import describe_extras

        print(
            f"{end}  episode {self.i + 1}/{self.n} {self._what(r.task)}seed={r.seed}: {how}; "
            f"{r.chunks} chunks, {r.interventions_total} filter interventions, {r.starvation_events} starvations"
            + self._prompt(r.prompt, describe_extras(r.extras)) + " " * 10,
            flush=True,
        )
        self.i += 1


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    t_start = time.perf_counter()
    from wam_control.config import load_config, preset_path
    from wam_control.policy import check_contract, read_contract

    config = load_config(preset_path(args.config))
    model_path = Path(args.model or config.inference.model)
    if not model_path.is_file():
        print(
            f"wam-control demo: model file {model_path} not found. The bundled model ships as "
            f"models/wam_reach_wrist.onnx (inference.model in {config.source}); pass --model PATH to use another.",
            file=sys.stderr,
        )
        return 2
    contract = read_contract(model_path)
    check_contract(contract, config)
    plan = demo_plan(args, config, contract)
    groups = _episodes(args, plan)
    args.task = _plan_label(plan)
    args.episodes = sum(n for _, n in plan)
    mixed = len(plan) > 1
    backend = args.backend or config.inference.backend
    if backend == "triton" and args.transport == "inproc":
        config = _local_triton(config, model_path)
    from wam_control.runtime.builder import Overrides, resolve

    # The demo is the product's first command: without a calibration file it runs without the monitor
    # (explicitly, and says so); a file beside the model that does not fit it is reported, not fatal.
    surprise_mode = "off" if args.no_surprise else "if_calibrated"
    spec = None
    try:
        spec = resolve(config, model_path, Overrides(backend=backend, worker="thread", surprise=surprise_mode,
                                                     imagination=False))  # fmt: skip
        surprise_off = spec.surprise_note
    except ValueError as exc:  # CalibrationError / DecoderError
        surprise_off = f"OFF: {exc}"
    if spec is None:
        spec = resolve(config, model_path, Overrides(backend=backend, worker="thread", surprise="off",
                                                     imagination=False))  # fmt: skip
    if args.no_surprise:
        surprise_off = "off"
    surprise = spec if spec.calibration is not None else None
    what = (
        f"{args.episodes} episodes, a {'prompted ' if contract.has_instruction else ''}{args.task}"
        if mixed
        else f"{args.episodes} {args.task} episode(s)"
    )
    _say(
        f"wam-control demo: {what}, seeds {args.seed}..{args.seed + args.episodes - 1} "
        f"(evaluation seeds; training used 0-9999)\n"
        f"  model {model_path} ({contract.model_name}: {contract.horizon} actions x {contract.action_dt * 1e3:g} ms, "
        f"cameras {list(contract.camera_names)} {contract.image_height}x{contract.image_width})\n"
        f"  controller at {config.control_hz:g} Hz, {config.source}\n"
        f"  surprise monitor: "
        + (
            f"on (calibration {spec.calibration}, slow from score {config.surprise.slow_threshold:g}, "
            f"stop at {config.surprise.stop_threshold:g})"
            if surprise is not None
            else surprise_off
        )
    )
    if contract.has_instruction:
        _say(
            "  prompt: each episode's task prompt goes to the controller "
            + (
                f"as std_msgs/String on its ~/instruction ({_instruction_topic(config)}, reliable, transient "
                "local), published before the controller starts"
                if args.transport in ("dds", "ros")
                else "through the path ~/instruction takes (policy.instruction.InstructionInput)"
            )
        )
    if contract.extra_actions:
        _say(f"  extra DOFs: {', '.join(f'{n} -> {config.extra_joint(n)}' for n in contract.extra_actions)}")
    if args.transport in ("dds", "ros"):
        dds_results = _run_dds(args, config, contract, model_path, groups)
        args.out.mkdir(parents=True, exist_ok=True)
        lines = _dds_summary_lines(args, config, dds_results, mixed)
        dds_plots = [] if args.no_plots else _gripper_plot(args, [(e.task, e.seed, e.success, e.prompt, e.gripper)
                                                                 for e in dds_results])  # fmt: skip
        _say("")
        for line in lines:
            _say(line)
        if dds_plots:
            _say(f"plots: {', '.join(str(p) for p in dds_plots)}")
        _say(f"controller logs: {args.out / args.transport}/; wall time {time.perf_counter() - t_start:.1f} s")
        (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
        return 0
    if args.clock == "realtime":
        _say(
            "  one process, real time: FixedRateLoop -> Controller.tick, model in an async ThreadWorker, "
            "sim stepped to the control clock, inputs via on_joint_state/on_image (no serialization)"
        )
        results, describe, model_note = _run_realtime(args, spec, groups)
    else:
        _say(
            "  one process, lockstep: simulated clock, real model through a ScriptedWorker with a fixed "
            "latency in ticks (deterministic)"
        )
        results, describe, model_note = _run_lockstep(args, spec, groups)

    summary = summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = _summary_lines(args, config, results, summary, describe, model_note, mixed)
    plots: list[Path] = []
    if not args.no_plots:
        plots = _plots(args, spec, results)
    bags: list[Path] = []
    if args.record:
        bags = _record(args, config, contract, results)
    _say("")
    for line in lines:
        _say(line)
    if plots:
        _say(f"plots: {', '.join(str(p) for p in plots)}")
    if bags:
        _say(f"bags: {', '.join(str(p) for p in bags)}")
    if backend == "triton" and args.transport == "inproc":
        _say(_triton_split(config, model_path))
    _say(f"wall time {time.perf_counter() - t_start:.1f} s")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------


def _triton_split(config: Any, model_path: Path) -> str:
    """The server's own compute per request (Triton's statistics) beside the round trip reported above."""
    from wam_control.policy.triton_backend import TritonBackend, triton_options

    be = TritonBackend(model_path, **triton_options(config))
    try:
        st = be.server_statistics()
    finally:
        be.close()
    n = max(1.0, st.get("inference_count", 0.0))
    return (
        f"triton: the compute times above are round trips; server compute {st.get('compute_infer_ns', 0.0) / n / 1e6:.2f} ms "
        f"and queue {st.get('queue_ns', 0.0) / n / 1e6:.2f} ms per request, batch mean "
        f"{n / max(1.0, st.get('execution_count', 0.0)):.2f} over {int(n)} requests"
    )


def _local_triton(config: Any, model_path: Path) -> Any:
    """Start `wam-control serve` for the model on a free loopback port (stopped at exit); the config
    pointing inference.server at it."""
    import atexit
    import dataclasses

    from wam_control.serving.server import LocalServer

    server = LocalServer(model_path).start()
    atexit.register(server.close)
    _say(f"  split deployment on this machine: Triton server (wam-control serve) on {server.url}")
    return dataclasses.replace(config, inference=dataclasses.replace(config.inference, server=server.url))


def _run_realtime(
    args: argparse.Namespace, spec: Any, groups: list[tuple[str, list[int]]]
) -> tuple[list[EpisodeResult], str, str]:
    from wam_control.closedloop import RecordingWorker, make_arm, run_realtime_episodes
    from wam_control.runtime.builder import default_worker_factory
    from wam_control.runtime.clock import MonotonicClock

    config, contract = spec.config, spec.contract
    clock = MonotonicClock()
    worker = default_worker_factory(spec, clock)  # one thread worker for every episode
    rec = RecordingWorker(worker, contract, clock)
    rec.start()
    if not worker.wait_ready(120.0):
        raise RuntimeError(f"inference worker not ready: {worker.health().get('last_error', '')}")
    describe = str(worker.health().get("backend", ""))
    _say(
        f"  inference: {describe} (thread worker, releases GIL: {bool(worker.health().get('releases_gil'))})"
    )
    progress = _Progress(args.episodes, tasks=len(groups) > 1)
    results: list[EpisodeResult] = []
    try:
        for task, seeds in groups:  # one arm per task (its scene and objects), one worker for all
            arm = make_arm(config, contract, task, camera_hz=0.0)
            try:
                results += run_realtime_episodes(
                    arm, spec, rec, seeds, horizon_s=args.horizon_s, keep_images=True, progress=progress,
                    on_result=lambda _s, _m, r: progress.done(r),
                )  # fmt: skip
            finally:
                arm.close()
    finally:
        rec.close()
    return results, describe, "thread worker, real compute time"


def _run_lockstep(
    args: argparse.Namespace, spec: Any, groups: list[tuple[str, list[int]]]
) -> tuple[list[EpisodeResult], str, str]:
    from wam_control.closedloop import BackendModel, latency_ticks, make_arm, run_lockstep_episodes

    config, contract = spec.config, spec.contract
    be = spec.load_backend()
    describe = be.describe()
    model = BackendModel(be)
    from wam_control.policy import example_input

    t = []
    for j in range(30):  # measure the compute time once; it then is a fixed number of ticks
        t0 = time.perf_counter()
        be.infer(example_input(contract, seed=j))
        t.append(time.perf_counter() - t0)
    t = t[10:]
    compute_ms = float(np.median(t) * 1e3)
    lat = latency_ticks(compute_ms, 0.0, config.control_hz)
    _say(f"  inference: {describe}; measured {compute_ms:.2f} ms per call -> latency {lat} tick(s)")
    progress = _Progress(args.episodes, tasks=len(groups) > 1)
    n_calls = 0

    def done(_seed: int, _mode: str, r: EpisodeResult) -> None:
        nonlocal n_calls
        r.compute_s = np.asarray(model.compute_s[n_calls:])  # the backend's own time, this episode
        n_calls = len(model.compute_s)
        progress.done(r)

    results: list[EpisodeResult] = []
    try:
        for task, seeds in groups:  # one arm per task (its scene and objects)
            arm = make_arm(config, contract, task, camera_hz=15.0)
            try:
                results += run_lockstep_episodes(
                    arm, spec, model, seeds, lat_ticks=lat, horizon_s=args.horizon_s, keep_trace=True,
                    keep_images=True, progress=progress, on_result=done,
                )["async"]  # fmt: skip
            finally:
                arm.close()
    finally:
        be.close()
    return results, describe, f"lockstep, {lat} tick(s) per inference"


def _per_task(rows: list[tuple[str, bool, float, dict[str, Any]]]) -> tuple[list[str], str]:
    """Summary lines per task (success, mean time to success, pick_place's cube outcome) and the
    key=value pairs for the final line, from (task, success, time to success, extras) per episode."""
    from wam_control.closedloop import EXTRA_RATES

    tasks = list(dict.fromkeys(t for t, _, _, _ in rows))
    width = max(len(t) for t in tasks)
    lines, keys = [], []
    for i, task in enumerate(tasks):
        mine = [r for r in rows if r[0] == task]
        ok = [r for r in mine if r[1]]
        mean_t = float(np.mean([r[2] for r in ok])) if ok else math.nan
        line = f"{task:<{width}}  {len(ok)}/{len(mine)} = {len(ok) / len(mine):.2f}"
        if ok:
            line += f"; mean time to success {mean_t:.2f} s"
        lifted = [int(r[3]["prompt_target_lifted"]) for r in mine if int(r[3].get("prompt_target_lifted", -1)) >= 0]
        placed = [int(r[3]["prompt_target_in_zone"]) for r in mine if int(r[3].get("prompt_target_in_zone", -1)) >= 0]
        if lifted:
            line += f"; prompted cube lifted {sum(lifted)}/{len(lifted)}, in the zone {sum(placed)}/{len(placed)}"
        lines.append(("  per task            " if i == 0 else " " * 22) + line)
        keys.append(f"{task}_success_rate={len(ok) / len(mine):.3f} {task}_mean_time_s={mean_t:.3f}")
        if any(k in r[3] for r in mine for k in EXTRA_RATES) and lifted:
            keys.append(f"{task}_prompt_target_lifted_rate={float(np.mean(lifted)):.3f}")
    return lines, " ".join(keys)


def _summary_lines(
    args: argparse.Namespace, config: Any, results: list[EpisodeResult], s: dict[str, float], describe: str,
    model_note: str, mixed: bool = False,
) -> list[str]:  # fmt: skip
    n_ok = sum(r.success for r in results)
    delays = np.concatenate([r.delay_ticks for r in results]) * config.control_period * 1e3
    lines = [
        f"summary ({args.task}, {len(results)} episodes, {args.clock} clock, {args.transport}):",
        f"  success rate        {n_ok}/{len(results)} = {s['success_rate']:.2f}"
        + (f"; mean time to success {s['mean_time_s']:.2f} s" if n_ok else ""),
        f"  inference           {describe}; {model_note}",
        f"                      compute p50 {s['compute_ms_p50']:.2f} ms, p99 {s['compute_ms_p99']:.2f} ms; "
        f"observation->chunk p50 {percentile(delays, 50):.1f} ms, p99 {percentile(delays, 99):.1f} ms; "
        f"{int(s['chunks'])} chunks",
    ]
    loops = [r.loop for r in results if r.loop is not None]
    if loops:
        ticks = sum(st.ticks for st in loops)
        misses = sum(st.misses for st in loops)
        lines.append(
            f"  loop timing         {config.control_hz:g} Hz, {ticks} ticks; lateness p50 "
            f"{np.median([st.late_p50_us for st in loops]):.0f} us, p99 {max(st.late_p99_us for st in loops):.0f} us "
            f"(worst episode), max {max(st.late_max_us for st in loops) / 1e3:.1f} ms; misses {misses}; "
            f"tick compute p99 {max(st.tick_p99_us for st in loops):.0f} us"
        )
    else:
        lines.append("  loop timing         lockstep (simulated clock): no wall-clock lateness to report")
    lines += [
        f"  seams               jump p99 {s['seam_jump_p99'] * 1e3:.3f} mrad, jerk p99 {s['seam_jerk_p99']:.1f} rad/s^3",
        f"  safety filter       {int(s['interventions'])} interventions ({_top_interventions(results)})",
        f"  starvations         {int(s['starvations'])} ({int(s['starved_ticks'])} ticks without a chunk)",
        f"  surprise monitor    {surprise_summary(results) or 'off'}",
    ]
    task_keys = ""
    if mixed or any(r.prompt for r in results):
        task_lines, task_keys = _per_task([(r.task, r.success, r.task_time_s, r.extras) for r in results])
        lines += task_lines
    lines += [
        f"success_rate={s['success_rate']:.3f} mean_time_s={s['mean_time_s']:.3f} "
        f"compute_p50_ms={s['compute_ms_p50']:.3f} compute_p99_ms={s['compute_ms_p99']:.3f} "
        + (
            f"late_p99_us={max(st.late_p99_us for st in loops):.1f} misses={sum(st.misses for st in loops)} "
            if loops
            else ""
        )
        + f"seam_jump_p99={s['seam_jump_p99']:.6f} seam_jerk_p99={s['seam_jerk_p99']:.2f} "
        f"interventions={int(s['interventions'])} starvations={int(s['starvations'])}"
        + (f" {task_keys}" if mixed else ""),
    ]
    return lines


def _top_interventions(results: list[EpisodeResult]) -> str:
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.interventions.items():
            total[k] = total.get(k, 0) + v
    if not total:
        return "none"
    top = sorted(total.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v}" for k, v in top)


def _encoder(spec: Any) -> Any:
    return spec.load_backend(frame_check="")  # the latents only: no frame check


def _plots(args: argparse.Namespace, spec: Any, results: list[EpisodeResult]) -> list[Path]:
    from wam_control import plots
    from wam_control.closedloop import latent_prediction_errors

    config, contract, model_path = spec.config, spec.contract, Path(spec.model_path)
    out = args.out
    # The episode shown in detail: a successful pick_place, else the first successful one, else a
    # pick_place, else the first.
    shown = next(
        (r for r in results if r.success and r.task == "pick_place"),
        next((r for r in results if r.success), next((r for r in results if r.task == "pick_place"), results[0])),
    )
    tr = shown.trace
    assert tr is not None
    lim = config.limit_arrays()
    margin = config.safety.position_margin
    title = (
        f"{shown.task or args.task} seed {shown.seed} ({'success' if shown.success else 'failure'}), "
        f"{config.control_hz:g} Hz" + (f'\nprompt: "{shown.prompt}"' if shown.prompt else "")
    )
    paths = [
        plots.joint_trajectories(
            out / "joint_trajectories.png", tr.t, tr.q_cmd, tr.q_meas, config.joint_names,
            lim.q_min - margin, lim.q_max + margin, margin, title,
        ),
        plots.latency_histogram(
            out / "inference_latency.png",
            np.concatenate([r.compute_s for r in results]) * 1e3,
            np.concatenate([r.delay_ticks for r in results]) * config.control_period * 1e3,
            results[0].status.get("worker.backend", "") or model_path.name,  # type: ignore[arg-type]
        ),
        plots.chunk_seams(
            out / "chunk_seams.png", tr.t, tr.q_cmd, tr.version, config.control_period,
            np.concatenate([r.seam_jumps for r in results]), np.concatenate([r.seam_jerks for r in results]),
            title,
        ),
    ]  # fmt: skip
    paths += _gripper_plot(args, [(r.task, r.seed, r.success, r.prompt, r.gripper) for r in results])
    be = _encoder(spec)
    try:
        ts, ks, err, base = [], [], [], []
        for r in results:
            encode = _observation_encoder(r, be, contract, config, spec.tokenizer)
            t, k, e, b = latent_prediction_errors(r, contract, config.control_hz, encode)
            ts.append(t)
            ks.append(k)
            err.append(e)
            base.append(b)
        offsets_s = [o * contract.action_dt for o in contract.latent_offsets]
        paths.append(
            plots.latent_prediction(
                out / "latent_prediction.png", np.concatenate(ts), np.concatenate(ks), np.concatenate(err),
                np.concatenate(base), offsets_s,
                "world-model head: predicted future latent vs the latent observed then (all episodes)",
            )
        )  # fmt: skip
    finally:
        be.close()
    return paths


MAX_GRIPPER_PANELS = 8


def _gripper_plot(args: argparse.Namespace, rows: list[tuple[str, int, bool, str, Any]]) -> list[Path]:
    """gripper.png: per episode with the hand (the first MAX_GRIPPER_PANELS), the gripper setpoint and the
    finger positions over time, titled with the task, seed, outcome and prompt. [] without the hand."""
    from wam_control import plots

    panels = [
        (f"{task} seed {seed} ({'success' if ok else 'failure'})" + (f': "{prompt}"' if prompt else ""), g)
        for task, seed, ok, prompt, g in rows
        if g is not None and g.t.size
    ][:MAX_GRIPPER_PANELS]
    if not panels:
        return []
    return [
        plots.gripper(
            args.out / "gripper.png", panels,
            f"gripper: setpoint and finger positions ({args.task}, {args.transport})",
        )
    ]  # fmt: skip


def _observation_encoder(r: EpisodeResult, be: Any, contract: Any, config: Any, tokenizer: Any = None) -> Any:
    """tick -> the model's latent of the observation the controller had at that tick (with the gripper's
    finger position in the state and the episode's prompt, for a model that takes them)."""
    from wam_control.policy import PolicyInput
    from wam_control.sim.arm import FINGER_NAMES

    tr = r.trace
    assert tr is not None
    cams = list(contract.camera_names)
    frames = {c: [(t, img) for t, cam, img in tr.images if cam == c] for c in cams}
    stamps = {c: np.array([t for t, _ in frames[c]]) for c in cams}
    images = np.zeros((len(cams), contract.image_height, contract.image_width, 3), np.uint8)
    prefix = np.zeros((contract.horizon, contract.action_dim), np.float32)
    state = np.zeros(contract.state_dim, np.float32)
    n_arm = contract.num_joints
    # Extra state DOFs: a finger joint from the gripper trace, anything else 0.
    extra_cols = [
        FINGER_NAMES.index(config.extra_joint(n)) if config.extra_joint(n) in FINGER_NAMES else -1
        for n in contract.extra_states
    ]
    tokens = None
    if contract.has_instruction and tokenizer is not None:
        tokens = tokenizer.encode(r.prompt)
    dt = config.control_period

    def encode(tick: int) -> np.ndarray | None:
        if tick > r.ticks - 1 or not np.isfinite(tr.q_meas[tick, 0]):
            return None
        for i, c in enumerate(cams):
            j = int(np.searchsorted(stamps[c], tick * dt + 1e-9, side="right")) - 1
            if j < 0:
                return None
            images[i] = frames[c][j][1]
        state[:n_arm] = tr.q_meas[tick]
        for i, col in enumerate(extra_cols):
            g = r.gripper
            state[n_arm + i] = g.fingers[tick, col] if (g is not None and col >= 0 and tick < g.t.size) else 0.0
        prefix[:] = np.resize(state, contract.action_dim)
        inp = PolicyInput(images, state, prefix, 0, instruction_tokens=tokens)
        return np.asarray(be.infer(inp).latent).copy()

    return encode


def _record(args: argparse.Namespace, config: Any, contract: Any, results: list[EpisodeResult]) -> list[Path]:
    from wam_control.sim.arm import FINGER_NAMES, SimArm
    from wam_control.sim.bag import BagRecorder
    from wam_control.sim.record import camera_specs

    arm = SimArm(
        task=results[0].task or "reach", seed=args.seed, control_hz=config.control_hz, camera_hz=0.0,
        image_hw=(contract.image_height, contract.image_width), cameras=tuple(contract.camera_names),
    )  # fmt: skip
    specs = camera_specs(arm)
    arm.close()
    paths = []
    for r in results:
        tr = r.trace
        assert tr is not None
        task = r.task or args.task
        path = args.out / "bags" / f"{task}_seed{r.seed}"
        if path.exists():
            import shutil

            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "task": task, "seed": str(r.seed), "controller": f"wam-control demo ({args.clock})",
            "model": contract.model_name, "control_hz": str(config.control_hz),
            "cameras": ",".join(contract.camera_names), "success": str(r.success).lower(),
            "duration_s": f"{r.duration_s:.3f}",
        }  # fmt: skip
        if r.prompt:
            meta["prompt"] = r.prompt
        images = sorted(tr.images, key=lambda e: e[0])
        g = r.gripper  # with the hand: the fingers in /joint_states, the gripper setpoint sent
        fingers = FINGER_NAMES[: g.fingers.shape[1]] if g is not None else ()
        state_names = (*config.joint_names, *fingers) if g is not None else None
        with BagRecorder(path, config.joint_names, specs, metadata=meta, state_names=state_names,
                         gripper_joints=fingers) as bag:  # fmt: skip
            if r.prompt:
                bag.write_instruction(0.0, r.prompt)
            j = 0
            for i in range(r.ticks):
                t = float(tr.t[i])
                while j < len(images) and images[j][0] <= t + 1e-9:
                    bag.write_image(images[j][1], images[j][0], images[j][2])
                    j += 1
                if not np.isfinite(tr.q_meas[i, 0]):
                    continue
                bag.write_clock(t)
                if g is not None and i < g.t.size and np.all(np.isfinite(g.fingers[i])):
                    # finger velocity: the trace keeps positions only, so a backward difference
                    fqd = (g.fingers[i] - g.fingers[i - 1]) / config.control_period if i > 0 else 0.0 * g.fingers[i]
                    bag.write_joint_state(t, np.concatenate([tr.q_meas[i], g.fingers[i]]),
                                          np.concatenate([tr.qd_meas[i], np.nan_to_num(fqd)]))  # fmt: skip
                    if np.isfinite(g.commanded[i]):
                        bag.write_gripper_command(t, np.full(len(fingers), g.commanded[i]))
                else:
                    bag.write_joint_state(t, tr.q_meas[i], tr.qd_meas[i])
                bag.write_command(t, tr.q_cmd[i])
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------
# --transport dds: the sim bridge here, the controller as `wam-control run` in its own process


@dataclass
class DdsEpisode:
    seed: int
    success: bool
    task_time_s: float
    """Sim time from the controller's first command to the start of the held success (nan: failed)."""
    final_distance_m: float
    startup_s: float
    """Wall time from launching the controller process to its first command reaching the sim."""
    commands: int
    command_rate_hz: float
    """Commands the sim received per wall second while the episode ran."""
    sim_rtf: float
    """Sim seconds per wall second while the episode ran (cameras render in the sim's thread)."""
    diagnostics: dict[str, Any]
    """The controller's last /diagnostics before the episode ended: {status name: (level, message, values)}."""
    controller_rc: int | None
    controller_log: Path
    task: str = ""
    prompt: str = ""
    """The task prompt published on the controller's ~/instruction before it started ("" for a model
    without a prompt input)."""
    has_hand: bool = False
    gripper_commands: int = 0
    """Gripper messages the sim bridge received (/gripper_controller/commands) while the episode ran."""
    gripper: Any = None
    """closedloop.GripperTrace of the episode (the sim's view; with the hand), from the first command."""

    @property
    def instruction(self) -> str | None:
        """The prompt the controller reported in its last /diagnostics (model.instruction); None: not
        reported (no /diagnostics, or a model without a prompt input)."""
        entry = _diag_values(self, ": controller")
        if entry is None or "model.instruction" not in entry[2]:
            return None
        return str(entry[2]["model.instruction"])


class _DiagnosticsWatch:
    """Keeps the latest status of every name seen on /diagnostics (DDS callback thread)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.latest: dict[str, tuple[int, str, dict[str, str]]] = {}
        self.messages = 0

    def on_msg(self, msg: Any) -> None:
        from wam_control.transport.messages import diagnostic_array_from_msg

        _, statuses = diagnostic_array_from_msg(msg)
        with self._lock:
            self.messages += 1
            for s in statuses:
                self.latest[s.name] = (s.level, s.message, dict(s.values))

    def snapshot(self) -> dict[str, tuple[int, str, dict[str, str]]]:
        with self._lock:
            out = dict(self.latest)
            self.latest.clear()
            return out


def _check_dds_topics(config: Any, cameras: tuple[str, ...], extra_actions: tuple[str, ...] = ()) -> None:
    """The sim publishes Gazebo's topic names; the controller subscribes the config's. Say which
    topic disagrees instead of waiting for data that never comes."""
    from wam_control.sim.bag import CAMERA_NAMESPACES
    from wam_control.sim.bridge import TOPIC_FORWARD, TOPIC_TRAJECTORY

    t = config.topics
    wrong = []
    if t.joint_states != "/joint_states":
        wrong.append(f"topics.joint_states is {t.joint_states!r}, the sim publishes '/joint_states'")
    for cam in cameras:
        want = CAMERA_NAMESPACES[cam] + "/image_raw"
        if t.camera_images.get(cam) != want:
            wrong.append(
                f"topics.camera_images.{cam} is {t.camera_images.get(cam)!r}, the sim publishes {want!r}"
            )
    if config.command_interface == "forward_position" and t.forward_command != TOPIC_FORWARD:
        wrong.append(f"topics.forward_command is {t.forward_command!r}, the sim consumes {TOPIC_FORWARD!r}")
    if config.command_interface != "forward_position" and t.trajectory_command != TOPIC_TRAJECTORY:
        wrong.append(
            f"topics.trajectory_command is {t.trajectory_command!r}, the sim consumes {TOPIC_TRAJECTORY!r}"
        )
    from wam_control.sim.arm import FINGER_NAMES
    from wam_control.sim.bridge import TOPIC_GRIPPER_FORWARD, TOPIC_GRIPPER_TRAJECTORY

    for name in extra_actions:
        dof = config.extra_dofs.get(name)
        if dof is None or config.extra_joint(name) not in FINGER_NAMES or dof.command_interface == "none":
            continue
        want = TOPIC_GRIPPER_FORWARD if dof.command_interface == "forward_position" else TOPIC_GRIPPER_TRAJECTORY
        if dof.command_topic != want:
            wrong.append(f"extra_dofs.{name}.command_topic is {dof.command_topic!r}, the sim consumes {want!r}")
    if wrong:
        raise ValueError(f"{config.source}: " + "; ".join(wrong))


def _instruction_topic(config: Any) -> str:
    """The controller's ~/instruction as a full name (node wam_controller, no namespace: what
    `wam-control run` and robot.launch.py use)."""
    from wam_control.transport.dds import resolve_name

    return resolve_name(config.topics.instruction, "wam_controller")


def _controller_command(args: argparse.Namespace, config: Any, model_path: Path, domain: int,
                        logs: Path) -> list[str]:  # fmt: skip
    if args.transport == "ros":
        from wam_control.transport.launch_params import controller_parameters, ros_arguments

        params = controller_parameters(config=str(config.source), model=str(model_path.resolve()),
                                       backend=args.backend or "")  # fmt: skip
        return [sys.executable, "-m", "wam_control.transport.ros_node", *ros_arguments(params, params_dir=logs)]
    cmd = [
        sys.executable, "-m", "wam_control.transport.dds_node", "--config", str(config.source),
        "--model", str(model_path.resolve()), "--domain-id", str(domain), "--log-level", "INFO",
    ]  # fmt: skip
    if args.backend:
        cmd += ["--backend", args.backend]
    return cmd


def _run_dds(
    args: argparse.Namespace, config: Any, contract: Any, model_path: Path, groups: list[tuple[str, list[int]]]
) -> list[DdsEpisode]:
    import os
    import signal
    import subprocess

    from wam_control.closedloop import make_arm
    from wam_control.sim.bridge import SimBridge
    from wam_control.transport import dds_types as d
    from wam_control.transport import messages as M
    from wam_control.transport import qos
    from wam_control.transport.dds import DdsNode

    _check_dds_topics(config, tuple(contract.camera_names), tuple(contract.extra_actions))
    domain = args.domain_id if args.domain_id is not None else 100 + os.getpid() % 100
    types = M.dds_msg_types()
    instruction_topic = _instruction_topic(config)
    logs = args.out / args.transport
    logs.mkdir(parents=True, exist_ok=True)
    cmd = _controller_command(args, config, model_path, domain, logs)
    from wam_control.transport.dds import configure_cyclone

    configure_cyclone(True)  # before the first participant, and for the controller's environment
    env = dict(os.environ)
    if args.transport == "ros":
        from wam_control.transport.dds import configure_fast_dds

        env["ROS_DOMAIN_ID"] = str(domain)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # Fast DDS on loopback too
        configure_fast_dds(env)
        os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")})
        launcher: Any = _Launcher(domain)
    from wam_control.transport.dds import LOOPBACK_URI

    uri = os.environ.get("CYCLONEDDS_URI", "")
    where = "loopback" if uri == LOOPBACK_URI else "CYCLONEDDS_URI from the environment"
    if args.transport == "ros":
        _say(
            f"  two processes, two DDS vendors (domain {domain}): this one runs the sim bridge in real time "
            f"over Cyclone DDS ({where}); the controller, one process per episode, is the rclpy lifecycle node "
            f"on Fast DDS, started as robot.launch.py starts it and configured/activated through its "
            f"lifecycle services:\n    {' '.join(cmd[3:])}\n  (its logs: {logs}/)"
        )
    else:
        _say(
            f"  two processes over Cyclone DDS ({where}, domain {domain}): this one runs the sim bridge in "
            f"real time (Gazebo's topics); the controller, one process per episode, is\n"
            f"    wam-control run --config {config.source} --model {model_path} --domain-id {domain}\n"
            f"  (its logs: {logs}/)"
        )
    progress = _Progress(args.episodes, tasks=len(groups) > 1)
    results: list[DdsEpisode] = []
    try:
        for task, seeds in groups:
            # Per task: its arm (scene and objects) and a sim participant bridging it (Gazebo's topics),
            # the /diagnostics reader and, for a prompted model, the ~/instruction writer.
            arm = make_arm(config, contract, task, camera_hz=15.0)
            node = DdsNode("wam_demo_sim", domain_id=domain)  # pins loopback unless CYCLONEDDS_URI is set
            try:
                bridge = SimBridge(arm, node, types, clock_mode="realtime")
                diag = _DiagnosticsWatch()
                node.subscription(config.topics.diagnostics, d.DiagnosticArray_, diag.on_msg, qos.DIAGNOSTICS)
                prompt_pub = (
                    node.publisher(instruction_topic, types.String, qos.INSTRUCTION) if contract.has_instruction
                    else None
                )  # fmt: skip
                horizon = args.horizon_s or arm.task.horizon_s
                for seed in seeds:
                    bridge.reset(seed)
                    prompt = str(arm.task.prompt) if prompt_pub is not None else ""
                    if prompt_pub is not None:
                        # Latched (reliable, transient local, keep last 1): the controller started next
                        # gets this episode's prompt, never the previous one's.
                        prompt_pub.publish(M.string_msg(types, prompt))
                    log_path = logs / f"controller_seed{seed}.log"
                    with open(log_path, "wb") as log_file:
                        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
                        if args.transport == "ros":
                            launcher.drive(args.startup_timeout_s)  # configure + activate, while the sim serves
                        try:
                            ep = _dds_episode(bridge, proc, diag, horizon, args.startup_timeout_s, progress,
                                              log_path)  # fmt: skip
                        finally:
                            # SIGTERM: the controller brakes to hold and exits; the sim keeps serving it.
                            if proc.poll() is None:
                                proc.send_signal(signal.SIGTERM)
                            _serve_until(bridge, proc, 15.0)
                            if proc.poll() is None:
                                proc.kill()
                            proc.wait(5.0)
                    ep.seed, ep.task, ep.prompt = seed, task, prompt
                    ep.controller_rc = proc.returncode
                    progress.done_dds(ep)
                    results.append(ep)
            finally:
                node.close()
                arm.close()
    finally:
        if args.transport == "ros":
            launcher.close()
    return results


class _Launcher:
    """What robot.launch.py's lifecycle events do (configure, then activate once inactive), from a
    background thread so the sim keeps stepping in real time meanwhile. A failure shows up as no
    command in the episode loop, with the controller's log."""

    def __init__(self, domain: int) -> None:
        from wam_control.transport.ros_peer import RclpyPeer

        self.peer = RclpyPeer("wam_demo_launcher", domain_id=domain)
        self.life = self.peer.lifecycle("/wam_controller")

    def drive(self, timeout_s: float) -> None:
        import threading

        def run() -> None:
            try:
                if self.life.wait_for_service(timeout_s) and self.life.change("configure"):
                    self.life.change("activate")
            except TimeoutError:
                pass  # the episode loop reports the missing command with the node's log

        threading.Thread(target=run, name="launcher", daemon=True).start()

    def close(self) -> None:
        self.peer.close()


def _serve_until(bridge: Any, proc: Any, timeout_s: float) -> None:
    """Step the sim in real time (as `SimBridge.run` does) until `proc` exits or the timeout."""
    period = bridge.arm.control_period
    start = time.monotonic()
    k = 0
    while proc.poll() is None and time.monotonic() - start < timeout_s:
        bridge.advance()
        k = max(k + 1, int((time.monotonic() - start) / period))
        delay = start + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _dds_episode(
    bridge: Any, proc: Any, diag: _DiagnosticsWatch, horizon_s: float, startup_timeout_s: float,
    progress: _Progress, log_path: Path,
) -> DdsEpisode:  # fmt: skip
    """Serve one episode in real time: wait for the controller's first command, then run until the
    task's success has held SETTLE_S or `horizon_s` of sim time passed."""
    from wam_control.closedloop import SETTLE_S

    arm = bridge.arm
    period = arm.control_period
    settle = max(1, int(round(SETTLE_S / period)))
    diag.snapshot()
    bridge.publish_observation()
    launched = time.monotonic()
    n0 = bridge.commands
    first: float | None = None
    sim0 = n_first = g_first = 0
    held, success_t = 0, math.nan
    start, k, next_progress = time.monotonic(), 0, 0.0
    hand = bool(getattr(arm, "has_hand", False))
    grip: list[tuple[float, float, float, np.ndarray, float]] = []  # t, sent, servo, fingers, cube lift
    pick = getattr(arm.task, "name", "") == "pick_place"
    while True:
        bridge.advance()
        now = time.monotonic()
        if first is not None and hand:
            sent = bridge.gripper_setpoint[0] if bridge.gripper_commands > g_first else math.nan
            lift = float(arm.task.cube()[2]) - float(arm.task.cube_half) if pick else math.nan
            grip.append((arm.time - sim0, sent, float(arm.gripper_command()[0]), arm.gripper_state()[1], lift))
        if first is None:
            if bridge.commands > n0:
                first, sim0, n_first, g_first = now, arm.time, bridge.commands, bridge.gripper_commands
            elif proc.poll() is not None:
                raise RuntimeError(
                    f"the controller exited with code {proc.returncode} before commanding the sim; "
                    f"its log: {log_path}\n{_tail(log_path)}"
                )
            elif now - launched > startup_timeout_s:
                raise RuntimeError(
                    f"no command from the controller within {startup_timeout_s:g} s of launching it "
                    f"(DDS discovery or model start-up); its log: {log_path}\n{_tail(log_path)}"
                )
        else:
            if arm.task.success():
                held += 1
                if held == 1:
                    success_t = arm.time - sim0
                if held >= settle:
                    break
            else:
                held, success_t = 0, math.nan
            if arm.time - sim0 >= horizon_s or proc.poll() is not None:
                break
            if now >= next_progress:
                next_progress = now + 0.25
                progress.dds(arm, arm.time - sim0)
        k = max(k + 1, int((now - start) / period))
        delay = start + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    end = time.monotonic()
    wall = max(end - (first or end), 1e-9)
    info = arm.task.info()
    n_grip = bridge.gripper_commands - g_first if first is not None else 0
    n_arm = bridge.commands - n_first - n_grip if first is not None else 0
    trace = None
    if hand and grip:
        from wam_control.closedloop import GripperTrace

        trace = GripperTrace(
            t=np.array([g[0] for g in grip]), commanded=np.array([g[1] for g in grip]),
            servo=np.array([g[2] for g in grip]), fingers=np.array([g[3] for g in grip]),
            cube_lift=np.array([g[4] for g in grip]) if pick else None,
        )  # fmt: skip
    return DdsEpisode(
        seed=-1,
        success=held >= settle,
        task_time_s=success_t if held >= settle else math.nan,
        final_distance_m=float(info.get("distance", math.nan)),
        startup_s=(first or end) - launched,
        commands=n_arm,
        command_rate_hz=n_arm / wall,
        sim_rtf=(arm.time - sim0) / wall,
        diagnostics=diag.snapshot(),
        controller_rc=None,
        controller_log=log_path,
        has_hand=hand,
        gripper_commands=n_grip,
        gripper=trace,
    )


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in lines[-n:])


def _diag_values(ep: DdsEpisode, suffix: str) -> tuple[int, str, dict[str, str]] | None:
    for name, entry in ep.diagnostics.items():
        if name.endswith(suffix):
            return entry  # type: ignore[no-any-return]
    return None


def _dds_summary_lines(
    args: argparse.Namespace, config: Any, results: list[DdsEpisode], mixed: bool = False
) -> list[str]:
    n = len(results)
    ok = [r for r in results if r.success]
    mean_t = float(np.mean([r.task_time_s for r in ok])) if ok else math.nan
    rate = float(np.median([r.command_rate_hz for r in results]))
    rtf = float(np.median([r.sim_rtf for r in results]))
    startup = float(np.median([r.startup_s for r in results]))
    lines = [
        f"summary ({args.task}, {n} episodes, real time, {args.transport}: sim bridge in this process, "
        f"controller {'the rclpy node wam_controller' if args.transport == 'ros' else '`wam-control run`'} "
        "in its own process):",
        f"  success rate        {len(ok)}/{n} = {len(ok) / n:.2f}"
        + (f"; mean time to success {mean_t:.2f} s (from the first command)" if ok else ""),
        f"  commands received   {rate:.0f} Hz median per episode (control_hz {config.control_hz:g}); "
        f"sim real-time factor {rtf:.2f}; controller start-up to first command {startup:.1f} s (median)",
    ]
    worst = 0
    inter = starv = misses = got = 0
    late99: list[float] = []
    delays: list[float] = []
    peaks: list[float] = []
    backend, last_msg = "", ""
    for r in results:
        ctl = _diag_values(r, ": controller")
        tr = _diag_values(r, ": transport")
        if ctl is None:
            continue
        got += 1
        level, last_msg, v = ctl
        worst = max(worst, level)
        backend = v.get("worker.backend", backend)
        inter += int(float(v.get("filter.interventions_total", 0)))
        starv += int(float(v.get("scheduler.starvation_events", 0)))
        if "scheduler.delay_ticks_last" in v:
            delays.append(float(v["scheduler.delay_ticks_last"]) * config.control_period * 1e3)
        if "surprise.peak" in v:
            peaks.append(float(v["surprise.peak"]))
        if tr is not None:
            if "loop.late_p99_us" in tr[2]:
                late99.append(float(tr[2]["loop.late_p99_us"]))
            misses += int(float(tr[2].get("loop.misses", 0)))
    if got:
        lines += [
            f"  controller          /diagnostics, the last message of each episode ({got}/{n}; published at "
            f"about 1 Hz): worst level {('OK', 'WARN', 'ERROR')[min(worst, 2)]}, last {last_msg!r}",
            f"                      {backend}; observation->chunk delay (last) {_fmt_list(delays, 0)} ms; "
            f"loop lateness p99 {_fmt_list(late99, 0)} us, misses {misses}",
            f"  safety filter       {inter} interventions; starvations {starv}"
            + (f"; surprise peak score {_fmt_list(peaks, 1)}" if peaks else ""),
        ]
    else:
        lines.append("  controller          no /diagnostics received (published about once a second)")
    prompted = [r for r in results if r.prompt]
    if prompted:
        seen = [r for r in prompted if r.instruction is not None]
        same = [r for r in seen if r.instruction == r.prompt]
        lines.append(
            f"  prompt              published on {_instruction_topic(config)} before each controller started; "
            f"the controller's /diagnostics reported the episode's own prompt in {len(same)}/{len(prompted)} "
            f"episode(s)" + (f" ({len(prompted) - len(seen)} without a report)" if len(seen) < len(prompted) else "")
        )
    hands = [r for r in results if r.has_hand]
    grip_total = sum(r.gripper_commands for r in hands)
    if hands:
        lines.append(
            f"  gripper             {grip_total} gripper commands on the sim bridge's gripper topics "
            f"({sum(1 for r in hands if r.gripper_commands > 0)}/{len(hands)} episode(s) with any)"
        )
    task_keys = ""
    if mixed or prompted:
        task_lines, task_keys = _per_task([(r.task, r.success, r.task_time_s, {}) for r in results])
        lines += task_lines
    lines.append(
        f"success_rate={len(ok) / n:.3f} mean_time_s={mean_t:.3f} command_rate_hz={rate:.1f} "
        f"sim_rtf={rtf:.3f} startup_s={startup:.2f} late_p99_us={max(late99) if late99 else math.nan:.1f} "
        f"misses={misses} interventions={inter} starvations={starv}"
        + (f" gripper_commands={grip_total}" if hands else "")
        + (f" prompts_delivered={len([r for r in prompted if r.instruction == r.prompt])}" if prompted else "")
        + (f" {task_keys}" if mixed else "")
    )
    return lines


def _fmt_list(values: list[float], nd: int) -> str:
    return "/".join(f"{v:.{nd}f}" for v in values) if values else "n/a"


if __name__ == "__main__":
    sys.exit(main())
