"""TensorRT compatibility lint on real ONNX graphs (no TensorRT needed), the bundled models, and the
image-cast placement in the WAM and decoder graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from wam_control.policy.trt_lint import (  # noqa: E402
    SUPPORTED_OPS,
    UNSUPPORTED_OPS,
    TrtCompatError,
    check_trt_compatible,
    lint_model,
    lint_onnx,
    main,
)

MODELS = Path(__file__).resolve().parent.parent / "models"


def _model(nodes, inputs, outputs, inits=(), opset=18, **kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _vi(name, t, shape):
    return helper.make_tensor_value_info(name, t, shape)


def _rules(report, severity="error"):
    return sorted({f.rule for f in report.findings if f.severity == severity})


def test_uint8_reshaped_before_cast_is_refused_naming_node_and_tensor() -> None:
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 3])
    m = _model(
        [
            helper.make_node("Reshape", ["images", "shape"], ["view"], name="reshape_images"),
            helper.make_node("Cast", ["view"], ["f"], to=TensorProto.FLOAT, name="cast"),
        ],
        [_vi("images", TensorProto.UINT8, [2, 6])],
        [_vi("f", TensorProto.FLOAT, [4, 3])],
        [shape],
    )
    r = lint_model(m, "bad.onnx")
    assert not r.ok and _rules(r) == ["uint8"]
    text = r.format()
    assert "bad.onnx" in text and "'reshape_images' (Reshape)" in text and "'images'" in text
    assert "'view'" in text and "intermediate" in text
    with pytest.raises(TrtCompatError, match="reshape_images"):
        r.raise_for_errors()


def test_uint8_cast_first_and_cast_last_pass() -> None:
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [4, 3])
    m = _model(
        [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["f", "shape"], ["view"]),
            helper.make_node("Cast", ["view"], ["out"], to=TensorProto.UINT8),
        ],
        [_vi("images", TensorProto.UINT8, [2, 6])],
        [_vi("out", TensorProto.UINT8, [4, 3])],
        [shape],
    )
    r = lint_model(m, "ok.onnx")
    assert r.ok and not r.findings, r.format()


def test_uint8_output_not_straight_from_cast_and_uint8_constant() -> None:
    m = _model(
        [
            helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8),
            helper.make_node("Transpose", ["u"], ["image"], perm=[1, 0], name="late_permute"),
        ],
        [_vi("x", TensorProto.FLOAT, [2, 3])],
        [_vi("image", TensorProto.UINT8, [3, 2])],
    )
    r = lint_model(m, "dec.onnx")
    assert any("'late_permute' (Transpose)" in f.message and "UINT8 output 'image'" in f.message for f in r.errors)
    assert any("'u'" in f.message and "intermediate" in f.message for f in r.errors)
    c = helper.make_tensor("lut", TensorProto.UINT8, [3], [1, 2, 3])
    m2 = _model(
        [helper.make_node("Cast", ["lut"], ["y"], to=TensorProto.FLOAT)], [], [_vi("y", TensorProto.FLOAT, [3])], [c]
    )
    assert any("constant 'lut' is UINT8" in f.message for f in lint_model(m2, "c.onnx").errors)


@pytest.mark.parametrize("opset,ok", [(17, False), (18, True), (20, True), (21, False)])
def test_opset_range(opset, ok) -> None:
    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [2])],
        [_vi("y", TensorProto.FLOAT, [2])],
        opset=opset,
    )
    r = lint_model(m, "o.onnx")
    assert r.ok is ok
    if not ok:
        assert _rules(r) == ["opset"] and f"opset {opset}, expected 18-20" in r.errors[0].message


def test_unsupported_unknown_and_foreign_operators() -> None:
    m = _model(
        [
            helper.make_node("Unique", ["x"], ["u"], name="uniq"),
            helper.make_node("NotAnOnnxOp", ["x"], ["v"], name="mystery"),
            helper.make_node("FusedMatMul", ["x", "x"], ["w"], domain="com.microsoft", name="ms"),
        ],
        [_vi("x", TensorProto.FLOAT, [4])],
        [_vi("u", TensorProto.FLOAT, None), _vi("v", TensorProto.FLOAT, None), _vi("w", TensorProto.FLOAT, None)],
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    r = lint_model(m, "ops.onnx")
    msgs = "\n".join(f.message for f in r.errors)
    assert "'uniq' (Unique): Unique is not supported" in msgs
    assert "'mystery' (NotAnOnnxOp): NotAnOnnxOp is not in onnx-tensorrt's support matrix" in msgs
    assert "'ms' (FusedMatMul) is in domain 'com.microsoft'" in msgs


def test_restrictions_and_newer_operators() -> None:
    m = _model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Slice", ["s", "zero", "one"], ["axes"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["r"], name="rsum"),
            helper.make_node(
                "LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"], name="ln", axis=-1
            ),
        ],
        [_vi("x", TensorProto.FLOAT, [2, 4])],
        [_vi("r", TensorProto.FLOAT, None), _vi("y", TensorProto.FLOAT, [2, 4]), _vi("mean", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("g", TensorProto.FLOAT, [4], [1.0] * 4),
            helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4),
        ],
    )
    r = lint_model(m, "r.onnx")
    msgs = "\n".join(f.message for f in r.errors)
    assert "'rsum' (ReduceSum): input 1 'axes' is computed at run time" in msgs
    assert "'ln' (LayerNormalization): output(s) ['mean', 'inv'] are not produced" in msgs
    assert SUPPORTED_OPS["Attention"].min_tensorrt == (10, 14)
    assert not set(SUPPORTED_OPS) & UNSUPPORTED_OPS


def test_dtypes_and_int64_narrowing() -> None:
    big = helper.make_tensor("big", TensorProto.INT64, [1], [2**40])
    ends = helper.make_tensor("ends", TensorProto.INT64, [1], [2**63 - 1])
    starts = helper.make_tensor("starts", TensorProto.INT64, [1], [0])
    m = _model(
        [
            helper.make_node("Add", ["i", "big"], ["j"], name="add_big"),
            helper.make_node("Slice", ["i", "starts", "ends"], ["k"]),  # INT64_MAX end: fine (clamped)
            helper.make_node("Cast", ["i"], ["s"], to=TensorProto.STRING, name="to_string"),
            helper.make_node("Cast", ["i"], ["d"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", ["i"], ["h"], to=TensorProto.INT16),
            helper.make_node("MatMul", ["q", "q"], ["mm"], name="int_matmul"),
        ],
        [_vi("i", TensorProto.INT64, [1]), _vi("q", TensorProto.INT32, [2, 2])],
        [
            _vi("j", TensorProto.INT64, [1]),
            _vi("k", TensorProto.INT64, [1]),
            _vi("s", TensorProto.STRING, [1]),
            _vi("d", TensorProto.DOUBLE, [1]),
            _vi("h", TensorProto.INT16, [1]),
            _vi("mm", TensorProto.INT32, [2, 2]),
        ],
        [big, ends, starts],
    )
    r = lint_model(m, "t.onnx")
    errs = "\n".join(f.message for f in r.errors)
    warns = "\n".join(f.message for f in r.warnings)
    assert "tensor 's' is STRING, which TensorRT has no type for" in errs
    assert "tensor 'h' is INT16" in errs
    assert "tensor 'd' is DOUBLE; TensorRT casts it down to FLOAT" in warns
    assert "INT64 constant 'big' holds 1099511627776, outside int32" in warns
    assert "'ends'" not in warns  # Slice bounds are not narrowed
    assert "'int_matmul' (MatMul): input 'q' is INT32; onnx-tensorrt documents MatMul for FP32, FP16, BF16 only" in warns


def test_loop_trip_count_int64_warns() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [_vi("it", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, [])],
        [_vi("cond_out", TensorProto.BOOL, [])],
    )
    m = _model(
        [helper.make_node("Loop", ["n", "c"], [], body=body, name="loop")],
        [_vi("n", TensorProto.INT64, []), _vi("c", TensorProto.BOOL, [])],
        [],
    )
    r = lint_model(m, "loop.onnx")
    assert any("'loop' (Loop) trip count 'n' is INT64" in f.message for f in r.warnings)


def test_external_data_present_and_missing(tmp_path) -> None:
    w = onnx.numpy_helper.from_array(np.ones(256, np.float32), "w")
    m = _model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x", TensorProto.FLOAT, [256])],
        [_vi("y", TensorProto.FLOAT, [256])],
        [w],
    )
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    r = lint_onnx(path)
    assert r.ok and _rules(r, "warning") == ["external-data"] and "ext.onnx.data" in r.warnings[0].message
    (tmp_path / "ext.onnx.data").unlink()
    r = lint_onnx(path)
    assert _rules(r) == ["external-data"] and "not beside the model" in r.errors[0].message
    with pytest.raises(TrtCompatError, match="ext.onnx.data"):
        check_trt_compatible(path)
    assert main([str(path)]) == 1


# --------------------------------------------------------------------------------------------------
# The shipped models


@pytest.mark.parametrize("name", ["wam_reach_wrist.onnx", "wam_reach.onnx", "wam_reach_wrist.decoder.onnx"])
def test_shipped_models_pass_the_lint(name) -> None:
    r = check_trt_compatible(MODELS / name)
    assert r.ok and not r.findings, r.format()


def test_shipped_models_keep_their_weights_and_calibration_binding() -> None:
    from wam_control.policy.contract import read_contract

    for stem, sha in (
        ("wam_reach_wrist", "8a03a4cc76af98617e88b2e3c6a731478bb7c1c975ab3459da68059d88e36b4b"),
        ("wam_reach", "1f869bbe12887c508ad230413c51e37ad5b7c2e2ee30b6316ebb801529b7a14f"),
    ):
        c = read_contract(MODELS / f"{stem}.onnx", verify_weights=True)
        assert c.weights_sha256 == sha
        assert json.loads((MODELS / f"{stem}.surprise.json").read_text())["weights_sha256"] == sha
    dec = onnx.load(str(MODELS / "wam_reach_wrist.decoder.onnx"))
    meta = {p.key: json.loads(p.value) for p in dec.metadata_props}
    assert meta["wam_weights_sha256"] == "8a03a4cc76af98617e88b2e3c6a731478bb7c1c975ab3459da68059d88e36b4b"


def test_shipped_wam_matches_its_rebuilt_pytorch_module() -> None:
    """The shipped graph computes what its weights say: ORT vs the module rebuilt from the initializers."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from wam_control.model.export import parity_check
    from wam_control.model.from_onnx import wam_from_onnx

    torch.set_num_threads(1)
    model, _ = wam_from_onnx(MODELS / "wam_reach_wrist.onnx")
    worst = parity_check(model, MODELS / "wam_reach_wrist.onnx", seeds=(3,))
    assert worst["max_abs_err"] < 1e-5 and worst["min_cosine"] > 0.99999
