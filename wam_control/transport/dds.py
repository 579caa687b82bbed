"""A small ROS 2-compatible publish/subscribe API on Cyclone DDS, for machines without ROS 2.

    node = DdsNode("wam_controller")                      # domain = ROS_DOMAIN_ID (default 0)
    pub = node.publisher("/joint_states", JointState_, "joint_states")
    pub.publish(msg)
    sub = node.subscription("~/estop", Bool_, callback, "reliable")    # or callback=None: keep latest
    sub.latest                                                         # last valid sample or None

ROS names map to DDS exactly as rmw does it: `/x` is DDS topic `rt/x`, `~/x` expands to
`/<namespace>/<node name>/x`, relative names get the namespace. Types come from `dds_types`
(`sensor_msgs::msg::dds_::JointState_` ...), QoS profiles from `qos`.

Callbacks run on Cyclone's receive thread: keep them to "store the latest value" (the controller's
`on_*` methods do exactly that). A callback that raises is caught and counted, never propagated into
Cyclone. Unless CYCLONEDDS_URI is set, the first DdsNode pins Cyclone to the loopback interface with
unicast discovery (`configure_cyclone`), so tests and the demo never leak traffic onto the machine's
network; pass `loopback=False` (or set CYCLONEDDS_URI) to reach other machines. Either default also
makes Cyclone interoperate with Fast DDS, ROS 2's default middleware (`FAST_DDS_COMPATIBILITY`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from wam_control.transport.qos import QosProfile, to_dds

log = logging.getLogger(__name__)

T = TypeVar("T")

FAST_DDS_COMPATIBILITY = (
    "<Compatibility><IgnoreTypeInformation>1.15</IgnoreTypeInformation></Compatibility>"
)
"""Cyclone rejects the XTypes type information of Fast DDS (ROS 2's default middleware, vendor id 1.15)
as invalid and then matches nothing with it: no data flows either way. Ignoring that vendor's type
information makes matching fall back to type names, which is what ROS 2 relies on anyway."""

LOOPBACK_URI = (
    "<CycloneDDS><Domain id='any'>"
    "<General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast></General>"
    "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
    "<MaxAutoParticipantIndex>60</MaxAutoParticipantIndex>"
    "<Peers><Peer address='127.0.0.1'/></Peers></Discovery>"
    f"{FAST_DDS_COMPATIBILITY}"
    "</Domain></CycloneDDS>"
)
"""Loopback only, no multicast, unicast discovery of up to 60 participants on this host; talks to Fast DDS."""

NETWORK_URI = f"<CycloneDDS><Domain id='any'>{FAST_DDS_COMPATIBILITY}</Domain></CycloneDDS>"
"""Cyclone's defaults (all interfaces, multicast discovery), and talks to Fast DDS."""

MAX_DOMAIN_ID = 232  # the largest domain id whose RTPS ports fit in 16 bits with the default port mapping


def configure_cyclone(loopback: bool = True, env: MutableMapping[str, str] | None = None) -> str:
    """Set CYCLONEDDS_URI unless the user has: `LOOPBACK_URI`, or `NETWORK_URI` with `loopback=False`.

    Returns what is in force: "loopback", "network" or "user". A user configuration without the Fast DDS
    compatibility setting is left alone, with a warning that says what to add. Must run before the
    process's first participant is created (Cyclone reads the variable once).
    """
    env = os.environ if env is None else env
    user = env.get("CYCLONEDDS_URI", "")
    if user:
        if "IgnoreTypeInformation" not in user and not _warned_user_uri:
            _warn_user_uri()
        return "user"
    env["CYCLONEDDS_URI"] = LOOPBACK_URI if loopback else NETWORK_URI
    return "loopback" if loopback else "network"


_warned_user_uri = False


def _warn_user_uri() -> None:
    global _warned_user_uri
    _warned_user_uri = True
    log.warning(
        "CYCLONEDDS_URI is set and has no <Compatibility><IgnoreTypeInformation>: ROS 2 nodes on Fast DDS "
        "(ROS 2's default middleware) will exchange no data with this process. Add "
        "%s inside its <Domain> (see README, 'Without ROS 2')",
        FAST_DDS_COMPATIBILITY,
    )


FAST_DDS_PROFILE = Path(__file__).with_name("fastdds_profile.xml")
"""Fast DDS participant profile without XTypes type propagation (why: in the file)."""


def configure_fast_dds(env: MutableMapping[str, str] | None = None) -> bool:
    """Point FASTDDS_DEFAULT_PROFILES_FILE at `FAST_DDS_PROFILE` unless the user has set it; True if it
    did. For this process's rclpy participants: must run before rclpy creates them."""
    env = os.environ if env is None else env
    if env.get("FASTDDS_DEFAULT_PROFILES_FILE"):
        return False
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FAST_DDS_PROFILE)
    return True


def pin_loopback(env: MutableMapping[str, str] | None = None) -> bool:
    """Set CYCLONEDDS_URI to `LOOPBACK_URI` unless the user has set it. Returns True if it set it."""
    return configure_cyclone(True, env) == "loopback"


def domain_id_from_env(env: MutableMapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("ROS_DOMAIN_ID", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"ROS_DOMAIN_ID={raw!r}: expected an integer 0..{MAX_DOMAIN_ID}") from None
    if not 0 <= value <= MAX_DOMAIN_ID:
        raise ValueError(f"ROS_DOMAIN_ID={value}: expected an integer 0..{MAX_DOMAIN_ID}")
    return value


def resolve_name(name: str, node_name: str, namespace: str = "") -> str:
    """Fully qualified ROS name: `~/x` -> `/ns/node/x`, `x` -> `/ns/x`, `/x` stays."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if not name:
        raise ValueError("empty topic name")
    if name == "~" or name.startswith("~/"):
        full = f"{ns}/{node_name}{name[1:]}"
    elif name.startswith("/"):
        full = name
    else:
        full = f"{ns}/{name}"
    full = full.rstrip("/") or "/"
    if "//" in full or any(c.isspace() for c in full):
        raise ValueError(f"invalid topic name {name!r} (resolved to {full!r})")
    return full


def dds_topic_name(ros_name: str) -> str:
    """`/joint_states` -> `rt/joint_states` (ROS 2's topic prefix on DDS)."""
    if not ros_name.startswith("/"):
        raise ValueError(f"expected a fully qualified ROS name, got {ros_name!r}")
    return "rt" + ros_name


class DdsPublisher(Generic[T]):
    """A DataWriter for one ROS topic. `publish` never raises on a transport hiccup: it counts it."""

    def __init__(self, writer: Any, topic: str, msg_type: type[T]) -> None:
        self._writer = writer
        self.topic = topic
        self.msg_type = msg_type
        self.published = 0
        self.failed = 0
        self.last_error = ""

    def publish(self, msg: T) -> bool:
        try:
            self._writer.write(msg)
        except Exception as exc:  # DDSException (timeout when a reliable reader lags) or a bad field value
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.published += 1
        return True

    def matched(self) -> int:
        """Number of matched subscriptions (useful to wait for discovery in tests and tools)."""
        return len(self._writer.get_matched_subscriptions())

    def subscription_count(self) -> int:
        """Readers matched right now, from the writer's PUBLICATION_MATCHED status (no handle list is
        built: cheap enough to poll). The counterpart of rclpy's `Publisher.get_subscription_count()`."""
        return int(self._writer.get_publication_matched_status().current_count)


class DdsSubscription(Generic[T]):
    """A DataReader for one ROS topic that hands each valid sample to `callback` and keeps the latest."""

    def __init__(
        self, topic: str, msg_type: type[T], callback: Callable[[T], object] | None, depth: int
    ) -> None:
        self.topic = topic
        self.msg_type = msg_type
        self._callback = callback
        self._depth = max(1, depth)
        self._lock = threading.Lock()
        self._latest: T | None = None
        self.received = 0
        self.callback_errors = 0
        self.last_error = ""
        self._reader: Any = None

    @property
    def latest(self) -> T | None:
        with self._lock:
            return self._latest

    def take_latest(self) -> T | None:
        """Return the latest sample and forget it (None if nothing new arrived since the last call)."""
        with self._lock:
            msg, self._latest = self._latest, None
            return msg

    def poll(self) -> None:
        """Take what the reader holds now. A transient-local reader's historical samples (those written
        before it matched) arrive without a data-available event; poll it to see them."""
        if self._reader is not None:
            self._on_data_available(self._reader)

    def _on_data_available(self, reader: Any) -> None:
        try:
            samples = reader.take(N=self._depth)
        except Exception as exc:  # a sample that does not deserialize: count it, keep the reader alive
            self.callback_errors += 1
            self.last_error = f"take failed: {type(exc).__name__}: {exc}"
            return
        for sample in samples:
            info = getattr(sample, "sample_info", None)
            if info is not None and not info.valid_data:
                continue
            with self._lock:
                self._latest = sample
                self.received += 1
            if self._callback is not None:
                try:
                    self._callback(sample)
                except Exception as exc:  # never let a callback error escape into Cyclone's thread
                    self.callback_errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("callback for %s failed", self.topic)

    def matched(self) -> int:
        return len(self._reader.get_matched_publications()) if self._reader is not None else 0


class DdsNode:
    """One DDS participant plus the ROS naming rules of a node called `name` in `namespace`."""

    def __init__(
        self,
        name: str = "wam_controller",
        namespace: str = "",
        domain_id: int | None = None,
        loopback: bool = True,
    ) -> None:
        self.cyclone_config = configure_cyclone(loopback)
        from cyclonedds.domain import DomainParticipant

        self.name = name
        self.namespace = namespace
        self.domain_id = domain_id_from_env() if domain_id is None else int(domain_id)
        if not 0 <= self.domain_id <= MAX_DOMAIN_ID:
            raise ValueError(f"domain id {self.domain_id}: expected 0..{MAX_DOMAIN_ID}")
        self.participant: Any = DomainParticipant(self.domain_id)
        self._topics: dict[str, Any] = {}
        self._entities: list[Any] = []
        self.publishers: list[DdsPublisher[Any]] = []
        self.subscriptions: list[DdsSubscription[Any]] = []

    def resolve(self, name: str) -> str:
        return resolve_name(name, self.name, self.namespace)

    def _topic(self, ros_name: str, msg_type: type[Any]) -> Any:
        from cyclonedds.topic import Topic

        topic = self._topics.get(ros_name)
        if topic is None:
            topic = Topic(self.participant, dds_topic_name(ros_name), msg_type)
            self._topics[ros_name] = topic
        elif topic.data_type is not msg_type:
            raise ValueError(
                f"topic {ros_name}: already used with {topic.data_type.__idl_typename__}, "
                f"not {msg_type.__idl_typename__}"  # type: ignore[attr-defined]
            )
        return topic

    def publisher(self, topic: str, msg_type: type[T], qos: QosProfile | str) -> DdsPublisher[T]:
        from cyclonedds.pub import DataWriter

        ros_name = self.resolve(topic)
        writer = DataWriter(self.participant, self._topic(ros_name, msg_type), qos=to_dds(qos))
        self._entities.append(writer)
        pub: DdsPublisher[T] = DdsPublisher(writer, ros_name, msg_type)
        self.publishers.append(pub)
        return pub

    def subscription(
        self,
        topic: str,
        msg_type: type[T],
        callback: Callable[[T], object] | None,
        qos: QosProfile | str,
    ) -> DdsSubscription[T]:
        from cyclonedds.core import Listener
        from cyclonedds.sub import DataReader

        from wam_control.transport.qos import profile

        ros_name = self.resolve(topic)
        sub: DdsSubscription[T] = DdsSubscription(ros_name, msg_type, callback, profile(qos).depth)
        listener = Listener(on_data_available=sub._on_data_available)
        reader = DataReader(
            self.participant, self._topic(ros_name, msg_type), qos=to_dds(qos), listener=listener
        )
        sub._reader = reader
        self._entities.append(reader)
        self.subscriptions.append(sub)
        return sub

    def close(self) -> None:
        """Delete the participant and everything it owns (readers first, so no callback runs after)."""
        participant, self.participant = self.participant, None
        if participant is None:
            return
        for entity in reversed(self._entities):
            try:
                entity.__del__()
            except Exception:  # already gone with its parent: nothing left to release
                log.debug("entity already deleted", exc_info=True)
        self._entities.clear()
        self._topics.clear()
        try:
            participant.__del__()
        except Exception:
            log.debug("participant already deleted", exc_info=True)

    def __enter__(self) -> DdsNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
