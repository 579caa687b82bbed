"""Model contract: metadata parsing, graph I/O checks, file errors, model vs deployment config."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from wam_control.policy.contract import (
    ContractError,
    ModelContract,
    ModelFileError,
    check_contract,
    expected_io,
    read_contract,
    validate_io,
)

JOINTS = ("j1", "j2", "j3")


def _contract(**kw: object) -> ModelContract:
    base = dict(
        contract_version=1,
        model_name="m",
        joint_names=JOINTS,
        camera_names=("scene", "wrist"),
        image_height=64,
        image_width=80,
        action_dt=0.05,
        horizon=8,
        latent_steps=3,
        latent_offsets=(2, 4, 8),
        max_prefix=4,
        latent_dim=16,
        weights_sha256="0" * 64,
        training_data={"episodes": 3},
    )
    base.update(kw)
    return ModelContract(**base)  # type: ignore[arg-type]


def _io(c: ModelContract) -> tuple[dict, dict]:
    ins, outs = expected_io(c)
    return (
        {k: (d, ("batch", *s)) for k, (d, s) in ins.items()},
        {k: (d, ("batch", *s)) for k, (d, s) in outs.items()},
    )


def test_metadata_roundtrip_is_json_per_key() -> None:
    c = _contract()
    meta = c.to_metadata()
    assert json.loads(meta["joint_names"]) == list(JOINTS)
    assert json.loads(meta["action_dt"]) == 0.05
    back = ModelContract.from_metadata(meta)
    assert back == c and back.training_data == {"episodes": 3}


@pytest.mark.parametrize(
    "key", ["action_dt", "joint_names", "max_prefix", "latent_offsets", "weights_sha256"]
)
def test_missing_metadata_names_the_key(key: str) -> None:
    meta = _contract().to_metadata()
    del meta[key]
    with pytest.raises(ContractError, match=f"metadata {key} missing") as ei:
        ModelContract.from_metadata(meta, source="x.onnx")
    assert ei.value.field == key and "x.onnx" in str(ei.value)


def test_malformed_metadata_values() -> None:
    meta = _contract().to_metadata()
    with pytest.raises(ContractError, match="horizon .* wrong type"):
        ModelContract.from_metadata({**meta, "horizon": '"16"'})
    with pytest.raises(ContractError, match="action_dt is not valid JSON"):
        ModelContract.from_metadata({**meta, "action_dt": "fast"})
    with pytest.raises(ContractError, match="latent_steps"):
        ModelContract.from_metadata({**meta, "latent_steps": "true"})
    with pytest.raises(ContractError, match="contract_version 3 is not supported"):
        ModelContract.from_metadata({**meta, "contract_version": "3"})


def test_value_validation() -> None:
    with pytest.raises(ContractError, match="latent_offsets has 2 entries"):
        _contract(latent_offsets=(2, 4))
    with pytest.raises(ContractError, match="strictly increasing"):
        _contract(latent_offsets=(4, 2, 8))
    with pytest.raises(ContractError, match="max_prefix"):
        _contract(max_prefix=8)
    with pytest.raises(ContractError, match="action_dt"):
        _contract(action_dt=0.0)
    with pytest.raises(ContractError, match="duplicates"):
        _contract(joint_names=("a", "a", "b"))


def test_validate_io_accepts_contract_io_and_batch_one() -> None:
    c = _contract()
    ins, outs = _io(c)
    validate_io(c, ins, outs)
    ins1 = {k: (d, (1, *s[1:])) for k, (d, s) in ins.items()}
    validate_io(c, ins1, outs)


def test_validate_io_errors_name_the_tensor() -> None:
    c = _contract()
    ins, outs = _io(c)
    with pytest.raises(ContractError, match="missing input action_prefix"):
        validate_io(c, {k: v for k, v in ins.items() if k != "action_prefix"}, outs)
    with pytest.raises(ContractError, match="missing output latent_pred"):
        validate_io(c, ins, {k: v for k, v in outs.items() if k != "latent_pred"})
    with pytest.raises(ContractError, match="input images has dtype float32, expected uint8"):
        validate_io(c, {**ins, "images": ("float32", ins["images"][1])}, outs)
    with pytest.raises(ContractError, match="input state has shape .* expected .*'B', 3"):
        validate_io(c, {**ins, "state": ("float32", ("batch", 7))}, outs)
    with pytest.raises(ContractError, match="fixed batch 4"):
        validate_io(c, {**ins, "state": ("float32", (4, 3))}, outs)
    with pytest.raises(ContractError, match="unexpected input"):
        validate_io(c, {**ins, "goal": ("float32", ("batch", 3))}, outs)


def test_check_contract_joint_order_vs_membership() -> None:
    c = _contract()
    check_contract(c, joint_names=JOINTS, camera_names=("scene", "wrist"), control_hz=100)
    with pytest.raises(
        ContractError,
        match=r"model joint order \['j1', 'j2', 'j3'\] differs from config \['j2', 'j1', 'j3'\]",
    ):
        check_contract(c, joint_names=("j2", "j1", "j3"))
    with pytest.raises(ContractError, match=r"not in model: \['j4'\]; not in config: \['j3'\]") as ei:
        check_contract(c, joint_names=("j1", "j2", "j4"))
    assert ei.value.field == "joint_names"
    with pytest.raises(ContractError, match="camera") as ei:
        check_contract(c, camera_names=("scene",))
    assert ei.value.field == "camera_names"


def test_check_contract_image_dt_and_ticks() -> None:
    c = _contract()
    with pytest.raises(ContractError, match="image size 64x80"):
        check_contract(c, image_hw=(96, 96))
    with pytest.raises(ContractError, match="action_dt 0.05 s differs"):
        check_contract(c, action_dt=0.1)
    # 0.05 s at 1 kHz = 50 ticks: fine. At 30 Hz it is 1.5 ticks: actions would fall between ticks.
    check_contract(c, control_hz=1000)
    with pytest.raises(ContractError, match="1.5 ticks"):
        check_contract(c, control_hz=30)
    with pytest.raises(ContractError, match="whole number of ticks"):
        check_contract(replace(c, action_dt=0.05), control_hz=10)


def test_check_contract_reads_a_config_object() -> None:
    class Cfg:
        joint_names = ("j1", "j3", "j2")
        control_hz = 100.0

    with pytest.raises(ContractError, match="joint order"):
        check_contract(_contract(), Cfg())


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage-not-onnx\xff\xff", None])
def test_read_contract_bad_files(tmp_path, content) -> None:
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.onnx"):
        read_contract(p)


def test_policy_package_imports_without_heavy_deps() -> None:
    import subprocess

    code = (
        "import sys, wam_control.policy as p; "
        "bad=[m for m in ('torch','onnxruntime','onnx','tensorrt') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
