"""Conformance (issue 14): hand-built contract v2 models (onnx.helper, not the project's exporter) through
the real Controller in a replay on the simulated clock, with ONNX Runtime computing every chunk: the
minimum model, a v1 file, a prompt, a gripper, delta actions (against the same motion as absolute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from byom_models import FR3_GOAL, FR3_HOME, build_model

from wam_control.config import load_config, preset_path
from wam_control.config.loader import config_from_dict, read_config_data
from wam_control.config.schema import LimitArrays, RobotConfig
from wam_control.policy import PolicyInput, PolicyOutput, load_backend, read_contract
from wam_control.runtime.clock import SimClock
from wam_control.runtime.controller import Controller
from wam_control.runtime.replay import FirstOrderPlant, Replay, ReplayLog, ScriptedWorker
from wam_control.runtime.worker import InferenceRequest

pytest.importorskip("onnxruntime")

GRIPPER_LIMITS = {
    "has_position_limits": True, "min_position": 0.0, "max_position": 0.04,
    "has_velocity_limits": True, "max_velocity": 0.05,
    "has_acceleration_limits": True, "max_acceleration": 0.5,
    "has_jerk_limits": True, "max_jerk": 20.0,
}  # fmt: skip


def fr3(**overrides: Any) -> RobotConfig:
    data = read_config_data(preset_path("fr3"))
    limits = dict(data.pop("joint_limits"))
    limits.update(overrides.pop("joint_limits", {}))
    data.update(overrides)
    return config_from_dict({**data, "joint_limits": limits}, source="fr3+test", base_dir=preset_path("fr3").parent)


def gripper_config(interface: str = "forward_position") -> RobotConfig:
    return fr3(
        extra_dofs={"gripper": {"joint": "fr3_finger_joint1", "command_interface": interface,
                                "command_topic": "/gripper_controller/commands",
                                "command_joints": ["fr3_finger_joint1", "fr3_finger_joint2"]}},
        joint_limits={"fr3_finger_joint1": GRIPPER_LIMITS},
    )  # fmt: skip


class Rig:
    def __init__(self, model: Path, config: RobotConfig | None = None, latency: int = 40) -> None:
        self.config = config or load_config(preset_path("fr3"))
        self.contract = read_contract(model, verify_weights=True)
        self.backend = load_backend(model, "onnxruntime", warmup=1)
        self.clock = SimClock(100.0)

        def call(req: InferenceRequest) -> PolicyOutput:
            return self.backend.infer(PolicyInput(req.images, req.state, req.action_prefix, req.prefix_len,
                                                  instruction_tokens=req.instruction_tokens))  # fmt: skip

        self.worker = ScriptedWorker(call, self.clock, self.config.control_period, latency)
        self.c = Controller(self.config, self.contract, self.worker, self.clock)
        q0 = np.concatenate([FR3_HOME, np.full(self.c.dof - 7, 0.01)])
        self.plant = FirstOrderPlant(q0, self.config.control_period)
        self.replay = Replay(self.c, self.clock, self.plant)
        self.c.start()

    def run(self, ticks: int) -> ReplayLog:
        return self.replay.run(ticks)


def limits_held(q: np.ndarray, lim: LimitArrays, dt: float) -> bool:
    q = q[~np.isnan(q).any(axis=1)]
    tol = 1 + 1e-6
    v = np.abs(np.diff(q, 1, axis=0)) / dt
    a = np.abs(np.diff(q, 2, axis=0)) / dt**2
    j = np.abs(np.diff(q, 3, axis=0)) / dt**3
    return bool(
        (v <= lim.v_max * tol).all()
        and (a <= np.minimum(lim.a_max, lim.d_max) * tol + 1e-9).all()
        and (j <= lim.j_max * tol + 1e-6).all()
        and (q >= lim.q_min - 1e-9).all()
        and (q <= lim.q_max + 1e-9).all()
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("byom_rt")
    return {
        "minimum": build_model(d / "minimum.onnx", weights_hash=False),
        "v1": build_model(d / "v1.onnx", version=1),
        "prompt": build_model(d / "prompt.onnx", prompt=True),
        "gripper": build_model(d / "gripper.onnx", extra=["gripper"], extra_goal=[0.035]),
        "delta": build_model(d / "delta.onnx", delta=True),
        "external": build_model(d / "external.onnx", external_data=True),
    }


@pytest.mark.parametrize("name", ["minimum", "v1", "external"])
def test_model_moves_to_its_goal_within_limits(models: dict[str, Path], name: str) -> None:
    rig = Rig(models[name])
    log = rig.run(3000)  # 6 s at 500 Hz
    c = rig.c
    assert not log.faulted.any() and c.counters["model_errors"] == 0
    assert np.abs(log.q_meas[-1] - FR3_GOAL).max() < 0.03  # it moved (0.2-0.3 rad per joint) and arrived
    assert limits_held(log.q_cmd, c.limits, c.dt)
    sched = c.scheduler.counters
    assert sched["chunks_accepted"] >= 10 and sched["starved_ticks"] == 0
    prefixes = [r.prefix_len for r in rig.worker.requests]
    values = c.status().values
    if name == "v1":
        assert max(prefixes) > 0 and str(values["model.prefix"]).startswith("prefix")
    else:
        # No prefix input: nothing is sent, and seams are joined by the scheduler's blend.
        assert prefixes == [0] * len(prefixes) and sched["seams_blended"] > 0
        assert values["model.prefix"].startswith("none") and values["model.world_model"].startswith("none")
        assert values["model.surprise"] == "off"


def test_prompt_model_waits_for_a_prompt_then_follows_it(models: dict[str, Path]) -> None:
    from wam_control.policy.instruction import InstructionTokenizer
    from wam_control.transport import messages as M
    from wam_control.transport.adapter import ControllerIO

    rig = Rig(models["prompt"])
    c = rig.c
    log = rig.run(600)
    # No prompt: no request, no motion, and the status says why.
    assert rig.worker.requests == [] and c.counters["waiting_instruction_ticks"] > 0
    assert np.abs(log.q_cmd[-1] - FR3_HOME).max() < 1e-9 and np.abs(log.v_cmd).max() == 0.0
    status = c.status()
    assert "waiting for an instruction" in status.message and status.values["model.instruction"] == ""

    tok = InstructionTokenizer(models["prompt"], rig.contract)
    io = ControllerIO(c, M.dds_msg_types())
    io.tokenizer = tok
    encoded: list[str] = []
    encode = tok.encode
    tok.encode = lambda text: encoded.append(text) or encode(text)  # type: ignore[method-assign]
    io.on_instruction(M.string_msg(io.T, "reach left"))
    io.on_instruction(M.string_msg(io.T, "reach left"))  # the latched and the volatile reader: once
    assert encoded == ["reach left"]
    log = rig.run(2500)
    left = FR3_GOAL + np.array([0.2, 0, 0, 0, 0, 0, 0])
    assert np.abs(log.q_meas[-1] - left).max() < 0.03
    first = rig.worker.requests[0].instruction_tokens
    assert first is not None and list(first) == list(encode("reach left"))
    assert c.status().values["model.instruction"] == "reach left"

    io.on_instruction(M.string_msg(io.T, "reach right"))
    n = len(rig.worker.requests)
    log = rig.run(3000)
    # The new prompt takes effect with the next request.
    assert list(rig.worker.requests[n].instruction_tokens) == list(encode("reach right"))  # type: ignore[arg-type]
    right = FR3_GOAL - np.array([0.2, 0, 0, 0, 0, 0, 0])
    assert np.abs(log.q_meas[-1] - right).max() < 0.03
    assert not log.faulted.any() and limits_held(log.q_cmd, c.limits, c.dt)
    io.on_instruction(M.string_msg(io.T, "  "))
    assert io.monitor.rejected  # empty prompt refused, the one in force stays
    assert c.status().values["model.instruction"] == "reach right"


@pytest.mark.parametrize("interface", ["forward_position", "joint_trajectory"])
def test_gripper_goes_through_the_filter_with_its_own_limits_and_topic(
    models: dict[str, Path], interface: str
) -> None:
    from wam_control.transport import messages as M
    from wam_control.transport.adapter import ControllerIO

    cfg = gripper_config(interface)
    rig = Rig(models["gripper"], cfg)
    c = rig.c
    assert c.command_joints[-1] == "fr3_finger_joint1" and c.dof == 8
    log = rig.run(3000)
    assert not log.faulted.any() and c.counters["model_errors"] == 0
    assert np.abs(log.q_meas[-1, :7] - FR3_GOAL).max() < 0.03
    # The gripper's own limits: 0.04 m minus the margin (at most 10 % of its range), 0.05 m/s.
    assert c.limits.q_max[-1] == pytest.approx(0.036) and c.limits.v_max[-1] == 0.05
    assert log.q_meas[-1, 7] == pytest.approx(0.035, abs=1e-3)
    assert np.abs(np.diff(log.q_cmd[:, 7])).max() / c.dt <= 0.05 * (1 + 1e-6)
    assert limits_held(log.q_cmd, c.limits, c.dt)
    # The state fed to the model includes the gripper, read by name from the joint states.
    assert rig.worker.requests[-1].state.shape == (8,)

    io = ControllerIO(c, M.dds_msg_types())
    cmd = c.tick(3000)
    assert cmd is not None
    arm = io.command_msg(cmd)
    assert len(arm.joint_names) == 7 and len(arm.points[0].positions) == 7
    ((out, msg),) = io.extra_command_msgs(cmd)
    assert out.topic == "/gripper_controller/commands" and out.interface == interface
    if interface == "forward_position":
        assert list(msg.data) == [pytest.approx(cmd.positions[7])] * 2
    else:
        assert msg.joint_names == ["fr3_finger_joint1", "fr3_finger_joint2"]
        assert list(msg.points[0].positions) == [pytest.approx(cmd.positions[7])] * 2
    # /joint_states must carry the gripper joint too.
    assert io.state_joints[-1] == "fr3_finger_joint1"


def test_delta_actions_are_the_same_motion_as_absolute(models: dict[str, Path]) -> None:
    runs = {}
    for name in ("minimum", "delta"):
        rig = Rig(models[name])
        runs[name] = rig.run(2000)
        assert rig.c.counters["model_errors"] == 0
    a, d = runs["minimum"], runs["delta"]
    assert np.abs(a.q_cmd[-1] - FR3_HOME).max() > 0.1  # it moved
    assert np.allclose(a.q_cmd, d.q_cmd, equal_nan=True, atol=1e-5)


def test_extra_state_only_dof_is_read_by_name(models: dict[str, Path], tmp_path: Path) -> None:
    # A model that reads a gripper's opening (state only, never commanded): a contract with the extra
    # state dimension and a scripted model that records what it was given.
    c = read_contract(models["gripper"])
    cfg = fr3(extra_dofs={"width": {"joint": "fr3_finger_joint1", "command_interface": "none"}})
    from dataclasses import replace

    contract = replace(c, action_names=(), state_names=(*c.joint_names, "width"))
    seen: list[np.ndarray] = []

    def model(req: InferenceRequest) -> PolicyOutput:
        seen.append(req.state.copy())
        return PolicyOutput(np.repeat(req.state[None, :7], contract.horizon, axis=0),
                            np.zeros(0, np.float32), np.zeros((0, 0), np.float32))  # fmt: skip

    clock = SimClock(100.0)
    ctl = Controller(cfg, contract, ScriptedWorker(model, clock, cfg.control_period, 5), clock)
    assert ctl.dof == 7 and ctl.tracked_joints[-1] == "fr3_finger_joint1"
    rp = Replay(ctl, clock, FirstOrderPlant(FR3_HOME, cfg.control_period))
    rp.extra_state["fr3_finger_joint1"] = 0.0123
    ctl.start()
    rp.run(200)
    assert seen and seen[-1].shape == (8,) and seen[-1][-1] == pytest.approx(0.0123)


def test_process_worker_runs_a_prompt_gripper_model_without_a_head(tmp_path: Path) -> None:
    """The spawned-process worker: the prompt's tokens travel through shared memory like the other
    inputs, and the absent world-model outputs are empty arrays (one buffer layout for every model)."""
    from wam_control.policy.instruction import InstructionTokenizer
    from wam_control.runtime.clock import MonotonicClock
    from wam_control.runtime.worker import make_worker

    model = build_model(tmp_path / "vla.onnx", prompt=True, extra=["gripper"], extra_goal=[0.03])
    contract = read_contract(model)
    tok = InstructionTokenizer(model, contract)
    worker = make_worker("process", model, contract, MonotonicClock(), backend="onnxruntime", warmup=1)
    worker.start()
    try:
        assert worker.wait_ready(60.0), worker.health()
        state = np.append(FR3_HOME, 0.01).astype(np.float32)
        outs = []
        for rid, prompt in ((1, "reach left"), (2, "reach right")):
            req = InferenceRequest(rid, 0, np.zeros((2, 32, 32, 3), np.uint8), state,
                                   np.zeros((16, 8), np.float32), 0, tok.encode(prompt))  # fmt: skip
            assert worker.submit(req)
            res = worker.wait_result(20.0)
            assert res is not None and res.error is None, res
            assert res.output is not None and res.output.latent.shape == (0,)
            assert res.output.latent_pred.shape == (0, 0) and res.output.actions.shape == (16, 8)
            outs.append(res.output.actions)
    finally:
        worker.close()
    # The same state, two prompts: goals 0.4 rad apart on joint 1, half of that by the chunk end (gain 0.5).
    assert outs[0][-1, 0] - outs[1][-1, 0] == pytest.approx(0.2, abs=1e-5)
    assert outs[0][-1, 7] == pytest.approx(0.01 + 0.5 * (0.03 - 0.01), abs=1e-6)
