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
        sm_count=16,
        memory_gib=64,
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
    from wam_control.policy.tensorrt_build import Fp16ModelMissing

    with pytest.raises(Fp16ModelMissing, match=r"trt\.fp16\.onnx"):
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


# --------------------------------------------------------------------------------------------------
# Issue 18 review findings. Behaviour that is TensorRT's / CUDA's goes through fakes of the tensorrt
# module and of cuda-python's runtime (the calls and return conventions of the real bindings).


def test_auto_falls_back_when_tensorrt11_has_no_fp16_onnx(onnx_model, tmp_path, monkeypatch, caplog) -> None:
    """Finding 2: TensorRT 11 + default fp16 + no model.fp16.onnx is a TensorRT failure, not a stop."""
    pytest.importorskip("onnxruntime")
    import wam_control.policy.tensorrt_backend as trt_mod
    from wam_control.policy import load_backend
    from wam_control.policy.tensorrt_build import Fp16ModelMissing

    monkeypatch.setattr(trt_mod, "tensorrt_usable", lambda: (True, ""))
    original = trt_mod.TensorRTBackend.__init__
    api = FakeTrt("11.0.0")

    def on_trt11(self, path, **kw):
        original(self, path, cache_dir=tmp_path, api=api)

    monkeypatch.setattr(trt_mod.TensorRTBackend, "__init__", on_trt11)
    b = load_backend(onnx_model, "auto", warmup=0)
    assert b.name == "onnxruntime" and api.builds == []
    assert "tensorrt failed" in caplog.text and "fp16.onnx" in caplog.text
    with pytest.raises(Fp16ModelMissing, match="--precision fp32"):
        load_backend(onnx_model, "tensorrt", warmup=0)
    with pytest.raises(Exception, match="missing.onnx"):  # a missing model still stops auto
        load_backend(tmp_path / "missing.onnx", "auto")


def test_cuda_python_pin_and_driver_hint(monkeypatch) -> None:
    """Finding 3: cuda-python 13.x needs a CUDA 13 driver; the extra pins 12.x and the check says why."""
    from packaging.requirements import Requirement

    import wam_control.policy.tensorrt_backend as trt_mod
    import wam_control.policy.tensorrt_build as build_mod

    setup_py = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    line = next(ln for ln in setup_py.splitlines() if ln.strip().startswith('"tensorrt":'))
    specs = {}
    for raw in line.split("[", 1)[1].rsplit("]", 1)[0].split('", "'):
        req = Requirement(raw.strip(' "'))
        specs[req.name] = req.specifier
    assert "onnx" in specs  # the lint runs in build-engine
    cuda = specs["cuda-python"]
    assert "12.6.2" in cuda and "12.0.0" in cuda and "13.0.0" not in cuda and "13.1.1" not in cuda

    class Cudart:
        def cudaGetDeviceCount(self):
            return (35, 0)  # cudaErrorInsufficientDriver

        def cudaDriverGetVersion(self):
            return (0, 12060)

    monkeypatch.setattr(trt_mod.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(trt_mod, "import_cudart", Cudart)
    monkeypatch.setattr(build_mod, "cuda_python_version", lambda: "13.0.1")
    ok, why = trt_mod.tensorrt_usable()
    assert not ok and "cuda-python 13.0.1 needs a CUDA 13 driver" in why and "12.6" in why
    assert "'cuda-python>=12.0,<13'" in why
    monkeypatch.setattr(build_mod, "cuda_python_version", lambda: "12.6.2")
    ok, why = trt_mod.tensorrt_usable()
    assert not ok and "needs a CUDA" not in why  # a real driver problem is not blamed on the pin


class _Enum(int):
    def __new__(cls, value: int, name: str):
        obj = super().__new__(cls, value)
        obj.name = name
        return obj


class FakeCudart:
    """cuda-python's runtime module, as the runner uses it: every call returns (err, *values)."""

    class cudaError_t:
        cudaSuccess = _Enum(0, "cudaSuccess")
        cudaErrorNotReady = _Enum(600, "cudaErrorNotReady")

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = 1

    cudaStreamNonBlocking = 1

    def __init__(self, not_ready_polls: int = 0) -> None:
        import ctypes

        self.calls: list[str] = []
        self._ctypes = ctypes
        self._buffers: dict[int, object] = {}
        self.not_ready_polls = not_ready_polls
        self._polls_left = 0
        self.capturing = False
        self.end_capture_result: tuple | None = None

    def _ok(self, name, *values):
        self.calls.append(name)
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaStreamCreateWithFlags(self, flags):
        return self._ok("StreamCreate", 7)

    def cudaMallocHost(self, n):
        buf = self._ctypes.create_string_buffer(n)
        addr = self._ctypes.addressof(buf)
        self._buffers[addr] = buf
        return self._ok("MallocHost", addr)

    def cudaMalloc(self, n):
        return self._ok("Malloc", 0x1000 + len(self.calls))

    def cudaFree(self, p):
        return self._ok("Free")

    def cudaFreeHost(self, p):
        return self._ok("FreeHost")

    def cudaStreamDestroy(self, s):
        return self._ok("StreamDestroy")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        return self._ok("H2D" if kind == 1 else "D2H")

    def cudaStreamSynchronize(self, s):
        return self._ok("StreamSynchronize")

    def cudaStreamQuery(self, s):
        self.calls.append("StreamQuery")
        if self._polls_left > 0:
            self._polls_left -= 1
            return (self.cudaError_t.cudaErrorNotReady,)
        self._polls_left = self.not_ready_polls
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing = True
        return self._ok("BeginCapture")

    def cudaStreamEndCapture(self, s):
        self.capturing = False
        self.calls.append("EndCapture")
        return self.end_capture_result or (self.cudaError_t.cudaSuccess, "graph")

    def cudaGraphInstantiate(self, g, flags):
        return self._ok("GraphInstantiate", "graph_exec")

    def cudaGraphLaunch(self, g, s):
        return self._ok("GraphLaunch")

    def cudaGraphDestroy(self, g):
        return self._ok(f"GraphDestroy:{g}")

    def cudaGraphExecDestroy(self, g):
        return self._ok(f"GraphExecDestroy:{g}")


class FakeTrtModule:
    """The parts of the `tensorrt` module the runner and the builder touch."""

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class BuilderFlag:
        FP16, TF32 = "FP16", "TF32"

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Logger:
        WARNING = 2

        def __init__(self, level=None) -> None:
            pass

    def __init__(self, version: str = "10.3.0") -> None:
        self.__version__ = version
        self.configs: list[FakeBuilderConfig] = []
        self.timing: dict = {"set_results": [], "get_none": False, "serialize_raises": False}

    @staticmethod
    def nptype(dtype):
        return dtype

    def Builder(self, logger):
        return FakeBuilder(self)

    def OnnxParser(self, network, logger):
        return FakeParser()


class FakeParser:
    num_errors = 0

    def parse_from_file(self, path):
        return True


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self):
        return b"TIMING:" + self.data


class FakeBuilderConfig:
    def __init__(self, mod: FakeTrtModule) -> None:
        self.mod, self.flags, self.cleared, self.created = mod, set(), set(), []
        self.cache: FakeTimingCache | None = None

    def set_memory_pool_limit(self, pool, n):
        pass

    def set_flag(self, f):
        self.flags.add(f)

    def clear_flag(self, f):
        self.cleared.add(f)

    def add_optimization_profile(self, p):
        pass

    def create_timing_cache(self, data):
        self.created.append(bytes(data))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        results = self.mod.timing["set_results"]
        ok = results.pop(0) if results else True
        if ok:
            self.cache = cache
        return ok

    def get_timing_cache(self):
        if self.mod.timing["get_none"]:
            return None
        cache = self.cache or FakeTimingCache(b"")
        if self.mod.timing["serialize_raises"]:
            cache.serialize = lambda: (_ for _ in ()).throw(RuntimeError("no cache to serialize"))
        return cache


class FakeBuilder:
    def __init__(self, mod: FakeTrtModule) -> None:
        self.mod = mod

    def create_network(self, flags):
        return object()

    def create_builder_config(self):
        cfg = FakeBuilderConfig(self.mod)
        self.mod.configs.append(cfg)
        return cfg

    def create_optimization_profile(self):
        class Profile:
            def set_shape(self, *a):
                pass

        return Profile()

    def build_serialized_network(self, network, config):
        return b"PLAN-fake"


def _build(mod, precision="fp16", timing=None):
    from wam_control.policy.tensorrt_build import build_serialized

    return build_serialized(
        mod, "m.onnx", precision=precision, workspace_bytes=1 << 20, profile=(), timing_cache_path=timing,
        progress=False,
    )


@pytest.mark.parametrize("version,precision,flags,cleared", [
    ("10.3.0", "fp32", set(), {"TF32"}),
    ("11.1.0", "fp32", set(), {"TF32"}),
    ("10.3.0", "fp16", {"FP16"}, set()),
    ("11.1.0", "fp16", set(), set()),
])
def test_builder_flags_fp32_is_really_fp32(version, precision, flags, cleared) -> None:
    """Finding 7: TF32 is on by default in TensorRT; an fp32 build must clear it."""
    mod = FakeTrtModule(version)
    assert _build(mod, precision) == b"PLAN-fake"
    assert mod.configs[0].flags == flags and mod.configs[0].cleared == cleared


def test_timing_cache_round_trip_and_corruption(tmp_path, caplog) -> None:
    """Finding 5: the cache is checksummed; a corrupt file is discarded, not handed to TensorRT."""
    mod = FakeTrtModule()
    path = tmp_path / "timing.cache"
    assert _build(mod, timing=path) == b"PLAN-fake"
    assert mod.configs[0].created == [b""] and path.read_bytes() == b"TIMING:"
    _build(mod, timing=path)
    assert mod.configs[1].created == [b"TIMING:"]  # the stored cache is used
    path.write_bytes(b"TIMING:garbage")  # corrupt (checksum no longer matches)
    assert _build(mod, timing=path) == b"PLAN-fake"
    assert mod.configs[2].created == [b""] and "fails its checksum" in caplog.text
    assert path.read_bytes() == b"TIMING:"  # replaced by the fresh cache, checksum valid again
    _build(mod, timing=path)
    assert mod.configs[3].created == [b"TIMING:"]


def test_timing_cache_refused_or_missing_never_loses_the_plan(tmp_path, caplog) -> None:
    mod = FakeTrtModule()
    path = tmp_path / "timing.cache"
    _build(mod, timing=path)
    mod.timing["set_results"] = [False, True]  # stored cache refused, fresh one taken
    assert _build(mod, timing=path) == b"PLAN-fake"
    assert mod.configs[1].created == [b"TIMING:", b""] and "retrying with a fresh one" in caplog.text
    mod.timing["set_results"] = [False, False]  # no cache at all: build without, write nothing
    path.unlink()
    assert _build(mod, timing=path) == b"PLAN-fake" and not path.exists()
    assert "building without a timing cache" in caplog.text
    mod.timing["get_none"] = True  # refused silently: get_timing_cache() is None
    assert _build(mod, timing=path) == b"PLAN-fake" and not path.exists()
    mod.timing["get_none"], mod.timing["serialize_raises"] = False, True
    assert _build(mod, timing=path) == b"PLAN-fake" and not path.exists()
    assert "could not save timing cache" in caplog.text


def test_timing_cache_file_is_keyed_on_the_whole_device(tmp_path) -> None:
    from wam_control.policy.tensorrt_build import GpuInfo, timing_cache_path

    a = timing_cache_path(tmp_path, "10.3.0", GpuInfo("Orin", "8.7", 16, 61))
    paths = {
        a,
        timing_cache_path(tmp_path, "10.3.0", GpuInfo("Orin", "8.7", 8, 15)),
        timing_cache_path(tmp_path, "10.3.0", GpuInfo("NVIDIA H100 PCIe", "8.7", 16, 61)),
        timing_cache_path(tmp_path, "10.14.1", GpuInfo("Orin", "8.7", 16, 61)),
    }
    assert len(paths) == 4 and a.name.startswith("timing-10.3.0-orin-cc8.7-")


def test_gpu_identity_and_key_separate_modules_with_one_name() -> None:
    """Finding 7: Jetson Orin modules share name and compute capability; SM count and memory differ."""
    from types import SimpleNamespace

    from wam_control.policy.tensorrt_build import gpu_identity

    class Cudart:
        def __init__(self, sms, mem):
            self.props = SimpleNamespace(
                name=b"Orin\x00\x00", major=8, minor=7, multiProcessorCount=sms, totalGlobalMem=mem
            )

        def cudaGetDeviceProperties(self, device):
            return (0, self.props)

    agx = gpu_identity(Cudart(16, 62 * 2**30 + 123))
    nx = gpu_identity(Cudart(8, 15 * 2**30))
    assert tuple(agx) == ("Orin", "8.7", 16, 62) and tuple(nx) == ("Orin", "8.7", 8, 15)
    k1 = dataclasses.replace(KEY, sm_count=agx.sm_count, memory_gib=agx.memory_gib)
    k2 = dataclasses.replace(KEY, sm_count=nx.sm_count, memory_gib=nx.memory_gib)
    assert k1.digest() != k2.digest()


def test_engine_built_ahead_with_larger_max_batch_is_used(onnx_model, tmp_path) -> None:
    """Finding 6: `build-engine --max-batch 8` then a controller start (batch 1) loads that engine."""
    from wam_control.policy.tensorrt_backend import TensorRTBackend

    api = FakeTrt()
    ahead = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api, max_batch=8)
    assert ahead.how == "built" and {hi[0] for _n, _lo, _opt, hi in ahead.key.profile_shapes} == {8}
    start = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api)
    assert start.how == "cache" and len(api.builds) == 1 and start.key == ahead.key
    # A smaller covering engine is preferred to a larger one; an engine for other inputs never covers.
    cache = EngineCache(tmp_path, Path(onnx_model).stem)
    two = dataclasses.replace(ahead.key, profile_shapes=tuple(
        (n, lo, opt, (2, *hi[1:])) for n, lo, opt, hi in ahead.key.profile_shapes))
    cache.store(two, b"PLAN-2")
    assert TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api).key == two and len(api.builds) == 1
    want = ahead.key
    assert not dataclasses.replace(want, precision="fp32").covers(want)
    shrunk = tuple((n, lo, opt, lo) for n, lo, opt, _hi in want.profile_shapes)
    assert not dataclasses.replace(want, profile_shapes=shrunk).covers(want)
    # A rejected covering plan is rebuilt with the covering key's own profile (key and plan agree).
    for key in (ahead.key, two):
        cache.store(key, b"STALE")
    n = len(api.builds)
    b = TensorRTBackend(onnx_model, cache_dir=tmp_path, api=api)
    assert b.how == "rebuilt" and len(api.builds) == n + 1 and api.builds[-1][3] == b.key.profile_shapes


def test_backend_lints_before_building(onnx_model, tmp_path, monkeypatch, caplog) -> None:
    """A graph TensorRT's parser would refuse never reaches TensorRT; auto falls back with the reason."""
    pytest.importorskip("onnxruntime")
    import onnx

    import wam_control.policy.tensorrt_backend as trt_mod
    from wam_control.policy import load_backend
    from wam_control.policy.trt_lint import TrtCompatError

    m = onnx.load(str(onnx_model))
    cast = next(n for n in m.graph.node if "images" in n.input)
    cast.input[list(cast.input).index("images")] = "images_copy"
    m.graph.node.insert(0, onnx.helper.make_node("Identity", ["images"], ["images_copy"], name="uint8_copy"))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    api = FakeTrt()
    with pytest.raises(TrtCompatError, match="'uint8_copy' \\(Identity\\) reads UINT8 tensor 'images'"):
        trt_mod.TensorRTBackend(bad, cache_dir=tmp_path, api=api)
    assert api.builds == []
    monkeypatch.setattr(trt_mod, "tensorrt_usable", lambda: (True, ""))
    original = trt_mod.TensorRTBackend.__init__
    monkeypatch.setattr(
        trt_mod.TensorRTBackend, "__init__", lambda self, path, **kw: original(self, path, cache_dir=tmp_path, api=api)
    )
    assert load_backend(bad, "auto", warmup=0).name == "onnxruntime" and "uint8_copy" in caplog.text


def test_build_engine_lints_before_tensorrt(onnx_model, tmp_path, capsys) -> None:
    import onnx

    from wam_control.policy.tensorrt_build import main

    m = onnx.load(str(onnx_model))
    m.graph.node.insert(0, onnx.helper.make_node("Unique", ["state"], ["u"], name="uniq"))
    bad = tmp_path / "unique.onnx"
    onnx.save(m, str(bad))
    assert main(["--model", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not TensorRT-compatible" in err and "'uniq' (Unique)" in err and "unique.onnx" in err


# ---- the CUDA runner


class FakeContext:
    def __init__(self, shapes: dict, refuse: str = "", out_override: dict | None = None, exec_results=()):
        self.shapes, self.refuse, self.out_override = shapes, refuse, out_override or {}
        self.set: dict = {}
        self.exec_results = list(exec_results)
        self.calls: list[str] = []

    def set_input_shape(self, name, shape):
        self.calls.append(f"set_input_shape:{name}")
        if name == self.refuse:
            return False
        self.set[name] = tuple(shape)
        return True

    def infer_shapes(self):
        return []

    def get_tensor_shape(self, name):
        self.calls.append(f"get_tensor_shape:{name}")
        if name in self.set:
            return self.set[name]
        assert set(self.set) == set(self.shapes["inputs"]), "output shape asked before every input shape was set"
        return self.out_override.get(name, self.shapes["outputs"][name])

    def set_tensor_address(self, name, ptr):
        return True

    def execute_async_v3(self, stream):
        self.calls.append("execute")
        return self.exec_results.pop(0) if self.exec_results else True


class FakeEngine:
    def __init__(self, contract, **ctx_kw) -> None:
        self.ins = contract.input_shapes(1)
        self.outs = contract.output_shapes(1)
        self.names = [*self.outs, *self.ins]  # outputs first: the runner must not depend on the order
        self.dtypes = {n: np.float32 for n in self.names}
        self.dtypes.update(images=np.uint8, prefix_len=np.int64)
        self.ctx = FakeContext({"inputs": self.ins, "outputs": self.outs}, **ctx_kw)

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name in self.ins else "out"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def create_execution_context(self):
        return self.ctx


@pytest.fixture
def runner_parts(onnx_model):
    from wam_control.policy import example_input
    from wam_control.policy.contract import read_contract

    c = read_contract(onnx_model)
    inp = example_input(c, seed=2)
    feeds = {
        "images": inp.images[None],
        "state": inp.state[None],
        "action_prefix": inp.action_prefix[None],
        "prefix_len": np.array([inp.prefix_len], np.int64),
    }
    return c, feeds


def _runner(contract, cudart, cuda_graph=False, **ctx_kw):
    from wam_control.policy.tensorrt_backend import _CudaRunner

    engine = FakeEngine(contract, **ctx_kw)
    return _CudaRunner(FakeTrtModule(), cudart, engine, contract, cuda_graph, poll_s=0.0), engine


def test_runner_checks_set_input_shape_and_frees_on_error(runner_parts) -> None:
    """Finding 7: a refused input shape is an error naming the tensor (and nothing leaks)."""
    c, _ = runner_parts
    cr = FakeCudart()
    with pytest.raises(RuntimeError, match=r"refused input shape \[1, 2\] for state"):
        _runner(c, cr, refuse="state")
    assert cr.calls.count("StreamDestroy") == 1 and cr.calls.count("Malloc") == cr.calls.count("Free")


def test_runner_takes_output_shapes_from_the_context(runner_parts) -> None:
    """Finding 7: buffers are sized by the context after the input shapes are set, and checked."""
    c, feeds = runner_parts
    cr = FakeCudart()
    r, engine = _runner(c, cr)
    calls = engine.ctx.calls
    last_set = max(i for i, x in enumerate(calls) if x.startswith("set_input_shape"))
    assert calls.index("get_tensor_shape:latent_pred") > last_set
    assert r.host["latent_pred"].shape == (1, c.latent_steps, c.latent_dim)
    actions, latent, pred = r.run(feeds)
    assert actions.shape == (c.horizon, c.num_joints) and pred.shape == (c.latent_steps, c.latent_dim)
    r.close()
    bad = (1, c.latent_steps + 1, c.latent_dim)
    with pytest.raises(RuntimeError, match=rf"engine tensor latent_pred has shape \[1, {c.latent_steps + 1}, 8\] .* contract says"):
        _runner(c, FakeCudart(), out_override={"latent_pred": bad})


def test_runner_waits_by_polling_not_blocking(runner_parts) -> None:
    """Finding 7 (GIL): the wait polls cudaStreamQuery and sleeps in between, independent of whether
    cuda-python releases the GIL in a blocking cudaStreamSynchronize."""
    c, feeds = runner_parts
    cr = FakeCudart(not_ready_polls=3)
    r, _ = _runner(c, cr)
    cr._polls_left = 3
    cr.calls.clear()
    r.run(feeds)
    assert cr.calls.count("StreamQuery") == 4 and "StreamSynchronize" not in cr.calls
    assert cr.calls[-1] == "StreamQuery" and cr.calls.index("StreamQuery") > cr.calls.index("D2H")


def test_cuda_graph_capture_sync_check_and_destroy(runner_parts) -> None:
    """Finding 4: warm-up, synchronize, capture (checked), instantiate; launch after; destroy both."""
    c, feeds = runner_parts
    cr = FakeCudart()
    r, engine = _runner(c, cr, cuda_graph=True)
    cr.calls.clear()
    r.run(feeds)
    seq = [x for x in cr.calls if x in ("StreamSynchronize", "BeginCapture", "EndCapture", "GraphInstantiate")]
    assert seq == ["StreamSynchronize", "BeginCapture", "EndCapture", "GraphInstantiate"]
    assert engine.ctx.calls.count("execute") == 2  # warm-up + the captured one
    cr.calls.clear()
    r.run(feeds)
    assert "GraphLaunch" in cr.calls and engine.ctx.calls.count("execute") == 2
    r.recapture()
    assert "GraphExecDestroy:graph_exec" in cr.calls and "GraphDestroy:graph" in cr.calls
    r.run(feeds)
    assert engine.ctx.calls.count("execute") == 4  # captured again
    cr.calls.clear()
    r.close()
    assert cr.calls.index("GraphExecDestroy:graph_exec") < cr.calls.index("GraphDestroy:graph") < cr.calls.index(
        "Free"
    )
    r.close()  # idempotent


def test_cuda_graph_capture_failure_ends_capture_and_raises(runner_parts) -> None:
    c, feeds = runner_parts
    cr = FakeCudart()
    r, _ = _runner(c, cr, cuda_graph=True, exec_results=[True, False])
    with pytest.raises(RuntimeError, match=r"CUDA graph capture .*\(execute_async_v3 returned False\)"):
        r.run(feeds)
    assert not cr.capturing and "GraphDestroy:graph" in cr.calls and "GraphInstantiate" not in cr.calls
    assert r._graph is None and r._graph_exec is None
    r.close()
    cr2 = FakeCudart()
    cr2.end_capture_result = (_Enum(901, "cudaErrorStreamCaptureInvalidated"), None)
    r2, _ = _runner(c, cr2, cuda_graph=True)
    with pytest.raises(RuntimeError, match="cudaStreamEndCapture"):
        r2.run(feeds)
    r2.close()
