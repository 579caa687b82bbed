"""wam_control: run a distilled World-Action Model as a real-time ROS 2 joint controller.

Layers (data flows one way; see docs/architecture.md):
config -> policy (backends) -> runtime (buffers, worker, scheduler, safety, loop, controller)
-> transport (rclpy / Cyclone DDS) -> sim, cli / launch. `model` (PyTorch) is the training side.
"""

__version__ = "0.1.0"
