"""Process mode, both sides: the shared-memory layout of inputs and outputs, and the child's loop
(`_process_main`: attach the shared memory, load and warm up the backend, serve requests)."""

from __future__ import annotations

import importlib
import signal
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from wam_control.policy import BackendUnavailable, PolicyBackend, PolicyInput
from wam_control.runtime.worker.protocol import _OUTPUTS, _describe_exc, _output_error


def _layout(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> tuple[dict[str, Any], int]:
    """name -> (byte offset, shape, dtype), 64-byte aligned; and the total size."""
    out: dict[str, Any] = {}
    off = 0
    for name, shape in shapes.items():
        dt = np.dtype(dtypes[name])
        out[name] = (off, tuple(shape), dt.str)
        off += -(-int(np.prod(shape, dtype=np.int64)) * dt.itemsize // 64) * 64
    return out, max(off, 64)


def _views(buf: Any, layout: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.ndarray(shape, dtype=np.dtype(dt), buffer=buf, offset=off)
        for name, (off, shape, dt) in layout.items()
    }


def _resolve(loader: str) -> Callable[..., PolicyBackend]:
    module, _, attr = loader.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn  # type: ignore[no-any-return]


def _process_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: attach the shared memory, load and warm up the backend, then serve requests."""
    # Ctrl-C reaches the whole process group; the parent decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm_in = SharedMemory(name=spec["in_name"])
    shm_out = SharedMemory(name=spec["out_name"])
    ins = _views(shm_in.buf, spec["in_layout"])
    outs = _views(shm_out.buf, spec["out_layout"])
    shapes = {k: v[1] for k, v in spec["out_layout"].items() if k in _OUTPUTS}
    try:
        backend = _resolve(spec["loader"])(spec["model_path"], **spec["options"])
        releases = bool(getattr(backend, "releases_gil", False))
        conn.send(("ready", backend.describe(), releases))
    except BaseException as exc:
        conn.send(("died", f"backend start failed: {_describe_exc(exc)}"))
        return
    inp = PolicyInput(
        ins["images"], ins["state"], ins["action_prefix"], 0, instruction_tokens=ins.get("instruction_tokens")
    )
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                break
            if msg is None:
                break
            _, request_id, obs_tick, prefix_len = msg
            inp.prefix_len = prefix_len
            inp.request_id, inp.obs_tick = request_id, obs_tick
            t0 = time.perf_counter()
            try:
                raw = backend.infer(inp)
                err = _output_error(raw, shapes)
                if err is None:
                    for name in _OUTPUTS:
                        np.copyto(outs[name], getattr(raw, name), casting="same_kind")
                    outs["frame_error"][0] = raw.frame_error
            except BackendUnavailable as exc:
                conn.send(("died", f"backend unavailable: {exc}"))
                break
            except Exception as exc:
                err = _describe_exc(exc)
            conn.send(("done", request_id, time.perf_counter() - t0, err))
    finally:
        backend.close()
        del inp, ins, outs
        shm_in.close()
        shm_out.close()
