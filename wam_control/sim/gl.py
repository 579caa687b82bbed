"""Offscreen rendering for SimArm: pick a working OpenGL backend, render cameras into fixed buffers.

Backend choice (`prepare()`): MUJOCO_GL or PYOPENGL_PLATFORM if the user set one to egl/osmesa;
otherwise EGL, then OSMesa, each probed in a throwaway subprocess that really creates and binds a
GL context (a library that loads is no proof a context can be made; and PyOpenGL fixes its platform
at its first import, so a failed in-process attempt could not be retried with another backend).
The winner is exported in MUJOCO_GL and PYOPENGL_PLATFORM, so child processes skip the probe.

`OffscreenRenderer` creates the context class of that backend directly (mujoco.egl / mujoco.osmesa)
instead of going through mujoco.Renderer, whose backend is fixed by MUJOCO_GL at `import mujoco`
time: this way rendering works whichever module imported mujoco first.

Debian/Ubuntu packages: EGL needs libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0
(llvmpipe renders without a GPU); OSMesa needs libosmesa6. PyOpenGL comes with the mujoco wheel.
"""

from __future__ import annotations

import atexit
import importlib
import os
import subprocess
import sys
import weakref

import mujoco
import numpy as np

CANDIDATES = ("egl", "osmesa")
USER_CHOICES = (*CANDIDATES, "glfw")  # glfw needs a display: honoured when asked for, never probed
APT_PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0",
    "osmesa": "libosmesa6",
}

_PROBE = (
    "import importlib, sys\n"
    "ctx = importlib.import_module('mujoco.' + sys.argv[1]).GLContext(16, 16)\n"
    "ctx.make_current()\n"
    "ctx.free()\n"
    "print('gl-ok')\n"
)

_chosen: str | None = None
_decided = False
_errors: dict[str, str] = {}


class RenderUnavailableError(RuntimeError):
    """No offscreen OpenGL backend works here; the message names what to install."""


def _probe(backend: str, timeout_s: float = 60.0) -> str | None:
    """None when `backend` can create a context here, else the reason it cannot."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, backend],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probe failed to run: {exc}"
    if proc.returncode == 0 and "gl-ok" in proc.stdout:
        return None
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def prepare() -> str | None:
    """Choose the backend (once per process); return its name, or None if none works."""
    global _chosen, _decided
    if _decided:
        return _chosen
    _decided = True
    for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM"):
        user = os.environ.get(var, "").strip().lower()
        if user in USER_CHOICES:
            _chosen = user
            os.environ.setdefault("MUJOCO_GL", user)
            if user in CANDIDATES:
                os.environ.setdefault("PYOPENGL_PLATFORM", user)
            return _chosen
        if user:
            _errors[var] = f"{var}={user!r} is not supported here (expected one of {list(USER_CHOICES)})"
            return None
    for backend in CANDIDATES:
        reason = _probe(backend)
        if reason is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            _chosen = backend
            return _chosen
        _errors[backend] = reason
    return None


def explain_failure(detail: str = "") -> str:
    """A message saying which backends were tried, why they failed and what to install."""
    tried = "; ".join(f"{name}: {why}" for name, why in _errors.items()) or f"backend {_chosen!r}"
    packages = " ".join(APT_PACKAGES.values())
    msg = (
        f"no working offscreen OpenGL backend for MuJoCo rendering ({tried}). "
        f"Install the Debian packages `{packages}` (apt-get install), or set MUJOCO_GL=egl or osmesa; "
        "physics without cameras still works (cameras=())."
    )
    return f"{msg} Renderer error: {detail}" if detail else msg


_live: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()


def _close_all() -> None:
    # PyOpenGL cannot free contexts from __del__ during interpreter shutdown: free them first.
    for renderer in list(_live):
        renderer.close()


def _close_all_before_the_backend_exits() -> None:
    """(Re-)register `_close_all` after a backend's first context: atexit runs last-in first-out, and
    mujoco.egl registers its display's termination when it makes its first context, so a hook
    registered before that would find the display gone (EGL_BAD_DISPLAY at exit of any program that
    did not close its SimArm)."""
    atexit.unregister(_close_all)
    atexit.register(_close_all)


class OffscreenRenderer:
    """Renders fixed cameras of one model into caller-owned uint8 (H, W, 3) buffers."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int) -> None:
        backend = prepare()
        if backend is None:
            raise RenderUnavailableError(explain_failure())
        self.height, self.width = height, width
        self._ctx = None
        self._con = None
        try:
            module = importlib.import_module(f"mujoco.{backend}")
            self._ctx = module.GLContext(width, height)
            _close_all_before_the_backend_exits()
            self._ctx.make_current()
            self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        except Exception as exc:  # the GL stack raises many types (ImportError, FatalError, ctypes errors)
            self.close()
            raise RenderUnavailableError(explain_failure(f"{type(exc).__name__}: {exc}")) from exc
        self.backend = backend
        self._model = model
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._opt = mujoco.MjvOption()
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED.value
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._scratch = np.empty((height, width, 3), np.uint8)
        _live.add(self)

    def render(self, data: mujoco.MjData, camera_id: int, out: np.ndarray) -> None:
        """Render fixed camera `camera_id` into `out` (uint8, (H, W, 3), row 0 at the top)."""
        if self._con is None:
            raise RenderUnavailableError("renderer was closed")
        self._ctx.make_current()
        self._cam.fixedcamid = camera_id
        mujoco.mjv_updateScene(
            self._model, data, self._opt, self._pert, self._cam, mujoco.mjtCatBit.mjCAT_ALL.value, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._con)
        mujoco.mjr_readPixels(self._scratch, None, self._rect, self._con)
        np.copyto(out, self._scratch[::-1])  # OpenGL rows run bottom-up

    def close(self) -> None:
        if self._con is not None and self._ctx is not None:
            self._ctx.make_current()
            self._con.free()
        self._con = None
        if self._ctx is not None:
            self._ctx.free()
        self._ctx = None
