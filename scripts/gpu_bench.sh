#!/usr/bin/env bash
# The project's GPU benchmark: what a CUDA machine measures that the 2-core CI machine cannot.
#   1. inference: PyTorch eager vs CUDA graph vs torch.compile (reduce-overhead) on the GPU, for the
#      default architecture and the bundled/multi-task one (compact, scene + wrist cameras);
#   2. training: optimiser steps/s of the multi-task model (keypoints, prompt, gripper, shift
#      augmentation, keyframe loss) on the GPU at batch 64 and 256, and on the same machine's CPUs;
#   3. the simulator's rendering through EGL on the GPU (docs/benchmarks/sim.md measured llvmpipe).
# Usage: scripts/gpu_bench.sh DATASET.npz [LOG_DIR]
#   DATASET: a `wam-control train` dataset (.npz, compressed or not) of the multi-task spec;
#   any wam-control found on PATH is used, else `python3 -m wam_control.cli` from this checkout.
#   PARTS: which parts to run (default "infer train sim").
# Each step runs under its own timeout and a failure does not stop the others: one call on a lent
# machine should bring back every figure it can. Results: docs/benchmarks/gpu.md.
set -u -o pipefail
DATA="${1:?usage: scripts/gpu_bench.sh DATASET.npz [LOG_DIR]}"
LOGS="${2:-gpu_bench_logs}"
PARTS="${PARTS:-infer train sim}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
if command -v wam-control >/dev/null; then WAM=(wam-control); else WAM=(python3 -m wam_control.cli); fi

step() {  # name, timeout_s, command...
  local name="$1" limit="$2"
  shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  echo "=== $name: rc=${PIPESTATUS[0]} wall_s=$((SECONDS - t0))"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA', 'numpy', numpy.__version__)"
nproc

has() { [[ " $PARTS " == *" $1 "* ]]; }

has infer && step infer_base 240 "${WAM[@]}" bench inference --device cuda --compile --runs 1000
has infer && step infer_compact 240 "${WAM[@]}" bench inference --device cuda --compile --runs 1000 \
    --preset compact --cameras scene,wrist

TRAIN=(train --data "$DATA" --cameras scene,wrist --gripper-joint fr3_finger_joint1 --instruction-tokens 16
       --model-name wam-multitask --keypoints 32 --augment-shift 4 --keyframe-weight 1.0 --seed 0 --no-progress)
if has train; then
  step train_cuda_b64 180 "${WAM[@]}" "${TRAIN[@]}" --out "$LOGS/t64" --device cuda --batch-size 64 --steps 400
  step train_cuda_b256 180 "${WAM[@]}" "${TRAIN[@]}" --out "$LOGS/t256" --device cuda --batch-size 256 --steps 400
  # The same without the shift augmentation: what the host-side input assembly costs.
  step train_cuda_b256_noshift 180 "${WAM[@]}" "${TRAIN[@]}" --augment-shift 0 --out "$LOGS/t256n" \
      --device cuda --batch-size 256 --steps 400
  step train_cpu_b64 180 "${WAM[@]}" "${TRAIN[@]}" --out "$LOGS/tcpu" --device cpu --threads "$(nproc)" \
      --batch-size 64 --steps 60
  rm -rf "$LOGS/t64" "$LOGS/t256" "$LOGS/t256n" "$LOGS/tcpu"
fi

has sim && MUJOCO_GL=egl PYOPENGL_PLATFORM=egl step sim_egl 120 "${WAM[@]}" bench sim --seconds 10
echo "=== done"
