"""Frame check: decoded latent vs camera frame, computed beside the policy call (policy.frame_check)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from wam_control.policy import example_input, load_backend


@pytest.fixture(scope="module")
def decoder(test_decoder_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    return test_decoder_path


def _decode(path: Path, latent: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["image"], {"latent": latent[None].astype(np.float32)})[0][0]


def test_error_is_rms_of_decoded_minus_area_downsampled_frame(test_model_path: Path, decoder: Path) -> None:
    from wam_control.policy.contract import read_contract
    from wam_control.policy.frame_check import FrameCheck

    contract = read_contract(test_model_path)
    check = FrameCheck(decoder, contract)
    assert check.camera == "scene" and check.camera_index == 0 and check.shape == (48, 48)
    rng = np.random.default_rng(0)
    latent = rng.normal(size=contract.latent_dim).astype(np.float32)
    decoded = _decode(decoder, latent).astype(np.float64)
    # A frame that shows exactly what the decoder expects (each pixel as a 2x2 block): no error.
    same = np.repeat(np.repeat(decoded.astype(np.uint8), 2, axis=0), 2, axis=1)
    assert check.error(same, latent) == pytest.approx(0.0, abs=1e-9)
    # Any frame: RMS over pixels and channels of (2x2 block mean - decoded), in [0, 1] units.
    frame = rng.integers(0, 256, (96, 96, 3), np.uint8)
    blocks = frame.reshape(48, 2, 48, 2, 3).astype(np.float64).mean(axis=(1, 3))
    want = math.sqrt(float(np.mean((blocks - decoded) ** 2))) / 255.0
    assert check.error(frame, latent) == pytest.approx(want, rel=1e-5)
    # A dark panel over a ninth of the view (an occluder) is seen: ~sqrt(1/9) of the intensity.
    panel = same.copy()
    panel[32:64, 32:64] = 0
    assert check.error(panel, latent) == pytest.approx(
        math.sqrt(float(np.sum(decoded[16:32, 16:32] ** 2)) / decoded.size) / 255.0, rel=1e-5
    )


def test_backend_wrapper_adds_frame_error_and_keeps_the_chunk(test_model_path: Path, decoder: Path) -> None:
    plain = load_backend(test_model_path, "onnxruntime", warmup=0)
    checked = load_backend(test_model_path, "onnxruntime", warmup=1, frame_check=str(decoder))
    try:
        inp = example_input(plain.contract, seed=3)
        a, b = plain.infer(inp), checked.infer(inp)
        assert math.isnan(a.frame_error)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.latent_pred, b.latent_pred)
        assert b.frame_error == pytest.approx(checked.check.error(inp.images[0], b.latent), rel=1e-6)
        assert 0.0 < b.frame_error < 1.0
        assert "frame check (scene" in checked.describe()

        # A failing decoder costs the check, never the chunk.
        def broken(*args: object, **kw: object) -> object:
            raise RuntimeError("decoder exploded")

        checked.check.session.run = broken  # type: ignore[method-assign]
        c = checked.infer(inp)
        np.testing.assert_array_equal(c.actions, a.actions)
        assert math.isnan(c.frame_error) and checked.errors == 1
    finally:
        plain.close()
        checked.close()


def test_decoder_for_another_model_or_camera_is_refused(
    tmp_path: Path, test_model_path: Path, decoder: Path
) -> None:
    from wam_control.imagination import DecoderError
    from wam_control.model.decoder import DecoderConfig, LatentDecoder, export_decoder
    from wam_control.policy.contract import read_contract

    contract = read_contract(test_model_path)
    other = type(contract)(**{**contract.__dict__, "weights_sha256": "0" * 64})
    dec = LatentDecoder(DecoderConfig(latent_dim=contract.latent_dim, image_height=48, image_width=48))
    foreign = export_decoder(dec, tmp_path / "foreign.decoder.onnx", other)
    with pytest.raises(DecoderError, match="foreign.decoder.onnx.*retrain"):
        load_backend(test_model_path, "onnxruntime", warmup=0, frame_check=str(foreign))
    thermal = export_decoder(dec, tmp_path / "thermal.decoder.onnx", contract, camera="thermal")
    with pytest.raises(DecoderError, match="camera 'thermal' is not one of the model's cameras"):
        load_backend(test_model_path, "onnxruntime", warmup=0, frame_check=str(thermal))
    with pytest.raises(DecoderError, match="missing.onnx does not exist"):
        load_backend(test_model_path, "onnxruntime", warmup=0, frame_check=str(tmp_path / "missing.onnx"))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_workers_carry_frame_error(mode: str, test_model_path: Path, decoder: Path) -> None:
    from wam_control.policy.contract import read_contract
    from wam_control.runtime.clock import MonotonicClock
    from wam_control.runtime.worker import InferenceRequest, make_worker

    contract = read_contract(test_model_path)
    worker = make_worker(
        mode,  # type: ignore[arg-type]
        test_model_path,
        contract,
        MonotonicClock(),
        deadline_s=30.0,
        backend="onnxruntime",
        backend_options={"frame_check": str(decoder), "threads": 1},
        warmup=1,
    )
    worker.start()
    try:
        assert worker.wait_ready(60.0), worker.last_error
        inp = example_input(contract, seed=5)
        assert worker.submit(InferenceRequest(1, 0, inp.images, inp.state, inp.action_prefix, inp.prefix_len))
        res = None
        deadline = time.monotonic() + 30.0
        while res is None and time.monotonic() < deadline:
            res = worker.wait_result(1.0)
        assert res is not None and res.error is None and res.output is not None
        ref = load_backend(test_model_path, "onnxruntime", warmup=0, frame_check=str(decoder))
        try:
            want = ref.infer(inp).frame_error
        finally:
            ref.close()
        assert res.output.frame_error == pytest.approx(want, rel=1e-5)
    finally:
        worker.close()
