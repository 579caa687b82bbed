"""PyTorch backend: eager, optional torch.compile, CUDA graphs on a GPU.

Loads the checkpoint that `wam-control export` writes beside the ONNX file (`model.pt`, see
wam_control/model/wam.py: save_checkpoint). Given `model.onnx` it reads the contract from the ONNX file
and the weights from `model.pt`, and refuses a checkpoint whose configuration disagrees. torch is
imported only when this backend is constructed. It lives in the model layer because it runs that layer's
network (`model.wam`); `policy.loader` finds it by name ("torch").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from wam_control.policy.base import InputChecker, PolicyInput, PolicyOutput, example_input
from wam_control.policy.contract import ContractError, ModelContract, ModelFileError, read_contract

log = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError("the torch backend needs PyTorch: pip install 'wam_control[train]'") from exc
    return torch


def checkpoint_path_for(model_path: str) -> str:
    root, ext = os.path.splitext(model_path)
    if ext == ".pt":
        return model_path
    # model.fp16.onnx shares model.pt: FP16 is an export-time choice, not different weights.
    if root.endswith(".fp16"):
        root = root[: -len(".fp16")]
    return root + ".pt"


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        compile: bool = False,
        cuda_graphs: bool | None = None,
        threads: int | None = None,
    ) -> None:
        torch = _import_torch()
        self._torch = torch
        from wam_control.model.wam import contract_for, load_checkpoint, state_dict_sha256  # imports torch

        path = os.fspath(model_path)
        ckpt = checkpoint_path_for(path)
        if not os.path.isfile(ckpt):
            raise ModelFileError(
                f"torch backend needs the PyTorch checkpoint {ckpt} beside {path} (written by wam-control export)"
            )
        try:
            model, training_data = load_checkpoint(ckpt)
        except ValueError as exc:
            raise ModelFileError(str(exc)) from None
        own = contract_for(model, state_dict_sha256(model), training_data)
        if path.endswith(".onnx"):
            self.contract = read_contract(path)
            _check_same_model(self.contract, own, ckpt, path)
        else:
            self.contract = own
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"torch backend: device {device} requested but torch.cuda.is_available() is False"
            )
        self.model = model.to(self.device).eval()
        self.compiled = bool(compile)
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        if self.compiled and self.cuda_graphs:
            # mode="reduce-overhead" captures CUDA graphs itself; a second manual capture would nest.
            self._fn = torch.compile(self.model, mode="reduce-overhead", dynamic=False)
            self.cuda_graphs = False
            self._compile_graphs = True
        else:
            self._fn = torch.compile(self.model, dynamic=False) if self.compiled else self.model
            self._compile_graphs = False
        # Eager dispatch runs Python between ops (holds the GIL); a graph replay is one C++ call.
        self.releases_gil = self.cuda_graphs or self._compile_graphs
        self._checker = InputChecker(self.contract)
        shapes = self.contract.input_shapes(batch=1)
        dev = self.device
        self._in = {
            "images": torch.zeros(shapes["images"], dtype=torch.uint8, device=dev),
            "state": torch.zeros(shapes["state"], dtype=torch.float32, device=dev),
            "action_prefix": torch.zeros(shapes["action_prefix"], dtype=torch.float32, device=dev),
            "prefix_len": torch.zeros(shapes["prefix_len"], dtype=torch.int64, device=dev),
        }
        self._graph: Any = None
        self._graph_out: Any = None

    def describe(self) -> str:
        torch = self._torch
        where = (
            "cpu"
            if self.device.type == "cpu"
            else f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        )
        mode = "eager"
        if self._compile_graphs:
            mode = "torch.compile(reduce-overhead, CUDA graphs)"
        elif self.compiled:
            mode = "torch.compile"
        if self.cuda_graphs:
            mode += " + CUDA graph"
        extra = f" threads={torch.get_num_threads()}" if self.device.type == "cpu" else ""
        return f"torch {torch.__version__} {mode} {where}{extra}"

    def _stage(self, inp: PolicyInput) -> None:
        torch = self._torch
        # Copy into preallocated (device) buffers: a view would do on CPU, but a captured graph needs
        # fixed addresses, and on CUDA the copy is the host->device transfer anyway.
        self._in["images"][0].copy_(torch.from_numpy(inp.images))
        self._in["state"][0].copy_(torch.from_numpy(inp.state))
        self._in["action_prefix"][0].copy_(torch.from_numpy(inp.action_prefix))
        self._in["prefix_len"].fill_(int(inp.prefix_len))

    def _args(self) -> tuple[Any, ...]:
        i = self._in
        return i["images"], i["state"], i["action_prefix"], i["prefix_len"]

    def _capture(self) -> None:
        torch = self._torch
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model(*self._args())
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._graph_out = self.model(*self._args())
        self._graph = graph

    def warmup(self, n: int = 3) -> None:
        for i in range(max(1, n)):
            self.infer(example_input(self.contract, seed=1000 + i))

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        self._checker.check(inp)
        torch = self._torch
        if self.device.type == "cpu" and not self.compiled:
            # CPU eager: feed views of the caller's arrays, no staging copy.
            args: tuple[Any, ...] = (
                torch.from_numpy(inp.images)[None],
                torch.from_numpy(inp.state)[None],
                torch.from_numpy(inp.action_prefix)[None],
                self._in["prefix_len"].fill_(int(inp.prefix_len)),
            )
        else:
            self._stage(inp)
            args = self._args()
        if self.cuda_graphs:
            if self._graph is None:
                self._capture()
            self._graph.replay()
            outs = self._graph_out
        else:
            with torch.inference_mode():
                outs = self._fn(*args)
        actions, latent, latent_pred = (t[0].detach().to("cpu").numpy() for t in outs)
        return PolicyOutput(actions=actions, latent=latent, latent_pred=latent_pred)

    def close(self) -> None:
        self._graph = None
        self._graph_out = None


def _check_same_model(onnx_c: ModelContract, ckpt_c: ModelContract, ckpt: str, onnx_path: str) -> None:
    skip = {"weights_sha256", "training_data", "model_name"}
    for f in dataclasses.fields(ModelContract):
        if f.name in skip:
            continue
        a, b = getattr(onnx_c, f.name), getattr(ckpt_c, f.name)
        if a != b:
            raise ContractError(
                f.name, f"checkpoint {ckpt} has {f.name} {b!r} but {onnx_path} declares {a!r}"
            )
