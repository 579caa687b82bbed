#!/usr/bin/env bash
# Issue 16's closed-loop matrix for one prompted model, in parallel: reach, push and pick_place at 0 ms
# (async) and at 200 ms injected delay (async and sync), and the wrong-prompt control. Each cell's seeds
# are cut into shards of SHARD episodes run as separate `wam-control bench closed-loop` processes
# (lockstep simulated time: a seed gives the same episode in any shard on one machine), then each
# cell's shards are merged into one final line (eval_matrix.summary).
# Usage: scripts/eval_matrix.sh MODEL.onnx OUT_DIR [JOBS]
#   JOBS: processes at once (default: nproc); EPISODES (default 20) per cell, PP0_EPISODES (default 40)
#   for pick_place at 0 ms; SHARD (default 5); CELLS: which cells (default all, see below);
#   MIN_PREFIX: inference.min_prefix_steps for every cell (default: config/fr3_hand.yaml's);
#   SEED: the first evaluation seed (default 100000; e.g. 100020 for the 20 after the usual ones).
# The 2-core dev machine runs the whole matrix in ~1.5 h; a 16-core machine in a few minutes.
set -u -o pipefail
MODEL="${1:?usage: scripts/eval_matrix.sh MODEL.onnx OUT_DIR [JOBS]}"
OUT="${2:?usage: scripts/eval_matrix.sh MODEL.onnx OUT_DIR [JOBS]}"
JOBS="${3:-$(nproc)}"
N="${EPISODES:-20}"
SHARD="${SHARD:-5}"
CELLS="${CELLS:-pp0 pp200 push0 push200 reach0 reach200 wrong}"
SEED="${SEED:-100000}"  # evaluation seeds (100000+): never trained on
[ "$SEED" -ge 100000 ] || { echo "eval_matrix: SEED=$SEED is below the evaluation seeds (100000+)" >&2; exit 2; }
mkdir -p "$OUT"
if command -v wam-control >/dev/null; then WAM=wam-control; else WAM="python3 -m wam_control.cli"; fi

# cell -> "task count mode delay [prompt]"
declare -A SPEC=(
  [pp0]="pick_place ${PP0_EPISODES:-40} async 0"
  [pp200]="pick_place $N both 200"
  [push0]="push $N async 0"
  [push200]="push $N both 200"
  [reach0]="reach $N async 0"
  [reach200]="reach $N both 200"
  # the wrong-prompt control: one of the sim's own phrasings, with blue whatever the scene's task cube is
  # (before the ninth run it was "pick up the blue cube", which no episode is prompted with)
  [wrong]="pick_place $N async 0 put the blue cube on the yellow square"
)
jobs_file="$OUT/jobs.txt"
: >"$jobs_file"
for cell in $CELLS; do
  read -r task count mode delay prompt <<<"${SPEC[$cell]:?unknown cell $cell}"
  for ((s = SEED; s < SEED + count; s += SHARD)); do
    n=$((SEED + count - s < SHARD ? SEED + count - s : SHARD))
    args="bench closed-loop --task $task --config fr3_hand --model $MODEL --episodes $n --seed $s"
    args+=" --mode $mode --delay-ms $delay --no-surprise"
    [ -z "${MIN_PREFIX:-}" ] || args+=" --min-prefix-steps $MIN_PREFIX"
    [ -n "$prompt" ] && args+=" --prompt '$prompt'"
    echo "$WAM $args > $OUT/${cell}_$s.log 2>&1" >>"$jobs_file"
  done
done
echo "eval_matrix: $(wc -l <"$jobs_file") shards, $JOBS at once, model $MODEL"
t0=$SECONDS
export OMP_NUM_THREADS=1
xargs -d '\n' -P "$JOBS" -I{} bash -c {} <"$jobs_file"
echo "eval_matrix: shards done in $((SECONDS - t0)) s"

python3 - "$OUT" $CELLS <<'PY' | tee "$OUT/eval_matrix.summary"
"""Merge each cell's shards: rates weighted by episodes, mean times by successes, counts summed,
p99s as the worst shard's, compute_p50_ms as the median of the shards' medians."""
import math, re, statistics, sys
from pathlib import Path

out, cells = Path(sys.argv[1]), sys.argv[2:]
for cell in cells:
    rows = []
    for log in sorted(out.glob(f"{cell}_*.log")):
        lines = [l for l in log.read_text().splitlines() if l.startswith("mode=")]
        if not lines:
            print(f"cell={cell} shard={log.name} FAILED (no final line)")
            continue
        rows.append(dict(kv.split("=", 1) for kv in lines[-1].split()))
    if not rows:
        continue
    eps = [int(r["episodes"]) for r in rows]
    total = sum(eps)
    merged = {"cell": cell, "mode": rows[0]["mode"], "episodes": total, "delay_ms": rows[0]["delay_ms"]}
    for key in rows[0]:
        vals = [r.get(key, "nan") for r in rows]
        if key.endswith("_rate"):
            merged[key] = f"{sum(float(v) * e for v, e in zip(vals, eps)) / total:.3f}"
        elif key.endswith("mean_time_s"):
            rate = "sync_success_rate" if key.startswith("sync_") else "success_rate"
            wins = [float(r[rate]) * e for r, e in zip(rows, eps)]
            pairs = [(float(v), w) for v, w in zip(vals, wins) if w > 0 and not math.isnan(float(v))]
            merged[key] = f"{sum(v * w for v, w in pairs) / sum(w for _, w in pairs):.3f}" if pairs else "nan"
        elif key == "min_prefix_steps":
            merged[key] = rows[0][key]
        elif key in ("interventions", "starvations"):
            merged[key] = str(sum(int(v) for v in vals))
        elif key.startswith("seam_jump_p99"):
            merged[key] = f"{max(float(v) for v in vals):.6f}"
        elif key == "compute_p50_ms":
            merged[key] = f"{statistics.median(float(v) for v in vals):.3f}"
    print(" ".join(f"{k}={v}" for k, v in merged.items()))
PY
