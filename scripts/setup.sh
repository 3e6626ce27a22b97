#!/usr/bin/env bash
# Create .venv (once) and install cifarkit with everything the demo and the tests need.
# torch/torchvision are pinned to the releases the README was measured with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
