"""Imagination preview: decode what the model expects the camera to see, for RViz / Foxglove.

Off by default and free when off: nothing imports this module unless a deployment enables it, and even
then no thread runs and no model is loaded until someone subscribes to the preview topic.

    preview = ImaginationPreview("models/wam_reach.decoder.onnx", contract, control_hz, publish)
    controller = Controller(..., result_hook=preview.hook)   # control thread: a flag test when idle
    preview.set_subscribed(n_subscribers > 0)                 # transport: on (un)subscription
    publish(rgb uint8 [h,w,3], obs_tick, horizon_s)           # called from the preview thread

While subscribed, `hook` copies the chosen `latent_pred` row of each result into one slot (no
allocation) and wakes the preview thread, which decodes the newest slot with ONNX Runtime (one CPU
thread, lowest priority work: at most `max_rate_hz` frames) and calls `publish`. The image shows the
scene `horizon_s` = offset * action_dt after the observation of `obs_tick`. A publish that raises is
counted and logged once; it never reaches the control thread.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wam_control.policy.contract import ModelContract
from wam_control.policy.decoder_meta import (  # noqa: F401  (re-exported: the decoder helpers' old home)
    DECODER_KIND,
    DecoderError,
    check_decoder,
    default_decoder_path,
    read_decoder_metadata,
)

log = logging.getLogger(__name__)

Publish = Callable[[np.ndarray, int, float], None]


class ImaginationPreview:
    """See the module docstring. `offset` (action steps, one of the contract's latent_offsets) picks the
    prediction shown; default: the longest offset (the furthest look ahead). `publish` is a plain
    attribute: a transport that creates its publisher after the controller may set it later, before the
    first `set_subscribed(True)`."""

    def __init__(
        self,
        decoder_path: str | os.PathLike[str],
        contract: ModelContract,
        control_hz: float,
        publish: Publish,
        *,
        offset: int | None = None,
        max_rate_hz: float = 10.0,
    ) -> None:
        self.decoder_path = Path(decoder_path)
        self.contract = contract
        self.publish = publish
        off = contract.latent_offsets[-1] if offset is None else int(offset)
        if off not in contract.latent_offsets:
            raise ValueError(
                f"imagination offset {off} is not one of the model's latent_offsets {list(contract.latent_offsets)}"
            )
        if not (max_rate_hz > 0 and math.isfinite(max_rate_hz)):
            raise ValueError(f"imagination max_rate_hz must be a positive number, got {max_rate_hz}")
        self.offset = off
        self._row = contract.latent_offsets.index(off)
        self.horizon_s = off * contract.action_dt
        self.min_period_s = 1.0 / max_rate_hz
        self._slot = np.zeros((1, contract.latent_dim), np.float32)
        self._slot_tick = -1
        self._fresh = False
        self._subscribed = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self.counters = {"offered": 0, "decoded": 0, "published": 0, "publish_errors": 0, "decode_errors": 0}
        self.last_error = ""

    # ------------------------------------------------------------------ control thread

    def hook(self, res: Any) -> None:
        """Controller result hook: keep the newest prediction (a flag test when nobody watches)."""
        if not self._subscribed:
            return
        out = res.output
        if out is None:
            return
        pred = out.latent_pred
        if pred.shape != (self.contract.latent_steps, self.contract.latent_dim):
            return
        with self._lock:
            self._slot[0] = pred[self._row]
            self._slot_tick = int(res.obs_tick)
            self._fresh = True
        self.counters["offered"] += 1
        self._wake.set()

    # ------------------------------------------------------------------ transport

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_subscribed(self, on: bool) -> None:
        """Start the preview thread on the first subscriber, stop it when the last one leaves."""
        if on and not self._subscribed:
            if self._session is None:
                # Load (and check) on first use, in the caller's thread: errors surface to the transport.
                self._session = self._load()
            self._stop.clear()
            self._subscribed = True
            self._thread = threading.Thread(target=self._run, name="wam-imagination", daemon=True)
            self._thread.start()
        elif not on and self._subscribed:
            self._subscribed = False
            self.close_thread()

    def close_thread(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None

    def close(self) -> None:
        self._subscribed = False
        self.close_thread()
        self._session = None

    def values(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {f"imagination.{k}": v for k, v in self.counters.items()}
        out["imagination.subscribed"] = int(self._subscribed)
        return out

    # ------------------------------------------------------------------ preview thread

    def _load(self) -> Any:
        import onnxruntime as ort

        meta = read_decoder_metadata(self.decoder_path)
        check_decoder(meta, self.contract, str(self.decoder_path))
        opts = ort.SessionOptions()
        # One thread: the preview must never compete with the policy for cores.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.decoder_path), opts, providers=["CPUExecutionProvider"])

    def _run(self) -> None:
        latent = np.zeros_like(self._slot)
        last = -math.inf
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                break
            wait = last + self.min_period_s - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            with self._lock:
                if not self._fresh:
                    continue
                latent[...] = self._slot
                tick = self._slot_tick
                self._fresh = False
            last = time.monotonic()
            try:
                image = self._session.run(["image"], {"latent": latent})[0][0]
            except Exception as exc:
                self.counters["decode_errors"] += 1
                self._note(f"decode failed: {exc}")
                continue
            self.counters["decoded"] += 1
            try:
                self.publish(image, tick, self.horizon_s)
                self.counters["published"] += 1
            except Exception as exc:
                self.counters["publish_errors"] += 1
                self._note(f"publish failed: {exc}")

    def _note(self, message: str) -> None:
        if message != self.last_error:
            log.warning("imagination preview: %s", message)
        self.last_error = message
