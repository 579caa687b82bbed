"""runtime layer; see docs/architecture.md.

Names are imported on first use, so `import wam_control.runtime` stays cheap and a transport that
needs only the Controller does not pay for the worker's multiprocessing machinery until it uses it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Clock": "clock",
    "MonotonicClock": "clock",
    "SimClock": "clock",
    "Controller": "controller",
    "ControllerStatus": "controller",
    "JointCommand": "controller",
    "ChunkScheduler": "scheduler",
    "SchedulerParams": "scheduler",
    "SafetyFilter": "safety",
    "FixedRateLoop": "loop",
    "LoopStats": "loop",
    "ObservationBuffers": "buffers",
    "ObservationSnapshot": "buffers",
    "InferenceRequest": "worker",
    "InferenceResult": "worker",
    "InferenceWorker": "worker",
    "ThreadWorker": "worker",
    "ProcessWorker": "worker",
    "make_worker": "worker",
    "ScriptedWorker": "replay",
    "ReferenceModel": "replay",
    "FirstOrderPlant": "replay",
    "Replay": "replay",
    "build_rig": "replay",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wam_control.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"wam_control.runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
