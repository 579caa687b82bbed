"""Contract v2 training: the gripper column and the language prompt, from bags to an exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from wam_control.model.data import SampleSpec, episode_from_bag  # noqa: E402
from wam_control.model.prompt import PromptEncoder, build_tokenizer, task_prompts  # noqa: E402
from wam_control.model.train import TrainConfig, Trainer, episode_tokens, normalization_from  # noqa: E402
from wam_control.model.wam import WAMConfig, build_model  # noqa: E402
from wam_control.sim.bag import BagRecorder, CameraSpec  # noqa: E402

ARM = tuple(f"fr3_joint{i}" for i in range(1, 8))
FINGERS = ("fr3_finger_joint1", "fr3_finger_joint2")
CTRL_DT = 0.01


def write_hand_bag(path: Path, prompt: str, seconds: float = 1.0, close_at: float = 0.4) -> None:
    """A synthetic hand episode as `wam-control record` writes it: /joint_states with the fingers,
    arm commands, the gripper setpoint (open 0.04, closing from `close_at`), the prompt."""
    spec = {"scene": CameraSpec(16, 16, 20.0, 20.0, 8.0, 8.0, "scene_camera_optical_frame")}
    meta = {"task": "pick_place", "seed": "3", "controller": "scripted_expert", "prompt": prompt}
    with BagRecorder(
        path, ARM, spec, metadata=meta, state_names=ARM + FINGERS, gripper_joints=FINGERS
    ) as rec:
        rec.write_instruction(0.0, prompt)
        n = int(round(seconds / CTRL_DT))
        for k in range(n + 1):
            t = k * CTRL_DT
            grip = 0.04 if t < close_at else max(0.0, 0.04 - 0.05 * (t - close_at))
            finger = 0.04 if t < close_at + 0.02 else max(0.0, 0.04 - 0.05 * (t - close_at - 0.02))
            rec.write_clock(t)
            q = np.sin(t + np.arange(7)) * 0.5
            rec.write_joint_state(t, np.concatenate([q, [finger, finger]]), np.zeros(9))
            if k % 3 == 0:
                rec.write_image("scene", t, np.full((16, 16, 3), k % 255, np.uint8))
            if k < n:
                rec.write_command(t, q)
                rec.write_gripper_command(t, grip)
        rec.set_metadata("success", "true")


def hand_spec() -> SampleSpec:
    return SampleSpec(ARM, ("scene",), (16, 16), 8, 0.05, (2, 4, 8), 0.025, gripper_joint="fr3_finger_joint1")


def small_config(**kw: object) -> WAMConfig:
    enc = PromptEncoder(build_tokenizer(task_prompts()), 1)
    base = dict(
        joint_names=ARM, camera_names=("scene",), image_height=16, image_width=16, horizon=8, max_prefix=4,
        conv_channels=(4, 8), image_feature_dim=16, hidden_dim=32, latent_dim=16, extra_dofs=("gripper",),
        max_instruction_tokens=12, vocab_size=enc.vocab_size, instruction_dim=8,
    )  # fmt: skip
    base.update(kw)
    return WAMConfig(**base)  # type: ignore[arg-type]


def test_bag_gives_the_finger_state_the_gripper_setpoint_and_the_prompt(tmp_path: Path) -> None:
    write_hand_bag(tmp_path / "b", "put the green cube on the yellow square")
    _, arr, info = episode_from_bag(tmp_path / "b", hand_spec())
    assert arr["state"].shape[1] == 8 and arr["actions"].shape[2] == 8
    assert info["prompt"] == "put the green cube on the yellow square"
    t = np.arange(len(arr["state"])) * 0.025
    # state column 7 is the measured finger, action column 7 the setpoint in force, ahead of it
    np.testing.assert_allclose(arr["state"][t < 0.4, 7], 0.04, atol=1e-6)
    assert arr["actions"][np.searchsorted(t, 0.5), 0, 7] == pytest.approx(0.035, abs=1e-4)
    assert arr["state"][np.searchsorted(t, 0.5), 7] > arr["actions"][np.searchsorted(t, 0.5), 0, 7]
    # arm columns are the arm's own, in joint order
    np.testing.assert_allclose(arr["actions"][0, 0, :7], np.sin(np.arange(7)) * 0.5, atol=1e-6)


def test_bag_without_the_gripper_joint_is_refused_naming_it(tmp_path: Path) -> None:
    write_hand_bag(tmp_path / "b", "reach the red ball")
    bad = SampleSpec(ARM, ("scene",), (16, 16), 8, 0.05, (2, 4, 8), 0.025, gripper_joint="fr3_finger_joint9")
    with pytest.raises(ValueError, match="fr3_finger_joint9"):
        episode_from_bag(tmp_path / "b", bad)


def test_prompt_feature_ignores_padding_and_word_order() -> None:
    model = build_model(small_config(), seed=0)
    enc = PromptEncoder(build_tokenizer(task_prompts()), 12)
    a = enc.encode("put the red cube on the yellow square")
    ids = a[a != 0]
    shuffled = np.zeros(12, np.int64)
    shuffled[3 : 3 + len(ids)] = ids[::-1]  # padding first, words reversed
    feat = model.encoder.instruction
    assert feat is not None
    with torch.no_grad():
        fa, fb = feat(torch.from_numpy(a[None])), feat(torch.from_numpy(shuffled[None]))
        fc = feat(torch.from_numpy(enc.encode("put the blue cube on the yellow square")[None]))
    torch.testing.assert_close(fa, fb)
    assert not torch.allclose(fa, fc)


def test_the_prompt_changes_the_actions_and_the_gripper_is_a_column() -> None:
    cfg = small_config()
    model = build_model(cfg, seed=0)
    assert cfg.num_joints == 8 and cfg.action_names[-1] == "gripper"
    enc = PromptEncoder(build_tokenizer(task_prompts()), 12)
    images = torch.randint(0, 255, (1, 1, 16, 16, 3), dtype=torch.uint8)
    state = torch.zeros(1, 8)
    prefix = torch.zeros(1, 8, 8)
    zero = torch.zeros(1, dtype=torch.int64)
    with torch.no_grad():
        red = model(images, state, prefix, zero, torch.from_numpy(enc.encode("pick up the red cube")[None]))[0]
        blue = model(images, state, prefix, zero, torch.from_numpy(enc.encode("pick up the blue cube")[None]))[0]
    assert red.shape == (1, 8, 8)
    assert not torch.allclose(red, blue)
    with pytest.raises(ValueError, match="instruction_tokens"):
        model(images, state, prefix, zero)


def test_training_reads_each_episodes_prompt_and_learns_the_gripper(tmp_path: Path) -> None:
    from wam_control.model.data import DatasetBuilder

    builder = DatasetBuilder()
    for i, prompt in enumerate(["put the red cube on the yellow square", "push the puck to the green goal"]):
        write_hand_bag(tmp_path / f"b{i}", prompt, close_at=0.3 + 0.3 * i)
        frames, arr, info = episode_from_bag(tmp_path / f"b{i}", hand_spec())
        builder.add(frames, arr, info)
    ds = builder.build()
    model = build_model(small_config(), seed=0)
    model.tokenizer_json = build_tokenizer(task_prompts())
    tokens = episode_tokens(model, ds)
    assert tokens is not None and tokens.shape == (2, 12)
    assert not np.array_equal(tokens[0], tokens[1])
    mean, std, scale = normalization_from(ds, 7)
    assert std[7] < 0.05 and scale[7] < 0.01  # the finger's floors are its own (metres, 4 cm stroke)
    model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std), torch.from_numpy(scale))
    trainer = Trainer(model, ds, np.arange(len(ds)), TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10))
    before = trainer.evaluate(np.arange(len(ds)))["extra_dof_rmse"]
    for _ in range(150):
        trainer.step()
    after = trainer.evaluate(np.arange(len(ds)))["extra_dof_rmse"]
    assert after < 0.5 * before


def test_the_gripper_weight_scales_the_gripper_columns_part_of_the_action_loss(tmp_path: Path) -> None:
    """Weight W on the gripper column: the action loss is (arm + W * gripper) / (7 + W) of the per-column
    squared errors (W = 1: the plain mean), and training at W = 20 fits the gripper closer than at 1."""
    write_hand_bag(tmp_path / "b", "put the red cube on the yellow square", close_at=0.3)
    frames, arr, info = episode_from_bag(tmp_path / "b", hand_spec())
    from wam_control.model.data import DatasetBuilder

    builder = DatasetBuilder()
    builder.add(frames, arr, info)
    ds = builder.build()
    idx = np.arange(len(ds))
    plen = np.zeros(len(ds), np.int64)
    losses, fits = {}, {}
    for w in (1.0, 20.0):
        model = build_model(small_config(), seed=0)
        model.tokenizer_json = build_tokenizer(task_prompts())
        mean, std, scale = normalization_from(ds, 7)
        model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std), torch.from_numpy(scale))
        cfg = TrainConfig(steps=120, batch_size=32, lr=3e-3, warmup_steps=10, gripper_weight=w)
        trainer = Trainer(model, ds, idx, cfg)
        model.eval()
        with torch.no_grad():
            losses[w] = float(trainer.losses(idx, plen, None)[1]["action"])
            out = model.forward_train(*trainer._obs(idx), torch.from_numpy(ds.actions[idx]),
                                      torch.from_numpy(plen), trainer._tokens(idx))  # fmt: skip
            state = torch.from_numpy(ds.state[idx])
            err = (out.residual - (torch.from_numpy(ds.actions[idx]) - state[:, None]) / model.residual_scale) ** 2
            per_col = err.mean(dim=(0, 1))
        assert losses[w] == pytest.approx(float((per_col[:7].sum() + w * per_col[7]) / (7 + w)), rel=1e-4)
        for _ in range(120):
            trainer.step()
        fits[w] = trainer.evaluate(idx)["extra_dof_rmse"]
    assert fits[20.0] < 0.8 * fits[1.0], fits
    with pytest.raises(ValueError, match="gripper weight"):
        Trainer(model, ds, idx, TrainConfig(gripper_weight=0.0))


def test_exported_prompt_model_matches_torch_and_the_runtime_tokenizer(tmp_path: Path) -> None:
    from wam_control.model.export import export_onnx
    from wam_control.policy.contract import read_contract, tokenizer_path
    from wam_control.policy.instruction import InstructionTokenizer

    model = build_model(small_config(), seed=0)
    with torch.no_grad():  # as after training: no zero FiLM or unit LayerNorm the exporter folds away
        for i, p in enumerate(model.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.01)
    with pytest.raises(Exception, match="tokenizer"):
        export_onnx(model, tmp_path / "no_tok.onnx")
    model.tokenizer_json = build_tokenizer(task_prompts())
    res = export_onnx(model, tmp_path / "m.onnx")  # parity against torch with random prompts
    assert res.parity["min_cosine"] > 0.999
    contract = read_contract(tmp_path / "m.onnx", verify_weights=True)
    assert contract.contract_version == 2
    assert contract.action_names == (*ARM, "gripper") and contract.state_names == (*ARM, "gripper")
    assert contract.max_instruction_tokens == 12
    assert Path(tokenizer_path(tmp_path / "m.onnx")).is_file()
    runtime = InstructionTokenizer(tmp_path / "m.onnx", contract)
    text = "Move the GREEN block into the yellow zone"
    np.testing.assert_array_equal(runtime.encode(text), PromptEncoder(model.tokenizer_json, 12).encode(text))
    assert (runtime.encode("grab the purple thing") == 1).sum() == 3  # unknown words are [UNK], not dropped
    # The shipped file alone rebuilds the torch module (the next training run starts from it)
    # distill rewrites the training summary in place after its evaluation (and reads the file back)
    from wam_control.model.distill import _set_training_data
    from wam_control.model.from_onnx import graph_parity, wam_from_onnx

    _set_training_data(tmp_path / "m.onnx", {"eval_success_rate": 0.5})
    assert read_contract(tmp_path / "m.onnx", verify_weights=True).training_data["eval_success_rate"] == 0.5
    assert sorted(f.name for f in tmp_path.iterdir() if "tmp" in f.name) == []
    rebuilt, _ = wam_from_onnx(tmp_path / "m.onnx")
    assert rebuilt.config == model.config and rebuilt.tokenizer_json == model.tokenizer_json
    export_onnx(rebuilt, tmp_path / "again.onnx", check_parity=False)
    assert graph_parity(tmp_path / "m.onnx", tmp_path / "again.onnx").max_abs_err == 0.0


def test_lookahead_teacher_leaves_the_students_episode_untouched() -> None:
    from wam_control.model.rollout import LookaheadLabeler, RolloutConfig, TorchPolicy, run_episode
    from wam_control.sim.arm import SimArm

    cfg = small_config(image_height=48, image_width=48, horizon=16, max_prefix=8)
    model = build_model(cfg, seed=0)
    model.tokenizer_json = build_tokenizer(task_prompts())
    enc = PromptEncoder(model.tokenizer_json, cfg.max_instruction_tokens)
    arm = SimArm(task="pick_place", seed=0, cameras=("scene",), image_hw=(48, 48))
    try:
        rcfg = RolloutConfig(cameras=("scene",), gripper=True, prompt_encoder=enc.encode, max_time_s=0.3)
        labelled = run_episode(arm, TorchPolicy(model), 5, rcfg, labeler=LookaheadLabeler(arm, 16, 0.05))
        plain = run_episode(arm, TorchPolicy(model), 5, rcfg)
    finally:
        arm.close()
    np.testing.assert_array_equal(labelled.cmd_q, plain.cmd_q)
    np.testing.assert_array_equal(labelled.frames, plain.frames)
    assert labelled.labels is not None and labelled.labels.shape == (len(labelled.obs_t), 16, 8)
    # the expert's chunk starts at the student's command and moves the arm; in its approach phase the
    # fingers only ever open (the random student may have closed them a little)
    assert np.all(np.diff(labelled.labels[:, 1:, 7], axis=1) >= -1e-9)
    assert labelled.labels[:, -1, 7].max() <= 0.04 + 1e-9
    assert np.all(np.abs(labelled.labels[:, -1, :7] - labelled.labels[:, 0, :7]).max(axis=1) > 1e-3)
