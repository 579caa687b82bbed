"""Remote backend: the model served by NVIDIA Triton Inference Server, over its gRPC protocol (KServe v2).

`inference.backend: triton` (DESIGN.md §8). The backend is one more `PolicyBackend`: the inference worker
thread (or process) calls `infer()`, which sends the observation to the server and waits for the chunk,
so the control loop never waits on the network, and the round trip is part of the delay d the scheduler
measures in ticks (DESIGN.md §4). Any Triton serves: `wam-control serve` (nvidia-pytriton) or a
production server on a repository written by `wam-control triton-repo` (its own ONNX Runtime / TensorRT
backends).

Contract. The robot keeps the model's `.onnx` file (graph and metadata; the weights stay on the GPU host
when they live in external data) and its contract is checked against the configuration exactly as for a
local model (by the caller, `check_contract`). At start-up this backend checks the served model against
that contract: the server's model must be ready, its declared inputs and outputs must match the
contract's names, types and shapes, and when the server publishes the contract itself (model config
parameter `wam_contract`, written by `serve` and `triton-repo`), it must equal the file's field by field
(`ContractError` names the first field that differs). Without a local file (`model_path=""`) the server's
published contract is the contract.

Requests. Each request carries the observation's tick and the worker's request id as request
parameters, and a wire id unique to this backend instance, as the request id Triton echoes. Each request
is one blocking unary gRPC call from the worker's thread (one caller at a time: the request tensors are
reused) with the request timeout as its gRPC deadline; a request given up on is cancelled by gRPC, so
its reply can never reach a later call. A reply whose echoed id is not the request's (a duplicate or a
misrouted one) is counted (`replies_dropped`) and never used.

Faults. Unreachable at start -> `TritonUnavailable` naming host, port and model. Connection lost, server
gone or restarted, or no reply within `request_timeout_s` while running -> `TritonUnavailable` from
`infer()`, which the inference worker treats like a crashed backend: the request is abandoned, the worker
restarts with backoff (reconnecting; the contract is checked again), and the controller brakes to hold
as for any worker failure. Errors the server reports for the request itself (bad input) are model errors.

`added_rtt_s` injects network delay at the client (half before sending, half after the reply), to
simulate a WAN link on loopback.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from wam_control.policy.base import BackendUnavailable, InputChecker, PolicyInput, PolicyOutput, example_input
from wam_control.policy.contract import INSTRUCTION_INPUT, ContractError, ModelContract, read_contract

log = logging.getLogger(__name__)

CONTRACT_PARAMETER = "wam_contract"
"""Triton model config parameter holding the contract: JSON object of the ONNX metadata entries."""

_TRITON_DTYPES = {"uint8": "UINT8", "float32": "FP32", "int64": "INT64"}
_NP_DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}
# Errors that mean "the server (or the way to it) is gone or too slow", not "this request is bad".
_UNAVAILABLE_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "ABORTED",
    "RESOURCE_EXHAUSTED",
    "NOT_FOUND",
    "UNKNOWN",
)


class TritonUnavailable(BackendUnavailable):
    """The Triton server cannot be reached, lost the model, or did not answer in time."""


def triton_model_name(contract: ModelContract) -> str:
    """The default Triton model name: the contract's model_name in Triton's alphabet."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", contract.model_name) or "wam"


def triton_io(
    contract: ModelContract,
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, tuple[int, ...]]]]:
    """name -> (Triton datatype, per-request dims without the batch dimension) for inputs and outputs.

    `prefix_len` is one value per request; Triton declares it as dims [1] (its batched tensor is then
    [B, 1]; a repository for Triton's own backends reshapes it to the model's [B])."""
    from wam_control.policy.contract import expected_io

    want_in, want_out = expected_io(contract)

    def conv(io: Mapping[str, tuple[str, tuple]]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {
            n: (_TRITON_DTYPES[dt], tuple(int(d) for d in shape) or (1,)) for n, (dt, shape) in io.items()
        }

    return conv(want_in), conv(want_out)


def contract_parameter_value(contract: ModelContract) -> str:
    return json.dumps(contract.to_metadata(), sort_keys=True)


def contract_from_parameter(value: str, source: str) -> ModelContract:
    try:
        meta = json.loads(value)
    except ValueError as exc:
        raise ContractError(
            CONTRACT_PARAMETER, f"{source}: parameter {CONTRACT_PARAMETER} is not JSON: {exc}"
        ) from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ContractError(
            CONTRACT_PARAMETER, f"{source}: parameter {CONTRACT_PARAMETER} must map keys to JSON strings"
        )
    return ModelContract.from_metadata(meta, source=source)


def first_difference(a: ModelContract, b: ModelContract) -> str | None:
    """The first contract field where `a` and `b` differ (training_data excluded), or None."""
    ma, mb = a.to_metadata(), b.to_metadata()
    for key in ma:
        if key != "training_data" and ma[key] != mb.get(key):
            return key
    return None


def split_address(server: str) -> tuple[str, int]:
    """ "host:port" (IPv6 as "[::1]:8001") -> (host, port); ValueError naming what is wrong."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Triton server address must be host:port, got {server!r}")
    return host.strip("[]"), int(port)


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class TritonBackend:
    """A model served by Triton, called over gRPC; see the module docstring."""

    name = "triton"
    # The call waits on the network in gRPC's C core (GIL released); only the small request and
    # reply conversions run in Python.
    releases_gil = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] = "",
        *,
        server: str = "127.0.0.1:8001",
        model_name: str = "",
        model_version: str = "",
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 1.0,
        tls: bool = False,
        root_certificates: str = "",
        private_key: str = "",
        certificate_chain: str = "",
        added_rtt_s: float = 0.0,
        device: str = "",
    ) -> None:
        del device  # the server decides where the model runs
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise ImportError(
                "inference.backend triton needs tritonclient: pip install 'wam_control[triton]'"
            ) from exc
        self._grpc = grpcclient
        self._exc_type = InferenceServerException
        self.server = server
        self.host, self.port = split_address(server)
        self.model_version = str(model_version)
        self.connect_timeout_s = float(connect_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.added_rtt_s = float(added_rtt_s)
        if self.connect_timeout_s <= 0 or self.request_timeout_s <= 0 or self.added_rtt_s < 0:
            raise ValueError("connect_timeout_s and request_timeout_s must be > 0, added_rtt_s >= 0")
        path = os.fspath(model_path) if model_path else ""
        local = read_contract(path) if path else None
        self.model_name = model_name or (triton_model_name(local) if local is not None else "")
        if not self.model_name:
            raise ValueError(
                "backend triton: give the model file or the Triton model name (inference.triton.model_name)"
            )
        self._where = f"Triton server {self.host}:{self.port} (model {self.model_name!r})"
        self._client = grpcclient.InferenceServerClient(
            f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}",
            ssl=bool(tls),
            root_certificates=_read(root_certificates),
            private_key=_read(private_key),
            certificate_chain=_read(certificate_chain),
        )
        try:
            self.contract = self._connect(local)
        except BaseException:
            self._client.close()
            raise
        self._checker = InputChecker(self.contract)
        self._token = secrets.token_hex(4)
        self._seq = itertools.count(1)
        # The contract's inputs and outputs only (its optional parts: prefix, world model, prompt).
        wire_in, wire_out = triton_io(self.contract)
        self._plen = np.zeros(self._wire_shapes.get("prefix_len", (1,)), np.int64)
        self._input_names = list(wire_in)
        self._input_shapes = [self._wire_shapes[n] for n in self._input_names]
        self._inputs = [
            self._grpc.InferInput(n, list(self._wire_shapes[n]), wire_in[n][0]) for n in self._input_names
        ]
        self._requested = [self._grpc.InferRequestedOutput(n) for n in wire_out]
        self._no_latent = np.zeros(0, np.float32)  # as OnnxRuntimeBackend's, for a model without the head
        self._no_latent_pred = np.zeros((0, 0), np.float32)
        self.replies_dropped = 0
        self.calls = 0
        self.rtt_s: collections.deque[float] = collections.deque(maxlen=100_000)
        """Round trip of each call (send -> reply decoded), injected delay included."""

    # ------------------------------------------------------------------ start-up

    def _connect(self, local: ModelContract | None) -> ModelContract:
        t = self.connect_timeout_s
        try:
            live = self._client.is_server_live(client_timeout=t)
        except self._exc_type as exc:
            raise TritonUnavailable(f"{self._where} is unreachable: {_short(exc)}") from None
        if not live:
            raise TritonUnavailable(f"{self._where}: the server answers but is not live")
        try:
            ready = self._client.is_model_ready(self.model_name, self.model_version, client_timeout=t)
        except self._exc_type as exc:
            raise TritonUnavailable(f"{self._where}: model readiness check failed: {_short(exc)}") from None
        if not ready:
            raise TritonUnavailable(f"{self._where}: the server has no ready model of that name")
        try:
            meta = self._client.get_model_metadata(
                self.model_name, self.model_version, as_json=True, client_timeout=t
            )
            cfg = self._client.get_model_config(
                self.model_name, self.model_version, as_json=True, client_timeout=t
            )
        except self._exc_type as exc:
            raise TritonUnavailable(
                f"{self._where}: reading the model's metadata failed: {_short(exc)}"
            ) from None
        cfg = cfg.get("config", cfg)
        self.platform = str(meta.get("platform", "") or cfg.get("backend", ""))
        self.max_batch_size = int(cfg.get("max_batch_size", 0) or 0)
        published = (cfg.get("parameters") or {}).get(CONTRACT_PARAMETER, {}).get("string_value", "")
        remote = contract_from_parameter(published, self._where) if published else None
        if local is not None and remote is not None:
            field = first_difference(local, remote)
            if field is not None:
                raise ContractError(
                    field,
                    f"{self._where} serves a model whose contract differs from the local model file in "
                    f"{field}: server {remote.to_metadata()[field]}, file {local.to_metadata()[field]}",
                )
        contract = local if local is not None else remote
        if contract is None:
            raise ContractError(
                CONTRACT_PARAMETER,
                f"{self._where} publishes no model contract (config parameter {CONTRACT_PARAMETER}) and no "
                "local model file was given: pass the model's .onnx file",
            )
        self.contract_source = (
            "model file" + (" (= server's)" if remote is not None else "") if local else "server"
        )
        self._wire_shapes = self._check_io(contract, meta)
        return contract

    def _check_io(self, contract: ModelContract, meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Check the server's declared I/O against the contract; the shapes to send (batch of one)."""
        want_in, want_out = triton_io(contract)
        wire: dict[str, tuple[int, ...]] = {}
        for kind, want, have in (
            ("input", want_in, meta.get("inputs", [])),
            ("output", want_out, meta.get("outputs", [])),
        ):
            declared = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in have}
            for name, (dtype, dims) in want.items():
                if name not in declared:
                    raise ContractError(name, f"{self._where}: no {kind} {name} (has {sorted(declared)})")
                got_dtype, got = declared[name]
                if got_dtype != dtype:
                    raise ContractError(
                        name, f"{self._where}: {kind} {name} is {got_dtype}, the contract says {dtype}"
                    )
                item = tuple(got[1:]) if got else ()
                ok = item == dims or (name == "prefix_len" and item in ((), (1,)))
                if not got or got[0] not in (-1, 1) or not ok:
                    raise ContractError(
                        name,
                        f"{self._where}: {kind} {name} has shape {got}, the contract says [-1, "
                        f"{', '.join(map(str, dims))}]",
                    )
                wire[name] = (1, *item)
            extra = sorted(set(declared) - set(want))
            if kind == "input" and extra:
                raise ContractError(extra[0], f"{self._where}: unexpected input {extra[0]}")
        return wire

    # ------------------------------------------------------------------ calls

    def describe(self) -> str:
        extra = f" + {self.added_rtt_s * 1e3:g} ms injected RTT" if self.added_rtt_s else ""
        return (
            f"triton {self.host}:{self.port} model {self.model_name!r} ({self.platform or 'unknown platform'}, "
            f"max batch {self.max_batch_size}; contract from {self.contract_source}){extra}"
        )

    def warmup(self, n: int = 3) -> None:
        for i in range(max(1, n)):
            self.infer(example_input(self.contract, seed=1000 + i))

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self._checker.check(inp)
        wire_id = f"{self._token}-{next(self._seq)}"
        self._plen.fill(int(inp.prefix_len))
        arrays = {
            "images": inp.images,
            "state": inp.state,
            "action_prefix": inp.action_prefix,
            "prefix_len": self._plen,
            INSTRUCTION_INPUT: inp.instruction_tokens,
        }
        # The request's tensors are built once (start-up); each call only sets their bytes.
        for tensor, name, shape in zip(self._inputs, self._input_names, self._input_shapes, strict=True):
            tensor.set_data_from_numpy(np.ascontiguousarray(arrays[name]).reshape(shape))
        t0 = time.perf_counter()
        if self.added_rtt_s:
            time.sleep(self.added_rtt_s / 2)
        # One blocking unary call on the calling (worker) thread, GIL released while gRPC waits. The gRPC
        # deadline (request_timeout_s) ends it: the call is cancelled, its reply can never arrive later.
        # (A callback-based async call costs a gRPC polling thread per call: ~0.7 ms more client CPU and
        # ~1 ms more round trip on a 2-core machine.)
        try:
            result = self._client.infer(
                self.model_name,
                self._inputs,
                model_version=self.model_version,
                outputs=self._requested,
                request_id=wire_id,
                client_timeout=self.request_timeout_s,
                parameters={"obs_tick": int(inp.obs_tick), "wam_request_id": int(inp.request_id)},
            )
        except self._exc_type as error:
            status = str(error.status() or "")
            if "DEADLINE_EXCEEDED" in status:
                raise TritonUnavailable(
                    f"{self._where}: no reply to request {wire_id} (tick {inp.obs_tick}) within "
                    f"{self.request_timeout_s:g} s (deadline exceeded)"
                ) from None
            if (
                any(code in status for code in _UNAVAILABLE_CODES)
                or "failed to connect" in str(error).lower()
            ):
                raise TritonUnavailable(f"{self._where}: {_short(error)}") from None
            raise RuntimeError(f"{self._where} refused request {wire_id}: {_short(error)}") from None
        echoed = result.get_response().id
        if echoed != wire_id:  # a reply for another request: never used
            self.replies_dropped += 1
            raise TritonUnavailable(
                f"{self._where}: reply {echoed!r} does not answer request {wire_id} (tick {inp.obs_tick})"
            )
        c = self.contract
        actions = self._output(result, "actions", (c.horizon, c.action_dim))
        if c.has_world_model:
            out = PolicyOutput(
                actions=actions,
                latent=self._output(result, "latent", (c.latent_dim,)),
                latent_pred=self._output(result, "latent_pred", (c.latent_steps, c.latent_dim)),
            )
        else:
            out = PolicyOutput(actions=actions, latent=self._no_latent, latent_pred=self._no_latent_pred)
        if self.added_rtt_s:
            time.sleep(self.added_rtt_s / 2)
        self.rtt_s.append(time.perf_counter() - t0)
        self.calls += 1
        return out

    def _output(self, result: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = result.as_numpy(name)
        if arr is None or arr.size != math.prod(shape):
            got = None if arr is None else list(arr.shape)
            raise RuntimeError(f"{self._where}: output {name} has shape {got}, expected [1, {shape}]")
        return np.asarray(arr, dtype=np.float32).reshape(shape)

    def server_statistics(self) -> dict[str, float]:
        """The server's own counters for this model (Triton's statistics extension): requests, batched
        executions, and cumulative queue / compute time, so callers can split round trip from compute."""
        stats = self._client.get_inference_statistics(
            self.model_name, self.model_version, as_json=True, client_timeout=self.connect_timeout_s
        )
        out = collections.Counter[str]()
        for m in stats.get("model_stats", []):
            out["inference_count"] += int(m.get("inference_count", 0))
            out["execution_count"] += int(m.get("execution_count", 0))
            st = m.get("inference_stats", {})
            for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
                out[f"{key}_count"] += int(st.get(key, {}).get("count", 0))
                out[f"{key}_ns"] += int(st.get(key, {}).get("ns", 0))
        return {k: float(v) for k, v in out.items()}

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing a channel to a dead server must not raise
                log.debug("triton: close failed: %s", exc)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= 300 else text[:300] + "..."


def triton_options(config: Any) -> dict[str, Any]:
    """`load_backend(..., "triton", **options)` keywords from a RobotConfig's `inference` section."""
    inf = config.inference
    t = inf.triton
    return {
        "server": inf.server,
        "model_name": t.model_name,
        "model_version": t.model_version,
        "connect_timeout_s": t.connect_timeout_s,
        "request_timeout_s": t.request_timeout_s,
        "tls": t.tls,
        "root_certificates": t.root_certificates,
        "private_key": t.private_key,
        "certificate_chain": t.certificate_chain,
    }


def check_server(model_path: str | os.PathLike[str], **options: Any) -> str:
    """Start-up check (blocking, never on the control path): connect, check the served model against the
    contract, return its description. Raises TritonUnavailable naming host, port and model."""
    be = TritonBackend(model_path, **options)
    try:
        return be.describe()
    finally:
        be.close()
