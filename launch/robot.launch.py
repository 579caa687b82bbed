"""Start the WAM controller as a lifecycle node and (by default) configure and activate it.

    ros2 launch wam_control robot.launch.py model:=/path/to/model.onnx
    ros2 launch wam_control robot.launch.py config:=/path/to/my_robot.yaml \
        command_interface:=forward_position namespace:=left use_sim_time:=true

Arguments left empty fall back to the deployment YAML (`config`, a ROS 2 parameter file). With
autostart:=false the node waits in `unconfigured`; drive it with `ros2 lifecycle set`.
"""

from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("wam_control")
    args = [
        DeclareLaunchArgument(
            "config",
            default_value=PathJoinSubstitution([share, "config", "fr3.yaml"]),
            description="deployment YAML (ROS 2 parameter file; see config/fr3.yaml)",
        ),
        DeclareLaunchArgument(
            "model", default_value="", description="ONNX model; empty: inference.model of the config"
        ),
        DeclareLaunchArgument(
            "backend", default_value="", description="auto | onnxruntime | tensorrt | torch; empty: config"
        ),
        DeclareLaunchArgument(
            "command_interface",
            default_value="",
            description="joint_trajectory | forward_position; empty: config",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="", description="namespace of the node and its ~/ topics"
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="stamp with /clock (simulation)"
        ),
        DeclareLaunchArgument(
            "autostart", default_value="true", description="configure and activate at launch"
        ),
    ]
    node = LifecycleNode(
        package="wam_control",
        executable="wam_controller",
        name="wam_controller",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("config"),
            {
                "model": LaunchConfiguration("model"),
                "backend": LaunchConfiguration("backend"),
                "command_interface": LaunchConfiguration("command_interface"),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                # The launch file drives the lifecycle with events below, not the node's own autostart.
                "autostart": False,
            },
        ],
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE
        ),
        condition=autostart,
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
        ),
        condition=autostart,
    )
    return LaunchDescription([*args, activate, node, configure])
