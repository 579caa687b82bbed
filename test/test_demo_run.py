"""`wam-control demo` end to end: a short real-time episode with a small random model writes the
summary, the four plots and a bag; a missing model is a clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")


def _render_ok() -> bool:
    from wam_control.sim.gl import prepare

    return prepare() is not None


PNGS = ("joint_trajectories.png", "inference_latency.png", "chunk_seams.png", "latent_prediction.png")


@pytest.mark.skipif(not _render_ok(), reason="no offscreen OpenGL (EGL/OSMesa) for the sim cameras")
def test_demo_realtime_writes_summary_plots_and_bag(
    test_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from wam_control.demo import main

    out = tmp_path / "demo"
    rc = main(
        [
            "--episodes",
            "1",
            "--horizon-s",
            "1.0",
            "--config",
            "fr3",
            "--model",
            str(test_model_path),
            "--out",
            str(out),
            "--record",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    # It says what ran: real time, one process, the async thread worker and the backend that really ran.
    assert "real time" in text and "ThreadWorker" in text
    assert re.search(r"inference: onnxruntime .*CPUExecutionProvider", text)
    for what in ("success rate", "loop timing", "seams", "safety filter", "starvations"):
        assert what in text
    final = [ln for ln in text.splitlines() if ln.startswith("success_rate=")]
    assert len(final) == 1
    values = dict(kv.split("=") for kv in final[0].split())
    assert float(values["success_rate"]) == 0.0  # an untrained model does not reach the target in 1 s
    assert float(values["compute_p50_ms"]) > 0.0
    assert int(values["misses"]) >= 0 and float(values["late_p99_us"]) >= 0.0
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert (out / "summary.txt").read_text().splitlines()[-1] == final[0]

    from wam_control.sim.bag import read_bag

    demo = read_bag(out / "bags" / "reach_seed100000")
    assert demo.metadata["success"] == "false"
    assert len(demo.joint_t) >= 400  # ~1 s at 500 Hz (a loaded machine may skip slots: none are invented)
    assert demo.command_q.shape[1] == 7 and len(demo.images["camera"].t) >= 10


def test_demo_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wam_control.demo import main

    missing = tmp_path / "nope.onnx"
    assert main(["--model", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--model" in err
