#!/usr/bin/env bash
# Creates .venv-ref: a Python 3.11 environment with the CPU build of PyTorch, Hugging Face
# transformers and PEFT, used as an independent reference (logits parity, adapter loading, torch
# benchmarks). It is a test and benchmark tool only; llmjax itself never imports torch,
# transformers or peft.
#
# Python 3.11 because the CPU wheel of torch 2.13.0 is for 3.11; torch is pinned exactly so
# that pip never falls back to a multi-GB CUDA build; PEFT exactly because its adapter files are
# the format llmjax-export writes (tests/test_finetune_export.py). Idempotent: a working .venv-ref
# is reused, and one that predates PEFT only gets PEFT added.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-ref
TORCH=torch==2.13.0
PEFT=peft==0.21.2
PACKAGES=("$TORCH" transformers safetensors numpy "$PEFT")

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }
works() { "$VENV/bin/python" -c 'import torch, transformers, safetensors, numpy' >/dev/null 2>&1; }
has_peft() { [ "$("$VENV/bin/python" -c 'import peft; print(peft.__version__)' 2>/dev/null)" = "${PEFT#peft==}" ]; }

find_python() {
  for candidate in "${PYTHON311:-}" python3.11; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && is_311 "$candidate"; then
      command -v "$candidate"; return 0
    fi
  done
  local root
  for root in "${PYENV_ROOT:-$HOME/.pyenv}" /usr/local/pyenv /opt/pyenv; do
    for candidate in $(ls -d "$root"/versions/3.11* 2>/dev/null | sort -V -r); do
      if is_311 "$candidate/bin/python3"; then echo "$candidate/bin/python3"; return 0; fi
    done
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && works; then
  if ! has_peft; then
    echo "setup_reference_env: adding $PEFT to $VENV"
    "$VENV/bin/python" -m pip install -q "$TORCH" "$PEFT"  # torch named so that pip keeps the CPU build.
  fi
  echo "setup_reference_env: reusing $VENV ($("$VENV/bin/python" --version))"
  exit 0
fi
python=$(find_python) || { echo "setup_reference_env: no Python 3.11 found; install one (e.g. 'pyenv install 3.11') or set PYTHON311=/path/to/python3.11" >&2; exit 1; }
echo "setup_reference_env: creating $VENV with $python ($("$python" --version))"
rm -rf "$VENV"
"$python" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PACKAGES[@]}"
works && has_peft || { echo "setup_reference_env: $VENV was created but cannot import torch/transformers/peft" >&2; exit 1; }
echo "setup_reference_env: $VENV ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
