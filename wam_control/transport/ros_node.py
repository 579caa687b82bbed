"""`wam_controller`: the controller as an rclpy lifecycle node (`ros2 run wam_control wam_controller`).

A thin adapter over the same Controller, converters and QoS profiles as `wam-control run` (see
`adapter.py`); only subscriptions, publishers, parameters and the lifecycle are rclpy's.

Lifecycle:
  configure   read parameters -> RobotConfig, load the model (contract checked), start the inference
              worker and wait for its warm-up, create subscriptions (they only store the latest value),
              lifecycle publishers and the `~/rearm` std_srvs/Trigger service
  activate    enable publishers, start the control thread (FixedRateLoop on monotonic deadlines; not an
              rclpy timer, which follows the ROS clock and jitters with the executor)
  deactivate  brake to hold while still publishing, stop the control thread, disable publishers
  cleanup     release the model, worker, subscriptions, publishers and service
  shutdown    deactivate + cleanup from any state

WAM extras (docs/surprise.md), as in `wam-control run`: with surprise.enabled, configure fails unless
the calibration file exists, and the score goes out on ~/surprise (std_msgs/Float64, 20 Hz from the
auxiliary thread); with imagination.enabled, configure checks the decoder file, and the auxiliary thread
polls the image publisher's subscription count: the decoder is loaded and its thread started when the
first subscriber appears, stopped when the last one leaves (and on deactivate).

Parameters: every key of the deployment YAML (config/fr3.yaml is a ROS 2 parameter file) is declared
with a descriptor and read back into the same typed RobotConfig the DDS path uses. Override a key the
ROS 2 way, by a later parameter source: `-p inference.model:=/path/m.onnx`, `-p
command_interface:=forward_position` (launch_params.py is what robot.launch.py passes). `config_dir` is
the folder relative paths are relative to (robot.launch.py sets the YAML's own folder); `config_file`
names a YAML that is not a parameter file, whose keys the parameters then override. `autostart`
configures and activates the node right after it starts (for `ros2 run`; the launch file drives the
lifecycle with events instead). `use_sim_time` is honoured for every outgoing stamp; the control loop
always runs on the monotonic clock.

This module is the entry point with its import guard; the node itself is `rclpy_node.py`, imported
only once rclpy is known to be there, and the parameter names live in `ros_params.py`.
"""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> int:
    try:
        import rclpy  # noqa: F401  (the guard: the node module imports rclpy at its top)
    except ImportError as exc:
        print(
            f"wam_controller needs ROS 2's rclpy ({exc}). Source your ROS 2 installation "
            "(source /opt/ros/<distro>/setup.bash) and your workspace, or install ROS 2 Kilted's Python "
            "packages from PyPI (pip install 'wam_control[ros]'), or run the same controller without "
            "ROS 2: wam-control run --config <yaml> --model <onnx>",
            file=sys.stderr,
        )
        return 1
    from wam_control.transport.rclpy_node import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
