"""Asynchronous inference: the control loop hands over one observation and never waits for the answer.

Two modes behind one `InferenceWorker` protocol:

- `ThreadWorker` runs `backend.infer` in a daemon thread of this process. Cheapest hand-over; right
  when the backend releases the GIL for the whole model call (ONNX Runtime, TensorRT).
- `ProcessWorker` runs the backend in a child process started with multiprocessing "spawn" (a fresh
  interpreter: forking a parent that already runs ONNX Runtime / CUDA thread pools is unsafe, and the
  forkserver would have to import the same libraries anyway). Inputs and outputs live in shared memory
  allocated once; a request crosses the pipe as a tuple of three small ints, so no large array is
  pickled on the hot path. A crash of the model or its runtime kills only the child.

Both are supervised the same way, from the control thread, without blocking it: `check(now)` detects a
dead worker (thread/process gone, pipe closed) and a hung one (a request in flight longer than
`deadline_s` on the injected clock), abandons the request (reported as an error result), restarts the
worker after an exponential backoff, and counts everything for `health()`. A late result of an
abandoned request is discarded. Starting or restarting never blocks the caller: backends are created
and warmed up inside the worker, which reports ready when done. A backend that raises `BackendUnavailable` (a remote model
server gone or too slow) is treated as a crash of the worker, not as one bad result.

Only the thread that owns the worker (the control thread) may call submit/poll/check/health.

The package, by job: `protocol` (requests, results, the `InferenceWorker` protocol, shape checks),
`supervision` (the state machine both modes share), `thread` (`ThreadWorker`), `shm` (shared-memory
layout and the child process's loop), `process` (`ProcessWorker`), `factory` (`make_worker`).
"""

from wam_control.runtime.worker.factory import make_worker
from wam_control.runtime.worker.process import ProcessWorker
from wam_control.runtime.worker.protocol import (
    InferenceRequest,
    InferenceResult,
    InferenceWorker,
    WorkerMode,
)
from wam_control.runtime.worker.thread import ThreadWorker

__all__ = [
    "InferenceRequest",
    "InferenceResult",
    "InferenceWorker",
    "ProcessWorker",
    "ThreadWorker",
    "WorkerMode",
    "make_worker",
]
