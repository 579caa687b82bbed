"""Small models built by hand with onnx.helper (not the project's exporter), as a user of contract v2
would bring them: the minimum (images, state -> actions), plus a prompt, a gripper, delta actions, a v1
file, and external data. Each "policy" moves the arm part of the way to a goal pose per chunk, so a
closed loop converges there; the goal may depend on the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
# Inside FR3's limits, away from home (the middle of each range).
FR3_HOME = np.array([0.0, 0.0, 0.0, -1.5969, 0.0, 2.5307, 0.0])
FR3_GOAL = FR3_HOME + np.array([0.3, -0.2, 0.2, 0.25, -0.3, 0.2, 0.3])
VOCAB = {"[PAD]": 0, "[UNK]": 1, "reach": 2, "left": 3, "right": 4, "the": 5, "target": 6}


def build_model(
    path: str | Path,
    *,
    joints: Sequence[str] = FR3_JOINTS,
    goal: Sequence[float] | np.ndarray = FR3_GOAL,
    cameras: Sequence[str] = ("scene", "wrist"),
    hw: tuple[int, int] = (32, 32),
    horizon: int = 16,
    action_dt: float = 0.05,
    version: int = 2,
    extra: Sequence[str] = (),
    extra_goal: Sequence[float] = (),
    delta: bool = False,
    prompt: bool = False,
    max_tokens: int = 6,
    gain: float = 0.5,
    external_data: bool = False,
    weights_hash: bool = True,
    metadata: dict[str, object] | None = None,
) -> Path:
    """Write the model (and its tokenizer with `prompt`) and return its path.

    Action k of a chunk is state + (goal - state) * gain * (k + 1) / horizon (as a delta without the
    state when `delta`); with `prompt`, the goal of joint 1 moves +0.2 rad for "left" and -0.2 for
    "right". version 1 adds the prefix inputs (steps < prefix_len = the prefix) and a world-model head
    (zeros)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from wam_control.policy.contract import weights_sha256_of

    path = Path(path)
    names = [*joints, *extra]
    d = len(names)
    n_cam = len(cameras)
    g = np.array([*goal, *extra_goal], np.float32)
    assert g.shape == (d,)
    B = "batch"
    inputs = [
        helper.make_tensor_value_info("images", TensorProto.UINT8, [B, n_cam, hw[0], hw[1], 3]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [B, d]),
    ]
    w = (gain * (np.arange(horizon) + 1.0) / horizon).astype(np.float32).reshape(1, horizon, 1)
    inits = [
        numpy_helper.from_array(g, "goal"),
        numpy_helper.from_array(w, "ramp"),
        numpy_helper.from_array(np.array([1, 2, 3, 4], np.int64), "img_axes"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        # A "linear layer" (identity): the tensor that lands in the external data file.
        numpy_helper.from_array(np.eye(d, dtype=np.float32), "mix"),
    ]
    nodes = [
        # The images are read (a real policy would): uint8 straight into a Cast, as TensorRT wants.
        helper.make_node("Cast", ["images"], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img_f", "img_axes"], ["img_mean"], keepdims=0),
        helper.make_node("Mul", ["img_mean", "zero"], ["img_zero"]),
        helper.make_node("Unsqueeze", ["img_zero", "ax12"], ["img_term"]),  # [B, 1, 1]
    ]
    goal_name = "goal"
    if prompt:
        inputs.append(helper.make_tensor_value_info("instruction_tokens", TensorProto.INT64, [B, max_tokens]))
        emb = np.zeros((len(VOCAB), d), np.float32)
        emb[VOCAB["left"], 0] = 0.2
        emb[VOCAB["right"], 0] = -0.2
        inits.append(numpy_helper.from_array(emb, "embedding"))
        nodes += [
            helper.make_node("Gather", ["embedding", "instruction_tokens"], ["tok_emb"], axis=0),  # [B, L, D]
            helper.make_node("ReduceSum", ["tok_emb", "ax1"], ["tok_sum"], keepdims=0),  # [B, D]
            helper.make_node("Add", ["goal", "tok_sum"], ["goal_p"]),
        ]
        goal_name = "goal_p"
    nodes += [
        helper.make_node("Sub", [goal_name, "state"], ["err0"]),
        helper.make_node("MatMul", ["err0", "mix"], ["err"]),
        helper.make_node("Unsqueeze", ["err", "ax1"], ["err3"]),
        helper.make_node("Mul", ["err3", "ramp"], ["step"]),  # [B, H, D]
        helper.make_node("Add", ["step", "img_term"], ["move"]),
    ]
    if delta:
        nodes.append(helper.make_node("Identity", ["move"], ["raw_actions"]))
    else:
        nodes += [
            helper.make_node("Unsqueeze", ["state", "ax1"], ["state3"]),
            helper.make_node("Add", ["state3", "move"], ["raw_actions"]),
        ]
    outputs = [helper.make_tensor_value_info("actions", TensorProto.FLOAT, [B, horizon, d])]
    meta: dict[str, object] = {
        "contract_version": version,
        "model_name": f"byom-{'v1' if version == 1 else 'v2'}{'-prompt' if prompt else ''}"
        f"{'-gripper' if extra else ''}{'-delta' if delta else ''}",
        "joint_names": list(joints),
        "camera_names": list(cameras),
        "image_height": hw[0],
        "image_width": hw[1],
        "action_dt": action_dt,
        "horizon": horizon,
    }
    if version == 1:
        latent_dim, k = 4, 2
        inputs += [
            helper.make_tensor_value_info("action_prefix", TensorProto.FLOAT, [B, horizon, d]),
            helper.make_tensor_value_info("prefix_len", TensorProto.INT64, [B]),
        ]
        inits += [
            numpy_helper.from_array(np.arange(horizon, dtype=np.int64).reshape(1, horizon, 1), "steps"),
            numpy_helper.from_array(np.ones((1, latent_dim), np.float32), "ones_c"),
            numpy_helper.from_array(np.ones((1, k, latent_dim), np.float32), "ones_kc"),
        ]
        nodes += [
            helper.make_node("Unsqueeze", ["prefix_len", "ax12"], ["plen3"]),
            helper.make_node("Less", ["steps", "plen3"], ["in_prefix"]),
            helper.make_node("Where", ["in_prefix", "action_prefix", "raw_actions"], ["actions"]),
            helper.make_node("Unsqueeze", ["img_zero", "ax1"], ["img_b1"]),
            helper.make_node("Mul", ["img_b1", "ones_c"], ["latent"]),
            helper.make_node("Unsqueeze", ["latent", "ax1"], ["latent3"]),
            helper.make_node("Mul", ["latent3", "ones_kc"], ["latent_pred"]),
        ]
        outputs += [
            helper.make_tensor_value_info("latent", TensorProto.FLOAT, [B, latent_dim]),
            helper.make_tensor_value_info("latent_pred", TensorProto.FLOAT, [B, k, latent_dim]),
        ]
        meta.update(latent_steps=k, latent_offsets=[4, 8], max_prefix=8, latent_dim=latent_dim,
                    training_data={"note": "hand-built test model"})  # fmt: skip
    else:
        nodes.append(helper.make_node("Identity", ["raw_actions"], ["actions"]))
        if extra:
            meta["action_names"] = names
            meta["state_names"] = names
        if delta:
            meta["action_type"] = "delta"
        if prompt:
            meta["max_instruction_tokens"] = max_tokens
    graph = helper.make_graph(nodes, "byom", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if version == 1 or weights_hash:
        meta["weights_sha256"] = weights_sha256_of(model)
    meta.update(metadata or {})
    import json

    helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(model, full_check=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=128)  # fmt: skip
    else:
        onnx.save_model(model, str(path))
    if prompt:
        write_tokenizer(path.with_suffix("").as_posix() + ".tokenizer.json")
    return path


def write_tokenizer(path: str | Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(path))
    return Path(path)
