"""Shared fixtures: loopback-only DDS, and one small contract-valid model per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wam_control.transport.dds import configure_fast_dds, pin_loopback

# DDS traffic from tests stays on loopback unless the user configured Cyclone DDS themselves: Cyclone
# through the project's own setting (which also lets it talk to Fast DDS), the rclpy nodes' Fast DDS
# through ROS 2's discovery range. Every process the tests start inherits both.
pin_loopback()
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
configure_fast_dds()  # Fast DDS without type propagation next to Cyclone (transport/fastdds_profile.xml)

REPO_ROOT = Path(__file__).resolve().parents[1]
FR3_JOINTS = tuple(f"fr3_joint{i}" for i in range(1, 8))
# The cameras of config/fr3.yaml (scene + wrist, like the bundled model).
FR3_CAMERAS = ("scene", "wrist")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fr3_config_path() -> Path:
    return REPO_ROOT / "config" / "fr3.yaml"


@pytest.fixture(scope="session")
def test_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ONNX model whose contract matches config/fr3.yaml (FR3 joints, scene + wrist 96x96)."""
    pytest.importorskip("torch", reason="torch ([train] extra) is needed to build the test model")
    from wam_control.model.export import make_test_model

    path = tmp_path_factory.mktemp("model") / "wam_test.onnx"
    make_test_model(
        path,
        joint_names=FR3_JOINTS,
        camera_names=FR3_CAMERAS,
        image_hw=(96, 96),
        horizon=16,
        action_dt=0.05,
        max_prefix=8,
        seed=0,
    )
    return path


@pytest.fixture(scope="session")
def test_decoder_path(test_model_path: Path) -> Path:
    """A random-init imagination decoder (scene camera, 48x48) for `test_model_path`, beside it."""
    pytest.importorskip("torch", reason="torch ([train] extra) is needed to export the test decoder")
    import torch

    from wam_control.imagination import default_decoder_path
    from wam_control.model.decoder import DecoderConfig, LatentDecoder, export_decoder
    from wam_control.policy.contract import read_contract

    contract = read_contract(test_model_path)
    torch.manual_seed(0)
    dec = LatentDecoder(DecoderConfig(latent_dim=contract.latent_dim, image_height=48, image_width=48))
    return export_decoder(dec, default_decoder_path(test_model_path), contract, camera="scene")


@pytest.fixture(scope="session")
def prompt_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init contract v2 model for config/fr3_hand.yaml: FR3 joints + the "gripper" DOF in state
    and actions, scene + wrist 96x96, a 16-token prompt input (tokenizer beside it), compact widths."""
    pytest.importorskip("torch", reason="torch ([train] extra) is needed to build the test model")
    pytest.importorskip("tokenizers", reason="tokenizers ([prompt] extra) is needed for a prompted model")
    from wam_control.model.export import make_test_model

    path = tmp_path_factory.mktemp("prompt_model") / "wam_prompt_test.onnx"
    make_test_model(
        path,
        joint_names=FR3_JOINTS,
        camera_names=FR3_CAMERAS,
        extra_dofs=("gripper",),
        max_instruction_tokens=16,
        conv_channels=(8, 16, 32, 64),
        image_feature_dim=128,
        hidden_dim=256,
        model_name="wam-prompt-test",
    )
    return path
