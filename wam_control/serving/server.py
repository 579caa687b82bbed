"""`wam-control serve`: a real Triton Inference Server for a WAM model file, and `LocalServer` to run it.

    wam-control serve --model models/wam_reach_wrist.onnx [--host 0.0.0.0] [--port 8001] [--max-batch 8]
        [--runtime direct|pytriton]

The server is NVIDIA Triton Inference Server as the `nvidia-pytriton` wheel ships it (the `tritonserver`
binary and its Python backend), serving one Triton model with dynamic batching: requests that queue
while the model runs are executed as one batch (up to `--max-batch`). The model runs through ONNX
Runtime (TensorRT EP -> CUDA EP -> CPU, whichever the installed onnxruntime has:
`policy.onnxruntime_backend`). Clients speak Triton's standard gRPC protocol (KServe v2); the robot side
is `inference.backend: triton` (`wam_control.policy.triton_backend`). Two runtimes, the same model config
and gRPC interface:

- `direct` (default): a model repository with a Python-backend `model.py` (`serving.triton_model`, the
  repository `triton-repo --platform python` writes) run by the wheel's `tritonserver`; ONNX Runtime
  runs inside Triton's backend stub process. Request path: gRPC -> Triton core -> stub (shared memory)
  -> ONNX Runtime.
- `pytriton`: pytriton's `Triton.bind()`: the stub forwards every request to this Python process (ZMQ +
  shared-memory blocks), which runs ONNX Runtime. One more process hop per request: ~8 ms more per
  round trip on the 2-core CPU of docs/benchmarks/serving.md. Kept for comparison.

The stub embeds libpython and takes its Python environment from the `python3` first on PATH; the server
is started with this interpreter's folder first on PATH (its venv: the same numpy and onnxruntime as
here; the system's numpy 2 in the stub returns empty output tensors) and this interpreter's libpython
on LD_LIBRARY_PATH.

The served model's Triton config carries the model contract (parameter `wam_contract`, the same JSON
values as the ONNX metadata), so a robot checks the server's model against its configuration, and
against its own copy of the model file, before it starts.

For a production server with Triton's own ONNX Runtime / TensorRT backends, write a model repository
with `wam-control triton-repo` instead (`serving.repo`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001
DEFAULT_MAX_BATCH = 8
RUNTIMES = ("direct", "pytriton")
DEFAULT_RUNTIME = "direct"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _python_lib_env() -> None:
    """Point the Python backend stub at this interpreter's libpython.

    The stub links libpython3.X dynamically; when the system's libpython of that version is another build
    than this interpreter (pyenv, conda), the model fails to load ("'_thread.RLock' object has no attribute
    '_recursion_count'"). The server inherits this process's environment.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + current if current else "")


def _import_pytriton() -> Any:
    try:
        import pytriton.triton as pt
    except ImportError as exc:
        raise ImportError(
            "wam-control serve needs nvidia-pytriton (Triton Inference Server as a wheel): "
            "pip install 'wam_control[serve]'"
        ) from exc
    return pt


class OrtBatchModel:
    """The model as Triton's batched infer function: requests of one dynamic batch -> one ONNX Runtime run."""

    def __init__(self, model_path: str, *, threads: int = 1, providers: str = "auto") -> None:
        from wam_control.policy.onnxruntime_backend import OnnxRuntimeBackend

        self.backend = OnnxRuntimeBackend(model_path, providers=providers, intra_op_threads=threads)
        self.contract = self.backend.contract
        self.session = self.backend.session
        # The contract's tensors only: a model without the prefix inputs, the world-model head or the
        # prompt (contract v1) is served with what it has.
        from wam_control.policy.contract import expected_io

        ins, outs = expected_io(self.contract)
        self._inputs = list(ins)
        self._outputs = list(outs)
        self.executions = 0
        self.batched = 0

    def describe(self) -> str:
        return self.backend.describe()

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        sizes = [int(r.data["state"].shape[0]) for r in requests]
        if len(requests) == 1:
            feeds = {name: requests[0].data[name] for name in self._inputs}
        else:
            feeds = {name: np.concatenate([r.data[name] for r in requests]) for name in self._inputs}
        if "prefix_len" in feeds:  # one scalar per request on the wire ([B, 1]); the model takes [B]
            feeds["prefix_len"] = feeds["prefix_len"].reshape(-1).astype(np.int64, copy=False)
        outs = self.session.run(self._outputs, feeds)
        self.executions += 1
        self.batched += sum(sizes)
        replies = []
        start = 0
        for n in sizes:
            replies.append(
                {name: out[start : start + n] for name, out in zip(self._outputs, outs, strict=True)}
            )
            start += n
        return replies


def bind_model(triton: Any, model: OrtBatchModel, name: str, max_batch: int, queue_delay_us: int) -> None:
    """Bind the model to a pytriton `Triton` with the contract's inputs and outputs and dynamic batching."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from wam_control.policy.triton_backend import CONTRACT_PARAMETER, contract_parameter_value, triton_io

    c = model.contract
    ins, outs = triton_io(c)
    dtypes = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}
    triton.bind(
        model_name=name,
        infer_func=model,
        inputs=[Tensor(name=n, dtype=dtypes[dt], shape=shape) for n, (dt, shape) in ins.items()],
        outputs=[Tensor(name=n, dtype=dtypes[dt], shape=shape) for n, (dt, shape) in outs.items()],
        config=ModelConfig(
            batching=True,
            max_batch_size=int(max_batch),
            batcher=DynamicBatcher(max_queue_delay_microseconds=int(queue_delay_us)),
        ),
        strict=False,
    )
    # The contract travels in the served model's config parameters (as in a `triton-repo` config.pbtxt).
    # pytriton has no public setting for extra parameters; its model config object is extended here,
    # before the server loads the model. Without it the robot falls back to its own model file.
    try:
        for m in triton._model_manager.models:  # pytriton 0.7 internals (pinned in setup.py)
            if m.model_name == name:
                m._get_triton_model_config().backend_parameters[CONTRACT_PARAMETER] = (
                    contract_parameter_value(c)
                )
    except Exception as exc:  # pragma: no cover - depends on pytriton's internals
        log.warning("serve: could not publish the model contract in the Triton config (%s)", exc)


def _tritonserver_dist() -> Path:
    """The folder of the `tritonserver` binary and its Python backend inside the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise ImportError(
            "wam-control serve needs nvidia-pytriton (Triton Inference Server as a wheel): "
            "pip install 'wam_control[serve]'"
        ) from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `tritonserver` and its Python backend stub (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    # The stub's embedded Python finds its prefix from `python3` on PATH: this interpreter's venv.
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    libs = [sysconfig.get_config_var("LIBDIR") or ""]
    wheel_libs = _tritonserver_dist().parent.parent / "nvidia_pytriton.libs"
    libs.append(str(wheel_libs))
    libs += [x for x in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if x]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(x for x in libs if x and os.path.isdir(x)))
    # ros_wheels_bootstrapper (the [ros] extra) re-executes any Python started in the venv unless this
    # guard is set; inside the stub that re-exec fails ("argv must not be empty") and the model never loads.
    env.setdefault("_ROS_WHEELS_BOOTSTRAP_COMPLETE", "1")
    return env


def serve_direct(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    http_port: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
    queue_delay_us: int = 0,
    threads: int = 1,
    providers: str = "auto",
    name: str = "",
) -> int:
    """`tritonserver` on a Python-backend repository (ONNX Runtime in the stub) until SIGINT / SIGTERM."""
    import secrets
    import shutil

    from wam_control.policy import read_contract
    from wam_control.policy.triton_backend import triton_model_name
    from wam_control.serving.repo import write_repository

    dist = _tritonserver_dist()
    contract = read_contract(model_path)
    name = name or triton_model_name(contract)
    work = Path(tempfile.mkdtemp(prefix="wam-triton-"))
    try:
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton ships no Python backend stub for Python {version} ({stub})")
        # The wheel keeps one stub per Python version; the backend wants the one for this interpreter next
        # to libtriton_python.so (links: nothing large is left behind when the server is SIGKILLed).
        for src in (dist / "backends" / "python" / "libtriton_python.so",
                    dist / "backends" / "python" / "triton_python_backend_utils.py", stub):  # fmt: skip
            (backend / src.name).symlink_to(src)
        write_repository(
            model_path, work / "models", platform="python", name=name, max_batch=max_batch,
            queue_delay_us=queue_delay_us, instances=1, kind="cpu", copy_model=False,
            parameters={"providers": providers, "intra_op_threads": str(int(threads))},
        )  # fmt: skip
        # The same restriction as the pytriton runtime: statistics stay readable (the robots read batching
        # and compute time), repository control, shared memory, trace and logging need a token nobody has.
        restricted = f"model-repository,shared-memory,trace,logging:wam-serve-token={secrets.token_hex(16)}"
        cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={work / 'models'}",
            f"--backend-directory={work / 'backends'}",
            f"--cache-directory={dist / 'caches'}",
            "--disable-auto-complete-config",
            f"--grpc-address={host}",
            f"--grpc-port={int(port)}",
            "--http-address=127.0.0.1",
            f"--http-port={int(http_port) or free_port()}",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
            f"--grpc-restricted-protocol={restricted}",
            f"--http-restricted-api={restricted}",
            # one shared-memory region per stub big enough for a full batch (no growth on the request path)
            "--backend-config=python,shm-default-byte-size=8388608",
        ]
        print(
            f"wam-control serve: model {name!r} ({model_path}) on Triton gRPC {host}:{port}, dynamic batching "
            f"up to {max_batch} (queue delay {queue_delay_us} us), runtime direct (ONNX Runtime in the "
            f"Python backend stub, providers {providers}, {threads} thread(s))",
            flush=True,
        )
        proc = subprocess.Popen(cmd, env=server_env())

        def on_term(signum: int, frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # tritonserver unloads the model and stops the stub

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        rc = proc.wait()
        return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def serve(model_path: str, *, runtime: str = DEFAULT_RUNTIME, **options: Any) -> int:
    """Run a Triton server for `model_path` until SIGINT / SIGTERM (options: see `serve_direct`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return (serve_direct if runtime == "direct" else serve_pytriton)(model_path, **options)


def serve_pytriton(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    http_port: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
    queue_delay_us: int = 0,
    threads: int = 1,
    providers: str = "auto",
    name: str = "",
) -> int:
    """pytriton's server: the model runs in this process, behind pytriton's proxy in the stub."""
    from wam_control.policy.triton_backend import triton_model_name

    _python_lib_env()
    pt = _import_pytriton()
    model = OrtBatchModel(model_path, threads=threads, providers=providers)
    name = name or triton_model_name(model.contract)
    config = pt.TritonConfig(
        grpc_address=host,
        grpc_port=int(port),
        http_address="127.0.0.1",
        http_port=int(http_port) or free_port(),
        allow_metrics=False,
        exit_on_error=True,
        log_verbose=0,
    )

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # pytriton restricts its statistics endpoint by default; the robots read batching and compute time
    # from it (read-only). Model-repository control, shared memory, trace and logging stay restricted.
    security = pt.TritonSecurityConfig(
        restricted_endpoints=["model-repository", "shared-memory", "trace", "logging"]
    )
    triton = pt.Triton(config=config, security_config=security)
    try:
        # Bound before the server starts, so the model is loaded once with the contract in its config.
        bind_model(triton, model, name, max_batch, queue_delay_us)
        print(
            f"wam-control serve: model {name!r} ({model_path}) on Triton gRPC {host}:{port}, "
            f"dynamic batching up to {max_batch} (queue delay {queue_delay_us} us), {model.describe()}",
            flush=True,
        )
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wam-control serve", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the WAM ONNX file (contract in its metadata)")
    ap.add_argument(
        "--host", default="127.0.0.1", help="gRPC bind address (default loopback; 0.0.0.0 on a GPU host)"
    )
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gRPC port (default {DEFAULT_PORT})")
    ap.add_argument(
        "--http-port", type=int, default=0, help="Triton's HTTP port, on loopback (default: a free one)"
    )
    ap.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="largest dynamic batch (robots served at once)",
    )
    ap.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        help="how long the batcher may hold a request to fill a batch (0: batch only what already queues)",
    )
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--providers", default="auto", help="ONNX Runtime providers: auto|cpu|cuda|tensorrt")
    ap.add_argument("--name", default="", help="Triton model name (default: the contract's model_name)")
    ap.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=DEFAULT_RUNTIME,
        help="direct: ONNX Runtime inside Triton's Python backend stub (default, one hop less); "
        "pytriton: pytriton's proxy to this process",
    )
    args = ap.parse_args(argv)
    if args.max_batch < 1:
        ap.error("--max-batch must be >= 1")
    if not Path(args.model).is_file():
        print(f"wam-control serve: model file {args.model} not found", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return serve(
        args.model,
        runtime=args.runtime,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        threads=args.threads,
        providers=args.providers,
        name=args.name,
    )


class LocalServer:
    """`wam-control serve` as a child process on loopback (its own process group, so that `kill()` takes
    the Triton server and its backend stub with it): for the demo, the benchmarks and the tests."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        port: int = 0,
        max_batch: int = DEFAULT_MAX_BATCH,
        queue_delay_us: int = 0,
        threads: int = 1,
        name: str = "",
        log_path: str | os.PathLike[str] | None = None,
        extra_env: dict[str, str] | None = None,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.runtime = runtime
        self.model_path = os.fspath(model_path)
        self.port = int(port) or free_port()
        self.max_batch = int(max_batch)
        self.queue_delay_us = int(queue_delay_us)
        self.threads = int(threads)
        self.name = name
        self.extra_env = dict(extra_env or {})
        self._own_log = log_path is None
        self.log_path = (
            Path(log_path)
            if log_path is not None
            else Path(tempfile.mkstemp(prefix="wam-serve-", suffix=".log")[1])
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "wam_control.serving.server", "--model", self.model_path,
            "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", str(self.max_batch),
            "--queue-delay-us", str(self.queue_delay_us), "--threads", str(self.threads),
            "--runtime", self.runtime,
        ]  # fmt: skip
        if self.name:
            cmd += ["--name", self.name]
        return cmd

    def start(self, timeout_s: float = 60.0) -> LocalServer:
        """Start the server and wait until its model is ready (raises with the server's log if not)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"LocalServer on {self.url} already running")
        env = {**os.environ, **self.extra_env}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.command(), stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc as grpcclient

        from wam_control.policy.triton_backend import triton_model_name

        name = self.name
        if not name:
            from wam_control.policy import read_contract

            name = triton_model_name(read_contract(self.model_path))
        end = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while time.monotonic() < end:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"Triton server exited during start-up:\n{self.log_tail()}")
                with contextlib.suppress(Exception):
                    if client.is_model_ready(name, client_timeout=1.0):
                        return
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(
            f"Triton server on {self.url} not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and everything it started (a crashed GPU host)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10.0)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL what is left of the process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        self._signal(signal.SIGKILL)  # the group: the server's own children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        end = time.monotonic() + 5.0
        while time.monotonic() < end:  # until the group's last member (tritonserver, stub) is gone
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            self._signal(signal.SIGKILL)
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
