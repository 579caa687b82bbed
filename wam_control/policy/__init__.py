"""policy layer: the WAM model contract and the inference backends (see docs/model_contract.md).

Importing this package needs only numpy; onnxruntime, torch and TensorRT are imported by the backend
that uses them. The interface every backend implements is `policy.base`; the loader that picks one is
`policy.loader`; the backends import the interface only. The PyTorch backend lives in the model layer
(`wam_control.model.torch_backend`): it runs that layer's network.
"""

from wam_control.policy.base import (
    BACKENDS,
    BackendUnavailable,
    PolicyBackend,
    PolicyInput,
    PolicyOutput,
    example_input,
)
from wam_control.policy.contract import (
    CONTRACT_VERSION,
    INPUT_NAMES,
    OUTPUT_NAMES,
    ContractError,
    ModelContract,
    ModelFileError,
    check_contract,
    read_contract,
)
from wam_control.policy.loader import load_backend

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "CONTRACT_VERSION",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ContractError",
    "ModelContract",
    "ModelFileError",
    "PolicyBackend",
    "PolicyInput",
    "PolicyOutput",
    "check_contract",
    "example_input",
    "load_backend",
    "read_contract",
]
