"""Typed deployment settings.

One YAML file describes one deployment: joints, rates, topics, command interface, timeouts, the model,
and joint limits in ros2_control's `joint_limits` schema. Every field below is a YAML key; the loader
(`loader.py`) rejects unknown keys and wrong types, naming the file and the key.

Units: radians, seconds, rad/s, rad/s^2, rad/s^3 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

CommandInterface = Literal["joint_trajectory", "forward_position"]
ExtraCommandInterface = Literal["joint_trajectory", "forward_position", "none"]
WorkerMode = Literal["thread", "process"]
GcMode = Literal["freeze", "disable", "off"]


@dataclass(frozen=True)
class JointLimits:
    """One joint's limits, field for field as ros2_control's joint_limits YAML spells them.

    A `has_*` flag that is false means "no such limit" (the `max_*` value is then ignored, as in
    ros2_control). `max_deceleration` falls back to `max_acceleration` when absent.
    """

    has_position_limits: bool = False
    min_position: float = -math.inf
    max_position: float = math.inf
    has_velocity_limits: bool = False
    max_velocity: float = math.inf
    has_acceleration_limits: bool = False
    max_acceleration: float = math.inf
    has_deceleration_limits: bool = False
    max_deceleration: float = math.inf
    has_jerk_limits: bool = False
    max_jerk: float = math.inf
    has_effort_limits: bool = False
    max_effort: float = math.inf
    angle_wraparound: bool = False
    # ros2_control's soft-limit keys: accepted so that existing files load; not used by the filter.
    has_soft_limits: bool = False
    k_position: float = 0.0
    k_velocity: float = 0.0
    soft_lower_limit: float = -math.inf
    soft_upper_limit: float = math.inf

    @property
    def deceleration(self) -> float:
        return self.max_deceleration if self.has_deceleration_limits else self.max_acceleration


@dataclass(frozen=True)
class SafetyConfig:
    """Envelope settings of the safety-limits filter beyond the per-joint limits (DESIGN.md §5)."""

    position_margin: float = 0.05
    """Distance kept from each position limit (rad), at most 10 % of a joint's range (so a narrow joint,
    e.g. a gripper finger in metres, keeps a usable range)."""
    max_tracking_error: float = 0.25
    """Largest allowed |q_cmd - q_measured| (rad); the command is pulled back toward the measurement."""
    brake_deceleration_fraction: float = 0.8
    """The envelope plans stops with this fraction of the deceleration limit, leaving headroom."""
    ramp_in_s: float = 1.0
    """After start or re-arm, limits ramp from `ramp_in_scale` to full over this time."""
    ramp_in_scale: float = 0.2
    max_state_age_s: float = 0.1
    """Measured joint state older than this counts as lost: the filter brakes to hold. Keep it above
    `timeouts.joint_state_s`, which only stops new inference requests (the model must not see an old
    state, but the arm may finish the chunk it is on for a few more ticks)."""
    max_consecutive_bad_targets: int = 5
    """Rejected (non-finite / wrong-size) targets in a row before the fault latches."""
    velocity_scale: float = 1.0
    """Global scale on velocity limits (e.g. for commissioning); must be in (0, 1]."""


@dataclass(frozen=True)
class TopicsConfig:
    joint_states: str = "/joint_states"
    estop: str = "~/estop"
    rearm_service: str = "~/rearm"
    trajectory_command: str = "/joint_trajectory_controller/joint_trajectory"
    forward_command: str = "/forward_position_controller/commands"
    diagnostics: str = "/diagnostics"
    predicted_chunk: str = "~/predicted_chunk"
    surprise: str = "~/surprise"
    instruction: str = "~/instruction"
    """std_msgs/String: the language prompt for models that take one (reliable, transient local)."""
    clock: str = "/clock"
    camera_images: dict[str, str] = field(default_factory=lambda: {"scene": "/camera/image_raw"})
    """Camera name (as in the model contract) -> image topic; camera_info is the sibling topic."""


@dataclass(frozen=True)
class TimeoutsConfig:
    joint_state_s: float = 0.05
    """Joint states older than this are stale: no new inference request is made from them (the filter
    brakes to hold once they are older than `safety.max_state_age_s`)."""
    image_s: float = 0.5
    """Images older than this are stale: no new inference from them."""
    inference_deadline_s: float = 2.0
    """An inference running longer than this is declared hung: worker restarted, counted."""
    startup_s: float = 10.0
    """Time allowed after start for the first joint state and image to arrive."""


@dataclass(frozen=True)
class TritonConfig:
    """`inference.backend: triton`: the model runs on a Triton Inference Server (split deployment, see
    README "Run the model on a GPU host"); the server's address is `inference.server`."""

    model_name: str = ""
    """Triton model name; empty means the model file's contract model_name (what `wam-control serve` uses)."""
    model_version: str = ""
    """Model version; empty lets the server choose."""
    connect_timeout_s: float = 5.0
    """Start-up checks (server live, model ready, metadata): each must answer within this time."""
    request_timeout_s: float = 1.0
    """A request without a reply after this long counts as a lost server: the worker restarts (brake to
    hold). Keep it at or below `timeouts.inference_deadline_s`."""
    tls: bool = False
    """gRPC over TLS; the three PEM files below are optional (empty: the system's roots, no client cert)."""
    root_certificates: str = ""
    private_key: str = ""
    certificate_chain: str = ""

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"inference.triton.{name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True)
class InferenceConfig:
    model: str = ""
    """Path of the ONNX model (relative paths resolve against the config file's folder, then cwd). With
    `backend: triton` the robot keeps this file for the contract; the server runs the model."""
    backend: str = "auto"
    """auto | onnxruntime | tensorrt | torch | triton (remote: a Triton Inference Server at `server`)."""
    server: str = "127.0.0.1:8001"
    """backend triton: the Triton server's gRPC address, host:port."""
    triton: TritonConfig = field(default_factory=TritonConfig)
    worker: WorkerMode = "thread"
    threads: int = 1
    """Intra-op threads of the backend: small and fixed for stable latency."""
    device: str = "auto"
    """auto | cpu | cuda[:N]."""
    delay_percentile: float = 95.0
    """Percentile of measured delay (ticks) that sizes the prefix and triggers the next request."""
    delay_window: int = 50
    warmup_chunks: int = 3
    """Chunks whose delay is excluded from the delay estimate (first calls are slow)."""
    min_prefix_steps: int = 0
    """Commit at least this many action steps of the running plan at each request, whatever the
    latency (0: only the steps that run before the chunk arrives, plus one). A model that acts
    differently on a short and a long committed prefix then sees the same prefix at 0 ms as at 200 ms.
    At most the model's max_prefix (else the model is refused at start-up); a model without the prefix
    inputs gets no prefix whatever this says."""

    def __post_init__(self) -> None:
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"inference.server must be host:port (Triton's gRPC address), got {self.server!r}")


@dataclass(frozen=True)
class LoopConfig:
    spin_s: float = 0.0002
    """Final part of each wait spent spinning instead of sleeping (hybrid sleep); 0 disables."""
    realtime_priority: int = 0
    """SCHED_FIFO priority for the control thread (1-99); 0 leaves the scheduler alone."""
    cpu_affinity: str = ""
    """Comma-separated CPU ids for the control thread, e.g. "3"; empty leaves affinity alone."""
    gc_mode: GcMode = "freeze"
    """freeze: gc.freeze() at start and collect between ticks; disable: no automatic gc; off: leave gc be."""


@dataclass(frozen=True)
class SurpriseConfig:
    """The world-model surprise monitor (docs/surprise.md): compares the model's predicted future latents
    with the latents it later observes, slows the arm down and, further out, brakes and latches."""

    enabled: bool | Literal["auto"] = "auto"
    """auto: on when the model has a world-model head (latent outputs), off (said at start-up and in
    diagnostics) when it has none; true: required (a model without the head is refused); false: off."""
    calibration: str = ""
    """Nominal statistics file; empty means `<model>.surprise.json` beside the model."""
    slow_threshold: float = 4.0
    """Score (z units) from which the velocity envelope is scaled down."""
    stop_threshold: float = 8.0
    """Score at which the filter brakes to hold and latches (when `latch` is true)."""
    min_scale: float = 0.25
    """Velocity scale reached at `stop_threshold` (and kept above it when `latch` is false)."""
    smoothing: float = 0.6
    """EWMA weight of the newest observation's z (1 = no smoothing)."""
    match_tolerance_steps: float = 1.0
    """A prediction matches an observation at most this many action steps from its target tick. The
    scheduler requests every ~half chunk (not on the offsets' grid), so half a step would leave the
    longest offset unmatched; calibration is measured with the same tolerance."""
    latch: bool = True
    frame_check: bool = False
    """Second channel: decode the model's latent of each observation with the imagination decoder and
    compare it with the camera frame (policy.frame_check, in the inference worker). Needs the decoder
    and a calibration with a `frame` section."""
    decoder: str = ""
    """Decoder ONNX for the frame check; empty means `<model>.decoder.onnx` beside the model."""
    ring_requests: int = 8
    """Requests whose predictions are kept; older ones are overwritten."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slow_threshold) and math.isfinite(self.stop_threshold)):
            raise ValueError("surprise.slow_threshold and surprise.stop_threshold must be finite numbers")
        if not self.stop_threshold > self.slow_threshold:
            raise ValueError(
                f"surprise.stop_threshold ({self.stop_threshold}) must be greater than "
                f"surprise.slow_threshold ({self.slow_threshold})"
            )
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"surprise.min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"surprise.smoothing must be in (0, 1], got {self.smoothing}")
        if not 0.0 <= self.match_tolerance_steps < 8.0:
            raise ValueError(
                f"surprise.match_tolerance_steps must be in [0, 8) action steps, got {self.match_tolerance_steps}"
            )
        if not 1 <= self.ring_requests <= 256:
            raise ValueError(f"surprise.ring_requests must be in [1, 256], got {self.ring_requests}")


@dataclass(frozen=True)
class ImaginationConfig:
    """Imagination preview: decode the model's predicted future frame for RViz/Foxglove (off by default).

    Runs off the control path, and only while someone subscribes to `topic`.
    """

    enabled: bool = False
    decoder: str = ""
    """Decoder ONNX; empty means `<model>.decoder.onnx` beside the model."""
    topic: str = "/camera/imagination/image_raw"
    offset: int = 0
    """Which latent prediction to decode, in action steps ahead (one of the model's latent_offsets);
    0 means the furthest."""
    max_rate_hz: float = 10.0


@dataclass(frozen=True)
class ExtraDofConfig:
    """One DOF of the model beyond the arm joints (contract v2 `action_names` / `state_names`), e.g. a
    gripper: where its measured value comes from and where its command goes. Its limits are the
    `joint_limits` entry of `joint` (ros2_control schema, like the arm's), and it goes through the
    safety filter like an arm joint."""

    joint: str = ""
    """Its joint in /joint_states (and its key in joint_limits); empty: the model's name for it."""
    command_interface: ExtraCommandInterface = "forward_position"
    """forward_position: std_msgs/Float64MultiArray (one value per command joint); joint_trajectory:
    trajectory_msgs/JointTrajectory, one point per tick; none: a state-only DOF (never commanded)."""
    command_topic: str = ""
    """The DOF's controller topic, e.g. /gripper_controller/commands (required unless none)."""
    command_joints: tuple[str, ...] = ()
    """Joint names in the JointTrajectory / number of values in the Float64MultiArray; empty: [joint]
    (a parallel gripper's mimic finger gets the same value when listed twice, e.g. both finger joints)."""
    position_margin: float | None = None
    """How far inside its position limits the safety filter keeps it (m or rad); ~ (the default):
    safety.position_margin, at most 10 % of the range, as for an arm joint. A gripper's stroke ends are
    ordinary commands (closed on an object, fully open), not hard stops to keep clear of: with the arm's
    rule its 0 and 40 mm setpoints were clamped to 4 and 36 mm, an intervention every tick."""


@dataclass(frozen=True)
class LimitArrays:
    """Per-joint limits as arrays in joint order, ready for vectorised filtering.

    Position bounds already include the safety margin. `inf` marks an absent limit.
    """

    q_min: np.ndarray
    q_max: np.ndarray
    v_max: np.ndarray
    a_max: np.ndarray
    d_max: np.ndarray
    j_max: np.ndarray
    max_tracking_error: float

    @property
    def dof(self) -> int:
        return int(self.q_min.shape[0])


@dataclass(frozen=True)
class RobotConfig:
    joints: tuple[str, ...]
    joint_limits: dict[str, JointLimits]
    robot: str = "robot"
    control_hz: float = 500.0
    command_interface: CommandInterface = "joint_trajectory"
    command_horizon_points: int = 1
    """JointTrajectory points per command: 1 streams the filtered setpoint (see README)."""
    cameras: tuple[str, ...] = ("scene",)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    surprise: SurpriseConfig = field(default_factory=lambda: SurpriseConfig(enabled=False))
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)
    extra_dofs: dict[str, ExtraDofConfig] = field(default_factory=dict)
    """Model DOFs beyond the arm joints (a gripper), keyed by the model's name for them."""
    instruction: str = ""
    """Language prompt for models that take one (contract v2 instruction_tokens); the ~/instruction
    topic (std_msgs/String) replaces it while running."""
    source: str = "<memory>"
    """The file this configuration was read from (for error messages)."""

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.joints

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.cameras

    @property
    def dof(self) -> int:
        return len(self.joints)

    def extra_joint(self, name: str) -> str:
        """The /joint_states (and joint_limits) name of extra DOF `name`."""
        return self.extra_dofs[name].joint or name

    @property
    def control_period(self) -> float:
        return 1.0 / self.control_hz

    def limit_arrays(self) -> LimitArrays:
        def column(fn) -> np.ndarray:  # type: ignore[no-untyped-def]
            return np.array([fn(self.joint_limits[j]) for j in self.joints], dtype=np.float64)

        own_margin = {
            self.extra_joint(n): d.position_margin
            for n, d in self.extra_dofs.items()
            if d.position_margin is not None
        }
        margins = np.array(
            [
                own_margin.get(j, min(self.safety.position_margin, 0.1 * (jl.max_position - jl.min_position)))
                for j, jl in ((j, self.joint_limits[j]) for j in self.joints)
            ]
        )
        q_min = column(lambda jl: jl.min_position if jl.has_position_limits else -math.inf) + margins
        q_max = column(lambda jl: jl.max_position if jl.has_position_limits else math.inf) - margins
        scale = self.safety.velocity_scale
        return LimitArrays(
            q_min=q_min,
            q_max=q_max,
            v_max=column(lambda jl: jl.max_velocity * scale if jl.has_velocity_limits else math.inf),
            a_max=column(lambda jl: jl.max_acceleration if jl.has_acceleration_limits else math.inf),
            d_max=column(lambda jl: jl.deceleration if jl.has_acceleration_limits else math.inf),
            j_max=column(lambda jl: jl.max_jerk if jl.has_jerk_limits else math.inf),
            max_tracking_error=self.safety.max_tracking_error,
        )
