"""`wam-control triton-repo`: a Triton model repository for a WAM model file (production Triton server).

    wam-control triton-repo --model models/wam_reach_wrist.onnx --out repo/ [--platform onnxruntime|tensorrt|python]
        [--max-batch 8] [--queue-delay-us 0] [--instances 1] [--kind gpu|cpu] [--name NAME]

Writes `repo/<name>/config.pbtxt` and `repo/<name>/1/model.onnx` (onnxruntime), or the config for a
`1/model.plan` that you build on the serving GPU (tensorrt: a TensorRT engine is specific to the GPU and
TensorRT version, so it cannot be built here), or `1/model.py` + `1/model.onnx` (python: ONNX Runtime
inside Triton's Python backend, `serving.triton_model`; the server's Python needs onnxruntime and numpy;
`wam-control serve --runtime direct` runs this repository on the tritonserver of the nvidia-pytriton
wheel). The config declares the contract's inputs and outputs
(names, types, per-request dims), `max_batch_size` and dynamic batching, and carries the contract itself
as the parameter `wam_contract`, which the robot's `inference.backend: triton` checks against its own
model file at start-up. `prefix_len` (one value per request, [B] in the model) is declared as dims [1]
with `reshape { shape: [] }`, Triton's spelling of a per-request scalar.

Run it with Triton's own ONNX Runtime, TensorRT or Python backend, e.g.
`tritonserver --model-repository repo/` (NGC container nvcr.io/nvidia/tritonserver).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from wam_control.policy.contract import ContractError, ModelContract

PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
    "python": ("python", "model.py"),  # a backend, not a platform: ONNX Runtime inside the Python backend
}
_TYPE = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(text)  # JSON escaping is valid text-format escaping for these characters


def config_pbtxt(
    contract: ModelContract,
    *,
    name: str,
    platform: str = "onnxruntime",
    max_batch: int = 8,
    queue_delay_us: int = 0,
    instances: int = 1,
    kind: str = "gpu",
    parameters: dict[str, str] | None = None,
) -> str:
    """The config.pbtxt text for `contract` (protobuf text format of Triton's ModelConfig).

    `parameters`: extra string parameters next to the contract (for `python`: `onnx_path`, `providers`,
    `intra_op_threads`, read by the model's `model.py`)."""
    from wam_control.policy.triton_backend import CONTRACT_PARAMETER, contract_parameter_value, triton_io

    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {sorted(PLATFORMS)}, got {platform!r}")
    if max_batch < 1 or instances < 1 or queue_delay_us < 0:
        raise ValueError("max_batch and instances must be >= 1, queue_delay_us >= 0")
    ins, outs = triton_io(contract)

    def tensor(n: str, dt: str, dims: tuple[int, ...]) -> str:
        extra = " reshape: { shape: [ ] }" if n == "prefix_len" else ""
        return f"  {{ name: {_q(n)} data_type: {_TYPE[dt]} dims: [ {', '.join(map(str, dims))} ]{extra} }}"

    lines = [
        f"# Written by wam-control triton-repo for {contract.model_name} (contract version "
        f"{contract.contract_version}).",
        f"name: {_q(name)}",
        f"backend: {_q('python')}" if platform == "python" else f"platform: {_q(PLATFORMS[platform][0])}",
        f"max_batch_size: {int(max_batch)}",
        "input [",
        ",\n".join(tensor(n, dt, d) for n, (dt, d) in ins.items()),
        "]",
        "output [",
        ",\n".join(tensor(n, dt, d) for n, (dt, d) in outs.items()),
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}",
        f"instance_group [ {{ count: {int(instances)} kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'} }} ]",
        f"parameters {{ key: {_q(CONTRACT_PARAMETER)} value: {{ string_value: "
        f"{_q(contract_parameter_value(contract))} }} }}",
    ]
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(str(value))} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(
    model_path: str | Path,
    out: str | Path,
    *,
    platform: str = "onnxruntime",
    name: str = "",
    max_batch: int = 8,
    queue_delay_us: int = 0,
    instances: int = 1,
    kind: str = "gpu",
    parameters: dict[str, str] | None = None,
    copy_model: bool = True,
) -> Path:
    """Write the repository; returns the model's folder (`out/<name>`).

    `copy_model=False` (python only): leave the .onnx where it is and name it in the `onnx_path`
    parameter (what `wam-control serve --runtime direct` does: external weights stay next to the file)."""
    from wam_control.policy import read_contract
    from wam_control.policy.triton_backend import triton_model_name

    contract = read_contract(model_path)
    name = name or triton_model_name(contract)
    folder = Path(out) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    if platform == "python" and not copy_model:
        params["onnx_path"] = str(Path(model_path).resolve())
    text = config_pbtxt(
        contract,
        name=name,
        platform=platform,
        max_batch=max_batch,
        queue_delay_us=queue_delay_us,
        instances=instances,
        kind=kind,
        parameters=params,
    )
    (folder / "config.pbtxt").write_text(text)
    if platform == "python":
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), folder / "1" / "model.py")
    if platform == "onnxruntime" or (platform == "python" and copy_model):
        shutil.copyfile(model_path, folder / "1" / "model.onnx")
    else:
        (folder / "1" / "BUILD_ENGINE_HERE.txt").write_text(
            "Build the TensorRT engine for this model on the serving GPU and save it as 1/model.plan,\n"
            f"with an optimization profile covering batch 1..{max_batch} on every input, e.g.\n"
            f"  trtexec --onnx={Path(model_path).name} --saveEngine=model.plan "
            f"--minShapes=... --optShapes=... --maxShapes=... (batch {max_batch})\n"
            "The engine is tied to that GPU and TensorRT version.\n"
        )
    return folder


def read_config(path: str | Path) -> Any:
    """Parse a config.pbtxt into Triton's ModelConfig protobuf (tritonclient ships its definition)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def check_config(cfg: Any, contract: ModelContract, source: str = "config.pbtxt") -> None:
    """Check a parsed ModelConfig against the contract the way the robot checks a server: inputs and
    outputs (names, types, dims), batching, and the published contract; ContractError names the field."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    from wam_control.policy.triton_backend import CONTRACT_PARAMETER, contract_from_parameter, triton_io

    ins, outs = triton_io(contract)
    if cfg.max_batch_size < 1:
        raise ContractError("max_batch_size", f"{source}: max_batch_size {cfg.max_batch_size}: batching is off")
    if not cfg.HasField("dynamic_batching"):
        raise ContractError("dynamic_batching", f"{source}: no dynamic_batching section")
    for kind, want, have in (("input", ins, cfg.input), ("output", outs, cfg.output)):
        got = {t.name: t for t in have}
        if set(got) != set(want):
            raise ContractError(kind, f"{source}: {kind}s {sorted(got)}, the contract has {sorted(want)}")
        for n, (dt, dims) in want.items():
            t = got[n]
            if model_config_pb2.DataType.Name(t.data_type) != _TYPE[dt]:
                raise ContractError(n, f"{source}: {kind} {n} is {model_config_pb2.DataType.Name(t.data_type)}")
            if tuple(t.dims) != dims:
                raise ContractError(n, f"{source}: {kind} {n} has dims {list(t.dims)}, expected {list(dims)}")
    plen = {t.name: t for t in cfg.input}["prefix_len"]
    if not plen.HasField("reshape") or list(plen.reshape.shape) != []:
        raise ContractError("prefix_len", f"{source}: prefix_len must be reshaped to [] (the model takes [B])")
    if CONTRACT_PARAMETER not in cfg.parameters:
        raise ContractError(CONTRACT_PARAMETER, f"{source}: parameter {CONTRACT_PARAMETER} missing")
    published = contract_from_parameter(cfg.parameters[CONTRACT_PARAMETER].string_value, source)
    from wam_control.policy.triton_backend import first_difference

    diff = first_difference(published, contract)
    if diff is not None:
        raise ContractError(diff, f"{source}: published contract differs from the model in {diff}")
    json_format.MessageToDict(cfg)  # a complete, serialisable message


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control triton-repo", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the WAM ONNX file")
    ap.add_argument("--out", required=True, type=Path, help="repository folder (created)")
    ap.add_argument("--platform", choices=sorted(PLATFORMS), default="onnxruntime")
    ap.add_argument("--name", default="", help="Triton model name (default: the contract's model_name)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-delay-us", type=int, default=0)
    ap.add_argument("--instances", type=int, default=1, help="model instances per device")
    ap.add_argument("--kind", choices=("gpu", "cpu"), default="gpu")
    args = ap.parse_args(argv)
    if not Path(args.model).is_file():
        print(f"wam-control triton-repo: model file {args.model} not found", file=sys.stderr)
        return 2
    folder = write_repository(
        args.model,
        args.out,
        platform=args.platform,
        name=args.name,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        kind=args.kind,
    )
    from wam_control.policy import read_contract

    check_config(read_config(folder / "config.pbtxt"), read_contract(args.model), str(folder / "config.pbtxt"))
    print(f"wrote {folder}/config.pbtxt ({args.platform}, max batch {args.max_batch}, dynamic batching)")
    if args.platform == "tensorrt":
        print(f"build the engine on the serving GPU as {folder}/1/model.plan (see {folder}/1/BUILD_ENGINE_HERE.txt)")
    print(f"serve: tritonserver --model-repository {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
