"""TensorRT engine cache: keyed plans, atomic writes, a build lock, verification before loading.

Pure Python (no TensorRT import), so the logic that decides "load, build, rebuild or give up" is
tested here without a GPU. A plan is tied to the ONNX bytes, the TensorRT version, the GPU model and
compute capability, precision, optimisation-profile shapes, workspace and our build recipe; all of it is
the key. Layout in the cache directory, for key digest D:

    <stem>-<D>.plan   the serialized engine
    <stem>-<D>.json   {"key": {...}, "plan_sha256": ..., "plan_bytes": ...}, written after the plan
    <stem>-<D>.lock   flock'ed while one process builds, so parallel starts build once
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

# Bump when build settings change in a way the other key fields do not capture.
# 2: fp32 builds clear BuilderFlag.TF32 (recipe 1 let TensorRT use TF32 in "fp32" engines).
RECIPE_VERSION = 2

T = TypeVar("T")


class EngineError(RuntimeError):
    """No usable engine: the build failed, or a fresh plan would not deserialize."""


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    # ((input name, min shape, opt shape, max shape), ...) sorted by name
    profile_shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    workspace_bytes: int
    # Jetson Orin modules share a device name and compute capability; SM count and memory tell them apart.
    sm_count: int = 0
    memory_gib: int = 0
    recipe_version: int = RECIPE_VERSION

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile_shapes"] = [[n, list(a), list(b), list(c)] for n, a, b, c in self.profile_shapes]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EngineKey:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise ValueError(f"engine key fields {sorted(d)} != {sorted(names)}")
        profile = tuple((str(n), tuple(a), tuple(b), tuple(c)) for n, a, b, c in d["profile_shapes"])
        return cls(**{**d, "profile_shapes": profile})

    def covers(self, want: EngineKey) -> bool:
        """True when an engine built for this key serves `want`: every field equal except the profile, whose
        inputs are the same with the same min and opt shapes and max shapes at least as large (an engine
        built ahead of time with `build-engine --max-batch N` serves the control loop's batch 1)."""
        if dataclasses.replace(self, profile_shapes=want.profile_shapes) != want:
            return False
        mine = {n: (lo, opt, hi) for n, lo, opt, hi in self.profile_shapes}
        if set(mine) != {n for n, *_ in want.profile_shapes}:
            return False
        for name, lo, opt, hi in want.profile_shapes:
            m_lo, m_opt, m_hi = mine[name]
            if m_lo != lo or m_opt != opt or len(m_hi) != len(hi) or any(a < b for a, b in zip(m_hi, hi)):
                return False
        return True

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:20]


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of an ONNX file and of the external-data files it refers to (`<model>.onnx.data`), so an
    engine built from a large model is rebuilt when only its weights file changes."""
    p = os.fspath(path)
    externals: list[str] = []
    try:
        import onnx

        from wam_control.policy.contract import external_data_files

        externals = external_data_files(onnx.load(p, load_external_data=False), p)
    except ImportError:
        externals = [p + ".data"] if os.path.isfile(p + ".data") else []
    if not externals:
        return file_sha256(p)
    h = hashlib.sha256(file_sha256(p).encode())
    for ext in externals:
        h.update(os.path.basename(ext).encode())
        h.update(file_sha256(ext).encode())
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """temp file in the same directory, fsync, os.replace: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; keep the mode of the file being replaced (models are shared files).
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class EngineCache:
    def __init__(self, directory: str | os.PathLike[str], stem: str = "engine") -> None:
        self.directory = Path(directory)
        self.stem = stem

    def paths(self, key: EngineKey) -> tuple[Path, Path, Path]:
        base = self.directory / f"{self.stem}-{key.digest()}"
        return base.with_suffix(".plan"), base.with_suffix(".json"), base.with_suffix(".lock")

    def find_covering(self, want: EngineKey) -> EngineKey:
        """The key to use for `want`: `want` itself when its plan is cached or nothing covers it, else the
        cached key with the smallest max shapes that covers it (EngineKey.covers)."""
        if self.paths(want)[1].is_file():
            return want
        best: tuple[int, EngineKey] | None = None
        for meta_path in sorted(self.directory.glob(f"{self.stem}-*.json")):
            try:
                key = EngineKey.from_json(json.loads(meta_path.read_text())["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if key.covers(want) and self.paths(key)[1] == meta_path:
                size = sum(math.prod(hi) for _n, _lo, _opt, hi in key.profile_shapes)
                if best is None or size < best[0]:
                    best = (size, key)
        if best is not None:
            log.info("engine cache: using %s (built with larger max shapes)", self.paths(best[1])[0].name)
            return best[1]
        return want

    def lookup(self, key: EngineKey) -> tuple[bytes | None, str]:
        """(plan bytes, "hit") if a verified plan for exactly this key exists, else (None, why not)."""
        plan_path, meta_path, _ = self.paths(key)
        if not meta_path.is_file():
            return None, "no cached engine"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"unreadable key file {meta_path}: {exc}"
        if not isinstance(meta, dict) or meta.get("key") != key.to_json():
            return None, f"key file {meta_path} describes a different build"
        try:
            plan = plan_path.read_bytes()
        except OSError as exc:
            return None, f"plan {plan_path} unreadable: {exc}"
        if len(plan) != meta.get("plan_bytes") or hashlib.sha256(plan).hexdigest() != meta.get("plan_sha256"):
            return None, f"plan {plan_path} is truncated or corrupt (checksum mismatch)"
        return plan, "hit"

    def store(self, key: EngineKey, plan: bytes) -> Path:
        plan_path, meta_path, _ = self.paths(key)
        atomic_write(plan_path, plan)
        # The key file goes last: its presence promises a complete plan.
        meta = {
            "key": key.to_json(),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan),
        }
        atomic_write(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        return plan_path

    def invalidate(self, key: EngineKey) -> None:
        plan_path, meta_path, _ = self.paths(key)
        for p in (meta_path, plan_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    @contextlib.contextmanager
    def lock(self, key: EngineKey) -> Iterator[None]:
        """Exclusive advisory lock (fcntl.flock) across processes and threads, held while building."""
        import fcntl

        _, _, lock_path = self.paths(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("engine cache: another process is building %s; waiting for it", lock_path.name)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes | None],
        load: Callable[[bytes], T | None],
        *,
        force_rebuild: bool = False,
    ) -> tuple[T, str]:
        """Load the cached engine or build one; returns (engine, how) with how in
        {"cache", "built", "rebuilt"}.

        `load` returns None for a plan the runtime rejects (stale TensorRT, foreign GPU, corruption the
        checksum missed): that plan is removed and rebuilt once. A build that returns None, or a fresh
        plan that will not load, raises EngineError so the caller can fall back to another backend.
        """
        rebuilt = False
        if not force_rebuild:
            engine, how = self._try_load(key, load)
            if engine is not None:
                return engine, how
            rebuilt = how == "rejected"
        with self.lock(key):
            if not force_rebuild:
                # Someone may have built it while we waited for the lock.
                engine, how = self._try_load(key, load)
                if engine is not None:
                    return engine, how
                rebuilt = rebuilt or how == "rejected"
            plan = build()
            if not plan:
                raise EngineError("TensorRT engine build failed (build_serialized_network returned None)")
            engine = load(plan)
            if engine is None:
                raise EngineError("a freshly built TensorRT engine could not be deserialized")
            path = self.store(key, bytes(plan))
            log.info("engine cache: stored %s (%d bytes)", path, len(plan))
            return engine, "rebuilt" if rebuilt else "built"

    def _try_load(self, key: EngineKey, load: Callable[[bytes], T | None]) -> tuple[T | None, str]:
        plan, why = self.lookup(key)
        if plan is None:
            if why != "no cached engine":
                log.warning("engine cache: %s; rebuilding", why)
                self.invalidate(key)
                return None, "rejected"
            return None, why
        engine = load(plan)
        if engine is None:
            log.warning(
                "engine cache: TensorRT rejected %s (stale version, other GPU or corrupt); rebuilding",
                self.paths(key)[0],
            )
            self.invalidate(key)
            return None, "rejected"
        return engine, "cache"
