"""Sim hand: the gripper scene, its limits and joint states, grasp physics, the pick_place task and
its expert, and that the reach scene (what the bundled models were trained on) did not change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from wam_control.config import load_config, preset_path
from wam_control.sim.arm import (
    FINGER_MAX_SPEED,
    FINGER_NAMES,
    GRIPPER_OPEN,
    JOINT_NAMES,
    RenderUnavailableError,
    SimArm,
    asset_path,
)
from wam_control.sim.expert import PICK_CARRY_Z_M, Expert, finger_axis_xy, run_expert_episode
from wam_control.sim.tasks import CUBE_COLOURS, PROMPTS

DATA = Path(__file__).parent / "data"
# sha256 of assets/fr3_scene.xml as the bundled models were trained on it: never edit that file, put
# changes in fr3_hand_scene.xml (or a new asset) instead.
FR3_SCENE_SHA256 = "ef57d4318328872fc04b57a99e34be0beedd41a7db31d9ca4b0d48a35ec4bd77"


# ---------------------------------------------------------------- the reach scene is unchanged


def test_reach_scene_asset_and_joints_unchanged() -> None:
    digest = hashlib.sha256(asset_path("fr3_scene.xml").read_bytes()).hexdigest()
    assert digest == FR3_SCENE_SHA256, "assets/fr3_scene.xml changed: the bundled models were trained on it"
    with SimArm(task="reach", seed=0, cameras=()) as arm:
        assert not arm.has_hand and arm.finger_names == ()
        m = arm.model
        assert [m.joint(i).name for i in range(m.njnt)] == [*JOINT_NAMES, "puck"]
        assert (m.nq, m.nv, m.nu, m.nbody, m.ngeom) == (14, 13, 7, 13, 20)
        assert arm.all_joint_state()[0] == JOINT_NAMES == arm.joint_state()[0]
        with pytest.raises(ValueError, match="no hand"):
            arm.set_gripper(0.0)


def test_reach_scene_frames_unchanged() -> None:
    """Frames rendered by the reach scene equal those recorded before the hand existed (seed 3, 50 steps)."""
    ref = np.load(DATA / "reach_seed3_frames.npz")
    try:
        arm = SimArm(task="reach", seed=3, cameras=("scene", "wrist"), image_hw=(96, 96))
    except RenderUnavailableError as exc:
        pytest.skip(f"no offscreen GL backend: {exc}")
    with arm:
        for _ in range(50):
            arm.step(arm.joint_state()[1] + 0.002)
        for cam in ("scene", "wrist"):
            diff = np.abs(arm.render(cam).astype(int) - ref[cam].astype(int))
            # the same GL backend gives identical pixels; leave room for another rasteriser's rounding
            assert diff.mean() < 0.5 and np.mean(diff > 8) < 0.002, (cam, diff.mean())


def test_hand_scene_has_the_same_arm_and_cameras() -> None:
    with (
        SimArm(task="reach", seed=0, cameras=()) as plain,
        SimArm(task="reach", seed=0, cameras=(), hand=True) as hand,
    ):
        a, b = plain.model, hand.model
        for i in range(1, 8):
            for attr in ("pos", "quat", "mass"):
                assert getattr(a.body(f"fr3_link{i}"), attr) == pytest.approx(
                    getattr(b.body(f"fr3_link{i}"), attr)
                )
        for name in JOINT_NAMES:
            assert a.joint(name).range == pytest.approx(b.joint(name).range)
            for attr in ("gainprm", "biasprm", "forcerange", "ctrlrange"):
                assert getattr(a.actuator(name), attr) == pytest.approx(getattr(b.actuator(name), attr))
        for cam in ("scene", "wrist"):
            assert a.camera(cam).pos == pytest.approx(b.camera(cam).pos)
            assert a.camera(cam).quat == pytest.approx(b.camera(cam).quat)
            assert a.camera(cam).fovy == pytest.approx(b.camera(cam).fovy)
        assert a.site("ee").pos == pytest.approx(b.site("ee").pos)
        # the hand scene's reach draws the same episode as the plain one (the cubes are parked)
        assert plain.task.info()["target"] == pytest.approx(hand.task.info()["target"])
        assert plain.joint_state()[1] == pytest.approx(hand.joint_state()[1])
        assert plain.task.prompt == hand.task.prompt in PROMPTS["reach"]
        assert hand.task.info()["ee"] == pytest.approx(plain.task.info()["ee"])


# ---------------------------------------------------------------- gripper limits, joint states, commands


def test_finger_limits_match_the_config_and_joint_states_carry_the_fingers() -> None:
    limits = load_config(preset_path("fr3_hand")).joint_limits["fr3_finger_joint1"]
    assert (limits.min_position, limits.max_position, limits.max_velocity, limits.max_effort) == (
        0.0,
        0.04,
        0.05,
        70.0,
    )
    with SimArm(task="pick_place", seed=0, control_hz=100.0, cameras=()) as arm:
        assert arm.has_hand and arm.finger_names == FINGER_NAMES == ("fr3_finger_joint1", "fr3_finger_joint2")
        for name in FINGER_NAMES:
            assert arm.model.joint(name).range == pytest.approx([limits.min_position, limits.max_position])
            assert arm.model.actuator(name).forcerange == pytest.approx(
                [-limits.max_effort, limits.max_effort]
            )
        names, q, qd = arm.all_joint_state()
        assert names == JOINT_NAMES + FINGER_NAMES and q.shape == qd.shape == (9,)
        assert q[7:] == pytest.approx([GRIPPER_OPEN, GRIPPER_OPEN], abs=1e-6)  # starts open
        assert arm.joint_state()[0] == JOINT_NAMES  # the arm's own state stays 7 joints
        hold = arm.joint_state()[1]
        arm.step(hold, gripper=0.0)
        arm.step(hold)  # None keeps the setpoint
        # the setpoint moves at the hand's speed, not in one jump
        assert arm.gripper_command() == pytest.approx(
            GRIPPER_OPEN - 2 * FINGER_MAX_SPEED * arm.control_period
        )
        for _ in range(150):
            arm.step(hold)
        assert arm.gripper_state()[1] == pytest.approx([0.0, 0.0], abs=1e-3)  # closed on nothing
        arm.set_gripper(1.0)  # clamped to the range
        assert arm._grip_target == pytest.approx([GRIPPER_OPEN, GRIPPER_OPEN])
        with pytest.raises(ValueError, match="finite"):  # a rejected step changes nothing, gripper included
            arm.step(np.full(7, np.nan), gripper=0.0)
        assert arm._grip_target == pytest.approx([GRIPPER_OPEN, GRIPPER_OPEN])
        for bad in (np.nan, [0.01, 0.02, 0.03], np.inf):
            with pytest.raises(ValueError, match="finite"):
                arm.set_gripper(bad)
        with pytest.raises(ValueError, match="needs the hand"):
            SimArm(task="pick_place", hand=False, cameras=())


# ---------------------------------------------------------------- the pick_place task


def test_pick_place_reset_is_seeded_and_prompts_name_the_cube() -> None:
    with SimArm(task="pick_place", seed=0, cameras=()) as arm:
        seen = set()
        for seed in range(12):
            arm.reset(seed)
            info = arm.task.info()
            again = (info["cubes"].copy(), info["zone"].copy(), arm.task.prompt)
            arm.reset(seed)
            info2 = arm.task.info()
            assert np.array_equal(again[0], info2["cubes"]) and np.array_equal(again[1], info2["zone"])
            assert again[2] == arm.task.prompt
            colour = CUBE_COLOURS[int(info["target_index"])]
            assert f"{colour} " in arm.task.prompt
            assert arm.task.cube() == pytest.approx(info["cubes"][int(info["target_index"])])
            cubes = info["cubes"][:, :2]
            for i in range(3):
                assert np.linalg.norm(cubes[i] - info["zone"][:2]) >= arm.task.min_zone_gap
                for j in range(i):
                    assert np.linalg.norm(cubes[i] - cubes[j]) >= arm.task.min_cube_gap
            assert not arm.task.success()
            seen.add((colour, arm.task.prompt.split(" ")[0]))
        assert len({c for c, _ in seen}) == 3  # every colour gets asked for
        assert len({p for _, p in seen}) >= 3  # several phrasings


def test_pick_place_success_check_positive_and_negative() -> None:
    with SimArm(task="pick_place", seed=5, control_hz=100.0, cameras=()) as arm:
        task = arm.task
        hold = arm.joint_state()[1]
        zone = task.zone()
        # in the zone, on the table, no finger near it: success once it rests
        arm.teleport_object(np.array([zone[0] + 0.01, zone[1] - 0.01, task.cube_half + 0.0005]))
        for _ in range(30):
            arm.step(hold)
        assert task.in_zone() and task.resting() and not task.touching() and task.success()
        # outside the zone (just past the margin)
        edge = task.zone_half - task.zone_margin + 0.005
        arm.teleport_object(np.array([zone[0] + edge, zone[1], task.cube_half + 0.0005]))
        for _ in range(30):
            arm.step(hold)
        assert not task.in_zone() and not task.success()
        # above the zone, falling: not resting
        arm.teleport_object(np.array([zone[0], zone[1], 0.2]))
        arm.step(hold)
        assert task.in_zone() and not task.resting() and not task.success()
        # another cube in the zone is not the prompted one
        other = (task.target_index + 1) % 3
        task._place_cube(other, np.array([zone[0], zone[1], task.cube_half + 0.0005]))
        arm.teleport_object(np.array([zone[0] + 0.2, zone[1], task.cube_half + 0.0005]))
        for _ in range(30):
            arm.step(hold)
        assert not task.success()


def test_expert_grasps_lifts_holds_and_places() -> None:
    """The expert's grasp lifts the cube 10 cm and holds it 2 s without slipping; placed but still
    touched by the fingers is not success, released is."""
    with SimArm(task="pick_place", seed=1, cameras=()) as arm:
        expert = Expert(arm)
        arm.reset(1)
        expert.reset()
        z0 = arm.task.cube()[2]
        while expert.phase != "move":
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 10.0, f"stuck in {expert.phase}"
        assert arm.task.cube()[2] - z0 > 0.10
        offset = arm.task.cube() - arm.ee_pose()[0]
        hold = arm.command()
        for _ in range(int(2.0 / arm.control_period)):
            arm.step(hold)
        drift = np.linalg.norm(arm.task.cube() - arm.ee_pose()[0] - offset)
        assert drift < 0.002 and arm.task.cube()[2] - z0 > 0.10
        assert arm.task.touching()
        while expert.phase != "open":
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 20.0, f"stuck in {expert.phase}"
        assert arm.task.in_zone() and arm.task.touching() and not arm.task.success()
        while not arm.task.success():
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 25.0, f"stuck in {expert.phase}"
        # released: the fingers have let go (opened past the cube's faces) and the cube rests in the zone
        assert not arm.task.touching() and np.all(arm.gripper_state()[1] > arm.task.cube_half)


def test_expert_variants_miss_the_cube_then_grasp_and_place_at_a_drawn_point() -> None:
    """`descent_miss_m`: the first descent ends at the cube's height, half to all of the miss beside it,
    and the expert goes across to the grasp point between the open pads (the cube is not pushed): the
    recovery that students hovering beside the cube need, demonstrated. `place_spread_m`: the place
    point is drawn per episode seed within the spread of the zone's centre (the same seed, the same
    point) and the cube is put down there, not at the centre."""
    with SimArm(task="pick_place", seed=300, cameras=()) as arm:
        expert = Expert(arm, place_spread_m=0.02, descent_miss_m=0.04)
        points = {}
        for seed in (301, 300):
            arm.reset(seed)
            expert.reset()
            points[seed] = expert._place_off.copy()
        assert np.all(np.abs(points[300]) <= 0.02) and np.linalg.norm(points[300] - points[301]) > 0.005
        assert np.linalg.norm(points[300]) > 0.015  # this seed's point is well off the centre
        start = arm.task.cube().copy()
        phases, beside, pushed = ["approach"], None, 0.0
        while not arm.task.success() and arm.time < 25.0:
            arm.step(expert.act(), gripper=expert.gripper)
            if expert.phase != phases[-1]:
                phases.append(expert.phase)
            if expert.phase == "miss":
                p, cube = arm.ee_pose()[0], arm.task.cube()
                beside = (np.linalg.norm(p[:2] - cube[:2]), p[2] - cube[2])
            if expert.phase in ("miss", "descend"):
                pushed = max(pushed, float(np.linalg.norm(arm.task.cube()[:2] - start[:2])))
        assert arm.task.success(), (expert.phase, arm.task.info())
        assert phases[:4] == ["approach", "miss", "descend", "close"], phases
        assert beside is not None and 0.02 - 0.005 < beside[0] < 0.045 and abs(beside[1]) < 0.01, beside
        assert pushed < 0.003, f"the cube moved {1000 * pushed:.1f} mm before the grasp"
        placed = arm.task.cube()[:2] - arm.task.zone()[:2]
        assert np.linalg.norm(placed - points[300]) < 0.006, (placed, points[300])  # less the grasp offset
        arm.reset(300)
        expert.reset()
        assert np.array_equal(expert._place_off, points[300])
    for bad in ({"place_spread_m": -0.01}, {"descent_miss_m": -0.01}):
        with pytest.raises(ValueError, match="must be >= 0"):
            Expert(arm, **bad)


@pytest.mark.parametrize(("task", "seed"), [("pick_place", 7), ("push", 1)])
def test_expert_solves_in_the_hand_scene(task: str, seed: int) -> None:
    with SimArm(task=task, seed=seed, cameras=(), hand=True) as arm:
        ok, t = run_expert_episode(arm, Expert(arm), seed)
        assert ok, (seed, t, arm.task.info())


# ---------------------------------------------------------------- recording


def test_record_pick_place_bag_has_fingers_gripper_commands_and_prompt(tmp_path: Path) -> None:
    from wam_control.sim.bag import read_bag
    from wam_control.sim.record import main

    try:
        rc = main(
            ["--task", "pick_place", "--episodes", "1", "--seed", "7", "--out", str(tmp_path),
             "--cameras", "scene", "--image-hw", "24", "24", "--camera-hz", "5", "--place-spread", "0.02",
             "--descent-miss", "0.04"]
        )  # fmt: skip
    except RenderUnavailableError as exc:
        pytest.skip(f"no offscreen GL backend: {exc}")
    assert rc == 0
    demo = read_bag(tmp_path / "pick_place_seed7")
    assert demo.metadata["success"] == "true"
    # an expert variant's bags name it as their controller (the training data's `source`)
    assert demo.metadata["controller"] == "scripted_expert_spread_miss"
    assert demo.metadata["place_spread_m"] == "0.02" and demo.metadata["descent_miss_m"] == "0.04"
    assert demo.joint_names == JOINT_NAMES + FINGER_NAMES and demo.joint_q.shape[1] == 9
    assert demo.command_names == JOINT_NAMES and demo.command_q.shape[1] == 7
    assert demo.gripper_names == FINGER_NAMES and demo.gripper_q.shape == (len(demo.command_t), 2)
    assert np.array_equal(demo.gripper_t, demo.command_t)
    g = demo.gripper_q[:, 0]
    assert g[0] == pytest.approx(GRIPPER_OPEN) and g.min() == 0.0  # opened, closed, opened again
    assert np.max(np.abs(np.diff(g))) / (demo.command_t[1] - demo.command_t[0]) <= FINGER_MAX_SPEED + 1e-9
    assert len(demo.instructions) == 1 and demo.instruction_t[0] == 0.0
    prompt = demo.instructions[0]
    assert prompt == demo.metadata["prompt"] and any(f"{c} " in prompt for c in CUBE_COLOURS)
    # the fingers measured in /joint_states close on the 4 cm cube while carrying it
    assert np.min(demo.joint_q[:, 7]) == pytest.approx(0.02, abs=0.002)
    for option in ("--place-spread", "--descent-miss"):  # pick_place only, and a distance
        for task, value in (("push", "0.02"), ("pick_place", "-0.01")):
            with pytest.raises(SystemExit):
                main(["--task", task, "--episodes", "1", "--out", str(tmp_path), option, value])


def test_record_every_cube_gives_one_scene_three_prompts_and_three_motions(tmp_path: Path) -> None:
    """--every-cube: one bag per cube as the target, from the same scene: the first images are equal,
    the prompts differ in the colour word only, and each episode picks and places its own cube."""
    from wam_control.sim.bag import read_bag
    from wam_control.sim.record import main

    base = ["--task", "pick_place", "--episodes", "1", "--seed", "4", "--cameras", "scene", "--image-hw", "24",
            "24", "--camera-hz", "2", "--after-success-s", "0.1"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path), "--every-cube"]) == 0
    demos = {c: read_bag(tmp_path / f"pick_place_seed4_{c}") for c in CUBE_COLOURS}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"pick_place_seed4_{c}" for c in CUBE_COLOURS)
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        own = arm.task.prompt  # the seed's own prompt: one of the three, with the same phrasing
    for colour, demo in demos.items():
        assert demo.metadata["success"] == "true" and demo.metadata["target_cube"] == colour
        assert demo.metadata["controller"] == "scripted_expert_cubes"
        assert demo.instructions[0].split() == [colour if w in CUBE_COLOURS else w for w in own.split()]
    first = [demo.images["camera"].frames[0] for demo in demos.values()]
    assert all(np.array_equal(first[0], f) for f in first[1:])
    # three different motions: where the arm is 3 s in differs by centimetres-scale joint angles
    at_3s = [demo.joint_q[np.searchsorted(demo.joint_t, 3.0), :7] for demo in demos.values()]
    assert min(np.abs(a - b).max() for i, a in enumerate(at_3s) for b in at_3s[:i]) > 0.05
    with pytest.raises(SystemExit):  # pick_place only
        main(["--task", "push", "--episodes", "1", "--out", str(tmp_path / "push"), "--every-cube"])
    with SimArm(task="pick_place", seed=4, cameras=()) as arm, pytest.raises(ValueError, match="target cube 3"):
        arm.task.set_target(3)


def test_record_after_success_holds_the_target_for_the_time_asked(tmp_path: Path) -> None:
    """--after-success-s: the same episode goes on that long past success, the arm held where the task
    ended (demonstrations of staying at the target); a duration <= 0 is an argument error."""
    from wam_control.sim.bag import read_bag
    from wam_control.sim.record import main

    base = ["--task", "reach", "--episodes", "1", "--seed", "3", "--cameras", "scene", "--image-hw", "16", "16",
            "--camera-hz", "2", "--hand"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "short")]) == 0  # offscreen GL: scripts/setup.sh installs it
    assert main([*base, "--out", str(tmp_path / "held"), "--after-success-s", "2"]) == 0
    short, held = read_bag(tmp_path / "short" / "reach_seed3"), read_bag(tmp_path / "held" / "reach_seed3")
    assert short.metadata["success"] == held.metadata["success"] == "true"
    assert held.metadata["after_success_s"] == "2.0"
    # the recording stops once success has held without a break for the time asked: 1.5 s more here
    assert float(held.metadata["duration_s"]) - float(short.metadata["duration_s"]) == pytest.approx(1.5, abs=0.01)
    assert np.array_equal(held.joint_q[: len(short.joint_q)], short.joint_q)  # the same episode until then
    for value in ("0", "-1"):
        with pytest.raises(SystemExit):
            main([*base, "--out", str(tmp_path / "bad"), "--after-success-s", value])


def test_expert_resyncs_mid_task_and_recovers_a_dropped_cube() -> None:
    """A fresh expert (a DAgger teacher, a restart) takes the phase from the sim: carrying -> it carries
    on; the cube dropped back on the table -> it picks it up again and still places it."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        expert = Expert(arm)
        arm.reset(4)
        expert.reset()
        assert expert.phase == "approach"
        while expert.phase != "move":
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 10.0, f"stuck in {expert.phase}"
        for _ in range(100):
            arm.step(expert.act(), gripper=expert.gripper)
        snap = expert.snapshot()
        fresh = Expert(arm)  # reset() seeds from the measured state and syncs the phase
        assert fresh.phase == "move" and fresh.gripper == pytest.approx(0.0)
        for _ in range(50):  # imagining ahead and restoring leaves the plan where it was
            expert.act()
        expert.restore(snap)
        assert expert.snapshot()["phase"] == "move" and np.array_equal(expert.snapshot()["q"], snap["q"])
        # the cube falls out: put it back on the table, away from the fingers
        cube = arm.task.cube()
        arm.teleport_object(np.array([cube[0], cube[1] + 0.05, arm.task.cube_half + 0.0005]))
        arm.set_gripper(GRIPPER_OPEN)
        for _ in range(100):
            arm.step(arm.command())
        assert fresh.sync_phase() == "approach"
        t_end = arm.time + 20.0
        while not arm.task.success() and arm.time < t_end:
            arm.step(fresh.act(), gripper=fresh.gripper)
        assert arm.task.success(), (fresh.phase, arm.task.info())


def resynced_inside_each_phase(arm: SimArm, seed: int, plan_once: bool) -> tuple[dict[str, str], Expert]:
    """Run the expert on `seed`; 30 ticks into each of its phases, the phase a fresh expert reads back
    from the sim (after one planning step if `plan_once`). Returns ({running phase: read phase}, expert)."""
    expert = Expert(arm)
    arm.reset(seed)
    expert.reset()
    seen: dict[str, str] = {}
    ticks: dict[str, int] = {}
    while expert.phase != "done" and arm.time < 15.0:
        arm.step(expert.act(), gripper=expert.gripper)
        ticks[expert.phase] = ticks.get(expert.phase, 0) + 1
        if ticks[expert.phase] == 30:  # well inside each phase
            fresh = Expert(arm)
            seen[expert.phase] = fresh.sync_phase()
            if plan_once:
                fresh.act()
                seen[expert.phase] = fresh.phase
    return seen, expert


def test_expert_resyncs_a_push_from_the_sim_and_reach_has_no_phase() -> None:
    """A fresh expert mid-push (a DAgger teacher labelling the student's state) reads the planner's own
    phase back from the geometry: approaching, descending at the hover point, pushing behind the puck."""
    with SimArm(task="push", seed=3, cameras=(), hand=True) as arm:
        seen, expert = resynced_inside_each_phase(arm, 3, plan_once=False)
        assert {k: seen.get(k) for k in ("approach", "descend", "push")} == {
            "approach": "approach",
            "descend": "descend",
            "push": "push",
        }, seen
        assert arm.task.success() or expert.phase == "done"
    with SimArm(task="reach", seed=3, cameras=(), hand=True) as arm:
        assert Expert(arm).sync_phase() == "approach"


def push_expert_down_to(arm: SimArm, above_push_m: float) -> tuple[Expert, np.ndarray]:
    """Run the push expert until it descends at the pre-push point to `above_push_m` over the pushing
    height; (the expert, the puck -> goal direction)."""
    expert = Expert(arm)
    arm.reset(3)
    expert.reset()
    while not (expert.phase == "descend" and arm.ee_pose()[0][2] < 0.018 + above_push_m):
        arm.step(expert.act(), gripper=expert.gripper)
        assert arm.time < 10.0, f"stuck in {expert.phase}"
    d = arm.task.goal()[:2] - arm.task.object()[:2]  # type: ignore[attr-defined]
    return expert, d / np.linalg.norm(d)


@pytest.mark.parametrize(
    ("above_push_m", "across_m", "phase"),
    [
        (0.027, 0.02, "recenter"),  # the thirteenth run's stall: 4.5 cm up, 2 cm off: across, then down
        (0.027, 0.003, "descend"),  # the pre-push point still within a centimetre: the descent goes on
        (0.027, 0.06, "approach"),  # far off: back to the hover point
        (0.065, 0.02, "approach"),  # near the hover height: approach is already across
    ],
)
def test_push_expert_resynced_part_way_down_and_off_the_pre_push_point_goes_on_down(
    above_push_m: float, across_m: float, phase: str
) -> None:
    """A student stopped part-way down a few cm off the pre-push point (the puck moved across): the
    resynced expert goes across and down from there and pushes, never climbing back toward the hover
    point. Labelled "approach" (up to 9 cm) there and "descend" a centimetre closer, students hovered
    between the two until the horizon."""
    with SimArm(task="push", seed=3, cameras=(), hand=True) as arm:
        _, u = push_expert_down_to(arm, above_push_m)
        p0 = arm.ee_pose()[0]
        puck = arm.task.object()  # type: ignore[attr-defined]
        side = across_m * np.array([-u[1], u[0]])
        arm.task.teleport(np.array([puck[0] + side[0], puck[1] + side[1], puck[2]]))  # type: ignore[attr-defined]
        fresh = Expert(arm)
        assert fresh.sync_phase() == phase, (fresh.phase, arm.task.info())
        if phase == "approach":
            return
        top = p0[2]
        while fresh.phase != "push":
            arm.step(fresh.act(), gripper=fresh.gripper)
            top = max(top, arm.ee_pose()[0][2])
            assert arm.time < 20.0, f"stuck in {fresh.phase}"
        assert top < p0[2] + 0.005, f"climbed {100 * (top - p0[2]):.1f} cm before pushing"
        t_end = arm.time + 15.0
        while not arm.task.success() and arm.time < t_end:
            arm.step(fresh.act(), gripper=fresh.gripper)
        assert arm.task.success(), arm.task.info()


def test_expert_resyncs_every_pick_place_phase() -> None:
    """Inside each phase of a pick_place, a fresh expert synced from the sim (the lookahead DAgger
    teacher does this for every label) is, after one planning step, in the running expert's phase.
    Mid-descent and mid-grasp used to read as "approach": back up to the hover point, fingers open."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        seen, _ = resynced_inside_each_phase(arm, 4, plan_once=True)
        phases = ("approach", "descend", "close", "lift", "move", "place", "open", "retreat")
        assert seen == {p: p for p in phases}, seen
        assert arm.task.success()


def expert_down_to(arm: SimArm, above_m: float) -> Expert:
    """The expert on seed 4 until its tool is `above_m` over the cube's centre in the descent."""
    expert = Expert(arm)
    arm.reset(4)
    expert.reset()
    cube = arm.task.cube()
    while not (expert.phase in ("descend", "close") and arm.ee_pose()[0][2] < cube[2] + above_m):
        arm.step(expert.act(), gripper=expert.gripper)
        assert arm.time < 10.0, f"stuck in {expert.phase}"
    return expert


def finish_tracking_height(arm: SimArm, expert: Expert, phases: tuple[str, ...], timeout_s: float) -> float:
    """Run `expert` until the task succeeds (asserted); the highest tool point while in `phases`,
    starting from where the tool is now."""
    top = arm.ee_pose()[0][2]
    t_end = arm.time + timeout_s
    while not arm.task.success() and arm.time < t_end:
        arm.step(expert.act(), gripper=expert.gripper)
        if expert.phase in phases:
            top = max(top, arm.ee_pose()[0][2])
    assert arm.task.success(), (expert.phase, arm.task.info())
    return float(top)


@pytest.mark.parametrize(
    ("above_m", "along_m", "across_m", "phase"),
    [
        (0.05, 0.025, 0.0, "recenter"),  # a pad over the cube: sideways at that height, then down
        (0.05, 0.0, 0.03, "descend"),  # the cube between the pads: straight to the grasp point
        (0.015, 0.006, 0.012, "descend"),  # at grasp height, between the pads: sideways, then close
        (0.05, 0.006, 0.005, "descend"),  # within a centimetre: the descent goes on
        (0.05, 0.0, 0.07, "approach"),  # far off: back to the hover point
        (0.098, 0.025, 0.0, "approach"),  # at the hover height: approach is already sideways
    ],
)
def test_expert_resynced_low_and_off_centre_goes_on_down(
    above_m: float, along_m: float, across_m: float, phase: str
) -> None:
    """A student stopped part-way down and a few cm off the cube (the fifth run's stalls): the resynced
    expert gets to the grasp from there, never climbing back toward the hover point."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        expert_down_to(arm, above_m)
        p0 = arm.ee_pose()[0]
        f = finger_axis_xy(arm.ee_pose()[1])
        off = along_m * f + across_m * np.array([-f[1], f[0]])
        arm.teleport_object(np.array([p0[0] + off[0], p0[1] + off[1], arm.task.cube()[2]]))
        fresh = Expert(arm)
        assert fresh.phase == phase, (fresh.phase, arm.task.info())
        if phase == "approach":
            return
        top = finish_tracking_height(arm, fresh, ("recenter", "descend", "close"), 15.0)
        assert top < p0[2] + 0.005, f"climbed {100 * (top - p0[2]):.1f} cm before the grasp"


def test_expert_resynced_low_with_the_cube_not_between_the_pads_rises_clear_first() -> None:
    """Resynced low beside the cube with the fingers half closed (the cube does not fit between the
    pads), the expert goes straight up until the pads clear the cube's top, then across, opening the
    hand: the cube is not pushed, and the grasp follows."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        expert_down_to(arm, 0.01)
        arm.set_gripper(0.015)
        for _ in range(500):
            arm.step(arm.command())
        p0 = arm.ee_pose()[0]
        f = finger_axis_xy(arm.ee_pose()[1])
        across = np.array([-f[1], f[0]])
        arm.teleport_object(
            np.array([p0[0] + 0.035 * across[0], p0[1] + 0.035 * across[1], arm.task.cube()[2]])
        )
        moved_from = arm.task.cube().copy()
        fresh = Expert(arm)
        assert fresh.phase == "recenter"
        rose_first = None
        while fresh.phase == "recenter":
            before = arm.ee_pose()[0]
            arm.step(fresh.act(), gripper=fresh.gripper)
            if rose_first is None and np.linalg.norm(arm.ee_pose()[0][:2] - p0[:2]) > 0.005:
                rose_first = before[2] - moved_from[2]  # height above the cube's centre when it moved off
            assert arm.time < 20.0
        assert rose_first is not None and rose_first > 0.025, rose_first
        assert np.linalg.norm(arm.task.cube()[:2] - moved_from[:2]) < 0.002, "the cube was pushed"
        t_end = arm.time + 15.0
        while not arm.task.success() and arm.time < t_end:
            arm.step(fresh.act(), gripper=fresh.gripper)
        assert arm.task.success(), (fresh.phase, arm.task.info())


@pytest.mark.parametrize(
    ("running", "shift_m", "phase"),
    [
        ("place", (0.02, -0.01), "place"),  # lowered with the cube 2 cm off the zone's centre: place
        ("open", (0.02, -0.01), "open"),  # put down off centre, fingers still closed: let go
        ("place", (0.045, 0.0), "shift"),  # lowered 4.5 cm off, outside the zone: across, then down
        ("place", (-0.01, 0.04), "shift"),
        ("place", (0.08, 0.0), "lift"),  # lowered far outside the zone: up to the carry height first
    ],
)
def test_expert_resynced_holding_the_cube_low_over_the_zone_places_it_from_there(
    running: str, shift_m: tuple[float, float], phase: str
) -> None:
    """A student that carried the cube to the zone and lowered it a little off centre: the resynced
    expert puts it down from there (or lets go), never lifting it back to the carry height. Lowered a
    few cm outside the zone it moves the cube across at that height first ("shift")."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        expert = Expert(arm)
        arm.reset(4)
        expert.reset()
        while not (expert.phase == running and arm.ee_pose()[0][2] < PICK_CARRY_Z_M - 0.04):
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 12.0, f"stuck in {expert.phase}"
        p0 = arm.ee_pose()[0]
        zone_id = arm.task._zone
        arm.data.mocap_pos[zone_id, :2] += np.asarray(shift_m)
        fresh = Expert(arm)
        assert fresh.phase == phase, (fresh.phase, arm.task.info())
        if phase == "lift":
            return
        top = finish_tracking_height(arm, fresh, ("shift", "place", "open"), 10.0)
        assert top < p0[2] + 0.005, f"lifted {100 * (top - p0[2]):.1f} cm before letting go"


def test_expert_resynced_holding_the_cube_high_within_the_place_spread_puts_it_down_there() -> None:
    """Carried to 1.5 cm off the zone's centre at the carry height: with a place spread the resynced
    expert puts the cube down straight below (what its demonstrations show); without, it moves over
    the centre first."""
    with SimArm(task="pick_place", seed=4, cameras=()) as arm:
        expert = Expert(arm)
        arm.reset(4)
        expert.reset()
        while expert.phase != "place":
            arm.step(expert.act(), gripper=expert.gripper)
            assert arm.time < 12.0, f"stuck in {expert.phase}"
        arm.data.mocap_pos[arm.task._zone, :2] += (0.012, -0.009)
        cube0 = arm.task.cube()
        assert Expert(arm).phase == "move"
        fresh = Expert(arm, place_spread_m=0.02)
        assert fresh.phase == "place", (fresh.phase, arm.task.info())
        finish_tracking_height(arm, fresh, ("place",), 10.0)
        assert np.linalg.norm(arm.task.cube()[:2] - cube0[:2]) < 0.003, "moved sideways before setting down"


def test_following_the_lookahead_labels_completes_a_pick_place() -> None:
    """The DAgger teacher's labels, executed as they come at the runtime's cadence (a new chunk every
    8 action steps), pick and place the cube in about the expert's own time (~10.4 s median)."""
    from wam_control.model.rollout import LookaheadLabeler, RolloutConfig, run_episode

    with SimArm(task="pick_place", seed=3000, image_hw=(16, 16), cameras=("scene",), hand=True) as arm:
        labeler = LookaheadLabeler(arm, horizon=16, action_dt=0.05)
        sent: list[np.ndarray] = []  # the commands, to give the teacher the commanded state and velocity

        class Commands:  # the arm, recording what is sent to it
            def __getattr__(self, name: str):
                return getattr(arm, name)

            def step(self, q: np.ndarray, gripper: float) -> bool:
                sent.append(np.append(q, gripper))
                return arm.step(q, gripper=gripper)

        def teacher_as_policy(images, state, prefix, prefix_len, tokens):
            q_cmd = sent[-1] if sent else state.astype(np.float64)
            v_cmd = (sent[-1] - sent[-2]) * arm.control_hz if len(sent) > 1 else np.zeros_like(q_cmd)
            return labeler(images, state, q_cmd, v_cmd), np.zeros(1, np.float32), np.zeros((1, 1), np.float32)

        cfg = RolloutConfig(horizon=16, action_dt=0.05, cameras=("scene",), replan_steps=8, prefix_len=0,
                            gripper=True, max_time_s=15.0)  # fmt: skip
        ep = run_episode(Commands(), teacher_as_policy, 3000, cfg)
    assert ep.success and ep.time_s < 13.0, ep.time_s
