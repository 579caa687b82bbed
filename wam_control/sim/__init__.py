"""sim layer (see docs/architecture.md): a MuJoCo FR3-like arm that speaks Gazebo's ROS 2 topics.

- `arm.SimArm`: the simulator API (reset/step/joint_state/frame/render, disturbance hooks); with
  `hand=True` (default for pick_place) a parallel two-finger gripper (docs/sim.md).
- `tasks`: "reach", "push" and "pick_place" (needs the hand scene), seeded, with prompts and success tests.
- `expert.Expert`: scripted DLS-IK expert with a jerk-limited joint command.
- `bag`: ROS 2 bag recorder (`BagRecorder`) and reader (`read_bag` -> `Demo`).
- `record`: `wam-control record` (expert demonstrations as bags).
- `bridge`: `wam-control sim` (topics over Cyclone DDS or rclpy, lockstep or real-time clock).
- `gl`: offscreen OpenGL backend choice (EGL, then OSMesa) and the renderer.

Importing this package is cheap: nothing heavy is imported until a submodule is.
"""
