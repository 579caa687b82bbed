"""Every topic a controller node subscribes and publishes, and its side-thread duties, declared once.

Both nodes are thin shims over this: `dds_node.DdsControllerNode` creates each endpoint on a Cyclone
`DdsNode`, `rclpy_node.WamControllerNode` as rclpy subscriptions and lifecycle publishers. An endpoint
names its message by kind (the field of `messages.MsgTypes`: "JointState", "Image", ...), so each shim
maps the kind to its own class. What really differs between the transports stays in the shims and is
said there:
- re-arm: a std_srvs/Trigger service in rclpy; DDS without ROS has no services, so `wam-control run`
  takes std_msgs/Bool `true` on the same name and answers on `<name>_result`;
- /clock: rclpy's time source subscribes it itself (use_sim_time); the DDS node subscribes it here
  (`clock=True`) and stamps with it.

Subscriptions either hand each message to a `ControllerIO.on_*` method (store the latest value, on the
transport's thread) or, with `handler=None`, only keep the latest message for `side_duties` to read
on the auxiliary thread (the prompt: tokenizing it is too slow for a callback).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wam_control.transport import qos
from wam_control.transport.adapter import ControllerIO, camera_info_topic


@dataclass(frozen=True)
class Subscription:
    topic: str
    kind: str
    profile: qos.QosProfile
    handler: Callable[[Any], None] | None
    """Called with each message; None: the shim keeps the latest for `side_duties` (`take_latest()`)."""


@dataclass(frozen=True)
class Publication:
    key: str
    """"command", "predicted_chunk", "diagnostics", "surprise", "imagination", "extra:<topic>"."""
    topic: str
    kind: str
    profile: qos.QosProfile


def command_kind(interface: str) -> str:
    return "Float64MultiArray" if interface == "forward_position" else "JointTrajectory"


class ControllerEndpoints:
    """The endpoints of one controller (from its config and what its runtime has) and the code both
    nodes run on them: `publish_command` on the control thread (ControlRunner's publish function),
    `side_duties` on the auxiliary one.

    `subscriptions` / `publications` are what a shim creates, in order. After creating them, the shim
    calls `bind(publishers, latest)`: `publishers` maps each publication's key to a publish function,
    `latest` is the shim's keep-the-latest object for each `handler=None` subscription, same order.
    """

    def __init__(self, io: ControllerIO, *, clock: bool = False) -> None:
        self.io = io
        cfg = io.config
        t = cfg.topics
        subs = [
            Subscription(t.joint_states, "JointState", qos.JOINT_STATES,
                         functools.partial(io.on_joint_state, topic=t.joint_states)),
            Subscription(t.estop, "Bool", qos.RELIABLE, functools.partial(io.on_estop, topic=t.estop)),
        ]  # fmt: skip
        for camera, topic in t.camera_images.items():
            subs.append(Subscription(topic, "Image", qos.SENSOR_DATA, functools.partial(io.on_image, camera)))
            subs.append(Subscription(camera_info_topic(topic), "CameraInfo", qos.SENSOR_DATA,
                                     functools.partial(io.on_camera_info, camera)))  # fmt: skip
        if clock:
            subs.append(Subscription(t.clock, "Clock", qos.CLOCK, io.on_clock))
        if io.tokenizer is not None:
            # Latched (a prompt published before the node started) and volatile (`ros2 topic pub`)
            # publishers both match one of the two readers.
            subs += [Subscription(t.instruction, "String", p, None) for p in (qos.INSTRUCTION, qos.RELIABLE)]
        self.subscriptions = subs

        pubs = [
            Publication("command", t.forward_command if cfg.command_interface == "forward_position"
                        else t.trajectory_command, command_kind(cfg.command_interface), qos.RELIABLE),
            Publication("predicted_chunk", t.predicted_chunk, "JointTrajectory", qos.PREDICTED_CHUNK),
            Publication("diagnostics", t.diagnostics, "DiagnosticArray", qos.DIAGNOSTICS),
        ]  # fmt: skip
        if io.surprise is not None:
            pubs.append(Publication("surprise", t.surprise, "Float64", qos.PREVIEW))
        if io.imagination is not None:
            pubs.append(Publication("imagination", cfg.imagination.topic, "Image", qos.PREVIEW))
        pubs += [Publication(f"extra:{o.topic}", o.topic, command_kind(o.interface), qos.RELIABLE)
                 for o in io.extra_outputs]  # fmt: skip
        self.publications = pubs
        self._publish: dict[str, Callable[[Any], object]] = {}
        self._extra: list[Callable[[Any], object]] = []
        self._latest: list[Any] = []
        self._command: Callable[[Any], object] | None = None
        self._next_diag = 0.0

    @property
    def command_topic(self) -> str:
        return self.publications[0].topic

    def bind(self, publishers: dict[str, Callable[[Any], object]], latest: list[Any]) -> None:
        self._publish = publishers
        self._command = publishers["command"]
        self._extra = [publishers[p.key] for p in self.publications if p.key.startswith("extra:")]
        self._latest = latest
        if "imagination" in publishers:
            self.io.bind_imagination(publishers["imagination"])

    # -- control thread ---------------------------------------------------------------------------

    def publish_command(self, cmd: Any) -> None:
        assert self._command is not None, "ControllerEndpoints.bind() was not called"
        self._command(self.io.command_msg(cmd))
        if self._extra:
            for publish, (_, msg) in zip(self._extra, self.io.extra_command_msgs(cmd)):
                publish(msg)

    # -- auxiliary thread -------------------------------------------------------------------------

    def side_duties(
        self,
        diagnostics_period_s: float,
        transport_values: Callable[[], dict[str, Any]],
        imagination_subscribers: Callable[[], int] | None = None,
    ) -> None:
        """Low-rate work (ControlRunner's aux thread, ~20 Hz): a new prompt, the predicted chunk on
        change, the surprise score, the imagination preview's subscriber check, /diagnostics."""
        io = self.io
        instruction_topic = io.config.topics.instruction
        for latest in self._latest:
            msg = latest.take_latest()
            if msg is not None:
                io.on_instruction(msg, topic=instruction_topic)
        chunk = io.predicted_chunk_msg()
        if chunk is not None:
            self._publish["predicted_chunk"](chunk)
        if "surprise" in self._publish:
            self._publish["surprise"](io.surprise_msg())
        if imagination_subscribers is not None and io.imagination is not None:
            io.poll_imagination(imagination_subscribers())
        now = time.monotonic()
        if now >= self._next_diag:
            self._next_diag = now + diagnostics_period_s
            self._publish["diagnostics"](io.diagnostics_msg(transport_values()))
