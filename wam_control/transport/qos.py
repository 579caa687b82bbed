"""QoS profiles of DESIGN.md §6, defined once and mapped to Cyclone DDS and to rclpy.

Both transports use these so that the DDS path and the rclpy node offer and request exactly the same
policies. Subscriptions are volatile (a transient-local reader would not match the volatile publishers
that ROS 2 tools create by default), except INSTRUCTION: the task prompt is latched (reliable, transient
local, keep last 1), so a prompt published before the controller started still reaches it. The
controller subscribes to ~/instruction twice, with INSTRUCTION and with RELIABLE, so that a volatile
publisher (`ros2 topic pub` by default) matches too; the prompt is tokenized only when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QosProfile:
    name: str
    reliable: bool
    depth: int
    max_blocking_s: float = 0.005
    """A reliable writer may block this long when readers lag; short so the control loop never stalls."""
    transient_local: bool = False
    """Durability: transient local (late joiners get the last sample) instead of volatile."""


JOINT_STATES = QosProfile("joint_states", reliable=True, depth=10)
"""Matches joint_state_broadcaster (reliable, keep last 10)."""
SENSOR_DATA = QosProfile("sensor_data", reliable=False, depth=5)
"""rclpy's qos_profile_sensor_data: best effort, keep last 5 (images, camera_info)."""
RELIABLE = QosProfile("reliable", reliable=True, depth=10)
"""e-stop, re-arm and the command topics (the ROS 2 default profile, which ros2_control subscribes with)."""
DIAGNOSTICS = QosProfile("diagnostics", reliable=True, depth=1)
PREDICTED_CHUNK = QosProfile("predicted_chunk", reliable=True, depth=1)
CLOCK = QosProfile("clock", reliable=False, depth=1)
"""rclcpp's ClockQoS: best effort, keep last 1."""
PREVIEW = QosProfile("preview", reliable=True, depth=1)
"""~/surprise and the imagination image: reliable so that RViz's default (reliable) Image subscription
matches; best-effort readers (Foxglove, sensor-data subscribers) match a reliable writer too. Keep last 1:
only the newest value is worth anything, and a slow viewer never makes the writer queue frames."""

INSTRUCTION = QosProfile("instruction", reliable=True, depth=1, transient_local=True)
"""~/instruction (std_msgs/String, the task prompt): reliable, transient local, keep last 1 (DESIGN.md §6)."""

PROFILES: dict[str, QosProfile] = {
    p.name: p
    for p in (JOINT_STATES, SENSOR_DATA, RELIABLE, DIAGNOSTICS, PREDICTED_CHUNK, CLOCK, PREVIEW, INSTRUCTION)
}


def profile(value: QosProfile | str) -> QosProfile:
    if isinstance(value, QosProfile):
        return value
    try:
        return PROFILES[value]
    except KeyError:
        raise ValueError(f"unknown QoS profile {value!r}; expected one of {sorted(PROFILES)}") from None


def to_dds(value: QosProfile | str) -> Any:
    """The profile as a `cyclonedds.core.Qos` (XCDR1 data representation, as ROS 2 uses)."""
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    p = profile(value)
    reliability = (
        Policy.Reliability.Reliable(duration(seconds=p.max_blocking_s))
        if p.reliable
        else Policy.Reliability.BestEffort
    )
    return Qos(
        reliability,
        Policy.History.KeepLast(p.depth),
        Policy.Durability.TransientLocal if p.transient_local else Policy.Durability.Volatile,
        Policy.DataRepresentation(use_cdrv0_representation=True),
    )


def to_rclpy(value: QosProfile | str) -> Any:
    """The profile as an `rclpy.qos.QoSProfile` (imports rclpy)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    p = profile(value)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=p.depth,
        reliability=ReliabilityPolicy.RELIABLE if p.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if p.transient_local else DurabilityPolicy.VOLATILE,
    )
