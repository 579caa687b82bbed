"""GPU-host side of a split deployment (DESIGN.md §8): serve a WAM with Triton Inference Server.

- `server.py`: `wam-control serve` (a real Triton server from the `nvidia-pytriton` wheel, the model run by
  ONNX Runtime inside it, dynamic batching) and `LocalServer` (that command as a child process, for the
  demo, the benchmarks and the tests).
- `repo.py`: `wam-control triton-repo` (a model repository for a production Triton server and its own
  ONNX Runtime / TensorRT / Python backends) and the reader that checks a written `config.pbtxt` against the
  contract.
- `triton_model.py`: the Python-backend `model.py` (ONNX Runtime inside Triton's backend stub) that
  `serve --runtime direct` (the default) and `triton-repo --platform python` put in the repository.

The robot side is `wam_control.policy.triton_backend` (inference.backend: triton).
"""
