"""Export a WorldActionModel to one self-describing ONNX file (DESIGN.md §3), and `wam-control export`.

Steps: torch.onnx.export (dynamo, opset 18, dynamic batch, no external data) -> contract metadata with
the weights' sha256 -> onnx.checker full check -> TensorRT compatibility lint (policy.trt_lint; errors
refuse the model) -> parity against PyTorch in ONNX Runtime on fresh random
inputs (batch 2, mixed prefix lengths, never zeros) -> atomic write. Beside `model.onnx` goes
`model.pt` (see wam.save_checkpoint), which the PyTorch backend loads.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.policy.contract import (
    INPUT_NAMES,
    INSTRUCTION_INPUT,
    OUTPUT_NAMES,
    ModelContract,
    read_contract,
)
from wam_control.policy.engine_cache import atomic_write

DEFAULT_OPSET = 18
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5
# FP16 inside: errors of a few 1e-3 relative to signal are expected; the contract's bar is cosine.
FP16_RTOL, FP16_ATOL = 2e-2, 5e-3
MIN_COSINE = 0.999
# Bumped when the export recipe changes in a way that makes cached test models stale.
RECIPE_VERSION = 1

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """Export produced a model that fails the contract, the checker or the parity test."""


@dataclass
class ExportResult:
    path: Path
    contract: ModelContract
    parity: dict[str, float]
    seconds: float
    checkpoint: Path | None = None


def _random_inputs(model: Any, batch: int, seed: int) -> tuple[Any, ...]:
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    n, d, h = len(cfg.camera_names), cfg.num_joints, cfg.horizon
    images = torch.randint(
        0, 256, (batch, n, cfg.image_height, cfg.image_width, 3), generator=g, dtype=torch.uint8
    )
    state = torch.rand(batch, d, generator=g) * 2 - 1
    prefix = state.unsqueeze(1) + torch.cumsum(torch.randn(batch, h, d, generator=g) * 0.02, dim=1)
    # Mixed lengths: one sample without a prefix, the rest with some.
    plen = (
        torch.randint(1, cfg.max_prefix + 1, (batch,), generator=g)
        if cfg.max_prefix > 0
        else torch.zeros(batch)
    )
    plen = plen.to(torch.int64)
    plen[0] = 0
    if not cfg.has_instruction:
        return images, state, prefix, plen
    # Token ids with some padding (id 0) at the end, never all padding.
    tokens = torch.randint(1, cfg.vocab_size, (batch, cfg.max_instruction_tokens), generator=g)
    lengths = torch.randint(1, cfg.max_instruction_tokens + 1, (batch, 1), generator=g)
    tokens = torch.where(torch.arange(cfg.max_instruction_tokens).unsqueeze(0) < lengths, tokens, 0)
    return images, state, prefix, plen, tokens


def input_names(model: Any) -> tuple[str, ...]:
    return (*INPUT_NAMES, INSTRUCTION_INPUT) if model.config.has_instruction else INPUT_NAMES


class _Quiet:
    """Silence the exporter's progress prints and warnings; they are noise in tests and CLI output."""

    def __enter__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"):
            lg = logging.getLogger(name)
            self._levels[name] = lg.level
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._stack.close()


def _to_fp16(model: Any) -> Any:
    """FP16 inside, FP32 at the I/O: halve the networks, keep normalisation buffers and the state add fp32."""
    m = copy.deepcopy(model)
    m.encoder.half()
    m.action_head.half()
    m.world_head.half()
    return m.eval()


def to_onnx_proto(model: Any, *, opset: int = DEFAULT_OPSET, max_batch: int = 64) -> Any:
    """torch.onnx.export (dynamo) with a dynamic batch dimension; returns the onnx.ModelProto."""
    import torch

    if not 18 <= opset <= 20:
        raise ExportError(f"opset {opset} is outside 18-20 (TensorRT 10.x on JetPack 6 parses up to 20)")
    # torch.export specialises size-1 dimensions, so trace with batch 2 to keep the batch symbolic.
    example = _random_inputs(model, batch=2, seed=1234)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    names = input_names(model)
    dyn = {name: {0: batch} for name in names}
    with _Quiet(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            example,
            None,
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=list(names),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dyn,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return 1.0 if den == 0 else float(a64 @ b64 / den)


def parity_check(
    model: Any, onnx_path: str | os.PathLike[str], *, fp16: bool = False, seeds: Sequence[int] = (11, 12)
) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) with PyTorch FP32 on fresh random inputs; raise ExportError on failure."""
    import onnxruntime as ort
    import torch

    rtol, atol = (FP16_RTOL, FP16_ATOL) if fp16 else (FP32_RTOL, FP32_ATOL)
    sess = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    worst = {"max_abs_err": 0.0, "min_cosine": 1.0}
    for seed in seeds:
        inputs = _random_inputs(model, batch=3, seed=seed)
        with torch.no_grad():
            ref = [t.numpy() for t in model.eval()(*inputs)]
        got = sess.run(list(OUTPUT_NAMES), {n: t.numpy() for n, t in zip(input_names(model), inputs)})
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            if r.shape != g.shape:
                raise ExportError(f"parity: output {name} shape {g.shape} != PyTorch {r.shape}")
            err = float(np.max(np.abs(r - g)))
            cos = _cosine(r, g)
            worst["max_abs_err"] = max(worst["max_abs_err"], err)
            worst["min_cosine"] = min(worst["min_cosine"], cos)
            if cos < MIN_COSINE or not np.allclose(g, r, rtol=rtol, atol=atol):
                raise ExportError(
                    f"parity: output {name} differs from PyTorch (max abs err {err:.3g}, cosine {cos:.6f}; "
                    f"need rtol {rtol} atol {atol} cosine >= {MIN_COSINE})"
                )
        # The contract's exactness claim: committed prefix steps come back bit-identical.
        plen = inputs[3].numpy()
        for i, n in enumerate(plen):
            if not np.array_equal(got[0][i, :n], inputs[2].numpy()[i, :n]):
                raise ExportError(f"parity: sample {i} does not reproduce its {n}-step action prefix exactly")
    return worst


def export_onnx(
    model: Any,
    path: str | os.PathLike[str],
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    training_data: Mapping[str, Any] | None = None,
    check_parity: bool = True,
    write_checkpoint: bool = True,
    max_batch: int = 64,
) -> ExportResult:
    """Export `model` (a WorldActionModel) to `path`; see the module docstring for the steps."""
    import onnx

    from wam_control.model.wam import contract_for, save_checkpoint
    from wam_control.policy.contract import weights_sha256_of

    t0 = time.perf_counter()
    out = Path(path)
    model = model.eval()
    if model.config.has_instruction and not model.tokenizer_json:
        raise ExportError("the model takes instruction_tokens but carries no tokenizer (model.tokenizer_json)")
    target = _to_fp16(model) if fp16 else model
    proto = to_onnx_proto(target, opset=opset, max_batch=max_batch)
    data = dict(training_data or {})
    data.setdefault("precision", "fp16" if fp16 else "fp32")
    contract = contract_for(model, weights_sha256_of(proto), data)
    onnx.helper.set_model_props(proto, contract.to_metadata())
    proto.producer_name = "wam_control"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {exc}") from None
    # TensorRT is one of the backends every exported model must build with: refuse what its parser refuses.
    from wam_control.policy.trt_lint import lint_model

    report = lint_model(proto, os.fspath(out))
    if report.errors:
        raise ExportError(report.format(errors_only=True))
    for finding in report.warnings:
        log.warning("export: %s", finding)
    blob = proto.SerializeToString()
    if len(blob) >= 2**31:
        raise ExportError("model exceeds 2 GiB; it cannot be one self-contained ONNX file")
    # Parity on a temp file first: a model that fails never replaces a good one.
    with tempfile.TemporaryDirectory() as td:
        probe = Path(td) / "probe.onnx"
        probe.write_bytes(blob)
        if model.config.has_instruction:
            from wam_control.model.prompt import write_tokenizer

            write_tokenizer(model.tokenizer_json, probe)
        read_contract(probe, verify_weights=True)
        parity = parity_check(model, probe, fp16=fp16) if check_parity else {}
    atomic_write(out, blob)
    if model.config.has_instruction:
        from wam_control.model.prompt import write_tokenizer

        write_tokenizer(model.tokenizer_json, out)
    ckpt = None
    if write_checkpoint and not fp16:
        ckpt = out.with_suffix(".pt")
        save_checkpoint(model, str(ckpt), data)
    return ExportResult(out, contract, parity, time.perf_counter() - t0, ckpt)


# ---------------------------------------------------------------------------------------------------
# Small random models for tests and fixtures


def _source_digest() -> str:
    import wam_control.model.wam as wam_mod

    h = hashlib.sha256(Path(wam_mod.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def make_test_model(
    path: str | os.PathLike[str],
    joint_names: Sequence[str] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "joint7"),
    camera_names: Sequence[str] = ("scene",),
    image_hw: tuple[int, int] = (96, 96),
    horizon: int = 16,
    action_dt: float = 0.05,
    max_prefix: int = 8,
    seed: int = 0,
    **config: Any,
) -> Path:
    """Write a random-init, contract-valid ONNX (+ .pt checkpoint) at `path`; returns the path.

    A prompt model (`max_instruction_tokens=L`, `vocab_size` defaults to the sim prompts' word-level
    tokenizer's) gets that tokenizer beside it. Deterministic in its arguments. If `path` already holds a model made by this function with the same
    arguments and the same model/export code, it is reused (no re-export), so a session-scoped fixture or
    a shared cache directory makes repeated calls free. Not a trained policy: its actions are noise
    around the state.
    """
    from wam_control.model.wam import WAMConfig, build_model

    if config.get("max_instruction_tokens") and not config.get("vocab_size"):
        from wam_control.model.prompt import PromptEncoder, build_tokenizer, task_prompts

        config["vocab_size"] = PromptEncoder(build_tokenizer(task_prompts()), 1).vocab_size
    cfg = WAMConfig(
        joint_names=tuple(joint_names),
        camera_names=tuple(camera_names),
        image_height=int(image_hw[0]),
        image_width=int(image_hw[1]),
        horizon=int(horizon),
        action_dt=float(action_dt),
        max_prefix=int(max_prefix),
        model_name=config.pop("model_name", "wam-test-random"),
        **config,
    )
    key = hashlib.sha256(repr((cfg.to_dict(), seed, RECIPE_VERSION, _source_digest())).encode()).hexdigest()[
        :24
    ]
    out = Path(path)
    if out.is_file() and out.with_suffix(".pt").is_file():
        try:
            if read_contract(out).training_data.get("test_model_key") == key:
                return out
        except ValueError:
            pass  # unreadable or stale: rebuild below
    model = build_model(cfg, seed=seed)
    if cfg.has_instruction:
        from wam_control.model.prompt import build_tokenizer, task_prompts

        model.tokenizer_json = build_tokenizer(task_prompts())
    # Non-trivial statistics so tests see joint-dependent scales (a zero/one init hides bugs).
    d = cfg.num_joints
    rng = np.random.default_rng(seed)
    model.set_normalization(
        rng.uniform(-0.5, 0.5, d).astype(np.float32),
        rng.uniform(0.5, 1.5, d).astype(np.float32),
        rng.uniform(0.02, 0.1, d).astype(np.float32),
    )
    export_onnx(
        model,
        out,
        training_data={"kind": "random-init (test model, not trained)", "seed": seed, "test_model_key": key},
        check_parity=False,
    )
    return out


# ---------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wam-control export", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint written by wam_control (model.pt)")
    src.add_argument("--random-init", action="store_true", help="export a random-init model (tests only)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument(
        "--fp16", action="store_true", help="also write <out stem>.fp16.onnx (FP16 inside, FP32 I/O)"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--joints", help="comma-separated joint names for --random-init (default joint1..joint7)")
    p.add_argument("--cameras", default="scene", help="comma-separated camera names for --random-init")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime parity check")
    args = p.parse_args(argv)

    from wam_control.model.wam import WAMConfig, build_model, load_checkpoint

    if args.checkpoint:
        try:
            model, training_data = load_checkpoint(args.checkpoint)
        except (FileNotFoundError, ValueError) as exc:
            print(f"wam-control export: {exc}", file=sys.stderr)
            return 2
    else:
        kw: dict[str, Any] = {"camera_names": tuple(args.cameras.split(","))}
        if args.joints:
            kw["joint_names"] = tuple(args.joints.split(","))
        model = build_model(WAMConfig(model_name="wam-random-init", **kw), seed=args.seed)
        training_data = {"kind": "random-init (not trained)", "seed": args.seed}
    out = Path(args.out)
    try:
        res = export_onnx(
            model, out, opset=args.opset, training_data=training_data, check_parity=not args.no_parity
        )
        lines = [res]
        if args.fp16:
            lines.append(
                export_onnx(
                    model,
                    out.with_name(out.stem + ".fp16.onnx"),
                    fp16=True,
                    opset=args.opset,
                    training_data=training_data,
                    check_parity=not args.no_parity,
                )
            )
    except ExportError as exc:
        print(f"wam-control export: {exc}", file=sys.stderr)
        return 1
    for r in lines:
        parity = " ".join(f"{k}={v:.3g}" for k, v in r.parity.items()) or "parity=skipped"
        print(
            f"wrote {r.path} ({r.path.stat().st_size / 1e6:.2f} MB, {model.num_parameters()} params, "
            f"precision={r.contract.training_data.get('precision')}) {parity} export_s={r.seconds:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
