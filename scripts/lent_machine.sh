#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): the GPU benchmark, then issue 16's matrix for one
# or more prompted models on its CPUs (15 processes). What the machine lacks travels with the call:
#   .whl: mujoco, mujoco-core, glfw, PyOpenGL and ruckig wheels for its Python (3.12), e.g.
#         pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#             -d .whl mujoco==4.0.0 mujoco-core==4.0.0 glfw==2.11.0 PyOpenGL==3.1.10 ruckig==0.19.4
#   .gl:  the Debian GL loaders (libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2), unpacked into /
#         there only (the machine is bare and given back after).
# Both are ignored (.git/info/exclude) and named in the call's `carry`. Models outside the repository
# (runs/ is ignored) are copied into a carried folder first.
# Usage (on the lent machine): scripts/lent_machine.sh [NAME=MODEL.onnx ...]
#   default: wam_multitask=models/wam_multitask.onnx. N (default 100) seeds a cell; GPU_BENCH=0 skips the
#   GPU part; CELLS as scripts/eval_matrix.sh. Everything lands in $OUT (one logs.tgz) and the summary
#   lines in the output. Results: docs/benchmarks/gpu.md and docs/benchmarks/closed_loop.md.
set -u
OUT="${OUT:-/tmp/lent_out}"  # the device tool sets OUT
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1
python3 -c "import mujoco, ruckig, onnxruntime, numpy; print('mujoco', mujoco.__version__, 'ort', onnxruntime.__version__, 'numpy', numpy.__version__)" || exit 1
t0=$SECONDS
if [ "${GPU_BENCH:-1}" != 0 ]; then
  PARTS="infer sim" bash scripts/gpu_bench.sh none "$OUT/gpu" 2>&1 | grep -E "^===|device=|control_hz=|torch |NVIDIA|^[0-9]+$"
fi
echo "gpu part: $((SECONDS - t0)) s"
[ "$#" -gt 0 ] || set -- wam_multitask=models/wam_multitask.onnx
for m in "$@"; do
  name="${m%%=*}" path="${m#*=}"
  EPISODES="${N:-100}" PP0_EPISODES="${N:-100}" SHARD="${SHARD:-5}" MIN_PREFIX="${MIN_PREFIX:-6}" \
    CELLS="${CELLS:-pp0 pp200 push0 push200 reach0 reach200 wrong}" \
    bash scripts/eval_matrix.sh "$path" "$OUT/$name" 15
  echo "after $name: $((SECONDS - t0)) s"
done
tar -czf "$OUT/logs.tgz" -C "$OUT" --exclude=logs.tgz . 2>/dev/null
find "$OUT" -mindepth 1 -maxdepth 1 ! -name logs.tgz -exec rm -rf {} +
