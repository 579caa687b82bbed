"""The PyTorch WAM: contract-shaped forward, exact prefix continuation, training-facing API."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from wam_control.model.wam import (  # noqa: E402
    WAMConfig,
    build_model,
    default_latent_offsets,
    load_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)

CFG = WAMConfig(
    joint_names=("a", "b", "c"),
    camera_names=("scene", "wrist"),
    image_height=32,
    image_width=40,
    horizon=8,
    max_prefix=4,
    latent_dim=16,
    conv_channels=(8, 16),
    image_feature_dim=32,
    hidden_dim=64,
)


def _inputs(b: int = 3, seed: int = 0, plen: list[int] | None = None):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 2, 32, 40, 3), generator=g, dtype=torch.uint8)
    state = torch.rand(b, 3, generator=g) * 2 - 1
    prefix = state.unsqueeze(1) + torch.randn(b, 8, 3, generator=g) * 0.05
    prefix_len = torch.tensor(plen if plen is not None else [0, 2, 4][:b], dtype=torch.int64)
    return images, state, prefix, prefix_len


def test_default_offsets() -> None:
    assert default_latent_offsets(16) == (2, 4, 8, 16)
    assert default_latent_offsets(20) == (2, 4, 8, 16, 20)
    assert WAMConfig().latent_offsets == (2, 4, 8, 16)


def test_forward_shapes_and_dtypes() -> None:
    m = build_model(CFG)
    with torch.no_grad():
        actions, latent, latent_pred = m(*_inputs())
    assert actions.shape == (3, 8, 3) and actions.dtype == torch.float32
    assert latent.shape == (3, 16)
    assert latent_pred.shape == (3, len(CFG.latent_offsets), 16)


def test_prefix_is_continued_exactly_and_masked_otherwise() -> None:
    m = build_model(CFG)
    images, state, prefix, plen = _inputs()
    with torch.no_grad():
        actions = m(images, state, prefix, plen)[0]
        for i, n in enumerate(plen.tolist()):
            assert torch.equal(actions[i, :n], prefix[i, :n])
        # Sample 0 has no prefix: the prefix values must not influence it at all (masked, not read).
        other = prefix.clone()
        other[0] += 0.3
        assert torch.equal(m(images, state, other, plen)[0][0], actions[0])
        # A committed prefix does condition the steps after it.
        shifted = prefix.clone()
        shifted[1, :2] += 0.3
        assert not torch.allclose(m(images, state, shifted, plen)[0][1, 2:], actions[1, 2:])


def test_actions_are_residuals_around_the_state() -> None:
    m = build_model(CFG)
    images, state, prefix, plen = _inputs(plen=[0, 0, 0])
    with torch.no_grad():
        m.residual_scale.fill_(1e-3)
        actions = m(images, state, prefix, plen)[0]
    # A tiny residual scale pins every step to the measured state: the head predicts offsets.
    assert torch.allclose(actions, state.unsqueeze(1).expand_as(actions), atol=0.05)


def test_train_output_and_pieces_agree() -> None:
    m = build_model(CFG)
    images, state, prefix, plen = _inputs()
    with torch.no_grad():
        out = m.forward_train(images, state, prefix, plen)
        assert torch.allclose(m.encode(images, state), out.latent)
        assert torch.equal(out.prefix_mask, torch.arange(8).unsqueeze(0) < plen.unsqueeze(1))
        assert torch.allclose(out.latent_pred, m.predict_latents(out.latent, state, out.actions), atol=1e-6)
        assert torch.allclose(out.actions_raw, state.unsqueeze(1) + out.residual * m.residual_scale)
    # Gradients reach every parameter through the training outputs.
    m.train()
    out = m.forward_train(images, state, prefix, plen)
    (out.actions_raw.square().mean() + out.latent_pred.square().mean()).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_build_is_seeded_and_checkpoint_roundtrips(tmp_path) -> None:
    a, b = build_model(CFG, seed=3), build_model(CFG, seed=3)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    assert state_dict_sha256(a) != state_dict_sha256(build_model(CFG, seed=4))
    a.set_normalization(
        torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.05] * 3)
    )
    path = tmp_path / "m.pt"
    save_checkpoint(a, str(path), {"episodes": 5})
    back, data = load_checkpoint(str(path))
    assert data == {"episodes": 5} and back.config == a.config
    assert state_dict_sha256(back) == state_dict_sha256(a)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="m.pt"):
        load_checkpoint(str(path))
