"""ONNX Runtime and PyTorch backends, load_backend, and the inference bench on a small model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from wam_control.model.export import make_test_model
from wam_control.policy import (
    ContractError,
    ModelFileError,
    PolicyBackend,
    PolicyInput,
    example_input,
    load_backend,
)
from wam_control.policy.onnxruntime_backend import choose_providers

SMALL = dict(
    joint_names=("a", "b", "c", "d"),
    camera_names=("scene",),
    image_hw=(32, 32),
    horizon=8,
    max_prefix=4,
    conv_channels=(8, 16),
    image_feature_dim=32,
    hidden_dim=64,
    latent_dim=16,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_test_model(tmp_path_factory.getbasetemp() / "wam_models" / "backends.onnx", **SMALL)


def test_onnxruntime_backend_reports_what_ran(model_path) -> None:
    b = load_backend(model_path, "onnxruntime", intra_op_threads=1)
    assert isinstance(b, PolicyBackend) and b.releases_gil
    import onnxruntime as ort

    assert b.describe() == f"onnxruntime {ort.__version__} CPUExecutionProvider intra_op_threads=1"
    assert b.providers == b.session.get_providers()
    b.close()


def test_backends_agree_and_continue_the_prefix(model_path) -> None:
    o = load_backend(model_path, "onnxruntime")
    t = load_backend(model_path, "torch", threads=1)
    assert "eager cpu" in t.describe()
    for seed, plen in ((1, 0), (2, 3), (3, 4)):
        inp = example_input(o.contract, seed=seed, prefix_len=plen)
        keep = [a.copy() for a in (inp.images, inp.state, inp.action_prefix)]
        a, b = o.infer(inp), t.infer(inp)
        assert a.actions.shape == (8, 4) and a.latent.shape == (16,) and a.latent_pred.shape == (3, 16)
        np.testing.assert_allclose(a.actions, b.actions, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.latent_pred, b.latent_pred, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(a.actions[:plen], inp.action_prefix[:plen])
        # Backends read the caller's buffers and never write them.
        for before, after in zip(keep, (inp.images, inp.state, inp.action_prefix)):
            np.testing.assert_array_equal(before, after)
    # Outputs are the caller's to keep: the next call must not overwrite them.
    first = o.infer(example_input(o.contract, seed=7))
    snapshot = first.actions.copy()
    o.infer(example_input(o.contract, seed=8))
    np.testing.assert_array_equal(first.actions, snapshot)


def test_bad_inputs_name_the_field(model_path) -> None:
    b = load_backend(model_path, "onnxruntime", warmup=0)
    good = example_input(b.contract, seed=0)
    cases = {
        "images must be uint8": PolicyInput(
            good.images.astype(np.float32), good.state, good.action_prefix, 0
        ),
        "state must be float32 \\[4\\]": PolicyInput(good.images, good.state[:3], good.action_prefix, 0),
        "action_prefix must be float32": PolicyInput(
            good.images, good.state, good.action_prefix.astype(np.float64), 0
        ),
        "prefix_len must be in \\[0, 8\\]": PolicyInput(good.images, good.state, good.action_prefix, 9),
    }
    for msg, inp in cases.items():
        with pytest.raises(ValueError, match=msg):
            b.infer(inp)


def test_load_backend_auto_and_errors(model_path, tmp_path) -> None:
    b = load_backend(model_path)  # no TensorRT here: ONNX Runtime
    assert b.name == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(model_path, "tvm")
    with pytest.raises(ModelFileError, match="nope.onnx"):
        load_backend(tmp_path / "nope.onnx", "onnxruntime")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="corrupt.onnx"):
        load_backend(corrupt, "onnxruntime")
    with pytest.raises(ModelFileError, match="corrupt.onnx"):
        load_backend(corrupt)


def test_torch_backend_checkpoint_errors(model_path, tmp_path) -> None:
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(model_path.read_bytes())
    with pytest.raises(ModelFileError, match="lonely.pt"):
        load_backend(lonely, "torch")
    # A checkpoint for other joints beside the ONNX is refused, naming the field.
    other = make_test_model(tmp_path / "other.onnx", **{**SMALL, "joint_names": ("a", "b", "c", "x")})
    (tmp_path / "lonely.pt").write_bytes(other.with_suffix(".pt").read_bytes())
    with pytest.raises(ContractError, match="joint_names"):
        load_backend(lonely, "torch")
    # The checkpoint alone is a valid model for the torch backend.
    t = load_backend(model_path.with_suffix(".pt"), "torch")
    assert t.contract.joint_names == SMALL["joint_names"]


def test_choose_providers() -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", avail) == avail
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["cuda"], avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("tensorrt", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider"):
        choose_providers(["rocm"], avail)


def test_runtime_path_does_not_import_torch(model_path) -> None:
    code = (
        "import sys; from wam_control.policy import load_backend, example_input; "
        f"b = load_backend({str(model_path)!r}, 'onnxruntime'); b.infer(example_input(b.contract)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_final_line(model_path, capsys) -> None:
    from wam_control.bench.inference import main

    assert main(["--model", str(model_path), "--runs", "20", "--warmup", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    for key in ("ort_cpu_p50_ms", "torch_cpu_p50_ms", "speedup_ort_vs_torch", "ort_cpu_p99_ms"):
        assert float(fields[key]) > 0
