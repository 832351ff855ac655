#!/usr/bin/env bash
# Sets up .venv if needed and runs the whole test suite (8 forced CPU devices; see tests/conftest.py)
# in one pytest worker per core, at most 4 (each holds JAX and TensorFlow: ~2.5 GB, and builds the
# session's fixtures again: a worker more than cores cost more CPU than it filled), a test file's
# tests in the same worker, the longest files first (tests/conftest.py; pytest-xdist would
# otherwise start the files with most tests first, and the long files with few tests last);
# the 15 slowest tests are listed at the end. `-n 0` after it runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TF_CPP_MIN_LOG_LEVEL=2
workers=$(.venv/bin/python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
