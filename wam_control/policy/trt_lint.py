"""TensorRT compatibility lint for ONNX graphs: runs without TensorRT, needs only the `onnx` package.

TensorRT's ONNX parser (onnx-tensorrt) refuses some graphs that ONNX Runtime runs happily; the first
time you hear about it is a parser error on the GPU machine. This module checks the restrictions that
bite real models before that, with onnx shape inference for the tensor types:

- `uint8`: UINT8 only as a network input or output. A UINT8 graph input may only feed Cast/CastLike;
  a UINT8 graph output must come from Cast/CastLike; no UINT8 intermediate tensor or initializer.
- `opset`: the default-domain opset must be in 18-20 (DESIGN.md §3: TensorRT 10.3 on JetPack 6 parses
  up to 20; the 10.x parser's floor is 9).
- `domain`: nodes of another domain (com.microsoft, ai.onnx.ml, ...) need a TensorRT plugin.
- `operator`: operators marked unsupported in onnx-tensorrt's support matrix, or absent from it, are
  errors; operators that need a newer TensorRT than JetPack 6's 10.3 are warnings.
- `restriction`: documented restrictions that are checkable statically (inputs that must be
  initializers/constants, outputs the parser does not produce).
- `dtype`: element types TensorRT has no type for (STRING, UINT16/32/64, INT16, complex, ...) are
  errors; DOUBLE (narrowed to FLOAT) and an input type the matrix does not list for the operator are
  warnings.
- `int64`: places where TensorRT narrows INT64 to INT32 (Loop trip counts; constants that do not fit
  int32, which every TensorRT before 10 narrowed and which shape/plugin paths still cast) are warnings.
- `external-data`: initializers stored outside the file: a warning when the data file is beside the model
  (build with parse_from_file, ship the .data file), an error when it is missing.

Errors make `wam-control export` refuse to write the model and `wam-control build-engine` stop before
TensorRT is invoked; warnings are printed. `lint_onnx` is the entry point for a `check-model` command.

The operator table below was written from onnx-tensorrt's docs/operators.md (TensorRT 10.x releases,
checked up to the 10.15 table) and, where noted, the 10.x importer sources; it is data we maintain, not
generated. "F" = FP32, FP16, BF16; "I" = INT32, INT64; "B" = BOOL.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPSET_RANGE = (18, 20)
JETPACK6_TENSORRT = (10, 3)

_F = ("FP32", "FP16", "BF16")
_I = ("INT32", "INT64")
_B = ("BOOL",)
_F16 = ("FP32", "FP16")


@dataclass(frozen=True)
class OpSupport:
    types: tuple[str, ...]  # element types of the data input(s) the support matrix lists
    data_inputs: tuple[int, ...] = (0,)  # which inputs `types` is about
    const_inputs: tuple[int, ...] = ()  # inputs that must be initializers / Constant outputs
    outputs: int = 0  # number of outputs the parser produces (0: all)
    min_tensorrt: tuple[int, int] = (10, 0)
    note: str = ""


def _op(types: Iterable[str], **kw: Any) -> OpSupport:
    return OpSupport(tuple(types), **kw)


# Operators onnx-tensorrt (10.x) imports, with the input types its support matrix lists.
SUPPORTED_OPS: dict[str, OpSupport] = {
    **{op: _op(_F) for op in (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil",
        "Celu", "Conv", "ConvTranspose", "Cos", "Cosh", "Dropout", "Einsum", "Elu", "Erf", "Exp", "Floor",
        "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "GRU",
        "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf",
        "LeakyRelu", "Log", "LogSoftmax", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool",
        "MeanVarianceNormalization", "ParametricSoftplus", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RNN", "Round",
        "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt",
        "Tan", "Tanh", "ThresholdedRelu", "Upsample",
    )},
    **{op: _op(_F + _I) for op in (
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual",
        "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range", "Relu",
        "Scatter", "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK",
    )},
    **{op: _op(_F + _I + _B) for op in (
        "Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "If",
        "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice", "Split", "Tile",
        "Transpose", "Trilu",
    )},
    **{op: _op(_F + _I, const_inputs=(1,), note="`axes` must be an initializer") for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare",
    )},
    **{op: _op(_B) for op in ("And", "Not", "Or", "Xor")},
    **{op: _op(_F16) for op in (
        "BlackmanWindow", "DeformConv", "GridSample", "HammingWindow", "HannWindow", "Mish",
        "NonMaxSuppression", "NonZero", "RoiAlign",
    )},
    "Cast": _op((*_F, *_I, "UINT8", "BOOL")),
    "CastLike": _op((*_F, *_I, "UINT8", "BOOL")),
    # The matrix lists FP only, but the 10.x importer clips INT32/INT64 inputs element-wise.
    "Clip": _op(_F + _I, note="INT32/INT64 handled element-wise by the 10.x importer"),
    "Constant": _op((*_F, *_I, "BOOL", "FP8", "FP4", "INT4")),
    "ConstantOfShape": _op(("INT64",)),  # input is the shape
    "CumSum": _op(_F, const_inputs=(1,), note="`axis` must be a build-time constant"),
    "DequantizeLinear": _op(("INT8", "FP8", "FP4", "INT4")),
    "Gelu": _op((*_F, "INT8", *_I)),
    "LayerNormalization": _op(_F, outputs=1, note="only the first output `Y` is supported"),
    "Mean": _op((*_F, "FP8", *_I)),
    "Squeeze": _op(_F + _I + _B, const_inputs=(1,), note="`axes` must resolve to a constant"),
    "Unsqueeze": _op(_F + _I + _B, const_inputs=(1,), note="`axes` must resolve to a constant"),
    "STFT": _op(("FP32",), const_inputs=(2,), note="`frame_step` and `window` must be initializers"),
    "Where": _op(_F + _I + _B, data_inputs=(1, 2)),
    "Attention": _op((*_F, "INT8", "FP8"), min_tensorrt=(10, 14), note="Q, K, V must be 4-D"),
    "RMSNormalization": _op(_F, min_tensorrt=(10, 15)),
    "RotaryEmbedding": _op(_F, min_tensorrt=(10, 15)),
    "TensorScatter": _op((*_F, "INT32"), min_tensorrt=(10, 15)),
}
SUPPORTED_OPS["MaxPool"] = _op(_F, outputs=1, note="the `Indices` output is unsupported")

# Operators the support matrix marks unsupported ("N").
UNSUPPORTED_OPS = frozenset(
    {
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
        "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
        "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
        "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
        "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt",
        "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
        "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
        "StringSplit", "TfIdfVectorizer", "Unique",
    }
)

# onnx.TensorProto element type -> the name the support matrix uses (None: TensorRT has no such type).
_TYPE_NAMES: dict[int, str | None] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: None, 5: None, 6: "INT32", 7: "INT64", 8: None, 9: "BOOL",
    10: "FP16", 11: "DOUBLE", 12: None, 13: None, 14: None, 15: None, 16: "BF16", 17: "FP8",
    18: None, 19: None, 20: None, 21: None, 22: "INT4", 23: "FP4",
}
_ONNX_TYPE = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
    9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
    16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ",
    21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1",
}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT8, _INT64, _DOUBLE = 2, 7, 11
_SLICE_BOUNDS = {("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4)}


def _tname(t: int) -> str:
    return _ONNX_TYPE.get(t, f"type {t}")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    rule: str
    message: str
    node: str = ""
    tensor: str = ""

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.message}"


class TrtCompatError(ValueError):
    """The ONNX graph cannot be parsed by TensorRT; the message lists every error."""

    def __init__(self, report: LintReport) -> None:
        super().__init__(report.format(errors_only=True))
        self.report = report


@dataclass
class LintReport:
    source: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, errors_only: bool = False) -> str:
        shown = self.errors if errors_only else self.findings
        head = (
            f"{self.source}: not TensorRT-compatible ({len(self.errors)} error(s))"
            if self.errors
            else f"{self.source}: TensorRT-compatible ({len(self.warnings)} warning(s))"
        )
        return "\n".join([head, *(f"  {f}" for f in shown)])

    def raise_for_errors(self) -> LintReport:
        if self.errors:
            raise TrtCompatError(self)
        return self


def _node_label(node: Any, index: int, scope: str) -> str:
    name = f"'{node.name}'" if node.name else f"#{index}"
    return f"{scope}node {name} ({node.op_type})"


def _iter_graphs(graph: Any, scope: str = "") -> Iterator[tuple[Any, str]]:
    """The graph and every subgraph (If/Loop/Scan bodies), with a scope prefix for messages."""
    import onnx

    yield graph, scope
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _iter_graphs(sub, f"{scope}{_node_label(node, i, '')}.{attr.name}: ")


def lint_model(model: Any, source: str = "model", *, opset_range: tuple[int, int] = OPSET_RANGE) -> LintReport:
    """Lint an onnx.ModelProto. `source` names the file in messages; external data is looked up beside it."""
    import onnx
    from onnx import numpy_helper, shape_inference

    report = LintReport(source)
    add = report.findings.append

    # --- opset and domains
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    lo, hi = opset_range
    if version is None:
        add(Finding("error", "opset", f"{source}: no default-domain opset import; expected opset {lo}-{hi}"))
    elif not lo <= version <= hi:
        add(Finding(
            "error", "opset",
            f"{source}: opset {version}, expected {lo}-{hi} (TensorRT {JETPACK6_TENSORRT[0]}.{JETPACK6_TENSORRT[1]} "
            f"on JetPack 6 parses up to opset 20; re-export with opset_version={lo})",
        ))
    local_functions = {(f.domain, f.name) for f in model.functions}

    # --- external data
    base = Path(source).parent if source else Path(".")
    missing_files: set[str] = set()
    external: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in init.external_data}.get("location", "")
            external.add(loc)
            if not (base / loc).is_file():
                missing_files.add(loc)
    for loc in sorted(external):
        if loc in missing_files:
            add(Finding(
                "error", "external-data",
                f"{source}: initializers are stored in external file '{loc}', which is not beside the model "
                f"(expected {base / loc})",
            ))
        else:
            add(Finding(
                "warning", "external-data",
                f"{source}: initializers are stored in '{loc}': build with parse_from_file (as build-engine does) "
                "and ship that file beside the model",
            ))

    # --- tensor types (shape inference fills value_info; outer-scope names are visible in subgraphs)
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: lint what we can
        add(Finding("warning", "dtype", f"{source}: onnx shape inference failed ({exc}); types unchecked"))
        inferred = model
    g = inferred.graph
    graph_inputs = {v.name for v in g.input}
    graph_outputs = {v.name for v in g.output}
    types: dict[str, int] = {}
    constants: dict[str, Any] = {}
    for sub, _ in _iter_graphs(g):
        for v in (*sub.input, *sub.output, *sub.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                types.setdefault(v.name, v.type.tensor_type.elem_type)
        for init in sub.initializer:
            types.setdefault(init.name, init.data_type)
            if init.data_location != onnx.TensorProto.EXTERNAL:
                constants[init.name] = init
        for node in sub.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and node.output:
                        constants[node.output[0]] = attr.t
                        types.setdefault(node.output[0], attr.t.data_type)

    consumers: dict[str, list[tuple[Any, int, int, str]]] = {}
    producers: dict[str, tuple[Any, int, str]] = {}
    for sub, scope in _iter_graphs(g):
        for i, node in enumerate(sub.node):
            for k, name in enumerate(node.input):
                if name:
                    consumers.setdefault(name, []).append((node, i, k, scope))
            for name in node.output:
                if name:
                    producers[name] = (node, i, scope)

    # --- operators, restrictions, per-op input types
    for sub, scope in _iter_graphs(g):
        for i, node in enumerate(sub.node):
            label = _node_label(node, i, scope)
            domain = node.domain or "ai.onnx"
            if (node.domain, node.op_type) in local_functions:
                continue  # a model-local function: its body is checked below
            if domain != "ai.onnx":
                add(Finding(
                    "error", "domain",
                    f"{source}: {label} is in domain '{node.domain}': TensorRT's ONNX parser needs a plugin "
                    "for it (expected ai.onnx operators only)",
                    node=node.name,
                ))
                continue
            _check_op(node, label, source, types, constants, add)
    for fn in model.functions:
        for i, node in enumerate(fn.node):
            label = _node_label(node, i, f"function {fn.domain}.{fn.name}: ")
            if (node.domain or "ai.onnx") == "ai.onnx" and (node.domain, node.op_type) not in local_functions:
                _check_op(node, label, source, {}, {}, add)

    # --- UINT8 only at the edges
    for name, t in sorted(types.items()):
        if t != _UINT8:
            continue
        if name in constants and name not in graph_inputs:
            add(Finding(
                "error", "uint8",
                f"{source}: constant '{name}' is UINT8; TensorRT takes UINT8 only as a network input or output "
                "(store it as INT32 or FLOAT and Cast at the output)",
                tensor=name,
            ))
            continue
        edge = name in graph_inputs or name in graph_outputs
        if not edge:
            prod = producers.get(name)
            where = f" produced by {_node_label(prod[0], prod[1], prod[2])}" if prod else ""
            add(Finding(
                "error", "uint8",
                f"{source}: tensor '{name}'{where} is a UINT8 intermediate; TensorRT takes UINT8 only as a "
                "network input or output (cast to FLOAT first, e.g. x.to(torch.float32) before reshaping)",
                tensor=name,
            ))
            continue
        for node, i, _k, scope in consumers.get(name, []):
            if node.op_type not in ("Cast", "CastLike"):
                add(Finding(
                    "error", "uint8",
                    f"{source}: {_node_label(node, i, scope)} reads UINT8 tensor '{name}'; a UINT8 network "
                    "input may only feed a Cast (expected Cast to FLOAT/FLOAT16 first)",
                    node=node.name, tensor=name,
                ))
        if name in graph_outputs and name in producers:
            node, i, scope = producers[name]
            if node.op_type not in ("Cast", "CastLike"):
                add(Finding(
                    "error", "uint8",
                    f"{source}: UINT8 output '{name}' is produced by {_node_label(node, i, scope)}; it must come "
                    "straight from a Cast (do layout in FLOAT, cast last)",
                    node=node.name, tensor=name,
                ))

    # --- element types TensorRT lacks, DOUBLE narrowing
    for name, t in sorted(types.items()):
        tn = _TYPE_NAMES.get(t)
        if tn is None:
            add(Finding(
                "error", "dtype",
                f"{source}: tensor '{name}' is {_tname(t)}, which TensorRT has no type for (expected FLOAT, "
                "FLOAT16, BFLOAT16, INT32, INT64, INT8, BOOL; UINT8 at the edges)",
                tensor=name,
            ))
        elif t == _DOUBLE:
            add(Finding(
                "warning", "dtype",
                f"{source}: tensor '{name}' is DOUBLE; TensorRT casts it down to FLOAT, clamping to +-FLT_MAX",
                tensor=name,
            ))

    # --- INT64 that TensorRT narrows to INT32
    for name, tensor in sorted(constants.items()):
        if tensor.data_type != _INT64:
            continue
        uses = consumers.get(name, [])
        if uses and all((n.op_type, k) in _SLICE_BOUNDS for n, _i, k, _s in uses):
            continue  # Slice bounds are clamped to the dimension by ONNX semantics
        arr = numpy_helper.to_array(tensor)
        if arr.size and (int(arr.min()) < _INT32_MIN or int(arr.max()) > _INT32_MAX):
            bad = int(arr.max()) if int(arr.max()) > _INT32_MAX else int(arr.min())
            add(Finding(
                "warning", "int64",
                f"{source}: INT64 constant '{name}' holds {bad}, outside int32: TensorRT narrows INT64 to INT32 "
                "in shape and plugin paths (and everywhere before 10.0), which clamps it",
                tensor=name,
            ))
    for sub, scope in _iter_graphs(g):
        for i, node in enumerate(sub.node):
            if node.op_type == "Loop" and node.input and node.input[0] and types.get(node.input[0]) == _INT64:
                add(Finding(
                    "warning", "int64",
                    f"{source}: {_node_label(node, i, scope)} trip count '{node.input[0]}' is INT64; TensorRT "
                    "casts it to INT32",
                    node=node.name, tensor=node.input[0],
                ))
    return report


def _check_op(
    node: Any, label: str, source: str, types: dict[str, int], constants: dict[str, Any], add: Any
) -> None:
    op = node.op_type
    if op in UNSUPPORTED_OPS:
        add(Finding(
            "error", "operator",
            f"{source}: {label}: {op} is not supported by TensorRT's ONNX parser (onnx-tensorrt support matrix)",
            node=node.name,
        ))
        return
    spec = SUPPORTED_OPS.get(op)
    if spec is None:
        add(Finding(
            "error", "operator",
            f"{source}: {label}: {op} is not in onnx-tensorrt's support matrix (expected one of the "
            f"{len(SUPPORTED_OPS)} operators in wam_control.policy.trt_lint.SUPPORTED_OPS)",
            node=node.name,
        ))
        return
    if spec.min_tensorrt > JETPACK6_TENSORRT:
        need = ".".join(map(str, spec.min_tensorrt))
        add(Finding(
            "warning", "operator",
            f"{source}: {label}: {op} needs TensorRT >= {need} (JetPack 6 ships 10.3)",
            node=node.name,
        ))
    for k in spec.const_inputs:
        if k < len(node.input) and node.input[k] and types and node.input[k] not in constants:
            add(Finding(
                "error", "restriction",
                f"{source}: {label}: input {k} '{node.input[k]}' is computed at run time; {spec.note or 'it must be an initializer'}",
                node=node.name, tensor=node.input[k],
            ))
    if spec.outputs:
        extra = [o for o in node.output[spec.outputs:] if o]
        if extra:
            add(Finding(
                "error", "restriction",
                f"{source}: {label}: output(s) {extra} are not produced by TensorRT ({spec.note})",
                node=node.name,
            ))
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        t = constants.get(node.input[2])
        ok = False
        if t is not None:
            from onnx import numpy_helper

            ok = not bool(numpy_helper.to_array(t).any())
        if not ok:
            add(Finding(
                "error", "restriction",
                f"{source}: {label}: `training_mode` '{node.input[2]}' must be an initializer that is False",
                node=node.name,
            ))
    for k in spec.data_inputs:
        if k >= len(node.input) or not node.input[k] or node.input[k] not in types:
            continue
        t = types[node.input[k]]
        tn = _TYPE_NAMES.get(t)
        if tn is None or t == _UINT8:
            continue  # reported by the dtype / uint8 rules
        if tn == "DOUBLE":
            tn = "FP32"  # narrowed on import
        if tn not in spec.types:
            add(Finding(
                "warning", "dtype",
                f"{source}: {label}: input '{node.input[k]}' is {_tname(t)}; onnx-tensorrt documents {op} for "
                f"{', '.join(spec.types)} only (INT64 may be narrowed to INT32, other types may be refused)",
                node=node.name, tensor=node.input[k],
            ))


def lint_onnx(path: str | os.PathLike[str], *, opset_range: tuple[int, int] = OPSET_RANGE) -> LintReport:
    """Lint an ONNX file (the graph only: external data is not loaded, only looked up beside the file)."""
    import onnx

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"model file {p} does not exist")
    try:
        model = onnx.load(p, load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{p} is not a readable ONNX model: {exc}") from None
    return lint_model(model, p, opset_range=opset_range)


def check_trt_compatible(path: str | os.PathLike[str]) -> LintReport:
    """lint_onnx, raising TrtCompatError when there is any error; returns the report (warnings) otherwise."""
    return lint_onnx(path).raise_for_errors()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m wam_control.policy.trt_lint",
        description="check ONNX files against TensorRT's ONNX parser restrictions (no TensorRT needed)",
    )
    p.add_argument("models", nargs="+")
    args = p.parse_args(argv)
    rc = 0
    for m in args.models:
        try:
            report = lint_onnx(m)
        except (FileNotFoundError, ValueError) as exc:
            print(f"{m}: {exc}", file=sys.stderr)
            rc = 1
            continue
        print(report.format())
        rc = rc or (0 if report.ok else 1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
