"""Imagination preview: free when off, decoder pipeline (train -> ONNX -> preview thread) when on."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wam_control.policy.base import PolicyOutput
from wam_control.runtime.worker import InferenceResult

OFF_SCRIPT = r"""
import sys, threading
from wam_control.runtime.replay import build_rig
rig = build_rig(latency_ticks=5)
rig.replay.run(3000)
assert rig.controller.result_hook is None
heavy = [m for m in ("torch", "wam_control.imagination", "wam_control.model.decoder", "onnxruntime")
         if m in sys.modules]
print("heavy", heavy, "threads", threading.active_count(), "chunks",
      rig.controller.scheduler.metrics()["chunks_accepted"])
"""


def test_off_means_no_import_and_no_thread(repo_root: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT], capture_output=True, text=True, cwd=repo_root, timeout=120
    )
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[:2] == ["heavy", "[]"], out.stdout
    assert words[words.index("threads") + 1] == "1", out.stdout
    assert int(words[words.index("chunks") + 1]) > 5  # the controller really ran


def _contract(test_model_path: Path):  # type: ignore[no-untyped-def]
    from wam_control.policy.contract import read_contract

    return read_contract(test_model_path)


def test_nothing_loads_or_runs_until_someone_subscribes(tmp_path: Path, test_model_path: Path) -> None:
    from wam_control.imagination import DecoderError, ImaginationPreview

    contract = _contract(test_model_path)
    got: list[object] = []
    before = threading.active_count()
    preview = ImaginationPreview(tmp_path / "missing.decoder.onnx", contract, 500.0, lambda *a: got.append(a))
    out = PolicyOutput(
        np.zeros((contract.horizon, contract.num_joints), np.float32),
        np.zeros(contract.latent_dim, np.float32),
        np.ones((contract.latent_steps, contract.latent_dim), np.float32),
    )
    preview.hook(InferenceResult(1, 0, out, None, 0.0))
    assert preview.counters["offered"] == 0 and threading.active_count() == before and not preview.running
    # the file is only opened on the first subscription, and a bad one is refused by name
    with pytest.raises(DecoderError, match="missing.decoder.onnx does not exist"):
        preview.set_subscribed(True)
    assert not preview.subscribed and not preview.running
    with pytest.raises(ValueError, match="latent_offsets"):
        ImaginationPreview(tmp_path / "x.onnx", contract, 500.0, print, offset=3)


@dataclass
class TinyDataset:
    """The fields of wam_control.model.data.Dataset the decoder reads."""

    frames: np.ndarray
    obs_frame: np.ndarray
    state: np.ndarray
    executed: np.ndarray
    future: np.ndarray

    def __len__(self) -> int:
        return len(self.state)


def tiny_recording(contract, n: int = 48, seed: int = 0) -> TinyDataset:  # type: ignore[no-untyped-def]
    """A short 'episode': a coloured square sliding across the frame while the joints move."""
    rng = np.random.default_rng(seed)
    h, w = contract.image_height, contract.image_width
    frames = np.zeros((n, len(contract.camera_names), h, w, 3), np.uint8)
    frames[..., 2] = 60
    for i in range(n):
        x = int(i * (w - 24) / (n - 1))
        frames[i, :, 30:54, x : x + 24] = (230, 40, 40)
    d = contract.num_joints
    state = (np.linspace(0, 0.5, n)[:, None] + rng.normal(0, 0.01, (n, d))).astype(np.float32)
    executed = np.repeat(state[:, None, :], contract.horizon, axis=1)
    per_action = 2  # observations every action_dt / 2
    future = np.minimum(np.arange(n)[:, None] + np.array(contract.latent_offsets)[None] * per_action, n - 1)
    return TinyDataset(frames, np.arange(n), state, executed, future.astype(np.int64))


def test_decoder_train_export_and_preview(tmp_path: Path, test_model_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from wam_control.imagination import DecoderError, ImaginationPreview, check_decoder, read_decoder_metadata
    from wam_control.model.decoder import DecoderConfig, export_decoder, train_decoder
    from wam_control.model.wam import load_checkpoint

    torch.set_num_threads(1)
    contract = _contract(test_model_path)
    wam, _ = load_checkpoint(str(test_model_path.with_suffix(".pt")))
    ds = tiny_recording(contract)
    cfg = DecoderConfig(latent_dim=contract.latent_dim, image_height=24, image_width=24, channels=(32, 16, 8))
    res = train_decoder(wam, ds, cfg, steps=120, batch_size=32, lr=3e-3)
    assert res.samples == len(ds) * (1 + contract.latent_steps)
    assert res.loss_last < 0.5 * res.loss_first, (res.loss_first, res.loss_last)

    path = export_decoder(res.decoder, tmp_path / "wam.decoder.onnx", contract, training={"steps": 120})
    meta = read_decoder_metadata(path)
    assert meta["wam_weights_sha256"] == contract.weights_sha256 and meta["image_height"] == 24
    check_decoder(meta, contract, str(path))
    other = type(contract)(**{**contract.__dict__, "weights_sha256": "0" * 64})
    with pytest.raises(DecoderError, match="retrain"):
        check_decoder(meta, other, str(path))

    published: list[tuple[np.ndarray, int, float]] = []
    done = threading.Event()

    def publish(image: np.ndarray, tick: int, horizon_s: float) -> None:
        published.append((image.copy(), tick, horizon_s))
        done.set()

    before = threading.active_count()
    preview = ImaginationPreview(path, contract, 500.0, publish, max_rate_hz=1000.0)
    preview.set_subscribed(True)
    assert preview.running and threading.active_count() == before + 1
    with torch.no_grad():
        z = wam.encode(torch.from_numpy(ds.frames[:1]), torch.from_numpy(ds.state[:1]))
        pred = wam.predict_latents(z, torch.from_numpy(ds.state[:1]), torch.from_numpy(ds.executed[:1]))
    out = PolicyOutput(
        np.zeros((contract.horizon, contract.num_joints), np.float32), z[0].numpy(), pred[0].numpy()
    )
    preview.hook(InferenceResult(7, 1234, out, None, 0.0))
    assert done.wait(30.0), preview.last_error
    image, tick, horizon_s = published[0]
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8
    assert tick == 1234 and horizon_s == pytest.approx(contract.latent_offsets[-1] * contract.action_dt)
    # the preview shows the decoder's picture of the longest prediction
    with torch.no_grad():
        want = res.decoder(pred[:, -1]).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    assert np.abs(image.astype(int) - want.numpy().astype(int)).max() <= 1
    preview.set_subscribed(False)
    assert not preview.running and threading.active_count() == before
    preview.hook(InferenceResult(8, 1300, out, None, 0.0))
    assert preview.counters["offered"] == 1  # unsubscribed again: results are ignored
    preview.close()
