"""Rebuild the PyTorch modules of a bundled ONNX file from its initializers (no checkpoint needed).

The bundled models ship as ONNX only (their `.pt` checkpoints stayed on the training machine). Their
initializers are named exactly like the PyTorch `state_dict` keys (the dynamo exporter keeps the
parameter and buffer names), so the module can be rebuilt honestly: the architecture is read back from
the initializer shapes and the contract metadata, every persistent `state_dict` entry is loaded from the
initializer of the same name (missing or extra names are errors), and the derived buffers that the
exporter also stored (`pix_scale`, `pix_shift`) are compared with the rebuilt ones. `python -m
wam_control.model.from_onnx` uses this to re-export a file with the current export code and checks the
new graph against the old one on random inputs (see `reexport`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class RebuildError(ValueError):
    """The ONNX file's initializers do not describe a module this code can rebuild."""


def _initializers(proto: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _load_exact(module: Any, inits: dict[str, np.ndarray], source: str) -> None:
    """Load every persistent state_dict entry from the initializer of the same name, shapes and dtypes equal."""
    import torch

    state = module.state_dict()
    missing = [k for k in state if k not in inits]
    if missing:
        raise RebuildError(f"{source}: no initializer for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    new = {}
    for name, ref in state.items():
        arr = inits[name]
        if tuple(arr.shape) != tuple(ref.shape) or str(arr.dtype) != str(ref.dtype).replace("torch.", ""):
            raise RebuildError(
                f"{source}: initializer {name} is {arr.dtype} {list(arr.shape)}, the module expects "
                f"{ref.dtype} {list(ref.shape)}"
            )
        new[name] = torch.from_numpy(np.array(arr))
    module.load_state_dict(new, strict=True)


def wam_from_onnx(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(WorldActionModel in eval mode, ModelContract) rebuilt from a contract ONNX exported by wam_control."""
    import onnx

    from wam_control.model.wam import WAMConfig, build_model
    from wam_control.policy.contract import read_contract

    contract = read_contract(path, verify_weights=True)
    proto = onnx.load(os.fspath(path))
    inits = _initializers(proto)
    src = os.fspath(path)
    conv = sorted(
        (int(m.group(1)), v.shape[0])
        for k, v in inits.items()
        if (m := re.fullmatch(r"encoder\.image\.convs\.(\d+)\.weight", k))
    )
    if not conv or "encoder.image.linear.weight" not in inits or "encoder.fuse_in.weight" not in inits:
        raise RebuildError(f"{src}: initializers are not those of wam_control's WorldActionModel")
    blocks = {
        int(m.group(1)) for k in inits if (m := re.fullmatch(r"action_head\.trunk\.(\d+)\.up\.weight", k))
    }
    cfg = WAMConfig(
        joint_names=contract.joint_names,
        camera_names=contract.camera_names,
        image_height=contract.image_height,
        image_width=contract.image_width,
        horizon=contract.horizon,
        action_dt=contract.action_dt,
        max_prefix=contract.max_prefix,
        latent_dim=contract.latent_dim,
        latent_offsets=contract.latent_offsets,
        conv_channels=tuple(int(c) for _, c in conv),
        image_feature_dim=int(inits["encoder.image.linear.weight"].shape[0]),
        hidden_dim=int(inits["encoder.fuse_in.weight"].shape[0]),
        head_blocks=len(blocks),
        model_name=contract.model_name,
        # Contract v2 parts: extra DOFs after the arm joints; the prompt encoder's sizes from its
        # embedding table, its tokenizer from beside the file.
        extra_dofs=contract.extra_actions,
        max_instruction_tokens=contract.max_instruction_tokens,
        vocab_size=int(inits["encoder.instruction.embed.weight"].shape[0]) if contract.has_instruction else 0,
        instruction_dim=int(inits["encoder.instruction.embed.weight"].shape[1])
        if contract.has_instruction
        else 64,
        keypoints=int(inits["encoder.image.keypoint.weight"].shape[0])
        if "encoder.image.keypoint.weight" in inits
        else 0,
    )
    if contract.extra_actions != contract.extra_states:
        raise RebuildError(
            f"{src}: extra action DOFs {contract.extra_actions} differ from extra states {contract.extra_states}"
        )
    model = build_model(cfg, seed=None)
    _load_exact(model, inits, src)
    if contract.has_instruction:
        from wam_control.policy.contract import tokenizer_path

        model.tokenizer_json = Path(tokenizer_path(path)).read_text()
    # Buffers the module derives itself but the exporter stored too: they must agree.
    for name in ("encoder.image.pix_scale", "encoder.image.pix_shift", "encoder.image.keypoint_grid"):
        if name in inits:
            mine = dict(model.named_buffers())[name].numpy()
            if mine.shape != inits[name].shape or not np.array_equal(mine, inits[name]):
                raise RebuildError(f"{src}: initializer {name} differs from the module's own value")
    return model.eval(), contract


def decoder_from_onnx(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(LatentDecoder in eval mode, decoded metadata) rebuilt from a decoder ONNX written by export_decoder."""
    import onnx

    from wam_control.model.decoder import DecoderConfig, LatentDecoder

    proto = onnx.load(os.fspath(path))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    inits = _initializers(proto)
    src = os.fspath(path)
    ups = sorted(
        (int(m.group(1)), v.shape)
        for k, v in inits.items()
        if (m := re.fullmatch(r"dec\.up\.(\d+)\.weight", k))
    )
    if "dec.fc.weight" not in inits or len(ups) < 2:
        raise RebuildError(f"{src}: initializers are not those of wam_control's LatentDecoder")
    # ConvTranspose weights are [in, out, k, k]; the first stage's input width is channels[0].
    channels = tuple(int(shape[0]) for _, shape in ups[:-1])
    cfg = DecoderConfig(
        latent_dim=int(meta["latent_dim"]),
        image_height=int(meta["image_height"]),
        image_width=int(meta["image_width"]),
        channels=channels,
    )
    dec = LatentDecoder(cfg)
    _load_exact(dec, {k.removeprefix("dec."): v for k, v in inits.items()}, src)
    return dec.eval(), meta


@dataclass
class Parity:
    max_abs_err: float
    outputs: dict[str, float]
    samples: int


def graph_parity(
    old: str | os.PathLike[str], new: str | os.PathLike[str], *, seeds: int = 8, batch: int = 3
) -> Parity:
    """Run both files in ONNX Runtime (CPU) on the same random inputs; worst |old - new| per output."""
    import onnxruntime as ort

    def session(p: str | os.PathLike[str]) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(os.fspath(p), so, providers=["CPUExecutionProvider"])

    a, b = session(old), session(new)
    ins = a.get_inputs()
    if [(i.name, i.type, i.shape) for i in ins] != [(i.name, i.type, i.shape) for i in b.get_inputs()]:
        raise RebuildError(f"{old} and {new} declare different inputs")
    outs = [o.name for o in a.get_outputs()]
    worst = dict.fromkeys(outs, 0.0)
    rng = np.random.default_rng(20260)
    for _ in range(seeds):
        feeds: dict[str, np.ndarray] = {}
        for i in ins:
            shape = [batch if not isinstance(d, int) else d for d in i.shape]
            if i.type == "tensor(uint8)":
                feeds[i.name] = rng.integers(0, 256, shape, dtype=np.uint8)
            elif i.type == "tensor(int64)":
                feeds[i.name] = rng.integers(0, 9, shape, dtype=np.int64)
            else:
                feeds[i.name] = rng.normal(0, 1, shape).astype(np.float32)
        for name, x, y in zip(outs, a.run(outs, feeds), b.run(outs, feeds)):
            if x.shape != y.shape or x.dtype != y.dtype:
                raise RebuildError(f"output {name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            worst[name] = max(worst[name], float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return Parity(max(worst.values()), worst, seeds * batch)


def reexport(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> tuple[Path, Parity]:
    """Re-export a bundled WAM or decoder ONNX with the current export code; weights and metadata kept.

    Writes to `out` (default: replace `path`) only after the new graph passes the exporter's own checks
    and equals the old one on random inputs within the FP32 export tolerance.
    """
    import onnx

    from wam_control.model.decoder import DECODER_KIND, export_decoder
    from wam_control.model.export import FP32_ATOL, ExportError, export_onnx
    from wam_control.policy.engine_cache import atomic_write

    src = Path(path)
    dst = Path(out) if out is not None else src
    meta = {p.key: p.value for p in onnx.load(os.fspath(src), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / src.name
        if json.loads(meta.get("kind", "null") or "null") == DECODER_KIND:
            dec, m = decoder_from_onnx(src)
            wam = _ContractStub(m)
            export_decoder(dec, tmp, wam, camera=m["camera"], training=m.get("training") or {})
        else:
            model, contract = wam_from_onnx(src)
            export_onnx(model, tmp, training_data=contract.training_data, write_checkpoint=False)
        new_meta = {p.key: p.value for p in onnx.load(os.fspath(tmp)).metadata_props}
        if new_meta != meta:
            changed = sorted(k for k in set(meta) | set(new_meta) if meta.get(k) != new_meta.get(k))
            raise ExportError(f"re-export of {src} changed metadata {changed}")
        parity = graph_parity(src, tmp)
        if parity.max_abs_err > FP32_ATOL:
            raise ExportError(f"re-export of {src} differs from the old graph by {parity.max_abs_err:.3g}")
        atomic_write(dst, tmp.read_bytes())
    return dst, parity


class _ContractStub:
    """The four fields of the WAM's contract that a decoder's metadata records, taken from that metadata."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.latent_offsets = tuple(meta["latent_offsets"])
        self.action_dt = meta["action_dt"]
        self.model_name = meta["wam_model_name"]
        self.weights_sha256 = meta["wam_weights_sha256"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m wam_control.model.from_onnx",
        description="re-export bundled ONNX files (WAM or decoder) from their own weights with the current code",
    )
    p.add_argument("models", nargs="+")
    p.add_argument("--out-dir", default="", help="write here instead of replacing the files")
    args = p.parse_args(argv)
    for m in args.models:
        out = Path(args.out_dir) / Path(m).name if args.out_dir else None
        try:
            dst, parity = reexport(m, out)
        except (RebuildError, ValueError, RuntimeError) as exc:
            print(f"{m}: {exc}", file=sys.stderr)
            return 1
        per = " ".join(f"{k}={v:.3g}" for k, v in parity.outputs.items())
        print(f"wrote {dst} max_abs_err={parity.max_abs_err:.3g} ({per}) samples={parity.samples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
