#!/usr/bin/env bash
# Reproduce the bundled model models/wam_reach.onnx (+ .surprise.json, .training.json); see
# models/MODEL_CARD.md for what each step does and how long it took on the 2-core dev machine.
#
#   scripts/train_bundled_model.sh [work dir, default runs/bundled]
#
# Seeds: demonstrations 0-299, DAgger rollouts 1000-1159 (training seeds, all < 10000);
# evaluation 100000-100099 and surprise calibration 100100-100149 (never trained on).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/bundled}"
WAM=".venv/bin/wam-control"
[ -x "$WAM" ] || WAM="wam-control"
mkdir -p "$WORK"

# 1. 300 scripted-expert demonstrations of the reach task, scene camera only (what the model sees).
[ -d "$WORK/demos" ] || "$WAM" record --task reach --episodes 300 --seed 0 --cameras scene --out "$WORK/demos"

# 2. Behaviour cloning + world model + prefix conditioning on the demonstrations.
"$WAM" train --data "$WORK/demos" --out "$WORK/bc" --steps 1500 --batch-size 32 --seed 0

# 3. DAgger distillation from the privileged expert on the student's own rollouts; exports the ONNX,
#    evaluates it closed loop on the evaluation seeds and calibrates the nominal surprise statistics.
"$WAM" distill --teacher expert --init "$WORK/bc/model.pt" --data "$WORK/bc/dataset.npz" \
    --student-out "$WORK/student" --iterations 4 --episodes 40 --steps 400 --batch-size 32 --seed 0 --export

mkdir -p models
cp "$WORK/student/model.onnx" models/wam_reach.onnx
cp "$WORK/student/model.surprise.json" models/wam_reach.surprise.json
.venv/bin/python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
train = json.loads((work / "bc" / "training_report.json").read_text())
train.pop("history", None)
distill = json.loads((work / "student" / "distill_report.json").read_text())
out = {"train": train, "distill": distill}
Path("models/wam_reach.training.json").write_text(json.dumps(out, indent=2) + "\n")
print("wrote models/wam_reach.onnx, models/wam_reach.surprise.json, models/wam_reach.training.json")
PY
