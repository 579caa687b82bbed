"""Frame check: does the model's latent still explain what the camera sees?

The imagination decoder (trained with the WAM, `wam_control.model.decoder`) maps a latent to a low-res
frame of one camera. Decoding the latent of the observation the model was just given, and comparing
it with that camera's actual frame, measures how well the model's internal state accounts for the view:
small on the views it was trained on, large when the view changed in a way its latent does not
represent (a camera knocked off its mount, something in front of the lens). The latent-prediction
error of the surprise monitor cannot see those: a latent that ignores the change predicts and observes
the same thing.

`FrameCheckBackend` wraps any policy backend and fills `PolicyOutput.frame_error` (RMS difference of
the decoded and the area-downsampled frame, in [0, 1] intensity units) right after the model call, in
the inference worker: nothing of it runs on the control thread. Cost: one decoder call (~0.3 ms on one
CPU thread for 48x48) and one downsample into preallocated buffers. A decoder failure never fails the
policy call: the action chunk is returned with frame_error NaN and the error counted.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from wam_control.policy.base import PolicyBackend, PolicyInput, PolicyOutput
from wam_control.policy.contract import ModelContract

log = logging.getLogger(__name__)


class FrameCheck:
    """Decoder session + the error of one frame; buffers allocated once."""

    def __init__(self, decoder_path: str | os.PathLike[str], contract: ModelContract) -> None:
        from wam_control.policy.decoder_meta import DecoderError, check_decoder, read_decoder_metadata

        meta = read_decoder_metadata(decoder_path)
        check_decoder(meta, contract, str(decoder_path))
        camera = str(meta.get("camera", ""))
        if camera not in contract.camera_names:
            raise DecoderError(
                f"{decoder_path}: decoder camera {camera!r} is not one of the model's cameras "
                f"{list(contract.camera_names)}"
            )
        h, w = int(meta["image_height"]), int(meta["image_width"])
        if contract.image_height % h or contract.image_width % w:
            raise DecoderError(
                f"{decoder_path}: decoder frame {h}x{w} does not divide the model's "
                f"{contract.image_height}x{contract.image_width} images"
            )
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One thread: the check shares the inference worker's core budget with the policy.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(decoder_path), opts, providers=["CPUExecutionProvider"])
        self.camera = camera
        self.camera_index = contract.camera_names.index(camera)
        self.shape = (h, w)
        self._fy, self._fx = contract.image_height // h, contract.image_width // w
        self._latent = np.zeros((1, contract.latent_dim), np.float32)
        self._acc = np.zeros((h, w, 3), np.float32)
        self._diff = np.zeros((h, w, 3), np.float32)

    def error(self, frame: np.ndarray, latent: np.ndarray) -> float:
        """RMS difference between decode(latent) and `frame` (uint8 [H, W, 3]) area-downsampled."""
        self._latent[0] = latent
        decoded = self.session.run(["image"], {"latent": self._latent})[0][0]  # uint8 [h, w, 3]
        h, w = self.shape
        blocks = frame.reshape(h, self._fy, w, self._fx, 3)
        acc = self._acc
        acc[...] = 0.0
        for dy in range(self._fy):
            for dx in range(self._fx):
                np.add(acc, blocks[:, dy, :, dx, :], out=acc)
        acc *= 1.0 / (self._fy * self._fx)
        np.subtract(acc, decoded, out=self._diff)
        return math.sqrt(float(np.vdot(self._diff, self._diff)) / self._diff.size) / 255.0


class FrameCheckBackend:
    """A policy backend whose outputs carry `frame_error` (see the module docstring)."""

    def __init__(self, inner: PolicyBackend, decoder_path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.contract = inner.contract
        self.name = inner.name
        self.releases_gil = inner.releases_gil
        self.check = FrameCheck(decoder_path, inner.contract)
        self.decoder_path = os.fspath(decoder_path)
        self.errors = 0

    def warmup(self, n: int = 3) -> None:
        self.inner.warmup(n)
        c = self.contract
        frame = np.zeros((c.image_height, c.image_width, 3), np.uint8)
        latent = np.zeros(c.latent_dim, np.float32)
        for _ in range(max(1, n)):
            self.check.error(frame, latent)

    def infer(self, inp: PolicyInput) -> PolicyOutput:
        out = self.inner.infer(inp)
        try:
            err = self.check.error(inp.images[self.check.camera_index], out.latent)
        except Exception as exc:  # the chunk matters more than the check
            self.errors += 1
            if self.errors == 1:
                log.error("frame check failed (%s); frame_error is NaN until it recovers", exc)
            err = math.nan
        return PolicyOutput(out.actions, out.latent, out.latent_pred, err)

    def describe(self) -> str:
        return f"{self.inner.describe()} + frame check ({self.check.camera}, {os.path.basename(self.decoder_path)})"

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (providers, engine paths) stay reachable through the wrapper.
        return getattr(self.inner, name)
