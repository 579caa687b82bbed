"""`wam-control demo` with a prompted model that drives the gripper (contract v2, config/fr3_hand.yaml):
the default plan is the prompted mix of tasks, every episode's controller gets its own task's prompt
through the ~/instruction path, the summary has a line per task and the plots show the gripper. This is
the default (config/fr3_hand.yaml); the bundled reach model with config/fr3.yaml still runs the
single-task demo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mujoco")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _render_ok() -> bool:
    from wam_control.sim.gl import prepare

    return prepare() is not None


needs_render = pytest.mark.skipif(not _render_ok(), reason="no offscreen OpenGL (EGL/OSMesa) for the sim cameras")


def _args(**kw: Any) -> argparse.Namespace:
    base = {"tasks": None, "task": None, "episodes": None, "seed": 100000}
    base.update(kw)
    return argparse.Namespace(**base)


def test_parse_tasks_and_the_demo_plan(prompt_model_path: Path) -> None:
    from wam_control.config import load_config, preset_path
    from wam_control.demo import DEFAULT_CONFIG, DEFAULT_MIX, _episodes, demo_plan, parse_tasks
    from wam_control.policy import read_contract

    assert parse_tasks("reach,push,pick_place:2", 1) == [("reach", 1), ("push", 1), ("pick_place", 2)]
    assert parse_tasks(" pick_place , reach:3 ", 2) == [("pick_place", 2), ("reach", 3)]
    for bad in ("fly", "reach:x", "reach:0", ","):
        with pytest.raises(ValueError, match="--tasks"):
            parse_tasks(bad, 1)

    hand = load_config(preset_path("fr3_hand"))
    prompted = read_contract(prompt_model_path)
    # A model with a prompt and the gripper: the prompted mix, pick_place included; --episodes per task.
    mix = demo_plan(_args(), hand, prompted)
    assert mix == parse_tasks(DEFAULT_MIX, 1) and "pick_place" in dict(mix)
    assert demo_plan(_args(episodes=2), hand, prompted) == [(t, 2) for t, _ in mix]
    assert demo_plan(_args(task="pick_place"), hand, prompted) == [("pick_place", 5)]
    # Seeds count on over the whole mix.
    assert _episodes(_args(seed=7), [("reach", 2), ("pick_place", 1)]) == [("reach", [7, 8]), ("pick_place", [9])]

    # The default: config/fr3_hand.yaml and its bundled prompted model -> the mix.
    default = load_config(preset_path(DEFAULT_CONFIG))
    assert demo_plan(_args(), default, read_contract(Path(default.inference.model))) == mix
    # config/fr3.yaml's bundled reach model (no prompt, no gripper) -> 5 reach, or what --tasks says.
    fr3 = load_config(preset_path("fr3"))
    bundled = read_contract(Path(fr3.inference.model))
    assert not bundled.has_instruction
    assert demo_plan(_args(), fr3, bundled) == [("reach", 5)]
    assert demo_plan(_args(tasks="push,reach", episodes=3), fr3, bundled) == [("push", 3), ("reach", 3)]


def test_demo_refuses_task_and_tasks_together(capsys: pytest.CaptureFixture[str]) -> None:
    from wam_control.demo import main

    with pytest.raises(SystemExit):
        main(["--task", "reach", "--tasks", "reach,push"])
    assert "--task or --tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tasks", "reach,fly"])
    assert "unknown task 'fly'" in capsys.readouterr().err


@needs_render
def test_demo_prompted_mix_gives_each_episode_its_prompt_and_plots_the_gripper(
    prompt_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from wam_control import plots
    from wam_control.demo import DEFAULT_MIX, main, parse_tasks
    from wam_control.runtime.controller import Controller
    from wam_control.sim.arm import SimArm

    # What each controller really received through the prompt path (InstructionInput -> set_instruction).
    # The controllers themselves are kept: an id() alone can be reused once an episode's controller is freed.
    received: list[tuple[Controller, str]] = []
    set_instruction = Controller.set_instruction

    def spy(self: Controller, text: str, token_ids: np.ndarray) -> None:
        received.append((self, text))
        set_instruction(self, text, token_ids)

    monkeypatch.setattr(Controller, "set_instruction", spy)
    panels: list[tuple[str, Any]] = []
    gripper_plot = plots.gripper

    def plot_spy(path: Path, rows: Any, title: str) -> Path:
        panels.extend(rows)
        return gripper_plot(path, rows, title)

    monkeypatch.setattr(plots, "gripper", plot_spy)

    out = tmp_path / "demo"
    argv = ["--config", "fr3_hand", "--model", str(prompt_model_path), "--clock", "lockstep"]
    rc = main([*argv, "--horizon-s", "0.3", "--out", str(out), "--record"])
    text = capsys.readouterr().out
    assert rc == 0, text

    # The default plan for a prompted gripper model: DEFAULT_MIX, task by task, seeds counting on.
    plan = [t for t, n in parse_tasks(DEFAULT_MIX, 1) for _ in range(n)]
    assert "prompted mix of" in text and f"{len(plan)} episodes" in text
    expected = []
    for i, task in enumerate(plan):
        arm = SimArm(task=task, seed=100000 + i, cameras=(), camera_hz=0.0, hand=True)
        expected.append(arm.task.prompt)
        arm.close()
        line = next(ln for ln in text.splitlines() if f"episode {i + 1}/{len(plan)} " in ln)
        assert f"{task} seed={100000 + i}" in line and repr(expected[-1]) in line, line
    # One controller per episode, each given exactly its own task's prompt, once, in order.
    assert [t for _, t in received] == expected
    assert len({id(c) for c, _ in received}) == len(plan)
    assert "pick_place" in plan and len(set(expected)) == len(expected)

    # The summary: a line per task and per-task keys on the final line.
    assert "per task            reach" in text and "pick_place" in text
    final = [ln for ln in text.splitlines() if ln.startswith("success_rate=")]
    assert len(final) == 1
    values = dict(kv.split("=") for kv in final[0].split())
    for task in dict.fromkeys(plan):
        assert f"{task}_success_rate" in values and f"{task}_mean_time_s" in values

    # The plots: the gripper of every episode (setpoint sent, finger positions) titled with its prompt.
    data = (out / "gripper.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert len(panels) == len(plan)
    for (label, tr), prompt in zip(panels, expected):
        assert prompt in label
        assert np.isfinite(tr.commanded).sum() > 50  # the controller's gripper column reached the arm
        assert np.isfinite(tr.fingers).all(axis=1).sum() > 50
        assert np.all(tr.fingers[np.isfinite(tr.fingers)] >= -1e-3)
    for name in ("joint_trajectories.png", "chunk_seams.png", "latent_prediction.png"):
        assert (out / name).stat().st_size > 5000, name

    # The bags: the episode's prompt on /instruction, the fingers in /joint_states, the gripper setpoint.
    from wam_control.sim.bag import read_bag

    i = plan.index("pick_place")
    bag = read_bag(out / "bags" / f"pick_place_seed{100000 + i}")
    assert bag.instructions == [expected[i]] and bag.metadata["prompt"] == expected[i]
    assert bag.gripper_q.shape[0] > 50


@needs_render
def test_demo_default_is_the_prompted_mix_with_the_bundled_multitask_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --config/--model/--task: config/fr3_hand.yaml's bundled prompted model runs the prompted mix with
    the gripper (lockstep here, to be quick and deterministic)."""
    from wam_control.config import load_config, preset_path
    from wam_control.demo import DEFAULT_CONFIG, main
    from wam_control.policy import read_contract

    model = Path(load_config(preset_path(DEFAULT_CONFIG)).inference.model)
    assert model.is_file(), f"the default config's bundled model {model} is missing"
    contract = read_contract(model)
    assert contract.has_instruction and "gripper" in contract.state_names
    rc = main(["--clock", "lockstep", "--episodes", "1", "--horizon-s", "0.3", "--no-plots", "--no-surprise",
               "--out", str(tmp_path)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "prompted mix of reach x1, push x1, pick_place x1" in text and model.name in text
    assert "per task            reach" in text
    for i, task in enumerate(("reach", "push", "pick_place")):
        assert f"episode {i + 1}/3 {task} seed={100000 + i}" in text


@needs_render
def test_demo_with_config_fr3_runs_the_bundled_reach_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config fr3`: its bundled single-task model, reach only, no prompt and no gripper."""
    from wam_control.demo import main

    rc = main(["--config", "fr3", "--clock", "lockstep", "--episodes", "1", "--horizon-s", "0.5", "--no-plots",
               "--no-surprise", "--out", str(tmp_path)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "wam-control demo: 1 reach episode(s), seeds 100000..100000" in text
    assert "summary (reach, 1 episodes, lockstep clock, inproc):" in text
    assert "per task" not in text and "prompt" not in text and "gripper" not in text
    assert "  episode 1/1 seed=100000: " in text
