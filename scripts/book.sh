#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and build the HTML book into _build/html.
# The build does not execute notebooks: they are committed with the outputs of a full run.
# VENV names the virtual environment, as in scripts/setup_env.sh (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export VENV
bash scripts/setup_env.sh
start=$(date +%s)
# -W: a warning is an error; -n: every cross-reference must resolve.
"$VENV/bin/jupyter-book" build . -W -n --keep-going
echo "==> book built in $(( $(date +%s) - start )) s. Open it in a browser:"
echo "    file://$(pwd)/_build/html/book/ch00_introduction.html"
