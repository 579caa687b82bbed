#!/usr/bin/env python3
"""Offline tuning of the surprise monitor's smoothing and slow threshold on recorded traces.

Record the traces with the responses off, so that no slow-down or stop changes what follows:

    wam-control bench surprise --task pick_place --episodes 20 --seed 100200 \\
        --slow 1000 --stop 2000 --no-latch --scores-out runs/surprise_tune.npz

then replay both channels' EWMA (latent: the raw z per scored observation; frame: the frame z) and the
threshold over a grid, the way runtime/surprise.py does it (score = max of the two EWMAs after each
update; an alarm after the injection counts when its observation was taken at or after the injection
and within the window; any alarm in a nominal episode is a false alarm):

    .venv/bin/python scripts/surprise_tune.py runs/surprise_tune.npz --max-false 1

Prints one row per setting, best detection first among those within --max-false false alarms.
Observation ticks are the update ticks minus the bench's fixed latency (lockstep: exact).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def replay(d: dict[str, np.ndarray], smoothing: float, slow: float, frame: bool = True) -> dict[str, object]:
    """Detections per kind and false alarms for one setting."""
    kinds = [str(k) for k in d["kinds"]]
    lat = int(d["latency_ticks"])
    window = int(d["window_ticks"])
    fired = d["fired"] if "fired" in d else np.ones(len(kinds), bool)
    det: dict[str, list[int]] = {}
    false: list[int] = []
    for i, kind in enumerate(kinds):
        if kind != "nominal" and not fired[i]:
            continue
        ev = [(int(t), 0, float(v)) for t, v in zip(d[f"raw_ticks_{i}"], d[f"raw_{i}"])]
        if frame:
            ev += [(int(t), 1, float(v)) for t, v in zip(d[f"frame_ticks_{i}"], d[f"frame_z_{i}"])]
        ev.sort()
        ch = [0.0, 0.0]
        inject = int(d["inject_ticks"][i])
        alarm = False
        for t, c, v in ev:
            if not np.isfinite(v):
                continue
            ch[c] = smoothing * v + (1 - smoothing) * ch[c]
            if max(ch) < slow:
                continue
            if kind == "nominal":
                alarm = True
                break
            if inject <= t - lat and t <= inject + window:
                alarm = True
                break
        if kind == "nominal":
            if alarm:
                false.append(int(d["seeds"][i]))
        else:
            det.setdefault(kind, []).append(int(alarm))
    n_det = sum(sum(v) for v in det.values())
    n_dist = sum(len(v) for v in det.values())
    return {
        "detect": n_det / max(1, n_dist),
        "per_kind": {k: f"{sum(v)}/{len(v)}" for k, v in det.items()},
        "false": false,
        "nominal": sum(1 for k in kinds if k == "nominal"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores", nargs="+", help="--scores-out files of bench surprise (pooled)")
    ap.add_argument("--smoothing", default="0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--slow", default="3,4,5,6,7,8,10,12")
    ap.add_argument("--max-false", type=int, default=1, help="false alarms allowed (over all files)")
    ap.add_argument("--latent-only", action="store_true", help="ignore the frame channel")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    files = [dict(np.load(p)) for p in args.scores]
    rows = []
    for a in (float(x) for x in args.smoothing.split(",")):
        for th in (float(x) for x in args.slow.split(",")):
            res = [replay(f, a, th, frame=not args.latent_only) for f in files]
            n_false = sum(len(r["false"]) for r in res)  # type: ignore[arg-type]
            n_nom = sum(int(r["nominal"]) for r in res)  # type: ignore[call-overload]
            per: dict[str, list[int]] = {}
            for r in res:
                for k, v in r["per_kind"].items():  # type: ignore[attr-defined]
                    got, n = (int(x) for x in v.split("/"))
                    per.setdefault(k, [0, 0])
                    per[k][0] += got
                    per[k][1] += n
            det = sum(g for g, _ in per.values()) / max(1, sum(n for _, n in per.values()))
            rows.append((n_false <= args.max_false, det, -n_false, a, th, per, n_false, n_nom))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]), reverse=True)
    for ok, det, _, a, th, per, n_false, n_nom in rows[: args.top]:
        kinds = " ".join(f"{k} {g}/{n}" for k, (g, n) in per.items())
        print(
            f"{'ok ' if ok else '   '}smoothing={a:g} slow={th:g} detect={det:.3f} "
            f"false_alarms={n_false}/{n_nom}  {kinds}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
