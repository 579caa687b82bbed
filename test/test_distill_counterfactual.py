"""Counterfactual-prompt labels (distill --counterfactual-prompts-s): the states of a pick_place
rollout also labelled for the other cubes, each with its colour in the prompt."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")

from wam_control.model.data import SampleSpec
from wam_control.model.distill import CollectSetup, _labelled_episode, make_counterfactual
from wam_control.model.rollout import CounterfactualLabels, LookaheadLabeler, RolloutConfig, run_episode
from wam_control.model.train import keyframe_targets
from wam_control.sim.tasks import CUBE_COLOURS

ARM = tuple(f"fr3_joint{i}" for i in range(1, 8))
H = 16


def still(images, state, prefix, plen, tokens=None):  # type: ignore[no-untyped-def]
    """A student that holds its measured pose."""
    return np.repeat(state[None], H, 0), np.zeros(4, np.float32), np.zeros((3, 4), np.float32)


@pytest.fixture(scope="module")
def arm():  # type: ignore[no-untyped-def]
    from wam_control.sim.arm import SimArm

    with SimArm(task="pick_place", seed=0, image_hw=(16, 16), cameras=("scene",), hand=True) as a:
        yield a


def setup(window_s: float, max_time_s: float) -> CollectSetup:
    spec = SampleSpec(ARM, ("scene",), (16, 16), H, 0.05, (2, 4, 8), 0.05, gripper_joint="fr3_finger_joint1")
    rollout = RolloutConfig(horizon=H, action_dt=0.05, cameras=("scene",), gripper=True, max_time_s=max_time_s)
    return CollectSetup(task="pick_place", teacher="expert", rollout=rollout, spec=spec, counterfactual_s=window_s)


def tool_xy(arm, q: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import mujoco

    kin = mujoco.MjData(arm.model)
    kin.qpos[arm._qadr] = q[: len(arm._qadr)]
    mujoco.mj_kinematics(arm.model, kin)
    return np.asarray(kin.site_xpos[arm.model.site("ee").id][:2]).copy()


def test_labels_head_for_each_named_cube_and_leave_the_episode_untouched(arm) -> None:  # type: ignore[no-untyped-def]
    s = setup(window_s=0.5, max_time_s=1.0)
    labeler = LookaheadLabeler(arm, H, 0.05)
    plain = run_episode(arm, still, 7, s.rollout, labeler=labeler)
    cf = CounterfactualLabels(labeler, 0.5)
    ep = run_episode(arm, still, 7, s.rollout, labeler=labeler, counterfactual=cf)
    np.testing.assert_array_equal(ep.obs_q, plain.obs_q)  # the student's episode is the same, bit for bit
    np.testing.assert_array_equal(ep.cmd_q, plain.cmd_q)
    np.testing.assert_array_equal(ep.labels, plain.labels)
    target = arm.task.target_index
    assert sorted(ep.counterfactual) == sorted(set(range(3)) - {target})
    in_window = int(np.sum(ep.obs_t <= 0.5 + 1e-9))
    for cube, labels in [(target, ep.labels[:in_window]), *ep.counterfactual.items()]:
        assert len(labels) == in_window
        goal = arm.task.cube(cube)[:2]
        for chunk in labels:  # every chunk ends nearer its cube than it starts
            assert np.linalg.norm(tool_xy(arm, chunk[-1]) - goal) < np.linalg.norm(tool_xy(arm, chunk[0]) - goal) - 0.01
    assert arm.task.target_index == target


def test_a_labelled_episode_brings_one_copy_per_other_cube(arm) -> None:  # type: ignore[no-untyped-def]
    s = setup(window_s=0.3, max_time_s=0.8)
    labeler = LookaheadLabeler(arm, H, 0.05)
    out = _labelled_episode(arm, still, labeler, s, 11, make_counterfactual(labeler, s))
    assert [info["source"] for _, _, info in out] == ["dagger", "dagger_counterfactual", "dagger_counterfactual"]
    named = [[c for c in CUBE_COLOURS if f" {c} " in info["prompt"]] for _, _, info in out]
    assert sorted(n[0] for n in named) == sorted(CUBE_COLOURS) and all(len(n) == 1 for n in named)
    template = out[0][2]["prompt"].replace(named[0][0], "{colour}")
    for (frames, samples, info), colour in zip(out[1:], (n[0] for n in named[1:])):
        assert info["prompt"] == template.format(colour=colour)  # the same phrasing, the other colour
        n = len(samples["state"])
        assert n == 7  # observations at 0.00 .. 0.30 s
        np.testing.assert_array_equal(samples["state"], out[0][1]["state"][:n])  # the same states
        assert samples["future"].max() < n and samples["obs_frame"].max() < len(frames)

    from wam_control.model.data import DatasetBuilder

    builder = DatasetBuilder()
    for frames, samples, info in out:
        builder.add(frames, samples, info)
    _, weight = keyframe_targets(builder.build(), len(ARM))
    assert not weight.any()  # student rollouts and their copies have no expert keyframes


class ScriptedLabeler:
    """Stands in for LookaheadLabeler: the phase its expert would read, per cube, in call order."""

    def __init__(self, phases: dict[int, list[str]]) -> None:
        self.arm = SimpleNamespace(task=SimpleNamespace(target_index=0))
        self.phases = {k: list(v) for k, v in phases.items()}
        self.phase = ""

    def label_for_cube(self, i, images, q, q_cmd, v_cmd):  # type: ignore[no-untyped-def]
        self.phase = self.phases[i].pop(0)
        return np.full((2, 2), float(i), np.float32)


def test_a_cube_stops_being_labelled_once_its_expert_would_not_approach_it() -> None:
    lab = ScriptedLabeler({1: ["approach", "descend", "close", "approach"], 2: ["approach"] * 4})
    cf = CounterfactualLabels(lab, window_s=10.0)  # type: ignore[arg-type]
    cf.reset()
    for k in range(4):
        cf(None, None, None, None, t=0.1 * k, real_phase="approach")  # type: ignore[arg-type]
    assert len(cf.labels[1]) == 2 and len(cf.labels[2]) == 4  # cube 1: stopped at "close", for good


@pytest.mark.parametrize(("t", "real_phase"), [(0.6, "approach"), (0.1, "lift")])
def test_labels_stop_after_the_window_or_once_the_real_cube_is_grasped(t: float, real_phase: str) -> None:
    lab = ScriptedLabeler({1: ["approach"] * 3, 2: ["approach"] * 3})
    cf = CounterfactualLabels(lab, window_s=0.5)  # type: ignore[arg-type]
    cf.reset()
    cf(None, None, None, None, t=0.0, real_phase="approach")  # type: ignore[arg-type]
    cf(None, None, None, None, t=t, real_phase=real_phase)  # type: ignore[arg-type]
    cf(None, None, None, None, t=0.2, real_phase="approach")  # type: ignore[arg-type]
    assert len(cf.labels[1]) == 1 and len(cf.labels[2]) == 1


def test_counterfactual_prompts_need_pick_place_and_the_expert(arm) -> None:  # type: ignore[no-untyped-def]
    s = setup(window_s=1.0, max_time_s=1.0)
    with pytest.raises(ValueError, match="pick_place and the expert"):
        make_counterfactual(object(), s)
    with pytest.raises(ValueError, match="> 0 s"):
        CounterfactualLabels(LookaheadLabeler(arm, H, 0.05), 0.0)
