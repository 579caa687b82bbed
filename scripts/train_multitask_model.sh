#!/usr/bin/env bash
# Reproduce the prompted multi-task model models/wam_multitask.onnx (+ .tokenizer.json, .surprise.json,
# .training.json): reach, push and pick_place in the hand scene, scene + wrist cameras, the gripper as a
# contract v2 extra DOF, a language prompt. See models/MODEL_CARD.md ("wam_multitask") for the figures.
#
#   scripts/train_multitask_model.sh [work dir, default runs/multitask]
#
# Resumable: each stage is skipped when its output exists (demonstrations per task are topped up to
# the count below; an interrupted `train` continues from its train_state.pt with --resume).
# Seeds: demonstrations 0-149 per task (< 10000, training); evaluation 100000+ and surprise
# calibration 100100+ (never trained on).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/multitask}"
WAM=".venv/bin/wam-control"
[ -x "$WAM" ] || WAM="wam-control"
PICK_PLACE_DEMOS="${PICK_PLACE_DEMOS:-150}"
PUSH_DEMOS="${PUSH_DEMOS:-100}"
REACH_DEMOS="${REACH_DEMOS:-150}"
STEPS="${STEPS:-12000}"
mkdir -p "$WORK" models

record() {  # task count [--hand]: record seeds 0..count-1 that are not there yet
  local task="$1" count="$2"; shift 2
  local out="$WORK/demos_$task" seed
  mkdir -p "$out"
  for ((seed = 0; seed < count; seed++)); do
    if [ ! -d "$out/${task}_seed$seed" ]; then
      "$WAM" record --task "$task" --episodes $((count - seed)) --seed "$seed" --cameras scene,wrist \
          --out "$out" "$@" || true  # stops at the first bag that exists; the loop goes on after it
      return
    fi
  done
}

# 1. Scripted-expert demonstrations in the hand scene (the fingers in /joint_states, the gripper setpoint
#    on /gripper_controller/commands, the task's prompt on /instruction), both cameras.
record pick_place "$PICK_PLACE_DEMOS"
record push "$PUSH_DEMOS" --hand
record reach "$REACH_DEMOS" --hand

# 2. Behaviour cloning + world model + prefix conditioning on all three tasks; the gripper column and a
#    16-token prompt (word-level tokenizer over the sim's prompts). 2 torch threads on an idle machine;
#    THREADS=1 when other jobs share the cores (two OpenMP threads then spin against them).
TRAIN=("$WAM" train --data "$WORK/demos_pick_place" "$WORK/demos_push" "$WORK/demos_reach"
       --out "$WORK/bc" --cameras scene,wrist --gripper-joint fr3_finger_joint1 --instruction-tokens 16
       --model-name wam-multitask --steps "$STEPS" --batch-size 64 --seed 0 --threads "${THREADS:-2}" --export)
if [ ! -f "$WORK/bc/model.onnx" ]; then
  if [ -f "$WORK/bc/train_state.pt" ]; then "${TRAIN[@]}" --resume; else "${TRAIN[@]}"; fi
fi

# 3. DAgger on pick_place (DAGGER_EPISODES > 0): the student's own rollouts (seeds 1000+), each
#    observation labelled by the expert taking over the physics for one chunk (LookaheadLabeler, ~2.4 s
#    of CPU per simulated second), half of each batch from those samples, the rest from the BC data.
DAGGER_EPISODES="${DAGGER_EPISODES:-30}"
SHIP="$WORK/bc"
if [ "$DAGGER_EPISODES" -gt 0 ]; then
  [ -f "$WORK/dagger/model.onnx" ] || "$WAM" distill --teacher expert --init "$WORK/bc/model.pt" \
      --data "$WORK/bc/dataset.npz" --student-out "$WORK/dagger" --task pick_place --iterations 1 \
      --episodes "$DAGGER_EPISODES" --steps 2000 --batch-size 64 --seed 0 --seed-start 1000 \
      --collect-replan-steps 2,4,8 --eval-episodes 5 --surprise-episodes 2 --threads 1 --export
  SHIP="$WORK/dagger"
fi

# 4. Ship: the ONNX, its tokenizer and the training summary beside it (config/fr3_hand.yaml points here).
cp "$SHIP/model.onnx" models/wam_multitask.onnx
cp "$SHIP/model.tokenizer.json" models/wam_multitask.tokenizer.json
.venv/bin/python - "$WORK" models/wam_multitask.training.json <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
train = json.loads((work / "bc" / "training_report.json").read_text())
train.pop("history", None)
summary = {"train": train}
if (work / "dagger" / "distill_report.json").is_file():
    summary["distill"] = json.loads((work / "dagger" / "distill_report.json").read_text())
out.write_text(json.dumps(summary, indent=2) + "\n")
print("wrote", out)
PY

# 5. Closed-loop evaluation through the runtime (evaluation seeds 100000+) and the surprise calibration
#    are separate commands: models/MODEL_CARD.md ("wam_multitask") and docs/benchmarks/surprise.md.
