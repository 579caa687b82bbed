"""The cube-colour swap (model/augment.py): re-coloured cubes look like cubes rendered in those colours,
the prompt is renamed to match, and only pick_place samples are touched, their labels unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from wam_control.model.augment import CubeColourSwap  # noqa: E402
from wam_control.model.prompt import PromptEncoder, build_tokenizer, task_prompts  # noqa: E402
from wam_control.model.train import TrainConfig, Trainer, colour_swap_for, episode_tokens  # noqa: E402
from wam_control.model.wam import WAMConfig, build_model  # noqa: E402
from wam_control.sim.tasks import CUBE_COLOURS, CUBE_RGB, PROMPTS  # noqa: E402

ARM = tuple(f"fr3_joint{i}" for i in range(1, 8))


def tokenizer() -> str:
    return build_tokenizer(task_prompts())


def swap_for(tok_json: str) -> CubeColourSwap:
    return CubeColourSwap(json.loads(tok_json)["model"]["vocab"], CUBE_COLOURS, CUBE_RGB)


def test_cube_colours_are_the_scene_files() -> None:
    from wam_control.sim.arm import SimArm

    with SimArm(task="pick_place", seed=0, image_hw=(32, 32), cameras=("scene",), hand=True) as arm:
        for colour, rgb in zip(CUBE_COLOURS, CUBE_RGB):
            np.testing.assert_allclose(arm.model.geom_rgba[arm.model.geom(f"cube_{colour}").id, :3], rgb)


def test_swapped_frames_match_the_scene_rendered_with_the_permuted_colours() -> None:
    """The ground truth is the renderer: the same scene with the cubes' colours permuted in the model."""
    from wam_control.sim.arm import SimArm

    swap = swap_for(tokenizer())
    with SimArm(task="pick_place", seed=100007, image_hw=(96, 96), cameras=("scene", "wrist"), hand=True) as arm:
        arm.reset(100007)
        geoms = [arm.model.geom(f"cube_{c}").id for c in CUBE_COLOURS]
        original = np.stack([arm.render(c) for c in ("scene", "wrist")])
        for k, perm in enumerate(swap.perms):
            for i, j in enumerate(perm):  # cube i is painted colour perm[i]
                arm.model.geom_rgba[geoms[i], :3] = CUBE_RGB[j]
            truth = np.stack([arm.render(c) for c in ("scene", "wrist")]).astype(int)
            got = swap.images(original[None], np.array([k]))[0].astype(int)
            if k == 0:
                np.testing.assert_array_equal(got, original)
                np.testing.assert_array_equal(truth, original)
                continue
            cube = np.any(truth != original, axis=-1)  # the pixels the new colours changed
            assert cube.sum() > 100
            err = np.abs(got - truth).max(axis=-1)
            assert np.median(err[cube]) <= 6, f"perm {perm}: re-coloured cubes differ from the render"
            assert np.mean(err[cube] > 40) < 0.1, f"perm {perm}: too many cube pixels left in the old colour"
            assert np.mean(err[~cube] > 0) < 0.002, f"perm {perm}: pixels that are not a cube changed"
        for i in range(3):
            arm.model.geom_rgba[geoms[i], :3] = CUBE_RGB[i]


@pytest.mark.parametrize("phrasing", PROMPTS["pick_place"])
def test_the_prompt_is_renamed_to_the_colour_the_cube_now_has(phrasing: str) -> None:
    tok = tokenizer()
    enc = PromptEncoder(tok, 16)
    swap = swap_for(tok)
    for i, colour in enumerate(CUBE_COLOURS):
        tokens = enc.encode(phrasing.format(colour=colour))[None]
        assert swap.names_one_colour(tokens[0])
        for k, perm in enumerate(swap.perms):
            renamed = swap.tokens(tokens, np.array([k]))[0]
            np.testing.assert_array_equal(renamed, enc.encode(phrasing.format(colour=CUBE_COLOURS[perm[i]])))
    assert not swap.names_one_colour(enc.encode("push the blue puck onto the green circle"))
    assert not swap.names_one_colour(enc.encode("move the gripper to the sphere"))


def _dataset(tok_json: str):  # type: ignore[no-untyped-def]
    """A pick_place episode (its prompt names the red cube) and a reach one ("the red ball")."""
    from wam_control.model.data import DatasetBuilder

    rng = np.random.default_rng(0)
    builder = DatasetBuilder()
    for task, prompt in (("pick_place", "put the red cube on the yellow square"), ("reach", "reach the red ball")):
        n = 12
        frames = np.zeros((n, 1, 16, 16, 3), np.uint8)
        frames[:, :, 4:8, 4:8] = (230, 30, 25)  # a red cube
        frames[:, :, 10:14, 10:14] = (120, 118, 112)  # the grey table
        q = np.cumsum(rng.normal(0, 0.01, (n, 8)), axis=0).astype(np.float32)
        arrays = {
            "obs_frame": np.arange(n),
            "state": q,
            "actions": np.repeat(q[:, None], 8, axis=1),
            "executed": np.repeat(q[:, None], 8, axis=1),
            "future": np.minimum(np.arange(n)[:, None] + np.array([2, 4, 8])[None], n - 1),
        }
        builder.add(frames, arrays, {"task": task, "prompt": prompt, "source": "scripted_expert"})
    return builder.build()


def _model(tok_json: str):  # type: ignore[no-untyped-def]
    cfg = WAMConfig(
        joint_names=ARM, camera_names=("scene",), image_height=16, image_width=16, horizon=8, max_prefix=4,
        conv_channels=(4, 8), image_feature_dim=16, hidden_dim=32, latent_dim=16, extra_dofs=("gripper",),
        max_instruction_tokens=12, vocab_size=PromptEncoder(tok_json, 1).vocab_size, instruction_dim=8,
    )  # fmt: skip
    model = build_model(cfg, seed=0)
    model.tokenizer_json = tok_json
    return model


def test_training_swaps_only_pick_place_samples_and_keeps_their_labels() -> None:
    tok = tokenizer()
    ds, model = _dataset(tok), _model(tok)
    swap, eligible = colour_swap_for(model, ds, episode_tokens(model, ds), 1.0)
    assert swap is not None and eligible.tolist() == [True, False]

    trainer = Trainer(model, ds, np.arange(len(ds)), TrainConfig(colour_swap=1.0, batch_size=8, steps=3))
    idx = np.arange(len(ds))
    which = trainer.colour_swap.draw(trainer.rng, trainer.swap_ok[ds.episode[idx]], 1.0)
    assert np.all(which[ds.episode == 0] > 0) and np.all(which[ds.episode == 1] == 0)
    images, _ = trainer._obs(idx, swap=which)
    tokens = trainer._tokens(idx, which)
    assert tokens is not None
    red, grey, words = (230, 30, 25), (120, 118, 112), json.loads(tok)["model"]["vocab"]
    for s in np.flatnonzero(ds.episode == 0):
        new_colour = CUBE_COLOURS[swap.perms[int(which[s])][0]]  # green <-> blue leaves red as it is
        assert words[new_colour] in tokens[s].tolist()
        assert (tuple(images[s, 0, 5, 5].tolist()) == red) == (new_colour == "red")  # the cube re-coloured
        assert tuple(images[s, 0, 12, 12].tolist()) == grey  # ... the table not
    for s in np.flatnonzero(ds.episode == 1):  # reach: "the red ball" stays red
        assert words["red"] in tokens[s].tolist()
        assert tuple(images[s, 0, 5, 5].tolist()) == red
    assert np.isfinite(trainer.step()["loss"])  # inputs and world-model targets swapped together

    off, none = colour_swap_for(model, ds, episode_tokens(model, ds), 0.0)
    assert off is None and not none.any()


def test_colour_swap_refuses_a_model_without_a_prompt_and_a_bad_share() -> None:
    tok = tokenizer()
    ds, model = _dataset(tok), _model(tok)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        colour_swap_for(model, ds, episode_tokens(model, ds), 1.5)
    with pytest.raises(ValueError, match="prompt"):
        colour_swap_for(model, ds, None, 0.5)
    with pytest.raises(ValueError, match="no word for"):
        CubeColourSwap({"red": 2, "green": 3}, CUBE_COLOURS, CUBE_RGB)
