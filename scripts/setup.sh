#!/usr/bin/env bash
# Idempotent set-up used by scripts/demo and scripts/test: creates .venv at the repo root on first
# use, installs the system libraries MuJoCo's offscreen renderer needs (when run as root on Debian),
# and installs wam_control with the extras the demo and the tests use. Re-runs are fast: the install
# is skipped while setup.py and this script are unchanged.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"

# Offscreen GL for MuJoCo rendering (EGL first, OSMesa as the fallback).
gl_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0 libosmesa6)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${gl_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing ${missing[*]} (offscreen rendering for the MuJoCo sim)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$python" -m venv .venv
fi
stamp=".venv/.wam_control-installed"
want="$(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # [ros]: ROS 2 Kilted from PyPI (rclpy, Fast DDS, messages) so the rclpy node is tested for real.
  echo "[setup] installing wam_control[all,ros] into .venv (first run takes a few minutes)"
  log=.venv/pip-install.log
  # torch is pinned to the CPU build in the [train] extra; see setup.py.
  if ! .venv/bin/python -m pip install -e ".[all,ros]" >"$log" 2>&1 \
      || ! .venv/bin/python -c "import sys, wam_control, numpy, onnxruntime, mujoco, cyclonedds, torch; sys.version_info[:2] != (3, 11) or __import__('rclpy.lifecycle')"; then
    tail -n 40 "$log"
    echo "[setup] install failed (full log: $log)"
    exit 1
  fi
  echo "$want" > "$stamp"
fi
