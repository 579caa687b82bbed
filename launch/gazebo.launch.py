"""Gazebo (gz sim) + ros_gz_bridge + the WAM controller on sim time.

    ros2 launch wam_control gazebo.launch.py world:=/path/to/world_with_arm.sdf model:=/path/to/model.onnx

The world must contain the arm (with gz_ros2_control and a joint_trajectory_controller or forward
position controller loaded by your robot's own launch) and a camera sensor publishing on the Gazebo
topics named in config/gz_bridge.yaml (edit `gz_topic_name` there, or pass bridge_config:=...).
The bridge carries /clock, the camera image and camera_info, and joint states (for setups that use
Gazebo's JointStatePublisher instead of ros2_control's joint_state_broadcaster).
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("wam_control")
    args = [
        DeclareLaunchArgument(
            "world", default_value="empty.sdf", description="Gazebo world (SDF) with the arm"
        ),
        DeclareLaunchArgument("config", default_value=PathJoinSubstitution([share, "config", "fr3.yaml"])),
        DeclareLaunchArgument("model", default_value=""),
        DeclareLaunchArgument("backend", default_value=""),
        DeclareLaunchArgument("command_interface", default_value=""),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument(
            "bridge_config", default_value=PathJoinSubstitution([share, "config", "gz_bridge.yaml"])
        ),
    ]
    gz_sim = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])
        ),
        launch_arguments={"gz_args": ["-r ", LaunchConfiguration("world")]}.items(),
    )
    bridge = Node(
        package="ros_gz_bridge",
        executable="parameter_bridge",
        name="wam_gz_bridge",
        output="screen",
        parameters=[{"config_file": LaunchConfiguration("bridge_config"), "use_sim_time": True}],
    )
    controller = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "robot.launch.py"])),
        launch_arguments={
            "config": LaunchConfiguration("config"),
            "model": LaunchConfiguration("model"),
            "backend": LaunchConfiguration("backend"),
            "command_interface": LaunchConfiguration("command_interface"),
            "namespace": LaunchConfiguration("namespace"),
            "use_sim_time": "true",
        }.items(),
    )
    return LaunchDescription([*args, gz_sim, bridge, controller])
