"""`wam-control triton-repo`: the written model repository, read back and checked against the contract.

Triton's own ONNX Runtime / TensorRT backends are not installed here (nvidia-pytriton's server has only
its Python backend) and there is no GPU, so the repository cannot be served here. It is checked three
ways instead: parsed with protobuf's text format into Triton's ModelConfig message (tritonclient's
definition) and compared with the contract; refused when tampered with; and loaded by the real
`tritonserver` binary, which must parse and accept the config and stop only at the missing backend library.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ([triton] extra) defines ModelConfig")

from wam_control.policy import ContractError, read_contract
from wam_control.policy.contract import expected_io
from wam_control.policy.triton_backend import CONTRACT_PARAMETER, contract_from_parameter
from wam_control.serving.repo import check_config, main, read_config, write_repository

MODEL = Path(__file__).resolve().parents[1] / "models" / "wam_reach_wrist.onnx"


def test_onnxruntime_repository_matches_the_contract(tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    assert main(["--model", str(MODEL), "--out", str(tmp_path), "--max-batch", "16"]) == 0
    folder = tmp_path / "wam-reach-wrist"
    assert (folder / "1" / "model.onnx").read_bytes() == MODEL.read_bytes()
    cfg = read_config(folder / "config.pbtxt")
    contract = read_contract(MODEL)
    check_config(cfg, contract)
    # The same facts, checked independently of check_config.
    assert cfg.name == "wam-reach-wrist" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    want_in, want_out = expected_io(contract)
    types = {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64}
    for have, want in ((cfg.input, want_in), (cfg.output, want_out)):
        assert [t.name for t in have] == list(want)
        for t in have:
            dtype, shape = want[t.name]
            assert t.data_type == types[dtype]
            assert tuple(t.dims) == (shape or (1,))
    plen = next(t for t in cfg.input if t.name == "prefix_len")
    assert list(plen.reshape.shape) == []  # per-request scalar: the model sees [B]
    assert contract_from_parameter(cfg.parameters[CONTRACT_PARAMETER].string_value, "cfg") == contract


def test_python_repository_carries_model_py_and_the_model(tmp_path: Path) -> None:
    """`--platform python`: the repository `serve --runtime direct` runs (ONNX Runtime in the Python backend;
    served for real by test_serving_triton.py)."""
    assert main(["--model", str(MODEL), "--out", str(tmp_path), "--platform", "python", "--kind", "cpu"]) == 0
    folder = tmp_path / "wam-reach-wrist"
    cfg = read_config(folder / "config.pbtxt")
    check_config(cfg, read_contract(MODEL))
    assert cfg.backend == "python" and not cfg.platform
    assert (folder / "1" / "model.py").read_text().count("class TritonPythonModel") == 1
    assert (folder / "1" / "model.onnx").read_bytes() == MODEL.read_bytes()
    assert "onnx_path" not in cfg.parameters  # model.py reads 1/model.onnx
    moved = write_repository(MODEL, tmp_path / "b", platform="python", copy_model=False)
    cfg = read_config(moved / "config.pbtxt")
    assert cfg.parameters["onnx_path"].string_value == str(MODEL.resolve())
    assert not (moved / "1" / "model.onnx").exists()


def test_tensorrt_repository_leaves_the_engine_to_the_gpu_host(tmp_path: Path) -> None:
    folder = write_repository(MODEL, tmp_path, platform="tensorrt", max_batch=4)
    cfg = read_config(folder / "config.pbtxt")
    check_config(cfg, read_contract(MODEL))
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    assert not (folder / "1" / "model.onnx").exists()
    assert "model.plan" in (folder / "1" / "BUILD_ENGINE_HERE.txt").read_text()


def test_tampered_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    folder = write_repository(MODEL, tmp_path)
    text = (folder / "config.pbtxt").read_text()
    bad = text.replace("dims: [ 16, 7 ] }", "dims: [ 8, 7 ] }", 1)  # action_prefix horizon
    assert bad != text
    (folder / "config.pbtxt").write_text(bad)
    with pytest.raises(ContractError) as err:
        check_config(read_config(folder / "config.pbtxt"), read_contract(MODEL))
    assert err.value.field == "action_prefix"


def _tritonserver(repo: Path) -> str:
    pytriton = pytest.importorskip("pytriton", reason="nvidia-pytriton ([serve] extra) ships tritonserver")
    root = Path(pytriton.__file__).parent / "tritonserver"
    env = {**os.environ, "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR"))}
    proc = subprocess.run(
        [str(root / "bin" / "tritonserver"), f"--model-repository={repo}", "--allow-http=false",
         "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true",
         f"--backend-directory={root / 'backends'}"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode != 0  # no backend for the model here: the server must not pretend to serve it
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("platform", ["onnxruntime", "tensorrt"])
def test_real_tritonserver_accepts_the_config_up_to_the_missing_backend(
    tmp_path: Path, platform: str
) -> None:
    write_repository(MODEL, tmp_path, platform=platform)
    log = _tritonserver(tmp_path)
    assert "loading: wam-reach-wrist:1" in log, log[-2000:]
    assert f"unable to find backend library for backend '{platform}'" in log, log[-2000:]
    assert "failed to read text proto" not in log


def test_real_tritonserver_rejects_a_broken_config(tmp_path: Path) -> None:
    folder = write_repository(MODEL, tmp_path)
    (folder / "config.pbtxt").write_text((folder / "config.pbtxt").read_text().replace("dims:", "dimz:", 1))
    assert "failed to read text proto" in _tritonserver(tmp_path)
