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

CONTRACT_VERSION = 2
"""The newest contract version this wam_control reads (it reads every version in SUPPORTED_VERSIONS)."""
SUPPORTED_VERSIONS = (1, 2)

# Version 1 (the bundled models): every tensor below. Version 2: `images`, `state` -> `actions` are
# required; the prefix inputs, the world-model outputs and `instruction_tokens` are optional parts.
INPUT_NAMES = ("images", "state", "action_prefix", "prefix_len")
OUTPUT_NAMES = ("actions", "latent", "latent_pred")
PREFIX_INPUTS = ("action_prefix", "prefix_len")
WORLD_MODEL_OUTPUTS = ("latent", "latent_pred")
INSTRUCTION_INPUT = "instruction_tokens"
ACTION_TYPES = ("absolute", "delta")
TOKENIZER_SUFFIX = ".tokenizer.json"

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
    "max_instruction_tokens": ((int,), "integer L (instruction_tokens length)"),
    "action_names": ((list,), "list of action dimension names (arm joints first)"),
    "state_names": ((list,), "list of state dimension names (arm joints first)"),
    "action_type": ((str,), '"absolute" or "delta"'),
}

# Version 2: the required minimum, and the optional parts (each all-or-nothing: its metadata keys and
# its tensors come together).
V2_REQUIRED = (
    "contract_version",
    "model_name",
    "joint_names",
    "camera_names",
    "image_height",
    "image_width",
    "action_dt",
    "horizon",
)
V1_FIELDS = (*V2_REQUIRED, "latent_steps", "latent_offsets", "max_prefix", "latent_dim", "weights_sha256",
             "training_data")  # fmt: skip


@dataclass(frozen=True)
class OptionalPart:
    name: str
    meta: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def describe(self) -> str:
        tensors = [f"input {n}" for n in self.inputs] + [f"output {n}" for n in self.outputs]
        return f"the {self.name} part ({', '.join([*tensors, *('metadata ' + k for k in self.meta)])})"


PARTS = (
    OptionalPart("prefix", ("max_prefix",), inputs=PREFIX_INPUTS),
    OptionalPart("world-model", ("latent_dim", "latent_steps", "latent_offsets"), outputs=WORLD_MODEL_OUTPUTS),
    OptionalPart("instruction", ("max_instruction_tokens",), inputs=(INSTRUCTION_INPUT,)),
)


class ContractError(ValueError):
    """A model does not satisfy the contract, or disagrees with the deployment configuration."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt or truncated."""


@dataclass(frozen=True)
class ModelContract:
    """What a model file declares. Fields of an optional part that the model lacks keep their empty
    defaults (`has_prefix` / `has_world_model` False, `max_instruction_tokens` 0)."""

    contract_version: int
    model_name: str
    joint_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    image_height: int
    image_width: int
    action_dt: float
    horizon: int
    latent_steps: int = 0
    latent_offsets: tuple[int, ...] = ()
    max_prefix: int = 0
    latent_dim: int = 0
    weights_sha256: str = ""
    training_data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    has_prefix: bool = True
    """The model takes `action_prefix` + `prefix_len` (always in version 1)."""
    has_world_model: bool = True
    """The model outputs `latent` + `latent_pred` (always in version 1)."""
    max_instruction_tokens: int = 0
    """L of `instruction_tokens` [B, L]; 0: the model takes no language prompt."""
    action_names: tuple[str, ...] = ()
    """Names of the action dimensions when they go beyond the arm joints (arm joints first, in
    `joint_names` order, then e.g. a gripper); empty: exactly `joint_names`."""
    state_names: tuple[str, ...] = ()
    """The same for `state`."""
    action_type: str = "absolute"
    """absolute: joint targets; delta: relative to the observed state of the chunk's observation."""

    def __post_init__(self) -> None:
        _validate_values(self)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def actions(self) -> tuple[str, ...]:
        """Names of the action dimensions (arm joints, then any extra DOFs)."""
        return self.action_names or self.joint_names

    @property
    def states(self) -> tuple[str, ...]:
        """Names of the state dimensions (arm joints, then any extra DOFs)."""
        return self.state_names or self.joint_names

    @property
    def action_dim(self) -> int:
        return len(self.actions)

    @property
    def state_dim(self) -> int:
        return len(self.states)

    @property
    def extra_actions(self) -> tuple[str, ...]:
        return self.actions[self.num_joints :]

    @property
    def extra_states(self) -> tuple[str, ...]:
        return self.states[self.num_joints :]

    @property
    def has_instruction(self) -> bool:
        return self.max_instruction_tokens > 0

    @property
    def delta_actions(self) -> bool:
        return self.action_type == "delta"

    def parts(self) -> dict[str, bool]:
        """Which optional parts the model has (names as in `PARTS`, plus extra DOFs and delta actions)."""
        return {
            "prefix": self.has_prefix,
            "world-model": self.has_world_model,
            "instruction": self.has_instruction,
            "extra-dofs": bool(self.extra_actions or self.extra_states),
            "delta-actions": self.delta_actions,
            "weights-hash": bool(self.weights_sha256),
        }

    def input_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        shapes = {
            "images": (batch, self.num_cameras, self.image_height, self.image_width, 3),
            "state": (batch, self.state_dim),
            "action_prefix": (batch, self.horizon, self.action_dim),
            "prefix_len": (batch,),
        }
        if self.has_instruction:
            shapes[INSTRUCTION_INPUT] = (batch, self.max_instruction_tokens)
        return shapes

    def output_shapes(self, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Output shapes; without a world-model head `latent`/`latent_pred` are empty (C = K = 0): the
        runtime's buffers keep one layout for every model."""
        return {
            "actions": (batch, self.horizon, self.action_dim),
            "latent": (batch, self.latent_dim),
            "latent_pred": (batch, self.latent_steps, self.latent_dim),
        }

    def to_metadata(self) -> dict[str, str]:
        """The `metadata_props` entries (JSON strings) that describe this contract.

        Version 1 writes its fixed key set; version 2 writes the required keys and those of the optional
        parts the model has."""
        values: dict[str, Any] = {
            "contract_version": self.contract_version,
            "model_name": self.model_name,
            "joint_names": list(self.joint_names),
            "camera_names": list(self.camera_names),
            "image_height": self.image_height,
            "image_width": self.image_width,
            "action_dt": self.action_dt,
            "horizon": self.horizon,
        }
        v1 = self.contract_version == 1
        if v1 or self.has_world_model:
            values.update(
                latent_steps=self.latent_steps, latent_offsets=list(self.latent_offsets), latent_dim=self.latent_dim
            )
        if v1 or self.has_prefix:
            values["max_prefix"] = self.max_prefix
        if v1 or self.weights_sha256:
            values["weights_sha256"] = self.weights_sha256
        if v1 or self.training_data:
            values["training_data"] = self.training_data
        if not v1:
            if self.has_instruction:
                values["max_instruction_tokens"] = self.max_instruction_tokens
            if self.action_names:
                values["action_names"] = list(self.action_names)
            if self.state_names:
                values["state_names"] = list(self.state_names)
            if self.action_type != "absolute":
                values["action_type"] = self.action_type
        return {k: json.dumps(v, sort_keys=True) for k, v in values.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> ModelContract:
        """Parse `metadata_props`; raises ContractError naming the first missing or malformed key.

        The graph's tensors are checked against the result by `validate_io` (a part's tensors without its
        metadata, or the other way round, is refused there)."""
        version = _meta_value(meta, "contract_version", source)
        if version not in SUPPORTED_VERSIONS:
            raise ContractError(
                "contract_version",
                f"{source}: contract_version {version} is not supported "
                f"(this wam_control reads versions {', '.join(map(str, SUPPORTED_VERSIONS))})",
            )
        if version == 1:
            present = list(V1_FIELDS)
            for key in V1_FIELDS:
                if key not in meta:
                    types, what = _META_FIELDS[key]
                    raise ContractError(key, f"{source}: metadata {key} missing (expected {what})")
            v2_only = sorted(k for k in meta if k in _META_FIELDS and k not in V1_FIELDS)
            if v2_only:
                raise ContractError(
                    v2_only[0],
                    f"{source}: metadata {v2_only[0]} is a contract version 2 field; set contract_version 2",
                )
        else:
            for key in V2_REQUIRED:
                if key not in meta:
                    types, what = _META_FIELDS[key]
                    raise ContractError(
                        key, f"{source}: metadata {key} missing (required in contract version 2; expected {what})"
                    )
            for part in PARTS:
                have = [k for k in part.meta if k in meta]
                if have and len(have) != len(part.meta):
                    missing = next(k for k in part.meta if k not in meta)
                    raise ContractError(
                        missing,
                        f"{source}: metadata {missing} missing: {part.describe()} is all-or-nothing, and "
                        f"this file has {', '.join(have)}",
                    )
            present = [k for k in _META_FIELDS if k in meta]
        values: dict[str, Any] = {key: _meta_value(meta, key, source) for key in present}
        for key in ("joint_names", "camera_names", "action_names", "state_names"):
            if key in values and not all(isinstance(v, str) for v in values[key]):
                raise ContractError(key, f"{source}: metadata {key} must be a list of strings")
        if "latent_offsets" in values and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values["latent_offsets"]
        ):
            raise ContractError("latent_offsets", f"{source}: metadata latent_offsets must be integers")
        for key in ("joint_names", "camera_names", "latent_offsets", "action_names", "state_names"):
            if key in values:
                values[key] = tuple(values[key])
        values["action_dt"] = float(values["action_dt"])
        values["has_prefix"] = "max_prefix" in values
        values["has_world_model"] = "latent_dim" in values
        try:
            return cls(**values)
        except ContractError as exc:
            raise ContractError(exc.field, f"{source}: {exc}") from None


def _meta_value(meta: Mapping[str, str], key: str, source: str) -> Any:
    types, what = _META_FIELDS[key]
    if key not in meta:
        raise ContractError(key, f"{source}: metadata {key} missing (expected {what})")
    try:
        value = json.loads(meta[key])
    except (TypeError, ValueError) as exc:
        raise ContractError(key, f"{source}: metadata {key} is not valid JSON: {exc}") from None
    # bool is an int subclass in Python; a JSON true is never a valid count.
    if not isinstance(value, types) or isinstance(value, bool):
        raise ContractError(key, f"{source}: metadata {key} = {meta[key]!r} has the wrong type (expected {what})")
    return value


def _validate_values(c: ModelContract) -> None:
    def bad(name: str, msg: str) -> ContractError:
        return ContractError(name, f"{name} {msg}")

    if c.contract_version not in SUPPORTED_VERSIONS:
        raise bad("contract_version", f"must be one of {list(SUPPORTED_VERSIONS)}, got {c.contract_version}")
    if c.contract_version == 1 and not (c.has_prefix and c.has_world_model):
        raise bad("contract_version", "1 has the prefix inputs and the world-model outputs; use version 2")
    if not c.joint_names:
        raise bad("joint_names", "is empty")
    if len(set(c.joint_names)) != len(c.joint_names):
        raise bad("joint_names", f"has duplicates: {list(c.joint_names)}")
    if not c.camera_names:
        raise bad("camera_names", "is empty")
    if len(set(c.camera_names)) != len(c.camera_names):
        raise bad("camera_names", f"has duplicates: {list(c.camera_names)}")
    for name in ("image_height", "image_width", "horizon"):
        if getattr(c, name) < 1:
            raise bad(name, f"must be >= 1, got {getattr(c, name)}")
    if not (math.isfinite(c.action_dt) and c.action_dt > 0):
        raise bad("action_dt", f"must be a positive number of seconds, got {c.action_dt}")
    if c.has_prefix:
        if not 0 <= c.max_prefix < c.horizon:
            raise bad("max_prefix", f"must be in [0, horizon-1={c.horizon - 1}], got {c.max_prefix}")
    elif c.max_prefix != 0:
        raise bad("max_prefix", "is set but the model has no prefix inputs (action_prefix, prefix_len)")
    if c.has_world_model:
        for name in ("latent_steps", "latent_dim"):
            if getattr(c, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(c, name)}")
        if len(c.latent_offsets) != c.latent_steps:
            raise bad(
                "latent_offsets", f"has {len(c.latent_offsets)} entries but latent_steps is {c.latent_steps}"
            )
        if any(o < 1 for o in c.latent_offsets) or list(c.latent_offsets) != sorted(set(c.latent_offsets)):
            raise bad(
                "latent_offsets", f"must be strictly increasing positive steps, got {list(c.latent_offsets)}"
            )
    elif c.latent_steps or c.latent_dim or c.latent_offsets:
        raise bad("latent_dim", "and latent_steps/latent_offsets are set but the model has no world-model head")
    if c.max_instruction_tokens < 0:
        raise bad("max_instruction_tokens", f"must be >= 1, got {c.max_instruction_tokens}")
    for name in ("action_names", "state_names"):
        names = getattr(c, name)
        if not names:
            continue
        if tuple(names[: c.num_joints]) != c.joint_names:
            raise bad(
                name,
                f"must start with the arm joints in joint_names order {list(c.joint_names)} (extra DOFs "
                f"such as a gripper come after them), got {list(names)}",
            )
        if len(set(names)) != len(names):
            raise bad(name, f"has duplicates: {list(names)}")
    if c.action_type not in ACTION_TYPES:
        raise bad("action_type", f"must be one of {list(ACTION_TYPES)}, got {c.action_type!r}")


def tokenizer_path(model_path: str | os.PathLike[str]) -> str:
    """`<model>.tokenizer.json` beside the model (`m.onnx` -> `m.tokenizer.json`)."""
    p = os.fspath(model_path)
    stem = p[: -len(".onnx")] if p.endswith(".onnx") else p
    return stem + TOKENIZER_SUFFIX


# ---------------------------------------------------------------------------------------------------
# Graph I/O (names, dtypes, shapes)

# A dimension as a model file declares it: an int, or a symbolic name / None for a dynamic one.
Dim = int | str | None


def expected_io(contract: ModelContract) -> tuple[dict[str, tuple[str, tuple]], dict[str, tuple[str, tuple]]]:
    """name -> (numpy dtype name, shape without batch) for the inputs and outputs this contract has."""
    c = contract
    inputs: dict[str, tuple[str, tuple]] = {
        "images": ("uint8", (c.num_cameras, c.image_height, c.image_width, 3)),
        "state": ("float32", (c.state_dim,)),
    }
    if c.has_prefix:
        inputs["action_prefix"] = ("float32", (c.horizon, c.action_dim))
        inputs["prefix_len"] = ("int64", ())
    if c.has_instruction:
        inputs[INSTRUCTION_INPUT] = ("int64", (c.max_instruction_tokens,))
    outputs: dict[str, tuple[str, tuple]] = {"actions": ("float32", (c.horizon, c.action_dim))}
    if c.has_world_model:
        outputs["latent"] = ("float32", (c.latent_dim,))
        outputs["latent_pred"] = ("float32", (c.latent_steps, c.latent_dim))
    return inputs, outputs


def validate_io(
    contract: ModelContract,
    inputs: Mapping[str, tuple[str, Sequence[Dim]]],
    outputs: Mapping[str, tuple[str, Sequence[Dim]]],
    source: str = "model",
) -> None:
    """Check the graph's declared I/O against the contract's metadata.

    The batch dimension may be dynamic or 1; every other dimension must be static and equal. A tensor
    of an optional part without that part's metadata is refused naming the metadata key it lacks.
    """
    want_in, want_out = expected_io(contract)
    for part in PARTS:
        tensors = [n for n in part.inputs if n in inputs] + [n for n in part.outputs if n in outputs]
        has_meta = {
            "prefix": contract.has_prefix,
            "world-model": contract.has_world_model,
            "instruction": contract.has_instruction,
        }[part.name]
        if tensors and not has_meta:
            raise ContractError(
                part.meta[0],
                f"{source}: has {tensors[0]} but metadata {part.meta[0]} is missing: {part.describe()} is "
                "all-or-nothing",
            )
    for kind, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
        for name, (dtype, shape) in want.items():
            if name not in have:
                part_of = next((p for p in PARTS if name in p.inputs or name in p.outputs), None)
                why = f"; metadata {', '.join(part_of.meta)} says the model has {part_of.describe()}" if (
                    part_of and contract.contract_version >= 2
                ) else ""
                raise ContractError(name, f"{source}: missing {kind} {name} (has {sorted(have)}){why}")
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


def weights_sha256_of(model: Any, base_dir: str = "") -> str:
    """sha256 over the initializers of an onnx.ModelProto (name, dtype, dims, raw bytes; name order).

    Hashing the weights as stored in the file (not the file) lets the metadata carry its own checksum.
    Weights kept in external data (`<model>.onnx.data`) are read from `base_dir` (the model's folder)
    and hashed the same way, so the hash covers them and does not depend on where they are stored.
    """
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init, base_dir=base_dir)
        h.update(init.name.encode())
        h.update(str(arr.dtype).encode())
        h.update(repr(tuple(arr.shape)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def external_data_files(model: Any, model_path: str) -> list[str]:
    """Paths of the external-data files an onnx.ModelProto (loaded without them) refers to."""
    import onnx

    folder = os.path.dirname(os.path.abspath(model_path))
    files: list[str] = []
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), "")
        full = os.path.join(folder, location)
        if full not in files:
            files.append(full)
    return files


def _check_tokenizer(contract: ModelContract, path: str) -> None:
    if contract.has_instruction:
        tok = tokenizer_path(path)
        if not os.path.isfile(tok):
            raise ContractError(
                "tokenizer",
                f"{path}: the model takes instruction_tokens but its tokenizer {tok} does not exist: "
                f"{PARTS[2].describe()} ships a tokenizer file beside the model (the `tokenizers` "
                "library's tokenizer.json)",
            )


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
    for location in external_data_files(model, path):
        if not os.path.isfile(location):
            raise ModelFileError(
                f"model file {path} keeps weights in external data {location}, which does not exist "
                "(copy the .onnx.data file beside the model)"
            )
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
    _check_tokenizer(contract, path)
    if verify_weights and contract.weights_sha256:
        actual = weights_sha256_of(model, base_dir=os.path.dirname(os.path.abspath(path)))
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
    if os.path.isfile(source):
        _check_tokenizer(contract, source)
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
    # A model without the prefix inputs gets no prefix at all (its seams are blended), so a minimum
    # means nothing to it; one with them must have been trained on prefixes that long.
    inference = getattr(config, "inference", None) if config is not None else None
    min_prefix = int(getattr(inference, "min_prefix_steps", 0) or 0)
    if contract.has_prefix and min_prefix > contract.max_prefix:
        raise ContractError(
            "max_prefix",
            f"inference.min_prefix_steps {min_prefix} exceeds the model's max_prefix {contract.max_prefix} "
            "(the longest committed prefix it was trained on)",
        )
    extra_dofs = getattr(config, "extra_dofs", None) if config is not None else None
    if extra_dofs is not None:
        for what, names in (("action_names", contract.extra_actions), ("state_names", contract.extra_states)):
            missing = [n for n in names if n not in extra_dofs]
            if missing:
                raise ContractError(
                    what,
                    f"model {what} has extra DOF(s) {missing} beyond the arm joints that the config does not "
                    f"map: add extra_dofs.{missing[0]} (its joint in /joint_states and, for an action, its "
                    "command output) to the deployment YAML",
                )
        for name in contract.extra_actions:
            dof = extra_dofs[name]
            if getattr(dof, "command_interface", "") == "none":
                raise ContractError(
                    "action_names",
                    f"model action {name!r} needs a command output but extra_dofs.{name}.command_interface "
                    "is none",
                )
