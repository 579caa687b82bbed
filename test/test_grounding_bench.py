"""`bench grounding`: the rates tell a policy that follows the colour word from one that ignores it or
averages between the cubes; the model path runs an exported prompted model through the runtime's
backend and tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wam_control.bench.grounding import grounding_queries, summarise
from wam_control.sim.tasks import CUBE_COLOURS

SEEDS = (100003,)


def named_colour(prompt: str) -> int:
    hits = [i for i, c in enumerate(CUBE_COLOURS) if f" {c} " in f" {prompt} "]
    assert len(hits) == 1, prompt
    return hits[0]


@pytest.fixture(scope="module")
def arm():  # type: ignore[no-untyped-def]
    from wam_control.sim.arm import SimArm

    with SimArm(task="pick_place", seed=0, image_hw=(16, 16), cameras=("scene",), hand=True) as a:
        yield a


def run(arm, chunk_end):  # type: ignore[no-untyped-def]
    return [q for s in SEEDS for q in grounding_queries(arm, chunk_end, ("scene",), s, every_s=1.0)]


def test_a_policy_that_follows_the_word_goes_for_every_named_cube(arm) -> None:  # type: ignore[no-untyped-def]
    queries = run(arm, lambda images, state, prompt: arm.task.cube(named_colour(prompt)))
    s = summarise(queries)
    assert s["named_nearest_rate"] == 1.0 and s["start_named_nearest_rate"] == 1.0
    assert s["named_toward_rate"] == 1.0 and s["start_named_toward_rate"] == 1.0
    assert s["named_err_cm_p50"] == pytest.approx(0.0, abs=1e-9)
    times = sorted({round(q.t, 6) for q in queries})
    assert times[:2] == [0.0, 1.0]  # at rest, then while the expert approaches
    assert len({q.named for q in queries}) == 3 and s["queries"] == 3 * len({(q.seed, q.t) for q in queries})


def test_a_policy_that_ignores_the_word_scores_one_in_three(arm) -> None:  # type: ignore[no-untyped-def]
    s = summarise(run(arm, lambda images, state, prompt: arm.task.cube()))  # always the task's cube
    assert s["named_nearest_rate"] == pytest.approx(1 / 3) and s["named_toward_rate"] == pytest.approx(1 / 3)
    assert s["task_nearest_rate"] == 1.0


def test_a_policy_that_averages_the_cubes_is_far_from_the_named_one(arm) -> None:  # type: ignore[no-untyped-def]
    s = summarise(run(arm, lambda images, state, prompt: np.mean([arm.task.cube(i) for i in range(3)], axis=0)))
    assert s["named_err_cm_p50"] > 4.0  # cube centres are >= 9 cm apart


def test_the_teachers_own_chunks_head_for_the_named_cube_but_end_short_of_it(arm) -> None:  # type: ignore[no-untyped-def]
    # The ceiling `--policy teacher` prints: the lookahead expert labelled for each named cube heads for
    # it from rest, but its 0.8 s chunk from rest does not end nearest it every time.
    from wam_control.bench.grounding import teacher_chunk_end

    queries = grounding_queries(arm, teacher_chunk_end(arm), ("scene",), 100003, 1.0)
    s = summarise(queries)
    assert s["start_named_toward_rate"] == 1.0 and s["named_toward_rate"] >= 0.9
    assert s["start_named_nearest_rate"] < 1.0


def test_the_bench_runs_an_exported_prompted_model(
    prompt_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wam_control.bench.grounding import main

    assert main(["--model", str(prompt_model_path), "--episodes", "1", "--every-s", "2", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert int(fields["queries"]) % 3 == 0 and int(fields["queries"]) >= 6
    assert 0.0 <= float(fields["named_nearest_rate"]) <= 1.0
    assert 0.0 <= float(fields["named_toward_rate"]) <= 1.0


def test_the_bench_refuses_a_model_without_a_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    from wam_control.bench.grounding import main

    assert main(["--model", "models/wam_reach.onnx", "--episodes", "1"]) == 2
    assert "prompt input" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the teacher takes no model, a model policy needs one
        main(["--policy", "teacher", "--model", "models/wam_reach.onnx"])
    with pytest.raises(SystemExit):
        main(["--episodes", "1"])
