"""ONNX export: contract metadata, checker, parity, FP16 variant, test-model cache, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from wam_control.model.export import ExportError, export_onnx, main, make_test_model, parity_check  # noqa: E402
from wam_control.model.wam import WAMConfig, build_model  # noqa: E402
from wam_control.policy.contract import ContractError, ModelFileError, read_contract  # noqa: E402

SMALL = dict(
    joint_names=("shoulder", "elbow", "wrist"),
    camera_names=("scene", "wrist_cam"),
    image_hw=(32, 48),
    horizon=8,
    action_dt=0.1,
    max_prefix=3,
    conv_channels=(8, 16),
    image_feature_dim=32,
    hidden_dim=64,
    latent_dim=16,
)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return make_test_model(tmp_path_factory.getbasetemp() / "wam_models" / "small.onnx", **SMALL)


def test_metadata_and_io(small_model) -> None:
    c = read_contract(small_model, verify_weights=True)
    assert c.joint_names == SMALL["joint_names"] and c.camera_names == SMALL["camera_names"]
    assert (c.image_height, c.image_width, c.horizon, c.max_prefix) == (32, 48, 8, 3)
    assert c.action_dt == 0.1 and c.latent_offsets == (2, 4, 8) and c.latent_steps == 3
    model = onnx.load(str(small_model))
    assert not model.graph.initializer or all(i.data_location != 1 for i in model.graph.initializer)
    assert 18 <= {o.domain: o.version for o in model.opset_import}[""] <= 20
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(small_model), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["camera_names"]) == ["scene", "wrist_cam"]
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["images"][1:] == [2, 32, 48, 3] and isinstance(shapes["images"][0], str)  # dynamic batch


def test_make_test_model_is_cached_and_keyed(tmp_path, small_model) -> None:
    again = make_test_model(small_model, **SMALL)
    assert again == small_model
    mtime = small_model.stat().st_mtime_ns
    make_test_model(small_model, **SMALL)
    assert small_model.stat().st_mtime_ns == mtime  # reused, not re-exported
    other = make_test_model(tmp_path / "other.onnx", **{**SMALL, "horizon": 6}, seed=1)
    assert read_contract(other).horizon == 6


def test_tampered_weights_are_detected(tmp_path, small_model) -> None:
    model = onnx.load(str(small_model))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(init.raw_data)
    raw[0] ^= 0xFF
    init.raw_data = bytes(raw)
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    read_contract(bad)  # metadata + I/O still fine
    with pytest.raises(ContractError, match="weights hash"):
        read_contract(bad, verify_weights=True)


def test_missing_metadata_and_truncation(tmp_path, small_model) -> None:
    model = onnx.load(str(small_model))
    kept = [p for p in model.metadata_props if p.key != "action_dt"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    p = tmp_path / "nodt.onnx"
    onnx.save(model, str(p))
    with pytest.raises(ContractError, match="metadata action_dt missing"):
        read_contract(p)
    blob = small_model.read_bytes()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError, match="trunc.onnx"):
        read_contract(trunc)


def test_parity_check_catches_a_wrong_model(tmp_path, small_model) -> None:
    cfg = WAMConfig(**{k: v for k, v in SMALL.items() if k != "image_hw"}, image_height=32, image_width=48)
    m = build_model(cfg, seed=0)
    res = export_onnx(m, tmp_path / "p.onnx", write_checkpoint=False)
    assert res.parity["max_abs_err"] < 1e-4 and res.parity["min_cosine"] >= 0.999
    with torch.no_grad():
        m.action_head.out.bias.add_(0.5)  # PyTorch model drifts from the file
    with pytest.raises(ExportError, match="actions differs from PyTorch"):
        parity_check(m, tmp_path / "p.onnx")


def test_cli_random_init_with_fp16(tmp_path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    rc = main(["--random-init", "--out", str(out), "--fp16", "--joints", "a,b,c,d,e,f,g"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "precision=fp32" in text and "precision=fp16" in text and "min_cosine" in text
    fp16 = tmp_path / "cli.fp16.onnx"
    c32, c16 = read_contract(out, verify_weights=True), read_contract(fp16, verify_weights=True)
    assert c16.training_data["precision"] == "fp16" and c16.joint_names == c32.joint_names
    assert (tmp_path / "cli.pt").is_file()
    # FP16 inside, FP32 at the boundary.
    sess = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    assert {i.name: i.type for i in sess.get_inputs()}["state"] == "tensor(float)"
    assert {o.name: o.type for o in sess.get_outputs()}["actions"] == "tensor(float)"
    model = onnx.load(str(fp16))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # The checkpoint round-trips through the CLI too.
    assert main(["--checkpoint", str(tmp_path / "cli.pt"), "--out", str(tmp_path / "again.onnx")]) == 0
    assert read_contract(tmp_path / "again.onnx").weights_sha256 == c32.weights_sha256
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2


def test_dynamic_batch_and_prefix_in_onnxruntime(small_model) -> None:
    sess32 = ort.InferenceSession(str(small_model), providers=["CPUExecutionProvider"])
    assert sess32 is not None
    c = read_contract(small_model)
    rng = np.random.default_rng(5)
    feeds = {
        "images": rng.integers(0, 256, (2, 2, 32, 48, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, (2, 3)).astype(np.float32),
        "action_prefix": rng.uniform(-1, 1, (2, 8, 3)).astype(np.float32),
        "prefix_len": np.array([0, 3], dtype=np.int64),
    }
    a, lat, pred = sess32.run(None, feeds)
    assert a.shape == (2, 8, 3) and lat.shape == (2, c.latent_dim) and pred.shape == (2, 3, c.latent_dim)
    np.testing.assert_array_equal(a[1, :3], feeds["action_prefix"][1, :3])


def _old_order_forward(self, images, film=None):
    """ImageEncoder.forward as it was before issue 18: reshape and permute the uint8 images, then cast
    (a model without a prompt: `film` is None)."""
    assert film is None
    b, n, h, w, c = images.shape
    dtype = self.linear.weight.dtype
    x = images.reshape(b * n, h, w, c).permute(0, 3, 1, 2).to(dtype)
    x = x * self.pix_scale.to(dtype) + self.pix_shift.to(dtype)
    return torch.relu(self.linear(self.convs(x).flatten(1))).reshape(b, -1)


def test_images_are_cast_before_any_layout_op_and_outputs_are_unchanged(tmp_path, monkeypatch) -> None:
    """TensorRT takes UINT8 only at the graph's edges: the export must cast `images` first. The graph in the
    old order is refused by the export's lint, and computes exactly what the new graph computes."""
    from wam_control.model.export import to_onnx_proto
    from wam_control.model.from_onnx import graph_parity
    from wam_control.model.wam import ImageEncoder
    from wam_control.policy.trt_lint import lint_model

    cfg = WAMConfig(**{k: v for k, v in SMALL.items() if k != "image_hw"}, image_height=32, image_width=48)
    m = build_model(cfg, seed=3)
    new = export_onnx(m, tmp_path / "new.onnx", write_checkpoint=False).path
    g = onnx.load(str(new)).graph
    assert [n.op_type for n in g.node if "images" in n.input] == ["Cast"]
    for fp16 in (False, True):
        r = export_onnx(m, tmp_path / f"n{fp16}.onnx", fp16=fp16, write_checkpoint=False, check_parity=False)
        assert lint_model(onnx.load(str(r.path)), str(r.path)).ok
    monkeypatch.setattr(ImageEncoder, "forward", _old_order_forward)
    old_proto = to_onnx_proto(m)
    report = lint_model(old_proto, "old.onnx")
    assert not report.ok and {f.tensor for f in report.errors} >= {"images"}
    with pytest.raises(ExportError, match="UINT8"):
        export_onnx(m, tmp_path / "refused.onnx", write_checkpoint=False)
    assert not (tmp_path / "refused.onnx").exists()  # nothing written
    onnx.save(old_proto, str(tmp_path / "old.onnx"))
    parity = graph_parity(tmp_path / "old.onnx", new, seeds=3)
    assert parity.max_abs_err <= 1e-6, parity


def test_decoder_export_casts_last(tmp_path) -> None:
    from wam_control.model.decoder import DecoderConfig, LatentDecoder, export_decoder
    from wam_control.policy.trt_lint import lint_onnx

    c = read_contract(make_test_model(tmp_path / "w.onnx", **SMALL))
    dec = LatentDecoder(DecoderConfig(latent_dim=c.latent_dim, image_height=16, image_width=16, channels=(8, 4)))
    out = export_decoder(dec.eval(), tmp_path / "w.decoder.onnx", c)
    g = onnx.load(str(out)).graph
    assert g.node[-1].op_type == "Cast" and g.node[-1].output[0] == "image"
    assert lint_onnx(out).ok


def test_rebuild_from_onnx_and_reexport_round_trip(tmp_path) -> None:
    from wam_control.model.from_onnx import RebuildError, reexport, wam_from_onnx

    cfg = WAMConfig(**{k: v for k, v in SMALL.items() if k != "image_hw"}, image_height=32, image_width=48)
    m = build_model(cfg, seed=5)
    with torch.no_grad():  # like a trained model: no two parameters equal (the exporter merges equal ones)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    small_model = export_onnx(m, tmp_path / "trained.onnx", write_checkpoint=False, check_parity=False).path
    model, contract = wam_from_onnx(small_model)
    assert model.config.conv_channels == (8, 16) and model.config.hidden_dim == 64
    out, parity = reexport(small_model, tmp_path / "again.onnx")
    assert parity.max_abs_err == 0.0
    assert read_contract(out, verify_weights=True).weights_sha256 == contract.weights_sha256
    broken = onnx.load(str(small_model))
    keep = [i for i in broken.graph.initializer if i.name != "action_head.out.bias"]
    del broken.graph.initializer[:]
    broken.graph.initializer.extend(keep)
    from wam_control.policy.contract import weights_sha256_of

    onnx.helper.set_model_props(broken, {**{p.key: p.value for p in broken.metadata_props},
                                          "weights_sha256": json.dumps(weights_sha256_of(broken))})
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(RebuildError, match="action_head.out.bias"):
        wam_from_onnx(tmp_path / "broken.onnx")
