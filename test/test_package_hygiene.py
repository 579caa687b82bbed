"""Package-level promises: Python 3.10 (ROS 2 Humble) syntax, a light runtime import, CLI wiring."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from wam_control.cli import BENCHES, COMMANDS

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for folder in ("wam_control", "launch", "test")
    for p in (REPO / folder).rglob("*.py")
    if "__pycache__" not in p.parts
) + [REPO / "setup.py"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_sources_parse_as_python_3_10(path: Path) -> None:
    # Humble ships Python 3.10: syntax newer than that (except*, PEP 695 generics, ...) must not creep in.
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_runtime_and_transport_import_nothing_heavy() -> None:
    """A runtime-only install (numpy + PyYAML) must be able to import the controller's layers."""
    code = (
        "import sys\n"
        "import wam_control.config, wam_control.policy, wam_control.runtime.controller, "
        "wam_control.runtime.safety, wam_control.runtime.loop, wam_control.runtime.worker, "
        "wam_control.transport.messages, wam_control.transport.adapter, wam_control.cli\n"
        "heavy = {'torch', 'onnxruntime', 'onnx', 'mujoco', 'matplotlib', 'cyclonedds', 'rclpy', 'tensorrt', 'rosbags'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy modules imported by the runtime layers: {out.strip()}"


@pytest.mark.parametrize(
    "module", sorted({m for m, _ in COMMANDS.values()} | {m for m, _ in BENCHES.values()})
)
def test_every_cli_entry_has_a_main(module: str) -> None:
    if module == "wam_control.transport.ros_node":
        pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, "main", None)), f"{module} has no main(argv)"
