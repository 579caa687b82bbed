"""policy layer: the WAM model contract and the inference backends (see docs/model_contract.md).

Importing this package needs only numpy; onnxruntime, torch and TensorRT are imported by the backend
that uses them.
"""

from wam_control.policy.base import (
    BACKENDS,
    BackendUnavailable,
    PolicyBackend,
    PolicyInput,
    PolicyOutput,
    example_input,
    load_backend,
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
