"""Choose an offscreen OpenGL backend for MuJoCo before `mujoco` is first imported.

MuJoCo's Python bindings read MUJOCO_GL once, at import time, so the choice has to happen before the
import and cannot be undone afterwards. `prepare()` keeps a user's MUJOCO_GL as is; otherwise it
tries EGL, then OSMesa, each in a throwaway subprocess that really creates and binds a GL context
(a library that loads is not proof that a context can be made), and exports the first that works.

Debian/Ubuntu packages: EGL needs libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0
(llvmpipe renders without a GPU); OSMesa needs libosmesa6. PyOpenGL comes with the mujoco wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys

CANDIDATES = ("egl", "osmesa")
APT_PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0",
    "osmesa": "libosmesa6",
}

_PROBE = "import mujoco\nctx = mujoco.GLContext(16, 16)\nctx.make_current()\nctx.free()\nprint('gl-ok')\n"

_chosen: str | None = None
_decided = False
_errors: dict[str, str] = {}


def _probe(backend: str, timeout_s: float = 60.0) -> str | None:
    """None when `backend` can create a context here, else the reason it cannot."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE],
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
    """Export MUJOCO_GL/PYOPENGL_PLATFORM for a working backend; return it, or None if none works.

    Idempotent and cheap after the first call. Children inherit the exported variable, so they skip
    the probe.
    """
    global _chosen, _decided
    if _decided:
        return _chosen
    _decided = True
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        if user in CANDIDATES:
            os.environ.setdefault("PYOPENGL_PLATFORM", user)
        _chosen = user
        return _chosen
    if "mujoco" in sys.modules:
        # Too late to choose: mujoco already picked its default (GLFW, which needs a display).
        _errors["all"] = "mujoco was imported before wam_control.sim; set MUJOCO_GL=egl (or osmesa) instead"
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
    tried = "; ".join(f"{name}: {why}" for name, why in _errors.items()) or f"MUJOCO_GL={_chosen!r}"
    packages = " ".join(APT_PACKAGES.values())
    msg = (
        f"no working offscreen OpenGL backend for MuJoCo rendering ({tried}). "
        f"Install the Debian packages `{packages}` (apt-get install), or set MUJOCO_GL to a working "
        "backend before starting; physics without cameras still works (cameras=())."
    )
    return f"{msg} Renderer error: {detail}" if detail else msg
