#!/usr/bin/env bash
# Issue 16 step 4 for one prompted model: calibrate the surprise monitor, tune its smoothing and slow
# threshold on tuning seeds, then measure it once on held-out seeds (docs/benchmarks/surprise.md,
# "wam_multitask"). The tuning and held-out runs are cut into shards of SHARD seeds run as separate
# `wam-control bench surprise` processes; the held-out figures are pooled from the shards' per-kind lines.
# Usage: scripts/surprise_eval.sh MODEL.onnx OUT_DIR [JOBS]
#   CAL (default 42) calibration episodes over pick_place, reach and push (seeds 100100+);
#   TUNE (default 20) pick_place tuning seeds from 100200 (+ TUNE/2 reach seeds, teleport);
#   HELD (default 40) pick_place held-out seeds from 100300 (+ HELD/2 reach seeds, every kind);
#   MAX_FALSE (default 1): false alarms the chosen setting may have on the tuning seeds.
#   FRAME_CHECK (on/off; default on when <model>.decoder.onnx is beside the model, else off).
# The calibration is written beside the model.
set -u -o pipefail
MODEL="${1:?usage: scripts/surprise_eval.sh MODEL.onnx OUT_DIR [JOBS]}"
OUT="${2:?usage: scripts/surprise_eval.sh MODEL.onnx OUT_DIR [JOBS]}"
JOBS="${3:-$(nproc)}"
CAL="${CAL:-42}" TUNE="${TUNE:-20}" HELD="${HELD:-40}" SHARD="${SHARD:-2}"
mkdir -p "$OUT"
if command -v wam-control >/dev/null; then WAM=wam-control; else WAM="python3 -m wam_control.cli"; fi
export OMP_NUM_THREADS=1
dec="${MODEL%.onnx}.decoder.onnx"
FC="${FRAME_CHECK:-$([ -f "$dec" ] && echo on || echo off)}"
B="bench surprise --model $MODEL --frame-check $FC"
LATENT_ONLY=$([ "$FC" = off ] && echo --latent-only)
echo "surprise_eval: frame check $FC"
t0=$SECONDS

# 1. calibration: one process (the statistics pool every episode)
$WAM $B --task pick_place --calibration-tasks pick_place,reach,push --calibrate-only --calibrate "$CAL" \
    >"$OUT/calibration.log" 2>&1 || { tail "$OUT/calibration.log"; exit 1; }
tail -1 "$OUT/calibration.log"
echo "surprise_eval: calibrated in $((SECONDS - t0)) s"

shards() {  # tag task first count extra-args...: one job line per SHARD seeds
  local tag="$1" task="$2" first="$3" count="$4" s n
  shift 4
  for ((s = first; s < first + count; s += SHARD)); do
    n=$((first + count - s < SHARD ? first + count - s : SHARD))
    echo "$WAM $B --task $task --config fr3_hand --episodes $n --seed $s $* > $OUT/${tag}_$s.log 2>&1"
  done
}

# 2. tuning traces, the responses off (a slow-down or stop would change what follows)
{
  shards tune_pp pick_place 100200 "$TUNE" --slow 1000 --stop 2000 --no-latch --scores-out "$OUT/tune_pp_SEED.npz"
  shards tune_reach reach 100200 $((TUNE / 2)) --kinds teleport --slow 1000 --stop 2000 --no-latch \
      --scores-out "$OUT/tune_reach_SEED.npz"
} | awk '{ s = $0; match(s, /--seed [0-9]+/); seed = substr(s, RSTART + 7, RLENGTH - 7); gsub(/SEED/, seed, s); print s }' \
  >"$OUT/tune_jobs.txt"
xargs -d '\n' -P "$JOBS" -I{} bash -c {} <"$OUT/tune_jobs.txt"
echo "surprise_eval: tuning traces in $((SECONDS - t0)) s"
python3 scripts/surprise_tune.py "$OUT"/tune_*.npz --max-false "${MAX_FALSE:-1}" $LATENT_ONLY | tee "$OUT/tune.txt"
best=$(grep -m1 '^ok ' "$OUT/tune.txt") || { echo "surprise_eval: no setting within the false-alarm budget"; exit 1; }
A=$(sed -E 's/.*smoothing=([0-9.]+).*/\1/' <<<"$best")
TH=$(sed -E 's/.*slow=([0-9.]+).*/\1/' <<<"$best")
STOP=$(python3 -c "print(2 * $TH)")
echo "surprise_eval: chosen smoothing=$A slow=$TH stop=$STOP"

# 3. held-out, once, with the chosen setting (stop at twice the slow threshold, as configured)
{
  shards held_pp pick_place 100300 "$HELD" --smoothing "$A" --slow "$TH" --stop "$STOP"
  shards held_reach reach 100300 $((HELD / 2)) --smoothing "$A" --slow "$TH" --stop "$STOP"
} >"$OUT/held_jobs.txt"
xargs -d '\n' -P "$JOBS" -I{} bash -c {} <"$OUT/held_jobs.txt"
echo "surprise_eval: held-out in $((SECONDS - t0)) s"

python3 - "$OUT" "$A" "$TH" <<'PY' | tee "$OUT/surprise_eval.summary"
"""Pool the held-out shards' per-kind lines ("drop: detected 5/7, ...", "nominal: false alarms 0/2")."""
import re, sys
from pathlib import Path

out, a, th = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for task in ("pp", "reach"):
    det, false, nominal, not_fired, failed = {}, 0, 0, 0, []
    for log in sorted(out.glob(f"held_{task}_*.log")):
        text = log.read_text()
        if "detect_rate=" not in text:
            failed.append(log.name)
            continue
        for kind, got, n in re.findall(r"^\s*(\w+): detected (\d+)/(\d+)", text, re.M):
            g, t = det.get(kind, (0, 0))
            det[kind] = (g + int(got), t + int(n))
        m = re.search(r"nominal: false alarms (\d+)/(\d+)", text)
        false, nominal = false + int(m.group(1)), nominal + int(m.group(2))
        not_fired += sum(int(x) for x in re.findall(r"_not_triggered=(\d+)", text))
    got, total = sum(g for g, _ in det.values()), sum(n for _, n in det.values())
    print(
        f"task={'pick_place' if task == 'pp' else 'reach'} smoothing={a} slow={th} "
        + "".join(f"detected_{k}={g}/{n} " for k, (g, n) in det.items())
        + f"drop_not_triggered={not_fired} detect_rate={got / max(1, total):.3f} "
        f"false_alarms={false}/{nominal} false_alarm_rate={false / max(1, nominal):.3f}"
        + (f" FAILED_SHARDS={','.join(failed)}" if failed else "")
    )
PY
