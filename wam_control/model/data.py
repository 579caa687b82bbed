"""Training samples for the WAM: recorded bags (or in-process rollouts) -> one in-memory dataset.

An *observation* is what the runtime hands the model at a control tick: the latest frame of each
camera (zero-order hold, so its age varies between 0 and one camera period, as it does live) and the
joint positions measured at that tick. Observations are taken on a grid of `obs_dt` seconds from the
first moment every stream has a sample. For each observation at time t:

- `actions[k]` = the joint command in force at t + k * action_dt, k = 0..H-1 (what the model must
  output; past the end of the episode the last command is held, which is what the arm did);
- `executed[k]` = the command the arm really received at those times. For demonstrations it equals
  `actions`; for DAgger rollouts the labels come from the teacher while the student's chunk was
  executed, and the world-model head is trained on what was executed (it predicts consequences);
- `future[i]` = index of the observation at t + latent_offsets[i] * action_dt (clamped to the last
  observation of the episode): its latent is the world-model target.

With a gripper (`SampleSpec.gripper_joint`, a contract v2 extra DOF named "gripper"), the state gets
that finger joint's measured position as its last column and the actions the gripper setpoint in force
(/gripper_controller/commands, first value), as the runtime's command vector carries it. Each
episode's prompt (the bag's `prompt` metadata, /instruction) is kept in `episodes[i]["prompt"]`.

Frames are stored once (uint8) and referenced by index, so a dataset of ~20k observations of one
96x96 camera is ~0.5 GB at most and usually far less. `load_dataset` decodes a folder of bags once and
caches the result as an .npz keyed by the bag names/sizes and the sampling spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE_FORMAT = "wam_control.dataset"
CACHE_VERSION = 1


@dataclass(frozen=True)
class SampleSpec:
    """How observations and targets are cut from an episode (must match the model's contract)."""

    joint_names: tuple[str, ...]
    camera_names: tuple[str, ...]
    image_hw: tuple[int, int]
    horizon: int
    action_dt: float
    latent_offsets: tuple[int, ...]
    obs_dt: float
    gripper_joint: str = ""  # the extra DOF "gripper": its finger joint in /joint_states ("" = none)

    def __post_init__(self) -> None:
        ratio = self.action_dt / self.obs_dt
        if self.obs_dt <= 0 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(
                f"obs_dt {self.obs_dt} must divide action_dt {self.action_dt} a whole number of times"
            )

    @property
    def obs_per_action(self) -> int:
        return round(self.action_dt / self.obs_dt)

    def to_dict(self) -> dict[str, Any]:
        return {
            "joint_names": list(self.joint_names),
            "camera_names": list(self.camera_names),
            "image_hw": list(self.image_hw),
            "horizon": self.horizon,
            "action_dt": self.action_dt,
            "latent_offsets": list(self.latent_offsets),
            "obs_dt": self.obs_dt,
            **({"gripper_joint": self.gripper_joint} if self.gripper_joint else {}),
        }


@dataclass
class Dataset:
    """Observations and targets, all in memory; see the module docstring."""

    frames: np.ndarray  # uint8 [F, N_cam, H, W, 3]
    obs_frame: np.ndarray  # int64 [S] -> frames
    state: np.ndarray  # float32 [S, D]
    actions: np.ndarray  # float32 [S, H, D]
    executed: np.ndarray  # float32 [S, H, D]
    future: np.ndarray  # int64 [S, K] -> observations
    episode: np.ndarray  # int64 [S] -> episodes
    episodes: list[dict[str, Any]] = field(default_factory=list)  # per episode: seed, success, source, ...

    def __len__(self) -> int:
        return len(self.state)

    def summary(self) -> dict[str, Any]:
        sources: dict[str, int] = {}
        for e in self.episodes:
            sources[str(e.get("source", "?"))] = sources.get(str(e.get("source", "?")), 0) + 1
        seeds = [int(e["seed"]) for e in self.episodes if e.get("seed") is not None]
        return {
            "episodes": len(self.episodes),
            "observations": len(self),
            "frames": len(self.frames),
            "sources": sources,
            "seed_min": min(seeds) if seeds else None,
            "seed_max": max(seeds) if seeds else None,
        }

    def split_episodes(self, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) observation indices, split by whole episodes (no leakage between them)."""
        n_ep = len(self.episodes)
        n_val = min(n_ep - 1, int(round(n_ep * val_fraction))) if val_fraction > 0 else 0
        rng = np.random.default_rng(seed)
        val_eps = set(rng.permutation(n_ep)[:n_val].tolist())
        is_val = np.isin(self.episode, np.array(sorted(val_eps), dtype=np.int64))
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _future_index(n: int, offsets: Sequence[int], per_action: int) -> np.ndarray:
    idx = np.arange(n)[:, None] + np.asarray(offsets, dtype=np.int64)[None, :] * per_action
    return np.minimum(idx, n - 1)


def episode_arrays(
    spec: SampleSpec,
    obs_t: np.ndarray,
    frame_t: np.ndarray,
    joint_t: np.ndarray,
    joint_q: np.ndarray,
    label_t: np.ndarray,
    label_q: np.ndarray,
    exec_t: np.ndarray | None = None,
    exec_q: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-observation arrays of one episode: frame index (into that episode's frames), state,
    action labels, executed commands, future observation indices. Times in seconds."""

    def hold(src_t: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(src_t, t + 1e-9, side="right") - 1, 0, len(src_t) - 1)

    k = np.arange(spec.horizon) * spec.action_dt
    at = obs_t[:, None] + k[None, :]
    actions = label_q[hold(label_t, at.ravel())].reshape(len(obs_t), spec.horizon, -1)
    if exec_t is None or exec_q is None:
        executed = actions
    else:
        executed = exec_q[hold(exec_t, at.ravel())].reshape(len(obs_t), spec.horizon, -1)
    return {
        "obs_frame": hold(frame_t, obs_t).astype(np.int64),
        "state": joint_q[hold(joint_t, obs_t)].astype(np.float32),
        "actions": actions.astype(np.float32),
        "executed": executed.astype(np.float32),
        "future": _future_index(len(obs_t), spec.latent_offsets, spec.obs_per_action),
    }


class DatasetBuilder:
    """Append episodes, then `build()` one Dataset (frames and indices concatenated)."""

    def __init__(self) -> None:
        self._frames: list[np.ndarray] = []
        self._parts: list[dict[str, np.ndarray]] = []
        self._episodes: list[dict[str, Any]] = []
        self._n_frames = 0
        self._n_obs = 0

    def add(self, frames: np.ndarray, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        n = len(arrays["state"])
        if n == 0:
            return
        part = dict(arrays)
        part["obs_frame"] = arrays["obs_frame"] + self._n_frames
        part["future"] = arrays["future"] + self._n_obs
        part["episode"] = np.full(n, len(self._episodes), dtype=np.int64)
        self._frames.append(np.ascontiguousarray(frames, dtype=np.uint8))
        self._parts.append(part)
        self._episodes.append(dict(info))
        self._n_frames += len(frames)
        self._n_obs += n

    def add_dataset(self, ds: Dataset) -> None:
        """Append every episode of `ds` (keeps its frames; indices are re-based)."""
        arrays = {
            "obs_frame": ds.obs_frame,
            "state": ds.state,
            "actions": ds.actions,
            "executed": ds.executed,
            "future": ds.future,
        }
        if len(ds) == 0:
            return
        self._frames.append(ds.frames)
        part = dict(arrays)
        part["obs_frame"] = ds.obs_frame + self._n_frames
        part["future"] = ds.future + self._n_obs
        part["episode"] = ds.episode + len(self._episodes)
        self._parts.append(part)
        self._episodes.extend(dict(e) for e in ds.episodes)
        self._n_frames += len(ds.frames)
        self._n_obs += len(ds)

    def build(self) -> Dataset:
        """The one Dataset; the builder is empty afterwards (build once).

        Frames are copied part by part into one array and each part is let go as soon as it is copied:
        the pages of the new array are committed as they are written, so the peak is about the data
        once plus one part, not twice the data (np.concatenate held both: a 400k-observation training
        set, ~12 GB of frames, did not fit in 24 GB)."""
        if not self._parts:
            raise ValueError("dataset is empty: no episode produced any observation")
        frame_shape = self._frames[0].shape[1:]
        for f in self._frames:
            if f.shape[1:] != frame_shape:
                raise ValueError(
                    f"frames of shape {f.shape[1:]} and {frame_shape} in one dataset: every part needs the "
                    "same cameras and image size"
                )
        frames = np.empty((self._n_frames, *frame_shape), dtype=np.uint8)
        at = 0
        while self._frames:
            part = self._frames.pop(0)
            frames[at : at + len(part)] = part
            at += len(part)
            del part

        def cat(key: str) -> np.ndarray:
            return np.concatenate([p.pop(key) for p in self._parts])

        ds = Dataset(
            frames=frames,
            obs_frame=cat("obs_frame"),
            state=cat("state"),
            actions=cat("actions"),
            executed=cat("executed"),
            future=cat("future"),
            episode=cat("episode"),
            episodes=self._episodes,
        )
        self._parts, self._episodes, self._n_frames, self._n_obs = [], [], 0, 0
        return ds


def concat(datasets: Iterable[Dataset]) -> Dataset:
    b = DatasetBuilder()
    for ds in datasets:
        b.add_dataset(ds)
    return b.build()


# ---------------------------------------------------------------------------------------------------
# Bags


def bag_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Bag directories under `root` (each holds a metadata.yaml), sorted by name; `root` may be one bag."""
    r = Path(root)
    if not r.exists():
        raise FileNotFoundError(f"data folder {r} does not exist")
    if (r / "metadata.yaml").is_file():
        return [r]
    bags = sorted(p.parent for p in r.glob("*/metadata.yaml"))
    if not bags:
        raise FileNotFoundError(f"no ROS 2 bags (folders with metadata.yaml) under {r}")
    return bags


def episode_from_bag(
    path: Path, spec: SampleSpec
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Decode one bag into (frames [F,N,H,W,3], per-observation arrays, episode info)."""
    from wam_control.sim.bag import CAMERA_NAMESPACES, read_bag

    demo = read_bag(path)
    missing = [j for j in spec.joint_names if j not in demo.joint_names]
    if missing:
        raise ValueError(f"bag {path}: joints {missing} are not recorded (bag has {list(demo.joint_names)})")
    pick = [demo.joint_names.index(j) for j in spec.joint_names]
    if len(demo.command_t) == 0 or len(demo.joint_t) == 0:
        raise ValueError(f"bag {path}: needs /joint_states and command messages, found none")
    cmd_names = tuple(demo.command_names) or tuple(demo.joint_names)
    missing = [j for j in spec.joint_names if j not in cmd_names]
    if missing:
        raise ValueError(
            f"bag {path}: joints {missing} have no command recorded (commands: {list(cmd_names)})"
        )
    joint_q = demo.joint_q[:, pick]
    command_q = demo.command_q[:, [cmd_names.index(j) for j in spec.joint_names]]
    if spec.gripper_joint:
        if spec.gripper_joint not in demo.joint_names:
            raise ValueError(
                f"bag {path}: gripper joint {spec.gripper_joint!r} is not in /joint_states "
                f"(has {list(demo.joint_names)})"
            )
        if len(demo.gripper_t) == 0:
            raise ValueError(f"bag {path}: no gripper commands (/gripper_controller/commands) recorded")
        finger = demo.joint_q[:, demo.joint_names.index(spec.gripper_joint)]
        joint_q = np.concatenate([joint_q, finger[:, None]], axis=1)
        command_q = np.concatenate([command_q, demo.gripper_at(demo.command_t)[:, :1]], axis=1)
    streams = []
    for cam in spec.camera_names:
        topic_ns = CAMERA_NAMESPACES.get(cam, "/" + cam).lstrip("/")
        if topic_ns not in demo.images:
            raise ValueError(
                f"bag {path}: camera {cam!r} (topic /{topic_ns}/image_raw) is not recorded; "
                f"bag has {sorted(demo.images)}"
            )
        s = demo.images[topic_ns]
        if s.frames.shape[1:3] != tuple(spec.image_hw):
            raise ValueError(
                f"bag {path}: camera {cam!r} frames are {s.frames.shape[1:3]}, the model expects {tuple(spec.image_hw)}"
            )
        streams.append(s)
    # Cameras are rendered together in the sim; with several cameras the first one sets the frame clock
    # and the others are held to it.
    frame_t = streams[0].t
    frames = np.stack(
        [streams[0].frames]
        + [s.frames[np.clip(np.searchsorted(s.t, frame_t + 1e-9) - 1, 0, None)] for s in streams[1:]],
        axis=1,
    )
    t0 = max(float(frame_t[0]), float(demo.joint_t[0]), float(demo.command_t[0]))
    t1 = float(demo.joint_t[-1])
    n = int(math.floor((t1 - t0) / spec.obs_dt + 1e-6)) + 1
    obs_t = t0 + np.arange(max(n, 0)) * spec.obs_dt
    arrays = episode_arrays(spec, obs_t, frame_t, demo.joint_t, joint_q, demo.command_t, command_q)
    md = demo.metadata
    info = {
        "source": md.get("controller", "bag"),
        "bag": path.name,
        "seed": int(md["seed"]) if md.get("seed", "").lstrip("-").isdigit() else None,
        "task": md.get("task"),
        "success": md.get("success") == "true",
        "duration_s": round(t1 - t0, 3),
        "prompt": md.get("prompt", ""),
    }
    return frames, arrays, info


def _cache_key(bags: Sequence[Path], spec: SampleSpec) -> str:
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    h.update(f"v{CACHE_VERSION}".encode())
    for b in bags:
        h.update(b.name.encode())
        for f in sorted(b.iterdir()):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:20]


def save_dataset(ds: Dataset, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "episodes": ds.episodes, **(extra or {})}
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp.npz", dir=p.parent)
    os.close(fd)
    try:
        np.savez(
            tmp,
            frames=ds.frames,
            obs_frame=ds.obs_frame,
            state=ds.state,
            actions=ds.actions,
            executed=ds.executed,
            future=ds.future,
            episode=ds.episode,
            meta=np.array(json.dumps(meta)),
        )
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_dataset(path: str | os.PathLike[str]) -> tuple[Dataset, dict[str, Any]]:
    """Load an .npz written by save_dataset; returns (dataset, its metadata)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset {p} does not exist")
    with np.load(p, allow_pickle=False) as z:
        try:
            meta = json.loads(str(z["meta"]))
        except KeyError:
            raise ValueError(f"dataset {p} has no 'meta' entry: not a {CACHE_FORMAT} file") from None
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise ValueError(f"dataset {p} is not a {CACHE_FORMAT} v{CACHE_VERSION} file")
        ds = Dataset(
            frames=z["frames"],
            obs_frame=z["obs_frame"],
            state=z["state"],
            actions=z["actions"],
            executed=z["executed"],
            future=z["future"],
            episode=z["episode"],
            episodes=list(meta.get("episodes", [])),
        )
    return ds, meta


def load_dataset(
    data: str | os.PathLike[str],
    spec: SampleSpec,
    cache: str | os.PathLike[str] | None = None,
    successful_only: bool = True,
    progress: bool = True,
) -> Dataset:
    """`data` is a folder of bags (decoded once, cached at `cache` if given) or a saved .npz dataset."""
    src = Path(data)
    if src.is_file() and src.suffix == ".npz":
        ds, meta = read_dataset(src)
        _check_spec(meta.get("spec"), spec, str(src))
        return ds
    bags = bag_dirs(src)
    key = _cache_key(bags, spec)
    if cache is not None and Path(cache).is_file():
        try:
            ds, meta = read_dataset(cache)
            if meta.get("key") == key and meta.get("successful_only") == successful_only:
                return ds
        except (ValueError, OSError, KeyError):
            pass  # stale or unreadable cache: decode again
    builder = DatasetBuilder()
    it: Iterable[Path] = bags
    if progress:
        from tqdm import tqdm

        it = tqdm(bags, desc="decode bags", unit="bag", dynamic_ncols=True)
    for bag in it:
        frames, arrays, info = episode_from_bag(bag, spec)
        if successful_only and not info["success"]:
            continue
        builder.add(frames, arrays, info)
    ds = builder.build()
    if cache is not None:
        save_dataset(ds, cache, {"key": key, "spec": spec.to_dict(), "successful_only": successful_only})
    return ds


def _check_spec(saved: dict[str, Any] | None, spec: SampleSpec, where: str) -> None:
    if not saved:
        return
    want = spec.to_dict()
    for k in ("joint_names", "camera_names", "image_hw", "horizon", "action_dt", "latent_offsets"):
        if saved.get(k) != want[k] and not (
            isinstance(want[k], float) and abs(float(saved.get(k, math.nan)) - want[k]) < 1e-9
        ):
            raise ValueError(f"dataset {where}: {k} is {saved.get(k)!r}, the model expects {want[k]!r}")
