"""Distillation: the expert teacher's chunks, labelled rollouts, and the distill CLI end to end (tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch ([train] extra) is needed for the training code")
pytest.importorskip("mujoco", reason="mujoco is needed for the sim rollouts")

from wam_control.model.rollout import ExpertLabeler, RolloutConfig, run_episode  # noqa: E402
from wam_control.sim.arm import SimArm  # noqa: E402
from wam_control.sim.expert import Expert  # noqa: E402

FR3 = tuple(f"fr3_joint{i}" for i in range(1, 8))


def test_expert_labels_follow_the_expert_plan() -> None:
    """Seeded with the expert's own command state, the teacher's chunk is the expert's future commands."""
    with SimArm(task="reach", seed=3, cameras=()) as arm:
        expert = Expert(arm)
        labeler = ExpertLabeler(arm, horizon=8, action_dt=0.05, label_dt=0.002)
        arm.reset(3)
        expert.reset()
        labeler.reset()
        for _ in range(60):
            arm.step(expert.act())
        q_cmd, v_cmd = expert.q.copy(), expert.v.copy()
        label = labeler(np.zeros((1, 8, 8, 3), np.uint8), arm.joint_state()[1], q_cmd, v_cmd)
        future = [q_cmd.copy()]
        for k in range(1, 8 * 25):
            q = expert.act()
            arm.step(q)
            if k % 25 == 0:
                future.append(q)
        future = np.asarray(future[:8])
        assert label.shape == (8, 7)
        assert np.allclose(label[0], q_cmd)
        # Same planner from the same state; only the acceleration seed (0 vs the expert's) differs.
        assert np.max(np.abs(label - future)) < 0.01
        assert np.max(np.abs(label[-1] - label[0])) > 0.05  # and it does move towards the target


def tiny_student(path: Path, hw: int = 32) -> Path:
    from wam_control.model.wam import WAMConfig, build_model, save_checkpoint

    cfg = WAMConfig(
        joint_names=FR3,
        camera_names=("scene",),
        image_height=hw,
        image_width=hw,
        horizon=8,
        action_dt=0.05,
        max_prefix=3,
        latent_dim=16,
        latent_offsets=(2, 4, 8),
        conv_channels=(4, 8, 8, 8),
        image_feature_dim=16,
        hidden_dim=32,
        model_name="wam-tiny-test",
    )
    model = build_model(cfg, seed=0)
    save_checkpoint(model, str(path))
    return path


def test_labelled_rollout_records_what_was_executed(tmp_path: Path) -> None:
    from wam_control.model.rollout import TorchPolicy, episode_samples
    from wam_control.model.train import spec_for
    from wam_control.model.wam import load_checkpoint

    model, _ = load_checkpoint(str(tiny_student(tmp_path / "s.pt")))
    with SimArm(task="reach", seed=0, image_hw=(32, 32), cameras=("scene",)) as arm:
        labeler = ExpertLabeler(arm, horizon=8, action_dt=0.05)
        cfg = RolloutConfig(horizon=8, action_dt=0.05, replan_steps=2, prefix_len=1, max_time_s=0.5)
        ep = run_episode(arm, TorchPolicy(model), 5, cfg, labeler=labeler)
    assert len(ep.obs_t) == 10 and ep.labels is not None and ep.labels.shape == (10, 8, 7)
    assert len(ep.cmd_q) == 250  # one command per 2 ms tick
    arrays = episode_samples(ep, spec_for(model.config, 0.05))
    # Labels come from the teacher, `executed` from the student's own commands: they differ.
    assert np.array_equal(arrays["actions"], ep.labels)
    assert not np.allclose(arrays["executed"], arrays["actions"], atol=1e-3)
    assert np.allclose(arrays["executed"][:, 0], ep.cmd_q[np.arange(10) * 25])


class _ExpertAsStudent:
    """A student that plays the scripted expert's chunk from its measured state: it reaches."""

    def __init__(self, arm: SimArm, horizon: int) -> None:
        self.labeler = ExpertLabeler(arm, horizon=horizon, action_dt=0.05)
        self.labeler.reset()

    def __call__(self, images, state, prefix, prefix_len, tokens=None):  # type: ignore[no-untyped-def]
        q = state.astype(np.float64)
        return (
            self.labeler(images, q, q, np.zeros_like(q)),
            np.zeros(4, np.float32),
            np.zeros((1, 4), np.float32),
        )


def test_a_longer_collection_settle_labels_the_student_at_the_reached_target() -> None:
    """`distill --collect-settle-s`: the rollout goes on at the target until success has held that long,
    every observation of it labelled (the states a student drifts off a reached target from)."""
    lengths = {}
    for settle in (0.5, 2.0):
        with SimArm(task="reach", seed=0, image_hw=(32, 32), cameras=("scene",)) as arm:
            labeler = ExpertLabeler(arm, horizon=8, action_dt=0.05)
            cfg = RolloutConfig(horizon=8, action_dt=0.05, replan_steps=4, prefix_len=1, settle_s=settle)
            ep = run_episode(arm, _ExpertAsStudent(arm, 8), 3, cfg, labeler=labeler)
            assert ep.success and ep.labels is not None and len(ep.labels) == len(ep.obs_t)
            assert arm.task.success()
            lengths[settle] = ep.time_s
    assert lengths[2.0] - lengths[0.5] == pytest.approx(1.5, abs=0.01)


def test_distill_cli_end_to_end(tmp_path: Path, fr3_config_path: Path) -> None:
    from wam_control.config import load_config
    from wam_control.model.distill import main
    from wam_control.policy.contract import check_contract, read_contract

    init = tiny_student(tmp_path / "init.pt")
    out = tmp_path / "student"
    rc = main(
        [
            "--teacher", "expert", "--init", str(init), "--student-out", str(out),
            "--iterations", "2", "--episodes", "1", "--steps", "3", "--batch-size", "8",
            "--eval-episodes", "1", "--surprise-episodes", "1", "--max-time-s", "0.6",
            "--threads", "1", "--no-progress", "--export",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "distill_report.json").read_text())
    assert [it["iteration"] for it in report["iterations"]] == [0, 1]
    assert all(0.0 <= it["student_success_rate"] <= 1.0 for it in report["iterations"])
    assert (
        report["iterations"][1]["aggregate_observations"] > report["iterations"][0]["aggregate_observations"]
    )
    assert report["eval_onnx"]["seeds"] == [100000, 100000]
    contract = read_contract(out / "model.onnx", verify_weights=True)
    check_contract(
        contract, load_config(fr3_config_path, {"cameras": ["scene"]})
    )  # trained on the scene camera only
    assert contract.training_data["teacher"] == "expert"
    # The closed-loop result of the exported file is written into its own metadata.
    assert contract.training_data["eval_success_rate"] == report["eval_onnx"]["success_rate"]
    surprise = json.loads((out / "model.surprise.json").read_text())
    assert surprise["offsets"] == [2, 4, 8] and surprise["episodes"] == 1
    for key in ("mean", "std", "p95", "p99"):
        assert len(surprise[key]) == 3
    assert surprise["mean"][0] is not None and surprise["mean"][0] > 0
    assert surprise["metric"] == "l2/sqrt(C)" and "sqrt(latent_dim)" in surprise["metric_description"]
    # A missing teacher file is refused with its name.
    assert (
        main(["--teacher", str(tmp_path / "nope.onnx"), "--init", str(init), "--student-out", str(out)]) == 2
    )


def test_distill_deals_episodes_over_several_tasks(tmp_path: Path) -> None:
    from wam_control.model.data import load_dataset
    from wam_control.model.distill import main
    from wam_control.model.train import spec_for
    from wam_control.model.wam import load_checkpoint

    init = tiny_student(tmp_path / "init.pt")
    out = tmp_path / "student"
    rc = main(
        [
            "--teacher", "expert", "--init", str(init), "--student-out", str(out), "--task", "reach,push",
            "--iterations", "1", "--episodes", "3", "--steps", "2", "--batch-size", "8",
            "--eval-episodes", "1", "--max-time-s", "0.4", "--threads", "1", "--no-progress",
            "--source-share", "dagger_v2=0.3", "--dagger-source", "dagger_v2", "--collect-settle-s", "2",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "distill_report.json").read_text())
    assert report["rollout"]["collect_settle_s"] == 2.0 and report["rollout"]["settle_s"] == 0.5  # eval: 0.5
    it = report["iterations"][0]
    assert it["reach"]["episodes"] == 2 and it["push"]["episodes"] == 1  # seeds dealt round-robin
    assert it["reach"]["seeds"] == [1000, 1002] and it["push"]["seeds"] == [1001, 1001]
    model, _ = load_checkpoint(str(out / "model.pt"))
    ds = load_dataset(out / "dagger.npz", spec_for(model.config, 0.05))
    assert sorted(e["task"] for e in ds.episodes) == ["push", "reach", "reach"]
    assert {e["source"] for e in ds.episodes} == {"dagger_v2"}  # told apart from an earlier teacher's
    with pytest.raises(SystemExit):
        main(["--teacher", "expert", "--init", str(init), "--student-out", str(out), "--task", "reach,stack"])


def test_parallel_collection_gives_the_data_of_one_process(tmp_path: Path) -> None:
    """Episodes dealt to spawned worker processes come back in seed order, each with the cadence and
    committed prefix its seed draws: the same samples as collecting them in this process."""
    from wam_control.model.distill import CollectSetup, collect, episode_config, make_labeler
    from wam_control.model.train import spec_for
    from wam_control.model.wam import load_checkpoint

    model, _ = load_checkpoint(str(tiny_student(tmp_path / "s.pt")))
    rollout = RolloutConfig(horizon=8, action_dt=0.05, replan_steps=4, prefix_len=2, max_time_s=0.3)
    setup = CollectSetup(
        task="reach", teacher="expert", rollout=rollout, spec=spec_for(model.config, 0.05),
        replan_choices=(2, 4), prefix_choices=(1, 3),
    )  # fmt: skip
    seeds = [5, 6, 7, 8]
    # Seed s: cadence choices[s % 2], prefix choices[(s // 2) % 2]; every pair occurs once.
    drawn = [(episode_config(setup, s).replan_steps, episode_config(setup, s).prefix_len) for s in seeds]
    assert drawn == [(4, 1), (2, 3), (4, 3), (2, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs
    try:
        with SimArm(task="reach", seed=0, image_hw=(32, 32), cameras=("scene",)) as arm:
            labeler = make_labeler(arm, "reach", None, model.config, setup.label_dt)
            one, stats_one = collect(arm, model, labeler, seeds, setup, False, "one")
            two, stats_two = collect(arm, model, labeler, seeds, setup, False, "two", workers=2)
    finally:
        torch.set_num_threads(threads)
    assert [e["seed"] for e in two.episodes] == seeds
    assert [(e["replan_steps"], e["prefix_len"]) for e in two.episodes] == drawn
    assert one.episodes == two.episodes and stats_one == stats_two
    for name in ("frames", "obs_frame", "state", "actions", "executed", "future", "episode"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_distill_refuses_bad_worker_and_prefix_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wam_control.model.distill import main

    init = tiny_student(tmp_path / "init.pt")
    base = ["--teacher", "expert", "--init", str(init), "--student-out", str(tmp_path / "s")]
    for bad in (
        ["--workers", "0"],
        ["--collect-prefix-lens", "2,x"],
        ["--collect-prefix-lens", "-1"],
        ["--eval-episodes", "0"],  # once crashed after the whole collection, writing the report
        ["--collect-settle-s", "0"],
    ):
        with pytest.raises(SystemExit):
            main(base + bad)
    # Source shares are checked before any rollout: a source no episode will have, a share out of range.
    capsys.readouterr()
    assert main(base + ["--source-share", "dagger_counterfactual=0.1"]) == 2
    assert "no episode will have source ['dagger_counterfactual']" in capsys.readouterr().err
    assert main(base + ["--source-share", "dagger=1.5"]) == 2
    assert main(base + ["--dagger-source", "dagger_v2", "--source-share", "dagger=0.2"]) == 2
    assert "no episode will have source ['dagger']" in capsys.readouterr().err
    assert main(base + ["--dagger-source", "relabelled"]) == 2  # keyframe targets skip DAgger by the prefix
    assert "--dagger-source 'relabelled'" in capsys.readouterr().err
    # the place spread is the scripted teacher's, and a distance
    assert main(base + ["--place-spread", "-0.01"]) == 2
    assert main([*base[:1], str(init), *base[2:], "--place-spread", "0.02"]) == 2  # a model teacher
    assert capsys.readouterr().err.count("--place-spread") == 2
    assert not (tmp_path / "s" / "dagger.npz").exists()
