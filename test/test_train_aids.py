"""Training aids for localising small objects: spatial-softmax keypoints in the image encoder,
random-shift augmentation, the keyframe auxiliary loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wam_control.model.train import TrainConfig, Trainer, keyframe_targets, random_shift  # noqa: E402
from wam_control.model.wam import ImageEncoder, WAMConfig, build_model  # noqa: E402


class FixedFeatures(torch.nn.Module):
    """Stands in for the conv stack: returns a chosen feature map whatever the image."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features.expand(x.shape[0], -1, -1, -1)


def tiny_config(**kw: object) -> WAMConfig:
    base = dict(
        camera_names=("scene", "wrist"), image_height=16, image_width=16, horizon=8, max_prefix=4,
        conv_channels=(4, 8), image_feature_dim=16, hidden_dim=32, latent_dim=16, keypoints=3,
    )  # fmt: skip
    base.update(kw)
    return WAMConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("row", "col"), [(0, 0), (1, 3), (3, 0), (2, 2)])
def test_keypoint_is_where_its_feature_map_peaks(row: int, col: int) -> None:
    enc = ImageEncoder(tiny_config(camera_names=("scene",), keypoints=2))  # 16x16 -> 4x4 map, 8 channels
    feats = torch.zeros(1, 8, 4, 4)
    feats[0, 5, row, col] = 1.0
    enc.convs = FixedFeatures(feats)
    assert enc.keypoint is not None
    with torch.no_grad():
        enc.keypoint.weight.zero_()
        enc.keypoint.bias.zero_()
        enc.keypoint.weight[0, 5] = 60.0  # keypoint 0 follows channel 5 sharply; keypoint 1 sees nothing
    out = enc(torch.zeros(1, 1, 16, 16, 3, dtype=torch.uint8))
    assert out.shape == (1, 16 + 2 * 2) and enc.out_dim == 20
    x, y, x_flat, y_flat = out[0, 16:].tolist()
    cell = 2.0 / 3.0  # 4 cell centres spread over [-1, 1]
    assert x == pytest.approx(-1.0 + col * cell, abs=1e-4)
    assert y == pytest.approx(-1.0 + row * cell, abs=1e-4)
    assert (x_flat, y_flat) == (pytest.approx(0.0, abs=1e-6), pytest.approx(0.0, abs=1e-6))  # uniform: centre


def test_config_refuses_negative_keypoints() -> None:
    with pytest.raises(ValueError, match="keypoints"):
        tiny_config(keypoints=-1)


def test_keypoint_model_exports_and_rebuilds_from_the_onnx_alone(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from wam_control.model.export import export_onnx
    from wam_control.model.from_onnx import graph_parity, wam_from_onnx

    model = build_model(tiny_config(), seed=0)
    with torch.no_grad():  # trained-looking weights: nothing the exporter could fold away
        for i, p in enumerate(model.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.01)
    res = export_onnx(model, tmp_path / "kp.onnx")
    assert res.parity["min_cosine"] > 0.999
    rebuilt, _ = wam_from_onnx(tmp_path / "kp.onnx")
    assert rebuilt.config.keypoints == 3 and rebuilt.config == model.config
    export_onnx(rebuilt, tmp_path / "again.onnx", check_parity=False)
    assert graph_parity(tmp_path / "kp.onnx", tmp_path / "again.onnx").max_abs_err == 0.0


def test_random_shift_moves_each_image_by_at_most_pad_and_keeps_its_content() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(6, 2, 12, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(random_shift(frames, 0, rng), frames)
    pad = 2
    out = random_shift(frames, pad, np.random.default_rng(1))
    assert out.shape == frames.shape and out.dtype == np.uint8
    shifts = set()
    for b in range(6):
        for n in range(2):
            padded = np.pad(frames[b, n], ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            found = [
                (dy, dx)
                for dy in range(2 * pad + 1)
                for dx in range(2 * pad + 1)
                if np.array_equal(padded[dy : dy + 12, dx : dx + 10], out[b, n])
            ]
            assert len(found) == 1, f"image {b},{n} is not a shifted window of its own padded input"
            shifts.add(found[0])
    assert len(shifts) > 1  # each image draws its own shift


def test_training_shifts_the_inputs_and_evaluation_does_not() -> None:
    from wam_control.model.data import DatasetBuilder

    rng = np.random.default_rng(0)
    cfg = tiny_config(camera_names=("scene",), keypoints=2)
    builder = DatasetBuilder()
    for _ in range(2):
        n = 20
        frames = rng.integers(0, 255, size=(n, 1, 16, 16, 3), dtype=np.uint8)
        q = np.cumsum(rng.normal(0, 0.01, (n, 7)), axis=0).astype(np.float32)
        arrays = {
            "obs_frame": np.arange(n),
            "state": q,
            "actions": np.repeat(q[:, None], cfg.horizon, axis=1),
            "executed": np.repeat(q[:, None], cfg.horizon, axis=1),
            "future": np.minimum(np.arange(n)[:, None] + np.array(cfg.latent_offsets)[None], n - 1),
        }
        builder.add(frames, arrays, {"task": "reach"})
    ds = builder.build()
    model = build_model(cfg, seed=0)
    idx = np.arange(len(ds))
    plain = Trainer(model, ds, idx, TrainConfig(shift_pixels=0))
    shifted = Trainer(model, ds, idx, TrainConfig(shift_pixels=3))
    assert plain.evaluate(idx) == shifted.evaluate(idx)
    img_plain, _ = plain._obs(idx[:8], augment=True)
    img_eval, _ = shifted._obs(idx[:8], augment=False)
    img_train, _ = shifted._obs(idx[:8], augment=True)
    assert torch.equal(img_plain, img_eval)
    assert not torch.equal(img_train, img_eval)


def _episode(n: int, grip_switches: tuple[int, ...], source: str, rng: np.random.Generator) -> tuple:
    """n observations of 7 arm joints + a gripper column whose setpoint flips at `grip_switches`."""
    q = np.cumsum(rng.normal(0, 0.02, (n, 7)), axis=0).astype(np.float32)
    grip = np.full(n, 0.04, np.float32)
    closed = False
    for k in range(n):
        if k in grip_switches:
            closed = not closed
        grip[k] = 0.0 if closed else 0.04
    state = np.concatenate([q, grip[:, None]], axis=1)
    arrays = {
        "obs_frame": np.arange(n),
        "state": state,
        "actions": np.repeat(state[:, None], 8, axis=1),
        "executed": np.repeat(state[:, None], 8, axis=1),
        "future": np.minimum(np.arange(n)[:, None] + np.array([2, 4, 8])[None], n - 1),
    }
    frames = rng.integers(0, 255, size=(n, 1, 16, 16, 3), dtype=np.uint8)
    return frames, arrays, {"source": source}


def _keyframe_dataset(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    from wam_control.model.data import DatasetBuilder

    builder = DatasetBuilder()
    builder.add(*_episode(12, (4, 9), "demonstration", rng))  # grasp at obs 4, release at obs 9
    builder.add(*_episode(6, (), "demonstration", rng))  # reach: the goal only
    builder.add(*_episode(6, (2,), "dagger", rng))  # the student's own rollout: no expert keyframes
    return builder.build()


def test_keyframe_targets_are_the_grasp_the_release_and_the_goal() -> None:
    ds = _keyframe_dataset(np.random.default_rng(0))
    target, weight = keyframe_targets(ds, 7)
    q = ds.state[:, :7]
    # Episode 0: the setpoint flips between obs 3 and 4 (grasp) and between 8 and 9 (release).
    np.testing.assert_array_equal(target[0:4], np.repeat(q[3:4], 4, axis=0))
    np.testing.assert_array_equal(target[4:9], np.repeat(q[8:9], 5, axis=0))
    np.testing.assert_array_equal(target[9:12], np.repeat(q[11:12], 3, axis=0))
    np.testing.assert_array_equal(target[12:18], np.repeat(q[17:18], 6, axis=0))  # reach: the last obs
    assert weight[:18].tolist() == [1.0] * 18 and weight[18:].tolist() == [0.0] * 6


def test_keyframe_loss_trains_a_head_that_resumes_and_stays_out_of_the_model() -> None:
    ds = _keyframe_dataset(np.random.default_rng(1))
    cfg = tiny_config(camera_names=("scene",), extra_dofs=("gripper",))
    model = build_model(cfg, seed=0)
    keys_before = set(model.state_dict())
    tcfg = TrainConfig(keyframe_weight=1.0, batch_size=16, lr=3e-3, warmup_steps=5, steps=120)
    trainer = Trainer(model, ds, np.arange(18), tcfg)
    first = np.mean([trainer.step()["keyframe"] for _ in range(5)])
    for _ in range(110):
        last = trainer.step()["keyframe"]
    assert last < 0.5 * first
    assert set(model.state_dict()) == keys_before  # a training aid: no new model weights
    st = trainer.state()
    again = Trainer(build_model(cfg, seed=1), ds, np.arange(18), tcfg)
    again.load_state(st)
    assert again.keyframe_head is not None and trainer.keyframe_head is not None
    for a, b in zip(again.keyframe_head.parameters(), trainer.keyframe_head.parameters()):
        assert torch.equal(a, b)
    off = Trainer(build_model(cfg, seed=0), ds, np.arange(18), TrainConfig())
    assert off.keyframe_head is None and "keyframe" not in off.step()


def test_a_fresh_keyframe_head_learns_on_a_detached_latent_first() -> None:
    # Fine-tuning a trained model with an untrained keyframe head: for keyframe_warmup_steps its random
    # gradients stay out of the encoder, so the model moves exactly as without the keyframe loss.
    ds = _keyframe_dataset(np.random.default_rng(2))
    cfg = tiny_config(camera_names=("scene",), extra_dofs=("gripper",))
    base = dict(batch_size=16, lr=3e-3, warmup_steps=2, steps=40)
    with_head = Trainer(
        build_model(cfg, seed=0), ds, np.arange(18), TrainConfig(keyframe_weight=1.0, keyframe_warmup_steps=6, **base)
    )
    without = Trainer(build_model(cfg, seed=0), ds, np.arange(18), TrainConfig(**base))
    head_before = [p.clone() for p in with_head.keyframe_head.parameters()]  # type: ignore[union-attr]
    for _ in range(6):
        with_head.step(), without.step()
    for a, b in zip(with_head.model.state_dict().values(), without.model.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, with_head.keyframe_head.parameters()))  # type: ignore[union-attr]
    with_head.step(), without.step()
    assert any(
        not torch.equal(a, b) for a, b in zip(with_head.model.state_dict().values(), without.model.state_dict().values())
    )


def test_the_keyframe_head_travels_with_the_checkpoint(tmp_path: Path) -> None:
    from wam_control.model.wam import load_checkpoint, load_training_heads, save_checkpoint

    ds = _keyframe_dataset(np.random.default_rng(3))
    cfg = tiny_config(camera_names=("scene",), extra_dofs=("gripper",))
    tcfg = TrainConfig(keyframe_weight=1.0, batch_size=16, steps=5)
    first = Trainer(build_model(cfg, seed=0), ds, np.arange(18), tcfg)
    for _ in range(5):
        first.step()
    path = tmp_path / "model.pt"
    save_checkpoint(first.model, str(path), {"kind": "test"}, training_heads=first.heads())
    model, _ = load_checkpoint(str(path))  # the model itself loads as before
    heads = load_training_heads(str(path))
    assert set(heads) == {"keyframe_head"}
    again = Trainer(model, ds, np.arange(18), tcfg, heads=heads)
    assert again.keyframe_detach_until == 0  # a trained head trains the encoder from the first step
    for a, b in zip(again.keyframe_head.parameters(), first.keyframe_head.parameters()):  # type: ignore[union-attr]
        assert torch.equal(a, b)

    plain = tmp_path / "plain.pt"
    save_checkpoint(first.model, str(plain))
    assert load_training_heads(str(plain)) == {}
    other = tiny_config(camera_names=("scene",), extra_dofs=("gripper",), latent_dim=24)
    with pytest.raises(ValueError, match="keyframe_head"):
        Trainer(build_model(other, seed=0), ds, np.arange(18), tcfg, heads=heads)


def test_source_shares_set_each_sources_part_of_a_batch() -> None:
    from wam_control.model.train import parse_source_shares, source_weights

    ds = _keyframe_dataset(np.random.default_rng(4))  # 18 demonstration observations, 6 dagger
    w = source_weights(ds, parse_source_shares(["dagger=0.5"]))
    assert w.sum() == pytest.approx(1.0)
    assert w[18:].sum() == pytest.approx(0.5) and np.ptp(w[:18]) == 0 and np.ptp(w[18:]) == 0
    trainer = Trainer(build_model(tiny_config(camera_names=("scene",)), seed=0), ds, np.arange(24), TrainConfig(batch_size=4), w)
    drawn = np.concatenate([trainer.rng.choice(trainer.train_idx, 4, replace=False, p=trainer.p) for _ in range(2000)])
    assert np.mean(drawn >= 18) == pytest.approx(0.5, abs=0.03)  # 6 of 24 observations, half of each batch

    # share 0: a source left out of every batch (a teacher's labels since corrected)
    w0 = source_weights(ds, parse_source_shares(["dagger=0"]))
    assert np.all(w0[18:] == 0) and w0[:18].sum() == pytest.approx(1.0)
    left_out = Trainer(build_model(tiny_config(camera_names=("scene",)), seed=0), ds, np.arange(24), TrainConfig(batch_size=4), w0)
    assert all((left_out.rng.choice(left_out.train_idx, 4, replace=False, p=left_out.p) < 18).all() for _ in range(200))

    for bad, match in [
        (["dagger"], "SOURCE=SHARE"),
        (["dagger=-0.1"], "SOURCE=SHARE"),
        (["dagger=1.0"], "SOURCE=SHARE"),
        (["dagger=x"], "SOURCE=SHARE"),
        (["dagger=0.5", "dagger=0.2"], "twice"),
        (["dagger=0.6", "demonstration=0.5"], "add up"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_source_shares(bad)
    with pytest.raises(ValueError, match="dagger_counterfactual.*'dagger', 'demonstration'"):
        source_weights(ds, {"dagger_counterfactual": 0.1})


def test_a_task_qualified_share_takes_its_episodes_before_the_bare_source() -> None:
    from wam_control.model.data import DatasetBuilder
    from wam_control.model.train import parse_source_shares, source_weights

    rng = np.random.default_rng(5)
    builder = DatasetBuilder()
    for n, source, task in [(10, "expert", "pick_place"), (4, "expert", "push"), (6, "expert", "reach"), (8, "dagger", "push")]:
        frames, arrays, info = _episode(n, (), source, rng)
        builder.add(frames, arrays, {**info, "task": task})
    ds = builder.build()
    part = {"pp": slice(0, 10), "push": slice(10, 14), "reach": slice(14, 20), "dagger": slice(20, 28)}

    def shares(*items: str) -> dict[str, float]:
        w = source_weights(ds, parse_source_shares(list(items)))
        assert w.sum() == pytest.approx(1.0)
        assert all(np.ptp(w[s]) == 0 for s in part.values())  # uniform within each episode
        return {k: round(float(w[s].sum()), 6) for k, s in part.items()}

    # (the share list, in either order) -> each group's part of a batch
    for items, want in [
        (["expert/push=0.4"], {"pp": 0.25, "push": 0.4, "reach": 0.15, "dagger": 0.2}),  # the rest by numbers
        (["expert=0.5", "expert/push=0.2"], {"pp": 0.3125, "push": 0.2, "reach": 0.1875, "dagger": 0.3}),
        (["expert/push=0.2", "expert=0.5"], {"pp": 0.3125, "push": 0.2, "reach": 0.1875, "dagger": 0.3}),
        (["expert/push=0.2", "dagger/push=0.3"], {"pp": 0.3125, "push": 0.2, "reach": 0.1875, "dagger": 0.3}),
        (["expert/push=0", "dagger=0"], {"pp": 0.625, "push": 0.0, "reach": 0.375, "dagger": 0.0}),
    ]:
        assert shares(*items) == pytest.approx(want), items
    with pytest.raises(ValueError, match="'expert/lift'.*'dagger/push', 'expert/pick_place'"):
        source_weights(ds, {"expert/lift": 0.1})
    with pytest.raises(ValueError, match="every episode of 'dagger' is already given"):
        source_weights(ds, {"dagger/push": 0.1, "dagger": 0.2})


def test_train_refuses_shares_over_one_before_reading_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shares are checked before the data is read (minutes for a large set): a missing data folder is
    not reached."""
    from wam_control.model.train import main

    argv = ["--data", str(tmp_path / "no_such_bags"), "--out", str(tmp_path / "out"), "--steps", "1",
            "--source-share", "scripted_expert/push=0.6", "--source-share", "dagger=0.5"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "add up to 1.1" in err and "no_such_bags" not in err
