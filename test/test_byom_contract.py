"""Contract v2 (issue 14): the required minimum, each optional part all-or-nothing, v1 unchanged, external
data, the config refusals and `wam-control check-model`, on small models built with onnx.helper."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from byom_models import FR3_JOINTS, build_model

from wam_control.config import load_config, preset_path
from wam_control.policy import load_backend, read_contract
from wam_control.policy.check_model import main as check_model
from wam_control.policy.check_model import refusals
from wam_control.policy.contract import ContractError, ModelContract, ModelFileError, check_contract

pytest.importorskip("onnxruntime")


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _rewrite(path: Path, out: Path, drop: tuple[str, ...] = (), **set_: object) -> Path:
    model = onnx.load(str(path))
    meta = {k: v for k, v in _meta(path).items() if k not in drop}
    meta.update({k: json.dumps(v) for k, v in set_.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save_model(model, str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("byom")
    return {
        "minimum": build_model(d / "minimum.onnx", weights_hash=False),
        "v1": build_model(d / "v1.onnx", version=1),
        "prompt": build_model(d / "prompt.onnx", prompt=True),
        "gripper": build_model(d / "gripper.onnx", extra=["gripper"], extra_goal=[0.03]),
        "delta": build_model(d / "delta.onnx", delta=True),
        "external": build_model(d / "external.onnx", external_data=True),
    }


def test_minimum_v2_model_reads_and_runs(models: dict[str, Path]) -> None:
    c = read_contract(models["minimum"], verify_weights=True)  # no hash: nothing to verify, not an error
    assert c.contract_version == 2 and not c.has_prefix and not c.has_world_model and not c.has_instruction
    assert c.parts() == {
        "prefix": False, "world-model": False, "instruction": False, "extra-dofs": False,
        "delta-actions": False, "weights-hash": False,
    }  # fmt: skip
    assert set(_meta(models["minimum"])) == {
        "contract_version", "model_name", "joint_names", "camera_names", "image_height", "image_width",
        "action_dt", "horizon",
    }  # fmt: skip
    be = load_backend(models["minimum"], "onnxruntime", warmup=1)
    from wam_control.policy import example_input

    inp = example_input(c)
    out = be.infer(inp)
    assert out.actions.shape == (16, 7) and out.latent.shape == (0,) and out.latent_pred.shape == (0, 0)
    # Metadata round trip writes only the parts the model has.
    assert ModelContract.from_metadata(c.to_metadata()) == c


def test_v1_file_loads_unchanged(models: dict[str, Path]) -> None:
    c = read_contract(models["v1"], verify_weights=True)
    assert c.contract_version == 1 and c.has_prefix and c.has_world_model and c.max_prefix == 8
    bundled = read_contract(Path(__file__).parents[1] / "models" / "wam_reach_wrist.onnx", verify_weights=True)
    assert bundled.contract_version == 1 and bundled.has_prefix and bundled.has_world_model
    # A v1 file still needs every v1 key; v2 keys are refused in a v1 file.
    meta = c.to_metadata()
    with pytest.raises(ContractError, match="metadata max_prefix missing") as exc:
        ModelContract.from_metadata({k: v for k, v in meta.items() if k != "max_prefix"})
    assert exc.value.field == "max_prefix"
    with pytest.raises(ContractError, match="action_type is a contract version 2 field"):
        ModelContract.from_metadata({**meta, "action_type": '"delta"'})


@pytest.mark.parametrize(
    ("drop", "add", "field", "message"),
    [
        ((), {"latent_dim": 4}, "latent_steps", "world-model part .* all-or-nothing, and this file has latent_dim"),
        ((), {"latent_dim": 4, "latent_steps": 1, "latent_offsets": [1]}, "latent", "missing output latent"),
        ((), {"max_prefix": 4}, "action_prefix", "missing input action_prefix"),
        ((), {"max_instruction_tokens": 6}, "instruction_tokens", "missing input instruction_tokens"),
        (("horizon",), {}, "horizon", "horizon missing .required in contract version 2"),
        ((), {"action_type": "relative"}, "action_type", "action_type must be one of"),
        ((), {"action_names": ["gripper", *FR3_JOINTS]}, "action_names", "must start with the arm joints"),
    ],
)
def test_half_present_parts_are_refused_naming_the_field(
    models: dict[str, Path], tmp_path: Path, drop: tuple[str, ...], add: dict, field: str, message: str
) -> None:
    bad = _rewrite(models["minimum"], tmp_path / "bad.onnx", drop, **add)
    with pytest.raises(ContractError, match=message) as exc:
        read_contract(bad)
    assert exc.value.field == field


def test_part_tensors_without_metadata_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    # The v1 graph has the prefix inputs and the world-model outputs: as a v2 file without their keys.
    no_prefix = _rewrite(models["v1"], tmp_path / "a.onnx", ("max_prefix",), contract_version=2)
    with pytest.raises(ContractError, match="has action_prefix but metadata max_prefix is missing") as exc:
        read_contract(no_prefix)
    assert exc.value.field == "max_prefix"
    no_head = _rewrite(models["v1"], tmp_path / "b.onnx", ("latent_dim", "latent_steps", "latent_offsets"),
                       contract_version=2)  # fmt: skip
    with pytest.raises(ContractError, match="has latent but metadata latent_dim is missing"):
        read_contract(no_head)
    # The prompt model's tokenizer is part of the instruction part.
    lone = Path(shutil.copy(models["prompt"], tmp_path / "lone.onnx"))
    with pytest.raises(ContractError, match="lone.tokenizer.json does not exist") as exc:
        read_contract(lone)
    assert exc.value.field == "tokenizer"


def test_external_data_loads_is_hashed_and_missing_data_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    path = models["external"]
    data = path.with_name(path.name + ".data")
    assert data.is_file() and data.stat().st_size > 0
    c = read_contract(path, verify_weights=True)
    # The same weights in one file hash the same: the hash covers the data, not where it is stored.
    inline = build_model(tmp_path / "inline.onnx")
    assert read_contract(inline).weights_sha256 == c.weights_sha256
    be = load_backend(path, "onnxruntime", warmup=1)
    assert "onnxruntime" in be.describe()
    # Tampered weights in the data file: the hash says so.
    folder = tmp_path / "tampered"
    folder.mkdir()
    shutil.copy(path, folder / path.name)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0x40
    (folder / data.name).write_bytes(bytes(raw))
    with pytest.raises(ContractError, match="weights hash .* differs"):
        read_contract(folder / path.name, verify_weights=True)
    # The TensorRT engine-cache key changes with the data file too.
    from wam_control.policy.engine_cache import onnx_sha256

    assert onnx_sha256(folder / path.name) != onnx_sha256(path)
    (folder / data.name).unlink()
    with pytest.raises(ModelFileError, match=r"external data .*external.onnx.data, which does not exist"):
        read_contract(folder / path.name)


def test_config_refusals_for_a_model_without_a_head(models: dict[str, Path]) -> None:
    c = read_contract(models["minimum"])
    cfg = load_config(preset_path("fr3"))
    assert cfg.surprise.enabled == "auto"  # the preset: on only for models with a world-model head
    assert refusals(c, cfg) == []
    on = replace(cfg, surprise=replace(cfg.surprise, enabled=True))
    (why,) = refusals(c, on)
    assert "surprise.enabled is true but the model has no world-model head" in why
    preview = replace(cfg, imagination=replace(cfg.imagination, enabled=True))
    assert "imagination.enabled is true" in refusals(c, preview)[0]
    prompt = replace(cfg, instruction="reach left")
    assert "takes no language prompt" in refusals(c, prompt)[0]
    triton = replace(cfg, inference=replace(cfg.inference, backend="triton"))
    assert "use backend onnxruntime" in refusals(c, triton)[0]
    # The bundled v1 model with an explicit true is fine.
    assert refusals(read_contract(models["v1"]), on) == []

    from wam_control.transport.adapter import build_runtime

    with pytest.raises(ValueError, match="surprise.enabled is true but the model has no world-model head"):
        build_runtime(on, models["minimum"])
    # A backend given as an override (`wam-control run --backend triton`) is judged like the config's.
    with pytest.raises(ValueError, match="inference.backend triton runs models with the prefix"):
        build_runtime(cfg, models["minimum"], backend="triton")


def test_extra_dofs_must_be_mapped_in_the_config(models: dict[str, Path]) -> None:
    c = read_contract(models["gripper"])
    assert c.extra_actions == ("gripper",) and c.action_dim == 8 and c.state_dim == 8
    with pytest.raises(ContractError, match="add extra_dofs.gripper") as exc:
        check_contract(c, load_config(preset_path("fr3")))
    assert exc.value.field == "action_names"


def test_check_model_cli(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_model([str(models["minimum"]), "--config", "fr3"]) == 0
    out = capsys.readouterr().out
    assert "contract version 2" in out
    assert "absent: prefix, world-model, instruction, extra-dofs, delta-actions, weights-hash" in out
    assert "scheduler's C2 seam blend" in out and "surprise monitor and imagination preview off" in out
    assert "TensorRT lint: no errors" in out and out.rstrip().endswith("fr3.yaml")

    assert check_model([str(models["external"])]) == 0
    out = capsys.readouterr().out
    assert "external.onnx.data" in out and "[external-data]" in out

    assert check_model([str(models["prompt"]), "--config", "fr3"]) == 0
    out = capsys.readouterr().out
    assert "prompt.tokenizer.json" in out and "does not move until one arrives on ~/instruction" in out

    assert check_model([str(models["gripper"]), "--config", "fr3"]) == 1
    assert "REFUSED: model action_names has extra DOF(s) ['gripper']" in capsys.readouterr().out

    cfg = tmp_path / "surprise_on.yaml"
    cfg.write_text(preset_path("fr3").read_text().replace("enabled: auto", "enabled: true"))
    assert check_model([str(models["delta"]), "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "delta: each chunk is added to the state observed" in out
    assert "REFUSED: surprise.enabled is true but the model has no world-model head" in out

    bad = _rewrite(models["minimum"], tmp_path / "half.onnx", (), latent_dim=4)
    assert check_model([str(bad)]) == 1
    assert "REFUSED:" in capsys.readouterr().out
