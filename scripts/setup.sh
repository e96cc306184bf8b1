#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs zf (editable) with its optional extras: test, slurm (hydra-submitit-launcher),
# timm and explore (Flask) by default; ZF_EXTRAS=test (or any comma list) installs fewer.  Safe to re-run: it installs only what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # pinned: these wheels are what this project is tested with (torch 2.13.0 + PyPI torchvision does not import)
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
EXTRAS=${ZF_EXTRAS:-test,slurm,timm,explore}
.venv/bin/pip install -q -e ".[$EXTRAS]"
