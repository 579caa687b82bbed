"""Start the WAM controller as a lifecycle node and (by default) configure and activate it.

    ros2 launch wam_control robot.launch.py
    ros2 launch wam_control robot.launch.py model:=/path/to/model.onnx
    ros2 launch wam_control robot.launch.py config:=/path/to/my_robot.yaml \
        command_interface:=forward_position namespace:=left use_sim_time:=true

Arguments left empty keep the deployment YAML's value (`config`, a ROS 2 parameter file). Which
arguments become which parameters is decided by `wam_control.transport.launch_params` (tested without
launch); this file only resolves the arguments and wires the lifecycle events. With autostart:=false the
node waits in `unconfigured`; drive it with `ros2 lifecycle set`.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription
from wam_control.transport.launch_params import NODE_NAME, controller_parameters, parse_bool

ARGUMENTS = (
    ("config", "", "deployment YAML (ROS 2 parameter file); empty: the package's config/fr3.yaml"),
    ("model", "", "ONNX model; empty: inference.model of the config"),
    ("backend", "", "auto | onnxruntime | tensorrt | torch; empty: inference.backend of the config"),
    ("worker", "", "thread | process; empty: inference.worker of the config"),
    ("command_interface", "", "joint_trajectory | forward_position; empty: the config's"),
    ("namespace", "", "namespace of the node and its ~/ topics"),
    ("use_sim_time", "false", "stamp with /clock (simulation)"),
    ("autostart", "true", "configure and activate at launch"),
)


def _node_and_events(context):  # launch calls it with its LaunchContext (OpaqueFunction)
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    node = LifecycleNode(
        package="wam_control",
        executable="wam_controller",
        name=NODE_NAME,
        namespace=arg["namespace"],
        output="screen",
        parameters=controller_parameters(
            config=arg["config"],
            model=arg["model"],
            backend=arg["backend"],
            worker=arg["worker"],
            command_interface=arg["command_interface"],
            use_sim_time=arg["use_sim_time"],
        ),
    )
    if not parse_bool("autostart", arg["autostart"]):
        return [node]
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE)
    )
    # Only after a *configure* (not after a later deactivate, which also ends in `inactive`).
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(node),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
        )
    )
    return [activate, node, configure]


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=_node_and_events)])
