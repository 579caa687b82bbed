#!/usr/bin/env bash
# Reproduce the bundled model models/wam_reach.onnx (+ .surprise.json, .training.json); see
# models/MODEL_CARD.md for what each step does and how long it took on the 2-core dev machine.
#
#   scripts/train_bundled_model.sh [work dir, default runs/bundled]
#
# Seeds: demonstrations 0-299, DAgger rollouts 1000-1119 and 2000-2119 (training seeds, all < 10000);
# evaluation 100000-100099 and surprise calibration 100100-100149 (never trained on).
# Optional: WRIST=1 also builds models/wam_reach_wrist.onnx (cameras scene + wrist; see the card).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/bundled}"
WAM=".venv/bin/wam-control"
[ -x "$WAM" ] || WAM="wam-control"
mkdir -p "$WORK" models

# 1. 300 scripted-expert demonstrations of the reach task, scene camera only (what the model sees).
[ -d "$WORK/demos" ] || "$WAM" record --task reach --episodes 300 --seed 0 --cameras scene --out "$WORK/demos"

# 2. Behaviour cloning + world model + prefix conditioning on the demonstrations.
"$WAM" train --data "$WORK/demos" --out "$WORK/bc" --steps 6000 --batch-size 64 --seed 0

# 3. DAgger from the privileged expert on the student's own rollouts (3 iterations x 40 episodes,
#    replan cadence 2/4/8 action steps), then 3 more iterations on fresh seeds that keep the first
#    run's DAgger samples in the aggregate. Each run exports the ONNX, evaluates it closed loop on the
#    evaluation seeds and calibrates the nominal surprise statistics.
"$WAM" distill --teacher expert --init "$WORK/bc/model.pt" --data "$WORK/bc/dataset.npz" \
    --student-out "$WORK/student" --iterations 3 --episodes 40 --steps 1000 --batch-size 64 --seed 0 \
    --collect-replan-steps 2,4,8 --export
"$WAM" distill --teacher expert --init "$WORK/student/model.pt" \
    --data "$WORK/bc/dataset.npz" "$WORK/student/dagger.npz" --student-out "$WORK/student2" \
    --iterations 3 --episodes 40 --steps 1000 --batch-size 64 --seed 1 --seed-start 2000 \
    --collect-replan-steps 2,4,8 --export

cp "$WORK/student2/model.onnx" models/wam_reach.onnx
cp "$WORK/student2/model.surprise.json" models/wam_reach.surprise.json
.venv/bin/python - "$WORK" bc student student2 models/wam_reach.training.json <<'PY'
import json, sys
from pathlib import Path
work, bc, runs, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3:-1], sys.argv[-1]
train = json.loads((work / bc / "training_report.json").read_text())
train.pop("history", None)
distill = [json.loads((work / r / "distill_report.json").read_text()) for r in runs]
Path(out).write_text(json.dumps({"train": train, "distill": distill}, indent=2) + "\n")
print("wrote", out)
PY

if [ "${WRIST:-0}" = "1" ]; then
  [ -d "$WORK/demos_wrist" ] || "$WAM" record --task reach --episodes 300 --seed 0 --cameras scene,wrist \
      --out "$WORK/demos_wrist"
  "$WAM" train --data "$WORK/demos_wrist" --out "$WORK/bc_wrist" --cameras scene,wrist \
      --model-name wam-reach-wrist --steps 5000 --batch-size 64 --seed 0
  "$WAM" distill --teacher expert --init "$WORK/bc_wrist/model.pt" --data "$WORK/bc_wrist/dataset.npz" \
      --student-out "$WORK/student_wrist" --iterations 2 --episodes 40 --steps 1000 --batch-size 64 \
      --seed 0 --collect-replan-steps 2,4,8 --export
  cp "$WORK/student_wrist/model.onnx" models/wam_reach_wrist.onnx
  cp "$WORK/student_wrist/model.surprise.json" models/wam_reach_wrist.surprise.json
  .venv/bin/python - "$WORK" bc_wrist student_wrist models/wam_reach_wrist.training.json <<'PY'
import json, sys
from pathlib import Path
work, bc, runs, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3:-1], sys.argv[-1]
train = json.loads((work / bc / "training_report.json").read_text())
train.pop("history", None)
distill = [json.loads((work / r / "distill_report.json").read_text()) for r in runs]
Path(out).write_text(json.dumps({"train": train, "distill": distill}, indent=2) + "\n")
print("wrote", out)
PY
fi
