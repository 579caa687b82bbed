"""Bag -> training samples: observation grid, held frames/states, action chunks, world-model targets, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wam_control.model.data import (
    SampleSpec,
    bag_dirs,
    episode_from_bag,
    load_dataset,
    read_dataset,
)
from wam_control.sim.bag import BagRecorder, CameraSpec

NAMES = tuple(f"fr3_joint{i}" for i in range(1, 8))
CTRL_DT = 0.01
CAM_DT = 0.03


def command(t: float) -> np.ndarray:
    return np.sin(t + np.arange(7)) * 0.5


def measured(t: float) -> np.ndarray:
    return command(t - 0.02)


def write_bag(path: Path, seconds: float = 1.2, seed: int = 0, hw: tuple[int, int] = (16, 16)) -> None:
    """A synthetic episode in the recorder's format: commands at 100 Hz, frames at ~33 Hz whose
    pixel value encodes the frame index (so the test can tell which frame an observation holds)."""
    spec = {"scene": CameraSpec(hw[0], hw[1], 20.0, 20.0, 8.0, 8.0, "scene_camera_optical_frame")}
    n = int(round(seconds / CTRL_DT))
    meta = {"task": "reach", "seed": str(seed), "controller": "scripted_expert"}
    with BagRecorder(path, NAMES, spec, metadata=meta) as rec:
        frame = 0
        for k in range(n + 1):
            t = k * CTRL_DT
            rec.write_clock(t)
            rec.write_joint_state(t, measured(t), np.zeros(7))
            if k % 3 == 0:
                rec.write_image("scene", t, np.full((*hw, 3), frame, np.uint8))
                frame += 1
            if k < n:
                rec.write_command(t, command(t))
        rec.set_metadata("success", "true")


def spec(hw: tuple[int, int] = (16, 16)) -> SampleSpec:
    return SampleSpec(
        NAMES, ("scene",), hw, horizon=8, action_dt=0.05, latent_offsets=(2, 4, 8), obs_dt=0.025
    )


def test_samples_from_bag(tmp_path: Path) -> None:
    write_bag(tmp_path / "reach_seed0")
    frames, arr, info = episode_from_bag(tmp_path / "reach_seed0", spec())
    n = len(arr["state"])
    assert n == 49  # 0 .. 1.2 s every 25 ms
    assert info["seed"] == 0 and info["success"] is True
    obs_t = np.arange(n) * 0.025
    # The held frame is the latest rendered at or before the observation (pixel = frame index).
    held = frames[arr["obs_frame"], 0, 0, 0, 0]
    assert np.array_equal(held, np.floor(obs_t / CAM_DT + 1e-6).astype(int))
    # State: the latest joint state measured at or before the observation.
    tick_t = np.floor(obs_t / CTRL_DT + 1e-6) * CTRL_DT
    assert np.allclose(arr["state"], np.stack([measured(t) for t in tick_t]), atol=1e-6)
    # Actions: the commands in force at t + k * action_dt; past the last command, the last one holds.
    last_cmd_t = 1.19
    for i in (0, 10, 40):
        for k in range(8):
            t = min(obs_t[i] + k * 0.05, last_cmd_t)
            expected = command(np.floor(t / CTRL_DT + 1e-6) * CTRL_DT)
            assert np.allclose(arr["actions"][i, k], expected, atol=1e-6), (i, k)
    assert np.array_equal(arr["executed"], arr["actions"])
    # World-model targets: the observation offsets * action_dt later (2 grid steps per action step),
    # clamped to the last observation of the episode.
    assert arr["future"][0].tolist() == [4, 8, 16]
    assert arr["future"][40].tolist() == [44, 48, 48]


def test_dataset_cache_and_errors(tmp_path: Path) -> None:
    bags = tmp_path / "bags"
    for s in range(3):
        write_bag(bags / f"reach_seed{s}", seconds=0.6, seed=s)
    cache = tmp_path / "cache.npz"
    ds = load_dataset(bags, spec(), cache=cache, progress=False)
    assert len(ds.episodes) == 3 and len(ds) == 3 * 25
    # Indices are re-based per episode: every future index stays inside its own episode.
    assert np.array_equal(ds.episode[ds.future[:, -1]], ds.episode)
    stamp = cache.stat().st_mtime_ns
    again = load_dataset(bags, spec(), cache=cache, progress=False)
    assert cache.stat().st_mtime_ns == stamp  # served from the cache, not decoded again
    assert np.array_equal(again.frames, ds.frames) and np.array_equal(again.actions, ds.actions)
    loaded, meta = read_dataset(cache)
    assert meta["spec"]["horizon"] == 8 and len(loaded) == len(ds)
    train, val = ds.split_episodes(0.34, seed=0)
    assert len(set(ds.episode[val].tolist())) == 1 and not set(ds.episode[val]) & set(ds.episode[train])

    with pytest.raises(ValueError, match="camera 'wrist'"):
        episode_from_bag(bags / "reach_seed0", SampleSpec(NAMES, ("wrist",), (16, 16), 8, 0.05, (2,), 0.025))
    with pytest.raises(ValueError, match=r"frames are \(16, 16\)"):
        episode_from_bag(bags / "reach_seed0", spec(hw=(32, 32)))
    with pytest.raises(FileNotFoundError, match="no ROS 2 bags"):
        bag_dirs(tmp_path)


def test_builder_joins_datasets_rebased_and_lets_each_part_go(tmp_path: Path) -> None:
    """Several folders become one dataset: frames in order, indices re-based into the whole, and the
    builder keeps no part once built (each part's frames are freed as they are copied: the peak is the
    data once, not twice)."""
    import gc
    import weakref

    from wam_control.model.data import DatasetBuilder

    folders = []
    for f, seconds in enumerate((0.6, 0.9)):
        write_bag(tmp_path / f"d{f}" / "reach_seed0", seconds=seconds, seed=f)
        folders.append(tmp_path / f"d{f}")
    parts = [load_dataset(d, spec(), progress=False) for d in folders]
    expect_frames = np.concatenate([p.frames for p in parts])
    expect_obs_frame = np.concatenate([parts[0].obs_frame, parts[1].obs_frame + len(parts[0].frames)])
    expect_future = np.concatenate([parts[0].future, parts[1].future + len(parts[0])])
    expect_actions = np.concatenate([p.actions for p in parts])
    builder = DatasetBuilder()
    alive = []
    while parts:
        p = parts.pop(0)
        alive.append(weakref.ref(p.frames))
        builder.add_dataset(p)
        del p
    ds = builder.build()
    gc.collect()
    assert [ref() is None for ref in alive] == [True, True]
    assert np.array_equal(ds.frames, expect_frames) and np.array_equal(ds.obs_frame, expect_obs_frame)
    assert np.array_equal(ds.future, expect_future) and np.array_equal(ds.actions, expect_actions)
    assert ds.episode.tolist() == [0] * 25 + [1] * (len(ds) - 25) and len(ds.episodes) == 2
    with pytest.raises(ValueError, match="dataset is empty"):
        builder.build()  # built once: nothing left in it
    mixed = DatasetBuilder()
    mixed.add_dataset(load_dataset(folders[0], spec(), progress=False))
    write_bag(tmp_path / "big" / "reach_seed0", seconds=0.6, hw=(32, 32))
    mixed.add_dataset(load_dataset(tmp_path / "big", spec(hw=(32, 32)), progress=False))
    with pytest.raises(ValueError, match=r"frames of shape \(1, 32, 32, 3\) and \(1, 16, 16, 3\)"):
        mixed.build()
