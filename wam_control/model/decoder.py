"""Imagination decoder: a small network from a WAM latent to a low-res RGB frame, and its ONNX export.

It is trained after the WAM on the same recorded data, with the WAM frozen: for every observation the
encoder's latent z_t is decoded to the (downsampled) frame at t, and every world-model prediction
latent_pred[i] (teacher-forced on the executed chunk) to the frame latent_offsets[i] action steps later.
So at run time decoding `latent_pred` shows what the model expects the camera to see.

    latent [B,C] -> Linear -> [B,c0,h/8,w/8] -> 3 x (ConvTranspose 4x4 stride 2 + ReLU) -> Conv 3x3 -> sigmoid
    export: -> uint8 [B,h,w,3] RGB (scaling, rounding and layout in-graph)

The ONNX file is self-describing (metadata_props, JSON values): kind, latent_dim, image_height,
image_width, camera, latent_offsets and wam_weights_sha256 — the WAM whose latent space it decodes;
`wam_control.imagination` refuses a decoder made for another model.

Command (after `wam-control train`)::

    python -m wam_control.model.decoder --checkpoint models/wam_reach.pt --data <bags or dataset.npz> \
        --out models/wam_reach.decoder.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wam_control.policy.decoder_meta import DECODER_KIND, default_decoder_path

DECODER_VERSION = 1


@dataclass(frozen=True)
class DecoderConfig:
    latent_dim: int = 128
    image_height: int = 48
    image_width: int = 48
    channels: tuple[int, ...] = (64, 32, 16)

    def __post_init__(self) -> None:
        n = 2 ** len(self.channels)
        if self.image_height % n or self.image_width % n:
            raise ValueError(
                f"decoder image size {self.image_height}x{self.image_width} must be a multiple of {n} "
                f"({len(self.channels)} upsampling stages)"
            )


class LatentDecoder(nn.Module):
    """latent [B,C] -> RGB in [0, 1], [B,3,h,w] (training form)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = 2 ** len(cfg.channels)
        self.h0, self.w0 = cfg.image_height // n, cfg.image_width // n
        c0 = cfg.channels[0]
        self.fc = nn.Linear(cfg.latent_dim, c0 * self.h0 * self.w0)
        layers: list[nn.Module] = []
        cin = c0
        for cout in (*cfg.channels[1:], cfg.channels[-1]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
            cin = cout
        layers.append(nn.Conv2d(cin, 3, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(latent)).reshape(latent.shape[0], -1, self.h0, self.w0)
        return torch.sigmoid(self.up(x))


class _Uint8Image(nn.Module):
    """Export wrapper: [B,C] float32 -> uint8 [B,h,w,3], like a camera frame."""

    def __init__(self, dec: LatentDecoder) -> None:
        super().__init__()
        self.dec = dec

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.dec(latent) * 255.0 + 0.5
        # Layout first, cast last: the uint8 tensor is the graph output itself, never an intermediate
        # (TensorRT's ONNX parser takes UINT8 only at the network's inputs and outputs).
        return x.clamp(0.0, 255.0).permute(0, 2, 3, 1).to(torch.uint8)


def downsample(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, h, w] in [0, 1] by area averaging (H, W multiples of h, w)."""
    h_in, w_in = frames.shape[-3], frames.shape[-2]
    h, w = hw
    if h_in % h or w_in % w:
        raise ValueError(f"frames of {h_in}x{w_in} cannot be area-downsampled to {h}x{w}")
    fy, fx = h_in // h, w_in // w
    lead = frames.shape[:-3]
    x = frames.reshape(*lead, h, fy, w, fx, 3).astype(np.float32).mean(axis=(-4, -2)) / 255.0
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


@torch.no_grad()
def encode_dataset(wam: Any, ds: Any, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Frozen WAM over every observation: latents [S,C] and teacher-forced predictions [S,K,C]. A
    prompted WAM encodes each observation with its episode's prompt (as it was trained and is run)."""
    from wam_control.model.train import episode_tokens

    wam.eval()
    ep_tokens = episode_tokens(wam, ds)
    zs, ps = [], []
    for i in range(0, len(ds), batch):
        sl = slice(i, min(i + batch, len(ds)))
        images = torch.from_numpy(ds.frames[ds.obs_frame[sl]])
        state = torch.from_numpy(ds.state[sl])
        tokens = None if ep_tokens is None else torch.from_numpy(ep_tokens[ds.episode[sl]])
        z = wam.encode(images, state, tokens)
        zs.append(z.numpy())
        ps.append(wam.predict_latents(z, state, torch.from_numpy(ds.executed[sl])).numpy())
    return np.concatenate(zs), np.concatenate(ps)


@dataclass
class DecoderTrainResult:
    decoder: LatentDecoder
    loss_first: float
    loss_last: float
    steps: int
    samples: int


def train_decoder(
    wam: Any,
    ds: Any,
    cfg: DecoderConfig | None = None,
    *,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    camera: int = 0,
    log_every: int = 0,
) -> DecoderTrainResult:
    """Fit a decoder on (latent, frame) pairs: z_t -> frame_t and latent_pred[i] -> frame at the
    prediction's target. `ds` is a `wam_control.model.data.Dataset`; the WAM stays frozen."""
    cfg = cfg or DecoderConfig(latent_dim=int(wam.config.latent_dim))
    if cfg.latent_dim != wam.config.latent_dim:
        raise ValueError(f"decoder latent_dim {cfg.latent_dim} != WAM latent_dim {wam.config.latent_dim}")
    if len(ds) == 0:
        raise ValueError("decoder training: the dataset has no observations")
    z, pred = encode_dataset(wam, ds)
    s, k, c = pred.shape
    # One table of (latent, target frame) pairs: the observation itself, then each prediction.
    latents = np.concatenate([z, pred.reshape(s * k, c)]).astype(np.float32)
    frame_of_obs = ds.obs_frame
    targets = np.concatenate([frame_of_obs, frame_of_obs[ds.future.reshape(-1)]])
    small = downsample(ds.frames[:, camera], (cfg.image_height, cfg.image_width))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dec = LatentDecoder(cfg)
    opt = torch.optim.AdamW(dec.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr * 0.05)
    lat_t = torch.from_numpy(latents)
    tgt_t = torch.from_numpy(targets)
    small_t = torch.from_numpy(small)
    first = last = float("nan")
    dec.train()
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        out = dec(lat_t[idx])
        loss = nn.functional.mse_loss(out, small_t[tgt_t[idx]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = float(loss.detach())
        if step == 0:
            first = last
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"decoder step {step}/{steps} mse {last:.5f}", flush=True)
    return DecoderTrainResult(dec.eval(), first, last, steps, len(latents))


def decoder_metadata(
    cfg: DecoderConfig, wam_contract: Any, camera: str, training: dict[str, Any] | None = None
) -> dict[str, str]:
    values = {
        "kind": DECODER_KIND,
        "version": DECODER_VERSION,
        "latent_dim": cfg.latent_dim,
        "image_height": cfg.image_height,
        "image_width": cfg.image_width,
        "camera": camera,
        "latent_offsets": list(wam_contract.latent_offsets),
        "action_dt": wam_contract.action_dt,
        "wam_model_name": wam_contract.model_name,
        "wam_weights_sha256": wam_contract.weights_sha256,
        "training": dict(training or {}),
    }
    return {k: json.dumps(v, sort_keys=True) for k, v in values.items()}


def export_decoder(
    dec: LatentDecoder,
    path: str | os.PathLike[str],
    wam_contract: Any,
    camera: str = "scene",
    training: dict[str, Any] | None = None,
    opset: int = 18,
) -> Path:
    """Write the decoder as one ONNX file (input `latent` float32 [B,C], output `image` uint8 [B,h,w,3])
    with its metadata, check it, and verify it against PyTorch in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    wrapper = _Uint8Image(dec.eval())
    example = torch.randn(2, dec.cfg.latent_dim, generator=torch.Generator().manual_seed(7))
    batch = torch.export.Dim("batch", min=1, max=64)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "torch.export", "onnxscript")}
        for n in levels:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                None,
                input_names=["latent"],
                output_names=["image"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"latent": {0: batch}},
            )
        finally:
            for n, lv in levels.items():
                logging.getLogger(n).setLevel(lv)
    assert program is not None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, decoder_metadata(dec.cfg, wam_contract, camera, training))
    onnx.checker.check_model(proto, full_check=True)
    from wam_control.policy.trt_lint import lint_model

    report = lint_model(proto, os.fspath(path))
    if report.errors:
        raise RuntimeError(f"decoder export: {report.format(errors_only=True)}")
    data = proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(["image"], {"latent": example.numpy()})[0]
    with torch.no_grad():
        want = wrapper(example).numpy()
    # Rounding of x*255+0.5 may land one step apart between kernels; nothing more is acceptable.
    if (
        got.shape != want.shape
        or got.dtype != np.uint8
        or np.abs(got.astype(int) - want.astype(int)).max() > 1
    ):
        raise RuntimeError("decoder export: ONNX Runtime output differs from PyTorch")
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m wam_control.model.decoder", description="train + export the imagination decoder"
    )
    ap.add_argument("--checkpoint", required=True, help="the WAM checkpoint (model.pt beside model.onnx)")
    ap.add_argument("--onnx", default="", help="the WAM's ONNX (default: checkpoint with .onnx)")
    ap.add_argument("--data", required=True, help="folder of recorded bags, or a dataset .npz (as for train)")
    ap.add_argument("--cache", default="", help="dataset cache .npz (decoded bags are cached here)")
    ap.add_argument("--obs-dt", type=float, default=0.025, help="observation grid in the bags (s)")
    ap.add_argument(
        "--gripper-joint",
        default="",
        help="a WAM with the gripper DOF: its finger joint in the bags (default fr3_finger_joint1, as train)",
    )
    ap.add_argument("--out", default="", help="default: <checkpoint stem>.decoder.onnx")
    ap.add_argument("--size", type=int, default=48, help="output image height = width (multiple of 8)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-episodes", action="store_true", help="also use failed episodes")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    from wam_control.model.data import load_dataset
    from wam_control.model.train import spec_for
    from wam_control.model.wam import load_checkpoint
    from wam_control.policy.contract import read_contract

    try:
        wam, _ = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        print(f"decoder: {exc}", file=sys.stderr)
        return 2
    onnx_path = Path(args.onnx) if args.onnx else Path(args.checkpoint).with_suffix(".onnx")
    if not onnx_path.is_file():
        print(f"decoder: the WAM's ONNX {onnx_path} does not exist (pass --onnx)", file=sys.stderr)
        return 2
    contract = read_contract(onnx_path)
    if contract.latent_dim != wam.config.latent_dim or tuple(contract.latent_offsets) != tuple(
        wam.config.latent_offsets
    ):
        print(f"decoder: checkpoint {args.checkpoint} does not match {onnx_path}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ds = load_dataset(
        args.data,
        spec_for(
            wam.config,
            args.obs_dt,
            (args.gripper_joint or "fr3_finger_joint1") if wam.config.extra_dofs else "",
        ),
        cache=args.cache or None,
        successful_only=not args.all_episodes,
    )
    cfg = DecoderConfig(latent_dim=wam.config.latent_dim, image_height=args.size, image_width=args.size)
    res = train_decoder(
        wam,
        ds,
        cfg,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        log_every=max(1, args.steps // 10),
    )
    out = Path(args.out) if args.out else default_decoder_path(args.checkpoint)
    export_decoder(
        res.decoder,
        out,
        contract,
        camera=wam.config.camera_names[0],
        training={
            "data": str(args.data),
            "observations": len(ds),
            "pairs": res.samples,
            "steps": res.steps,
            "mse_first": res.loss_first,
            "mse_last": res.loss_last,
        },
    )
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) observations={len(ds)} steps={res.steps} "
        f"mse_first={res.loss_first:.5f} mse_last={res.loss_last:.5f} wall_s={time.perf_counter() - t0:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
