#!/usr/bin/env bash
# Create the virtual environment .venv (if missing) and install the package with the book and test extras.
# Idempotent: a second run only checks. Used by scripts/book.sh and scripts/test.sh.
#
# torch is installed FIRST and on its own: with torch already present, pip keeps it, so no later dependency
# (transformers, peft, ...) can pull another build with gigabytes of CUDA packages. Override the pin with
# TORCH_SPEC, e.g. TORCH_SPEC="torch" on a GPU machine, or add --index-url for a CPU-only wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "==> installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi

stamp="$VENV/.llmscratch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing llmscratch (editable) with the book, grading and test extras"
  "$PY" -m pip install -q -e ".[all]"
  touch "$stamp"
fi

# JavaScript the HTML book needs offline (widgets, MathJax): pinned npm packages copied into book/_vendor.
"$PY" scripts/vendor_js.py
echo "==> environment ready: $VENV ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
