"""The one place a running controller is assembled.

Both nodes (through `transport.adapter.build_runtime`), the demo, every bench and the replays get their
controller here, so an option means the same thing everywhere:

- `resolve(config, model, overrides) -> RuntimeSpec`: everything decided once, before anything runs:
  the model's contract checked against the config (and `check_model.refusals`), the backend and its
  loader options (`threads` is the one thread-count knob, the loader spells it per backend; `device`;
  Triton's server address; the frame check's decoder when the surprise monitor runs it), whether a
  surprise monitor runs and with which calibration file, the imagination preview's decoder.
- `build(spec, clock, worker) -> RuntimeParts`: the running parts of one controller: the inference
  worker (from a factory, default `make_worker`), the Controller with its execution strategy, a fresh
  surprise monitor and the imagination preview. Drivers that run many episodes on one worker or one
  backend call `build` once per episode with the same spec.
- `build_runtime(config, model, overrides, clock, worker_factory)`: both steps at once.

Surprise monitor (`Overrides.surprise`):
- "required" (the nodes' default): `surprise.enabled` with a world-model head needs its calibration
  file; a missing one is a CalibrationError naming the command that makes it.
- "if_calibrated": as "required", except that a missing calibration file means no monitor, said in
  `RuntimeSpec.surprise_note`. Only drivers that ask for it explicitly get this (the demo, the
  closed-loop bench); a file that exists but does not fit the model is still an error.
- "caller": the caller hands a monitor to `build` (the surprise bench, which calibrates and records);
  the frame check is still set up from the config.
- "off": no monitor and no frame check.
The synchronous execution strategy never gets a monitor (its nominal statistics were measured on
chunks that follow each other without a stop).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from wam_control.config.schema import RobotConfig
from wam_control.policy.contract import ModelContract
from wam_control.runtime.clock import Clock
from wam_control.runtime.controller import Controller

log = logging.getLogger(__name__)

SurpriseMode = Literal["required", "if_calibrated", "caller", "off"]


@dataclass(frozen=True)
class Overrides:
    """What a command line may change on top of the configuration (None: the configuration's)."""

    backend: str | None = None
    """auto|onnxruntime|tensorrt|torch|triton (inference.backend)."""
    worker: str | None = None
    """thread|process (inference.worker), for the default worker factory."""
    surprise: SurpriseMode = "required"
    imagination: bool = True
    """False: no imagination preview even when the config enables it (drivers without subscribers)."""
    execution: str = "async"
    """async (chunks execute while the next one is computed) | sync (observe, hold, execute, repeat)."""
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Extra loader options on top of the resolved ones (e.g. warmup)."""


@dataclass
class RuntimeSpec:
    """Everything resolved and checked before anything runs (see the module docstring)."""

    config: RobotConfig
    model_path: str
    contract: ModelContract
    overrides: Overrides
    backend: str
    backend_options: dict[str, Any]
    calibration: Path | None = None
    """The surprise calibration file when a monitor runs (modes required / if_calibrated)."""
    surprise_note: str = "off"
    """One line: whether the monitor runs and why not."""
    frame_check_decoder: str = ""
    tokenizer: Any = None

    @property
    def surprise_enabled(self) -> bool:
        return self.calibration is not None or (
            self.overrides.surprise == "caller" and self.contract.has_world_model
        )

    def load_backend(self, **extra: Any) -> Any:
        """The backend with the resolved options, loaded in this process (lockstep drivers)."""
        from wam_control.policy import load_backend

        return load_backend(self.model_path, self.backend, **{**self.backend_options, **extra})

    def make_monitor(self) -> Any:
        """A fresh surprise monitor from the calibration file, or None when none runs."""
        if self.calibration is None:
            return None
        from wam_control.runtime.surprise import build_monitor

        return build_monitor(self.config.surprise, self.contract, self.config.control_hz, self.model_path)


@dataclass
class RuntimeParts:
    """The running parts of one controller."""

    controller: Controller
    worker: Any
    surprise: Any = None
    """SurpriseMonitor (attached to the controller) or None."""
    imagination: Any = None
    """ImaginationPreview (the controller's result hook) or None."""
    tokenizer: Any = None
    """InstructionTokenizer for a model that takes a language prompt (the nodes hand it to ControllerIO)."""
    model_path: str = ""
    """The model file the controller runs (or whose contract a remote backend serves)."""

    def close(self) -> None:
        if self.imagination is not None:
            self.imagination.close()
        self.controller.close()


WorkerFactory = Callable[[RuntimeSpec, Clock], Any]
"""(spec, clock) -> an InferenceWorker (not started: the controller starts it)."""


def default_worker_factory(spec: RuntimeSpec, clock: Clock) -> Any:
    from wam_control.runtime.worker import make_worker

    return make_worker(
        spec.overrides.worker or spec.config.inference.worker,  # type: ignore[arg-type]  # validated there
        spec.model_path,
        spec.contract,
        clock,
        deadline_s=spec.config.timeouts.inference_deadline_s,
        backend=spec.backend,
        backend_options=dict(spec.backend_options),
    )


def _wants_surprise(config: RobotConfig, contract: ModelContract) -> bool:
    # (enabled: true with a model without the head was refused by check_model.refusals)
    return bool(config.surprise.enabled) and contract.has_world_model


def resolve(
    config: RobotConfig,
    model: str | os.PathLike[str] | None = None,
    overrides: Overrides | None = None,
    *,
    contract: ModelContract | None = None,
) -> RuntimeSpec:
    """Check the model against the config and decide every option once; every file is checked here,
    so a bad deployment fails with the file's name before anything starts. `contract`: a contract
    without a model file behind it (replays with a scripted model; no file checks then)."""
    ov = overrides or Overrides()
    if ov.surprise not in ("required", "if_calibrated", "caller", "off"):
        raise ValueError(f"surprise must be required|if_calibrated|caller|off, got {ov.surprise!r}")
    if ov.execution not in ("async", "sync"):
        raise ValueError(f"execution must be 'async' or 'sync', got {ov.execution!r}")
    path = str(model or config.inference.model or "")
    backend = ov.backend or config.inference.backend
    if contract is not None:
        from wam_control.policy.contract import check_contract

        check_contract(contract, config)
        return RuntimeSpec(config, path, contract, ov, backend, {}, surprise_note="off (scripted model)")
    if not path:
        raise ValueError(f"{config.source}: inference.model: no model given (use --model or inference.model)")
    from wam_control.policy import check_contract, read_contract
    from wam_control.policy.check_model import model_plan, refusals

    contract = read_contract(path)
    check_contract(contract, config)
    # Refusals judge the backend that will run (an override included), not only the config's.
    effective = replace(config, inference=replace(config.inference, backend=backend))
    problems = refusals(contract, effective)
    if problems:
        raise ValueError(f"{config.source} with model {path}: " + "; ".join(problems))
    for part, line in model_plan(contract, config):
        log.info("model %s: %s: %s", contract.model_name, part, line)
    tokenizer = None
    if contract.has_instruction:
        from wam_control.policy.instruction import InstructionTokenizer

        tokenizer = InstructionTokenizer(path, contract)

    options: dict[str, Any] = {"threads": config.inference.threads}
    if config.inference.device != "auto":
        options["device"] = config.inference.device
    if backend == "triton":  # remote model: the server's address etc.
        from wam_control.policy.triton_backend import triton_options

        options.update(triton_options(config))
    calibration, note = _resolve_surprise(config, contract, path, ov.surprise)
    decoder = ""
    runs_monitor = calibration is not None or (ov.surprise == "caller" and contract.has_world_model)
    if runs_monitor and config.surprise.frame_check:
        from wam_control.runtime.surprise import frame_check_decoder

        decoder = frame_check_decoder(config.surprise, contract, path)
        options["frame_check"] = decoder  # the frame check runs beside the model, in the worker
    options.update(ov.backend_options)
    spec = RuntimeSpec(config, path, contract, ov, backend, options, calibration, note, decoder, tokenizer)
    if calibration is not None:
        spec.make_monitor()  # a calibration that does not fit the model fails now, not in episode 1
    if ov.imagination:
        _imagination_decoder(config, path)  # a missing decoder fails now
    return spec


def _resolve_surprise(
    config: RobotConfig, contract: ModelContract, model_path: str, mode: str
) -> tuple[Path | None, str]:
    if mode in ("off", "caller") or not _wants_surprise(config, contract):
        return None, "off"
    from wam_control.runtime.calibration import CalibrationError, default_calibration_path

    given = config.surprise.calibration
    cal = Path(given) if given else default_calibration_path(model_path)
    if cal.is_file():
        return cal, f"on ({cal})"
    if mode == "if_calibrated":
        return None, f"off (no calibration file {cal})"
    command = f"wam-control bench surprise --calibrate-only --model {model_path}"
    if Path(config.source).is_file():
        command += f" --config {config.source}"  # the deployment's control rate sets the cadence
    if given:
        command += f" --calibration {given}"
    raise CalibrationError(
        f"{config.source}: surprise.enabled is true but its calibration file {cal} does not exist. "
        f"Create it from nominal closed-loop runs in the sim with `{command}`, "
        "or set surprise.enabled: false to run without the surprise monitor"
    )


def _imagination_decoder(config: RobotConfig, model_path: str) -> Path | None:
    im = config.imagination
    if not im.enabled:
        return None
    from wam_control.imagination import DecoderError, default_decoder_path

    decoder = Path(im.decoder) if im.decoder else default_decoder_path(model_path)
    if not decoder.is_file():
        raise DecoderError(
            f"{config.source}: imagination.enabled is true but its decoder {decoder} does not exist. "
            "Train it for this model with `wam-control train-decoder --checkpoint <model>.pt --data <bags> "
            f"--out {decoder}`, or set imagination.enabled: false"
        )
    return decoder


def _build_imagination(spec: RuntimeSpec) -> Any:
    """The preview, not yet loaded: the decoder is opened on the first subscriber (imagination.py). Only
    imported when enabled, so a deployment without it never loads the module or starts its thread."""
    if not spec.overrides.imagination:
        return None
    decoder = _imagination_decoder(spec.config, spec.model_path)
    if decoder is None:
        return None
    import numpy as np

    from wam_control.imagination import ImaginationPreview

    im = spec.config.imagination

    def unbound(rgb: np.ndarray, tick: int, horizon_s: float) -> None:
        raise RuntimeError("imagination preview: no publisher bound (ControllerIO.bind_imagination)")

    return ImaginationPreview(decoder, spec.contract, spec.config.control_hz, unbound,
                              offset=im.offset or None,  # 0: the furthest prediction
                              max_rate_hz=im.max_rate_hz)  # fmt: skip


_DEFAULT: Any = object()


def build(
    spec: RuntimeSpec,
    clock: Clock,
    worker: WorkerFactory | Any = None,
    *,
    monitor: Any = _DEFAULT,
    execution: str | None = None,
    **controller_options: Any,
) -> RuntimeParts:
    """The running parts of one controller. `worker`: a factory (spec, clock) -> worker (default
    `make_worker` with the spec's mode, backend and options) or a worker already made (shared by the
    episodes of a driver). `monitor`: with surprise mode "caller", the monitor to attach. `execution`:
    async|sync instead of the spec's (a driver comparing both on one spec).
    `controller_options`: passed to the Controller (scheduler_params, buffers, safety_filter, ...)."""
    if worker is None:
        worker = default_worker_factory
    inference_worker = worker(spec, clock) if callable(worker) and not hasattr(worker, "submit") else worker
    execution = execution or spec.overrides.execution
    sync = execution == "sync"
    if monitor is _DEFAULT:
        monitor = None if sync else spec.make_monitor()
    elif spec.overrides.surprise != "caller":
        raise ValueError("a monitor is handed to build() only with Overrides(surprise='caller')")
    preview = _build_imagination(spec)
    from wam_control.runtime.controller import execution_strategy

    controller = Controller(
        spec.config,
        spec.contract,
        inference_worker,
        clock,
        surprise_monitor=monitor,
        result_hook=preview.hook if preview is not None else None,
        execution=execution_strategy(execution),
        **controller_options,
    )
    if spec.tokenizer is not None and spec.config.instruction:
        # Tokenized here, once, at start-up; ~/instruction replaces it while running.
        from wam_control.policy.instruction import InstructionInput

        InstructionInput(controller, spec.tokenizer).set(spec.config.instruction)
    return RuntimeParts(controller, inference_worker, monitor, preview, spec.tokenizer, spec.model_path)


def build_runtime(
    config: RobotConfig,
    model: str | os.PathLike[str] | None = None,
    overrides: Overrides | None = None,
    clock: Clock | None = None,
    worker_factory: WorkerFactory | None = None,
) -> tuple[RuntimeSpec, RuntimeParts]:
    """`resolve` and `build` at once (a node: one controller for the life of the process)."""
    if clock is None:
        from wam_control.runtime.clock import MonotonicClock

        clock = MonotonicClock()
    spec = resolve(config, model, overrides)
    return spec, build(spec, clock, worker_factory)
