"""`wam-control check-model FILE [--config YAML]`: what a model file declares and what the runtime will do
with it (docs/model_contract.md, README "Bring your own model").

Prints the contract, which optional parts of contract v2 the model has and what the runtime does with
each (prefix or blended seams, surprise monitor on/off, language prompt, extra DOFs and their command
outputs, delta actions, external data, weights hash), any mismatch with the deployment config, and the
TensorRT compatibility lint. Exit code 0 when the controller would run the model with this config,
1 on a refusal (the message names the field).

`model_plan` and `refusals` are also what `build_runtime` uses at start-up, so the start-up log and
this command say the same thing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from wam_control.policy.contract import (
    ContractError,
    ModelContract,
    ModelFileError,
    check_contract,
    read_contract,
    tokenizer_path,
)


def _surprise_setting(config: Any) -> Any:
    return getattr(getattr(config, "surprise", None), "enabled", "auto") if config is not None else "auto"


def model_plan(contract: ModelContract, config: Any = None, model_path: str = "") -> list[tuple[str, str]]:
    """(part, what the runtime does with it) for every optional part of the contract."""
    c = contract
    plan: list[tuple[str, str]] = []
    if c.has_prefix:
        plan.append(("prefix", f"present (max_prefix {c.max_prefix}): the committed actions are given to the "
                               "model, which continues them; seams corrected only when needed"))  # fmt: skip
    else:
        plan.append(("prefix", "absent: no prefix is sent; each new chunk is joined to the executing plan by "
                               "the scheduler's C2 seam blend (jerk-bounded)"))  # fmt: skip
    surprise = _surprise_setting(config)
    if c.has_world_model:
        on = surprise is True or surprise == "auto"
        plan.append(("world-model", f"present (K={c.latent_steps}, C={c.latent_dim}, offsets "
                                    f"{list(c.latent_offsets)}): surprise monitor "
                                    f"{'on' if on else 'off (surprise.enabled: false)'}"))  # fmt: skip
    else:
        plan.append(("world-model", "absent: surprise monitor and imagination preview off"))
    if c.has_instruction:
        prompt = getattr(config, "instruction", "") if config is not None else ""
        tok = tokenizer_path(model_path) if model_path else "<model>.tokenizer.json"
        plan.append(("instruction", f"present (max {c.max_instruction_tokens} tokens, tokenizer {tok}): prompt "
                                    + (f"{prompt!r} from the config" if prompt else "none in the config: the arm "
                                       "does not move until one arrives on ~/instruction")
                                    + "; ~/instruction (std_msgs/String) replaces it"))  # fmt: skip
    else:
        plan.append(("instruction", "absent: no language prompt"))
    if c.extra_actions or c.extra_states:
        parts = []
        extra = getattr(config, "extra_dofs", {}) if config is not None else {}
        for name in c.extra_actions:
            dof = extra.get(name)
            if dof is None:
                parts.append(f"action {name}: NOT MAPPED in the config (extra_dofs.{name})")
            else:
                joint = dof.joint or name
                joints = list(dof.command_joints) or [joint]
                parts.append(f"action {name} -> joint {joint} (limits joint_limits.{joint}, safety filter) -> "
                             f"{dof.command_interface} {dof.command_topic} {joints}")  # fmt: skip
        for name in c.extra_states:
            dof = extra.get(name)
            src = f"joint {dof.joint or name} in /joint_states" if dof is not None else "NOT MAPPED"
            parts.append(f"state {name} <- {src}")
        plan.append(("extra-dofs", "; ".join(parts)))
    else:
        plan.append(("extra-dofs", "none: actions and state are the arm joints"))
    if c.delta_actions:
        plan.append(("action-type", "delta: each chunk is added to the state observed for its request, giving "
                                    "absolute targets before the scheduler"))  # fmt: skip
    else:
        plan.append(("action-type", "absolute"))
    if model_path:
        data = _external_data(model_path)
        plan.append(("external-data", f"{', '.join(data)} (loaded by ONNX Runtime; TensorRT parses from the file "
                                      "so it finds them; covered by the weights hash)" if data
                     else "none: one self-contained file"))  # fmt: skip
    plan.append(("weights-hash", "weights_sha256 present: verified" if c.weights_sha256
                 else "absent: the file carries no checksum of its weights"))  # fmt: skip
    return plan


def refusals(contract: ModelContract, config: Any) -> list[str]:
    """Why the controller would refuse this model with this config (beyond `check_contract`)."""
    c = contract
    out: list[str] = []
    if config is None:
        return out
    if not c.has_world_model:
        if _surprise_setting(config) is True:
            out.append(
                "surprise.enabled is true but the model has no world-model head (no latent / latent_pred "
                "outputs): the surprise monitor compares the latents the model predicts with the ones it "
                "later observes, so there is nothing to monitor. Set surprise.enabled: auto (on only for models "
                "with the head) or false"
            )
        if getattr(getattr(config, "imagination", None), "enabled", False):
            out.append(
                "imagination.enabled is true but the model has no world-model head (no latent_pred output): "
                "there is no predicted future to decode. Set imagination.enabled: false"
            )
    if getattr(config, "instruction", "") and not c.has_instruction:
        out.append(
            "instruction is set but the model takes no language prompt (no instruction_tokens input); "
            "remove instruction: from the config"
        )
    backend = getattr(getattr(config, "inference", None), "backend", "auto")
    v1_shaped = c.has_prefix and c.has_world_model and not c.has_instruction
    if backend in ("triton", "tensorrt", "torch") and not v1_shaped:
        out.append(
            f"inference.backend {backend} runs models with the prefix inputs and the world-model outputs "
            "and no instruction input (the version 1 tensors) only; use backend onnxruntime (or auto) "
            "for this model"
        )
    return out


def _external_data(model_path: str) -> list[str]:
    try:
        import onnx

        from wam_control.policy.contract import external_data_files

        return [os.path.basename(p) for p in external_data_files(onnx.load(model_path, load_external_data=False),
                                                                 model_path)]  # fmt: skip
    except Exception:
        return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control check-model", description=__doc__.split("\n")[0])
    ap.add_argument("model", help="the ONNX model file")
    ap.add_argument("--config", default="", help="deployment YAML or preset name to check the model against")
    args = ap.parse_args(argv)
    path = args.model
    try:
        contract = read_contract(path, verify_weights=True)
    except (ContractError, ModelFileError) as exc:
        print(f"REFUSED: {exc}")
        return 1
    c = contract
    print(f"{path}: contract version {c.contract_version}, model {c.model_name!r}")
    print(f"  joints      {list(c.joint_names)}")
    if c.extra_actions or c.extra_states:
        print(f"  actions     {list(c.actions)}")
        print(f"  state       {list(c.states)}")
    print(f"  cameras     {list(c.camera_names)} {c.image_height}x{c.image_width} (HxW)")
    print(f"  horizon     {c.horizon} steps x {c.action_dt:g} s, action_type {c.action_type}")
    present = [k for k, v in c.parts().items() if v]
    absent = [k for k, v in c.parts().items() if not v]
    print(f"  optional parts present: {', '.join(present) or 'none'}; absent: {', '.join(absent) or 'none'}")
    config = None
    problems: list[str] = []
    if args.config:
        from wam_control.config import ConfigError, load_config, preset_path

        try:
            config = load_config(preset_path(args.config))
        except (ConfigError, FileNotFoundError) as exc:
            print(f"REFUSED: config: {exc}")
            return 1
        try:
            check_contract(c, config)
        except ContractError as exc:
            problems.append(str(exc))
        problems += refusals(c, config)
    print("what the runtime will do" + (f" with {config.source}:" if config is not None else ":"))
    for part, line in model_plan(c, config, path):
        print(f"  {part:<14} {line}")
    from wam_control.policy.trt_lint import lint_onnx

    try:
        report = lint_onnx(path)
        lint = "ok" if report.ok and not report.warnings else report.format()
        print(f"TensorRT lint: {'no errors' if report.ok else 'ERRORS (the TensorRT backend would refuse it)'}")
        if lint != "ok":
            print("  " + lint.replace("\n", "\n  "))
        if not report.ok and config is not None and config.inference.backend == "tensorrt":
            problems.append("inference.backend tensorrt but the TensorRT lint found errors (above)")
    except ImportError as exc:  # the lint needs onnx; the contract check above did not
        print(f"TensorRT lint: not run ({exc})")
    if problems:
        for p in problems:
            print(f"REFUSED: {p}")
        return 1
    print("OK" + (f": the controller runs this model with {config.source}" if config is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
