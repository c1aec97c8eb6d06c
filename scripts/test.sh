#!/usr/bin/env bash
# Set up the environment (scripts/setup_env.sh) and run the whole test suite: unit tests, every notebook in
# SMOKE mode, the lab grader against hostile submissions, the book build and its browser render.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k tokenizer`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The data folder: $LLMSCRATCH_DATA if set, else ../shared/data when it exists (the layout CI uses).
if [ -z "${LLMSCRATCH_DATA:-}" ] && [ -d ../shared/data ]; then
  export LLMSCRATCH_DATA="$(cd ../shared/data && pwd)"
fi
# Two workers for two cores; a file's tests stay on one worker except the notebook runs (tests/conftest.py).
exec "${VENV:-.venv}/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
