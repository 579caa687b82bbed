"""`wam-control` command line: wiring only.

Each command lives in its own module with a `main(argv) -> int`; this table maps names to modules so
that `wam-control --help` stays cheap and no command imports another's heavy dependencies.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("wam_control.demo", "closed-loop demo: MuJoCo arm + controller + bundled model"),
    "run": ("wam_control.transport.dds_node", "run the controller over Cyclone DDS (no ROS 2 install)"),
    "export": ("wam_control.model.export", "export a WAM checkpoint to a self-describing ONNX file"),
    "build-engine": ("wam_control.policy.tensorrt_build", "build (or fetch from cache) a TensorRT engine"),
    "train": ("wam_control.model.train", "train a WAM on recorded demonstrations"),
    "distill": ("wam_control.model.distill", "distill a compact student WAM from a teacher"),
    "train-decoder": ("wam_control.model.decoder", "train the imagination-preview decoder (latent -> image)"),
    "record": ("wam_control.sim.record", "record expert demonstrations from the sim as ROS 2 bags"),
    "sim": ("wam_control.sim.bridge", "run the MuJoCo arm speaking Gazebo's ROS 2 topics over DDS"),
    "check-config": ("wam_control.config.check", "load and validate a deployment YAML"),
    "check-model": ("wam_control.policy.check_model", "a model's contract, its optional parts, what the runtime does"),
    "serve": ("wam_control.serving.server", "serve a model with Triton Inference Server (GPU host side)"),
    "triton-repo": ("wam_control.serving.repo", "write a Triton model repository for a model (production server)"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "safety": ("wam_control.bench.safety", "adversarial streams through the safety filter"),
    "loop": ("wam_control.bench.loop", "fixed-rate loop lateness: bare loop vs controller tick"),
    "inference": ("wam_control.bench.inference", "latency of each available policy backend"),
    "scheduler": ("wam_control.bench.scheduler", "chunk seams: naive vs blend vs prefix scheduler"),
    "jitter": ("wam_control.bench.jitter", "loop lateness with inference in thread vs process"),
    "transport": ("wam_control.bench.transport", "DDS loopback latency: inputs to buffers, tick to command"),
    "sim": ("wam_control.bench.sim", "simulator steps per second and real-time factor"),
    "expert": ("wam_control.bench.expert", "scripted expert success rate"),
    "closed-loop": ("wam_control.bench.closed_loop", "closed-loop success: async vs sync execution"),
    "grounding": ("wam_control.bench.grounding", "prompted pick_place: does the chunk go for the named cube"),
    "surprise": ("wam_control.bench.surprise", "world-model surprise monitor: detection vs false alarms"),
    "serving": ("wam_control.bench.serving", "robots per Triton server: remote vs in-process latency"),
    "ros-node": ("wam_control.bench.ros_node", "rclpy node vs wam-control run against an rclpy robot"),
}


def _usage() -> str:
    lines = ["usage: wam-control <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["  bench <name>   benchmarks:"]
    lines += [f"    {name:<12} {help_}" for name, (_, help_) in BENCHES.items()]
    return "\n".join(lines)


def _dispatch(table: dict[str, tuple[str, str]], name: str, argv: list[str], prog: str) -> int:
    if name not in table:
        print(f"wam-control: unknown {prog} '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from wam_control import __version__

        print(__version__)
        return 0
    if args[0] == "bench":
        if len(args) < 2 or args[1] in ("-h", "--help"):
            print(_usage())
            return 0 if len(args) >= 2 else 2
        return _dispatch(BENCHES, args[1], args[2:], "benchmark")
    return _dispatch(COMMANDS, args[0], args[1:], "command")


if __name__ == "__main__":
    sys.exit(main())
