#!/usr/bin/env bash
# Sets up .venv if needed and runs the whole test suite (8 forced CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q "$@"
