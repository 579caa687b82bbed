"""TensorRT engine cache and backend logic, exercised with a fake TensorRT (no GPU, no tensorrt here)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from wam_control.policy.engine_cache import EngineCache, EngineError, EngineKey, file_sha256

KEY = EngineKey(
    onnx_sha256="ab" * 32,
    tensorrt_version="10.13.0",
    gpu_name="NVIDIA Jetson Orin",
    compute_capability="8.7",
    precision="fp16",
    profile_shapes=(("state", (1, 7), (1, 7), (1, 7)),),
    workspace_bytes=1 << 30,
)


class Loader:
    """Stands in for Runtime.deserialize_cuda_engine: accepts plans that start with b'PLAN'."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, plan: bytes):
        self.calls += 1
        return ("engine", plan) if plan.startswith(b"PLAN") else None


class Builder:
    def __init__(self, plan: bytes | None = b"PLAN-v1", gate: threading.Event | None = None) -> None:
        self.plan, self.calls, self.gate = plan, 0, gate
        self.entered = threading.Event()

    def __call__(self):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        return self.plan


def test_key_digest_covers_every_field() -> None:
    digests = {KEY.digest()}
    changes = dict(
        onnx_sha256="cd" * 32,
        tensorrt_version="11.0.0",
        gpu_name="NVIDIA H100",
        compute_capability="9.0",
        precision="fp32",
        profile_shapes=(("state", (1, 7), (1, 7), (8, 7)),),
        workspace_bytes=2 << 30,
        recipe_version=KEY.recipe_version + 1,
    )
    assert set(changes) == {f.name for f in dataclasses.fields(EngineKey)}
    for name, value in changes.items():
        digests.add(dataclasses.replace(KEY, **{name: value}).digest())
    assert len(digests) == len(changes) + 1


def test_build_then_hit(tmp_path) -> None:
    cache, build, load = EngineCache(tmp_path, "m"), Builder(), Loader()
    engine, how = cache.get_or_build(KEY, build, load)
    assert (engine, how, build.calls) == (("engine", b"PLAN-v1"), "built", 1)
    plan_path, meta_path, _ = cache.paths(KEY)
    assert plan_path.read_bytes() == b"PLAN-v1" and meta_path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # atomic writes leave no temp files
    _, how = cache.get_or_build(KEY, Builder(), load)
    assert how == "cache"
    # A different key (e.g. another GPU) never loads this plan.
    other = dataclasses.replace(KEY, gpu_name="NVIDIA H100")
    b2 = Builder(b"PLAN-h100")
    assert cache.get_or_build(other, b2, load) == (("engine", b"PLAN-h100"), "built") and b2.calls == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta-garbage", "meta-other-key", "plan-missing"])
def test_damaged_cache_is_rebuilt(tmp_path, damage) -> None:
    cache, load = EngineCache(tmp_path), Loader()
    cache.get_or_build(KEY, Builder(), load)
    plan_path, meta_path, _ = cache.paths(KEY)
    if damage == "truncate":
        plan_path.write_bytes(plan_path.read_bytes()[:3])
    elif damage == "flip":
        plan_path.write_bytes(b"PLAN-v2")  # same length, other bytes: checksum catches it
    elif damage == "meta-garbage":
        meta_path.write_text("{not json")
    elif damage == "meta-other-key":
        meta_path.write_text(meta_path.read_text().replace("10.13.0", "10.3.0"))
    else:
        plan_path.unlink()
    build = Builder(b"PLAN-fresh")
    engine, how = cache.get_or_build(KEY, build, load)
    assert (engine, how, build.calls) == (("engine", b"PLAN-fresh"), "rebuilt", 1)
    assert cache.lookup(KEY) == (b"PLAN-fresh", "hit")


def test_plan_rejected_by_runtime_is_rebuilt(tmp_path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, b"STALE-but-checksummed")  # e.g. a plan from an older TensorRT
    build = Builder()
    engine, how = cache.get_or_build(KEY, build, Loader())
    assert how == "rebuilt" and engine == ("engine", b"PLAN-v1") and build.calls == 1


def test_build_failures_raise_engine_error(tmp_path) -> None:
    cache = EngineCache(tmp_path)
    with pytest.raises(EngineError, match="build failed"):
        cache.get_or_build(KEY, Builder(None), Loader())
    with pytest.raises(EngineError, match="could not be deserialized"):
        cache.get_or_build(KEY, Builder(b"GARBAGE"), Loader())
    assert cache.lookup(KEY)[0] is None  # nothing unusable was stored


def test_force_rebuild(tmp_path) -> None:
    cache, load = EngineCache(tmp_path), Loader()
    cache.get_or_build(KEY, Builder(), load)
    build = Builder(b"PLAN-new")
    assert cache.get_or_build(KEY, build, load, force_rebuild=True)[1] == "built" and build.calls == 1


def test_concurrent_starts_build_once(tmp_path) -> None:
    gate = threading.Event()
    first = Builder(b"PLAN-once", gate=gate)
    second = Builder(b"PLAN-twice")
    results: dict[str, object] = {}

    def run(name: str, builder: Builder) -> None:
        results[name] = EngineCache(tmp_path).get_or_build(KEY, builder, Loader())

    ta = threading.Thread(target=run, args=("a", first))
    ta.start()
    assert first.entered.wait(10)  # A holds the lock and is building
    tb = threading.Thread(target=run, args=("b", second))
    tb.start()
    gate.set()
    ta.join(10)
    tb.join(10)
    assert first.calls == 1 and second.calls == 0
    assert results["a"] == (("engine", b"PLAN-once"), "built")
    assert results["b"] == (("engine", b"PLAN-once"), "cache")


# --------------------------------------------------------------------------------------------------
# TensorRTBackend with a fake TrtApi


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from wam_control.model.export import make_test_model

    return make_test_model(
        tmp_path_factory.getbasetemp() / "wam_models" / "trt.onnx",
        joint_names=("a", "b"),
        image_hw=(32, 32),
        horizon=8,
        max_prefix=4,
        conv_channels=(8,),
        image_feature_dim=16,
        hidden_dim=32,
        latent_dim=8,
    )


class FakeRunner:
    def __init__(self, contract) -> None:
        self.contract, self.feeds = contract, []

    def run(self, feeds):
        self.feeds.append({k: v.copy() for k, v in feeds.items()})
        c = self.contract
        actions = np.repeat(feeds["state"], c.horizon, axis=0).astype(np.float32)
        return (
            actions,
            np.zeros(c.latent_dim, np.float32),
            np.zeros((c.latent_steps, c.latent_dim), np.float32),
        )

    def close(self) -> None:
        self.closed = True


class FakeTrt:
    def __init__(self, version: str = "10.13.0", plan: bytes | None = b"PLAN") -> None:
        self.version, self.plan = version, plan
        self.builds: list[tuple] = []
        self.runners: list[FakeRunner] = []

    def gpu(self):
        return ("FakeGPU", "8.7")

    def build(self, onnx_path, precision, workspace_bytes, profile, cache_dir):
        self.builds.append((onnx_path, precision, workspace_bytes, profile))
        return self.plan

    def deserialize(self, plan):
        return plan if plan.startswith(b"PLAN") else None

    def runner(self, engine, contract, cuda_graph):
        self.runners.append(FakeRunner(contract))
        return self.runners[-1]


def test_tensorrt_backend_builds_once_and_runs(onnx_model, tmp_path) -> None:
    from wam_control.policy import example_input
    from wam_control.policy.tensorrt_backend import TensorRTBackend

    api = FakeTrt()
    b = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api)
    assert b.how == "built" and len(api.builds) == 1
    assert b.key.onnx_sha256 == file_sha256(onnx_model) and b.key.gpu_name == "FakeGPU"
    assert api.builds[0][3] == b.key.profile_shapes and api.builds[0][1] == "fp16"
    inp = example_input(b.contract, seed=1, prefix_len=2)
    out = b.infer(inp)
    np.testing.assert_array_equal(out.actions[0], inp.state)
    feed = api.runners[0].feeds[-1]
    assert feed["images"].shape == (1, 1, 32, 32, 3) and feed["prefix_len"].tolist() == [2]
    assert "tensorrt 10.13.0 fp16 on FakeGPU" in b.describe()
    b2 = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api)
    assert b2.how == "cache" and len(api.builds) == 1


def test_tensorrt11_fp16_needs_fp16_onnx(onnx_model, tmp_path) -> None:
    from wam_control.policy.tensorrt_backend import TensorRTBackend

    with pytest.raises(FileNotFoundError, match=r"trt\.fp16\.onnx"):
        TensorRTBackend(onnx_model, cache_dir=tmp_path, api=FakeTrt("11.0.0"))
    b = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=FakeTrt("11.0.0"), precision="fp32")
    assert b.how == "built"


def test_auto_falls_back_when_tensorrt_cannot_build(onnx_model, tmp_path, monkeypatch, caplog) -> None:
    pytest.importorskip("onnxruntime")
    import wam_control.policy.tensorrt_backend as trt_mod
    from wam_control.policy import load_backend

    monkeypatch.setattr(trt_mod, "tensorrt_usable", lambda: (True, ""))
    original = trt_mod.TensorRTBackend.__init__

    def with_failing_build(self, path, **kw):
        original(self, path, cache_dir=tmp_path, api=FakeTrt(plan=None))

    monkeypatch.setattr(trt_mod.TensorRTBackend, "__init__", with_failing_build)
    b = load_backend(onnx_model, "auto")
    assert b.name == "onnxruntime"
    assert "tensorrt failed" in caplog.text and "build failed" in caplog.text
    with pytest.raises(EngineError):
        load_backend(onnx_model, "tensorrt")


def test_without_tensorrt_the_errors_say_what_is_missing(onnx_model, capsys) -> None:
    pytest.importorskip("onnx")
    from wam_control.policy.tensorrt_backend import TensorRTBackend, tensorrt_usable
    from wam_control.policy.tensorrt_build import main

    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    ok, why = tensorrt_usable()
    assert not ok and "tensorrt" in why
    with pytest.raises(ImportError, match=r"wam_control\[tensorrt\]"):
        TensorRTBackend(onnx_model)
    assert main(["--model", str(onnx_model)]) == 1
    assert "tensorrt" in capsys.readouterr().err


def test_cache_paths_are_per_model_stem(tmp_path) -> None:
    a, b = EngineCache(tmp_path, "arm_a"), EngineCache(tmp_path, "arm_b")
    assert a.paths(KEY)[0] != b.paths(KEY)[0]
    assert Path(a.paths(KEY)[0]).name.startswith("arm_a-")
