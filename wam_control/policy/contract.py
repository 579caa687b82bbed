"""The WAM model contract (DESIGN.md §3): what a model file must declare, and the checks against it.

The contract lives in the ONNX file's `metadata_props`, one JSON value per key, so a model file is
self-describing. This module needs only numpy; reading a file uses `onnx` when installed and falls back
to `onnxruntime` otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONTRACT_VERSION = 1

INPUT_NAMES = ("images", "state", "action_prefix", "prefix_len")
OUTPUT_NAMES = ("actions", "latent", "latent_pred")

# metadata key -> (python type(s) the JSON value must have, human description)
_META_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "contract_version": ((int,), "integer"),
    "model_name": ((str,), "string"),
    "joint_names": ((list,), "list of joint names"),
    "camera_names": ((list,), "list of camera names"),
    "image_height": ((int,), "integer pixels"),
    "image_width": ((int,), "integer pixels"),
    "action_dt": ((int, float), "seconds between action steps"),
    "horizon": ((int,), "integer action steps (H_act)"),
    "latent_steps": ((int,), "integer K"),
    "latent_offsets": ((list,), "list of K action-step offsets"),
    "max_prefix": ((int,), "integer action steps"),
    "latent_dim": ((int,), "integer C"),
    "weights_sha256": ((str,), "hex sha256"),
    "training_data": ((dict,), "JSON object"),
}


class ContractError(ValueError):
    """A model does not satisfy the contract, or disagrees with the deployment configuration."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt or truncated."""


@dataclass(frozen=True)
class ModelContract:
    contract_version: int
    model_name: str
    joint_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    image_height: int
    image_width: int
    action_dt: float
    horizon: int
    latent_steps: int
    latent_offsets: tuple[int, ...]
    max_prefix: int
    latent_dim: int
    weights_sha256: str
    training_data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _validate_values(self)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def input_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        return {
            "images": (batch, self.num_cameras, self.image_height, self.image_width, 3),
            "state": (batch, self.num_joints),
            "action_prefix": (batch, self.horizon, self.num_joints),
            "prefix_len": (batch,),
        }

    def output_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        return {
            "actions": (batch, self.horizon, self.num_joints),
            "latent": (batch, self.latent_dim),
            "latent_pred": (batch, self.latent_steps, self.latent_dim),
        }

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` entries (JSON strings) that describe this contract."""
        values: dict[str, Any] = {
            "contract_version": self.contract_version,
            "model_name": self.model_name,
            "joint_names": list(self.joint_names),
            "camera_names": list(self.camera_names),
            "image_height": self.image_height,
            "image_width": self.image_width,
            "action_dt": self.action_dt,
            "horizon": self.horizon,
            "latent_steps": self.latent_steps,
            "latent_offsets": list(self.latent_offsets),
            "max_prefix": self.max_prefix,
            "latent_dim": self.latent_dim,
            "weights_sha256": self.weights_sha256,
            "training_data": self.training_data,
        }
        return {k: json.dumps(v, sort_keys=True) for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> ModelContract:
        """Parse `metadata_props`; raises ContractError naming the first missing or malformed key."""
        values: dict[str, Any] = {}
        for key, (types, what) in _META_FIELDS.items():
            if key not in meta:
                raise ContractError(key, f"{source}: metadata {key} missing (expected {what})")
            try:
                value = json.loads(meta[key])
            except (TypeError, ValueError) as exc:
                raise ContractError(key, f"{source}: metadata {key} is not valid JSON: {exc}") from None
            # bool is an int subclass in Python; a JSON true is never a valid count.
            if not isinstance(value, types) or isinstance(value, bool):
                raise ContractError(
                    key, f"{source}: metadata {key} = {meta[key]!r} has the wrong type (expected {what})"
                )
            values[key] = value
        for key in ("joint_names", "camera_names"):
            if not all(isinstance(v, str) for v in values[key]):
                raise ContractError(key, f"{source}: metadata {key} must be a list of strings")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values["latent_offsets"]):
            raise ContractError("latent_offsets", f"{source}: metadata latent_offsets must be integers")
        values["joint_names"] = tuple(values["joint_names"])
        values["camera_names"] = tuple(values["camera_names"])
        values["latent_offsets"] = tuple(values["latent_offsets"])
        values["action_dt"] = float(values["action_dt"])
        if values["contract_version"] != CONTRACT_VERSION:
            raise ContractError(
                "contract_version",
                f"{source}: contract_version {values['contract_version']} is not supported "
                f"(this wam_control reads version {CONTRACT_VERSION})",
            )
        try:
            return cls(**values)
        except ContractError as exc:
            raise ContractError(exc.field, f"{source}: {exc}") from None


def _validate_values(c: ModelContract) -> None:
    def bad(name: str, msg: str) -> ContractError:
        return ContractError(name, f"{name} {msg}")

    if not c.joint_names:
        raise bad("joint_names", "is empty")
    if len(set(c.joint_names)) != len(c.joint_names):
        raise bad("joint_names", f"has duplicates: {list(c.joint_names)}")
    if not c.camera_names:
        raise bad("camera_names", "is empty")
    if len(set(c.camera_names)) != len(c.camera_names):
        raise bad("camera_names", f"has duplicates: {list(c.camera_names)}")
    for name in ("image_height", "image_width", "horizon", "latent_steps", "latent_dim"):
        if getattr(c, name) < 1:
            raise bad(name, f"must be >= 1, got {getattr(c, name)}")
    if not (math.isfinite(c.action_dt) and c.action_dt > 0):
        raise bad("action_dt", f"must be a positive number of seconds, got {c.action_dt}")
    if not 0 <= c.max_prefix < c.horizon:
        raise bad("max_prefix", f"must be in [0, horizon-1={c.horizon - 1}], got {c.max_prefix}")
    if len(c.latent_offsets) != c.latent_steps:
        raise bad(
            "latent_offsets", f"has {len(c.latent_offsets)} entries but latent_steps is {c.latent_steps}"
        )
    if any(o < 1 for o in c.latent_offsets) or list(c.latent_offsets) != sorted(set(c.latent_offsets)):
        raise bad(
            "latent_offsets", f"must be strictly increasing positive steps, got {list(c.latent_offsets)}"
        )


# ---------------------------------------------------------------------------------------------------
# Graph I/O (names, dtypes, shapes)

# A dimension as a model file declares it: an int, or a symbolic name / None for a dynamic one.
Dim = int | str | None


def expected_io(contract: ModelContract) -> tuple[dict[str, tuple[str, tuple]], dict[str, tuple[str, tuple]]]:
    """name -> (numpy dtype name, shape without batch) for inputs and outputs."""
    inputs = {
        "images": ("uint8", (contract.num_cameras, contract.image_height, contract.image_width, 3)),
        "state": ("float32", (contract.num_joints,)),
        "action_prefix": ("float32", (contract.horizon, contract.num_joints)),
        "prefix_len": ("int64", ()),
    }
    outputs = {
        "actions": ("float32", (contract.horizon, contract.num_joints)),
        "latent": ("float32", (contract.latent_dim,)),
        "latent_pred": ("float32", (contract.latent_steps, contract.latent_dim)),
    }
    return inputs, outputs


def validate_io(
    contract: ModelContract,
    inputs: Mapping[str, tuple[str, Sequence[Dim]]],
    outputs: Mapping[str, tuple[str, Sequence[Dim]]],
    source: str = "model",
) -> None:
    """Check the graph's declared I/O against the contract's metadata.

    The batch dimension may be dynamic or 1; every other dimension must be static and equal.
    """
    want_in, want_out = expected_io(contract)
    for kind, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
        for name, (dtype, shape) in want.items():
            if name not in have:
                raise ContractError(name, f"{source}: missing {kind} {name} (has {sorted(have)})")
            got_dtype, got_shape = have[name]
            if got_dtype != dtype:
                raise ContractError(name, f"{source}: {kind} {name} has dtype {got_dtype}, expected {dtype}")
            full = ("B", *shape)
            got = tuple(got_shape)
            if len(got) != len(full):
                raise ContractError(
                    name, f"{source}: {kind} {name} has rank {len(got)} {list(got)}, expected {list(full)}"
                )
            batch = got[0]
            if isinstance(batch, int) and batch != 1:
                raise ContractError(
                    name, f"{source}: {kind} {name} has fixed batch {batch}; expected dynamic or 1"
                )
            if tuple(got[1:]) != shape:
                raise ContractError(
                    name,
                    f"{source}: {kind} {name} has shape {list(got)}, expected {list(full)} from metadata",
                )
        extra = sorted(set(have) - set(want))
        if kind == "input" and extra:
            raise ContractError(
                extra[0], f"{source}: unexpected input {extra[0]} (the contract has {list(want)})"
            )


# ---------------------------------------------------------------------------------------------------
# Reading a model file

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(uint8)": "uint8",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


def _check_file(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ModelFileError(f"model file {p} does not exist")
    if not os.path.isfile(p):
        raise ModelFileError(f"model file {p} is not a regular file")
    if os.path.getsize(p) == 0:
        raise ModelFileError(f"model file {p} is empty")
    return p


def weights_sha256_of(model: Any) -> str:
    """sha256 over the initializers of an onnx.ModelProto (name, dtype, dims, raw bytes; name order).

    Hashing the weights as stored in the file (not the file) lets the metadata carry its own checksum.
    """
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(init.name.encode())
        h.update(str(arr.dtype).encode())
        h.update(repr(tuple(arr.shape)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def read_contract(model_path: str | os.PathLike[str], *, verify_weights: bool = False) -> ModelContract:
    """Read and validate the contract of an ONNX model file (metadata + graph I/O).

    Raises ModelFileError for a missing/corrupt/truncated file and ContractError for a contract
    violation. `verify_weights` recomputes the weights hash (needs `onnx`).
    """
    path = _check_file(model_path)
    try:
        import onnx
    except ImportError:
        if verify_weights:
            raise ModelFileError(
                "verifying weights_sha256 needs the onnx package (pip install onnx)"
            ) from None
        return _read_contract_ort(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelFileError(
            f"model file {path} is not a readable ONNX model (corrupt or truncated?): {exc}"
        ) from None
    if not model.graph.node:
        raise ModelFileError(f"model file {path} is not a readable ONNX model (no graph nodes; corrupt?)")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ModelFileError(f"model file {path} keeps weights in external data; the contract needs one file")
    meta = {p.key: p.value for p in model.metadata_props}
    contract = ModelContract.from_metadata(meta, source=path)
    initializer_names = {i.name for i in model.graph.initializer}

    def io(values: Any) -> dict[str, tuple[str, tuple]]:
        out = {}
        for v in values:
            if v.name in initializer_names:
                continue
            t = v.type.tensor_type
            dims: list[Dim] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
            ]
            out[v.name] = (_ONNX_DTYPES.get(t.elem_type, f"onnx-type-{t.elem_type}"), tuple(dims))
        return out

    validate_io(contract, io(model.graph.input), io(model.graph.output), source=path)
    if verify_weights:
        actual = weights_sha256_of(model)
        if actual != contract.weights_sha256:
            raise ContractError(
                "weights_sha256",
                f"{path}: weights hash {actual[:16]}.. differs from metadata weights_sha256 "
                f"{contract.weights_sha256[:16]}.. (file modified or corrupt)",
            )
    return contract


def _read_contract_ort(path: str) -> ModelContract:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(
            f"model file {path} is not a readable ONNX model (corrupt or truncated?): {exc}"
        ) from None
    return contract_from_session(sess, path)


def contract_from_session(sess: Any, source: str) -> ModelContract:
    """Contract of an onnxruntime.InferenceSession (metadata + declared I/O)."""
    contract = ModelContract.from_metadata(sess.get_modelmeta().custom_metadata_map, source=source)

    def io(values: Any) -> dict[str, tuple[str, tuple]]:
        return {v.name: (_ORT_DTYPES.get(v.type, v.type), tuple(v.shape)) for v in values}

    validate_io(contract, io(sess.get_inputs()), io(sess.get_outputs()), source=source)
    return contract


# ---------------------------------------------------------------------------------------------------
# Model vs deployment configuration


def _names_mismatch(what: str, model: Sequence[str], config: Sequence[str]) -> str:
    if sorted(model) == sorted(config):
        return f"model {what} order {list(model)} differs from config {list(config)}"
    missing = [n for n in config if n not in model]
    extra = [n for n in model if n not in config]
    parts = [f"model {what} {list(model)} differ from config {list(config)}"]
    if missing:
        parts.append(f"not in model: {missing}")
    if extra:
        parts.append(f"not in config: {extra}")
    return "; ".join(parts)


def check_contract(
    contract: ModelContract,
    config: Any = None,
    *,
    joint_names: Sequence[str] | None = None,
    camera_names: Sequence[str] | None = None,
    image_hw: tuple[int, int] | None = None,
    control_hz: float | None = None,
    action_dt: float | None = None,
) -> None:
    """Refuse a model whose contract disagrees with the deployment; the error names the field.

    `config` may be any object with `joint_names` (and optionally `camera_names`, `control_hz`);
    explicit keywords win. With `control_hz`, one action step must be a whole number of ticks
    (actions are tick-indexed: step k lands on tick t0 + k * action_dt * control_hz).
    """
    if config is not None:
        joint_names = joint_names if joint_names is not None else getattr(config, "joint_names", None)
        camera_names = camera_names if camera_names is not None else getattr(config, "camera_names", None)
        control_hz = control_hz if control_hz is not None else getattr(config, "control_hz", None)
    if joint_names is not None and tuple(joint_names) != contract.joint_names:
        raise ContractError("joint_names", _names_mismatch("joint", contract.joint_names, list(joint_names)))
    if camera_names is not None and tuple(camera_names) != contract.camera_names:
        raise ContractError(
            "camera_names", _names_mismatch("camera", contract.camera_names, list(camera_names))
        )
    if image_hw is not None and tuple(image_hw) != (contract.image_height, contract.image_width):
        raise ContractError(
            "image_height",
            f"model image size {contract.image_height}x{contract.image_width} (HxW) differs from config "
            f"{image_hw[0]}x{image_hw[1]}",
        )
    if action_dt is not None and not math.isclose(action_dt, contract.action_dt, rel_tol=1e-9, abs_tol=1e-12):
        raise ContractError(
            "action_dt", f"model action_dt {contract.action_dt} s differs from config {action_dt} s"
        )
    if control_hz is not None:
        ticks = contract.action_dt * float(control_hz)
        if ticks < 1 - 1e-9 or abs(ticks - round(ticks)) > 1e-6:
            raise ContractError(
                "action_dt",
                f"model action_dt {contract.action_dt} s is {ticks:g} ticks at control_hz {control_hz}; "
                "it must be a whole number of ticks >= 1",
            )
