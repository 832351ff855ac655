#!/usr/bin/env bash
# Creates .venv (if missing) and installs nerve-jax with its dev extra into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Earlier versions depended on tensorflow-cpu, which installs the same files as tensorflow.
if .venv/bin/python -m pip show --quiet tensorflow-cpu 2>/dev/null; then
  .venv/bin/python -m pip uninstall --quiet --yes tensorflow-cpu
fi
.venv/bin/python -m pip install --quiet -e '.[dev]'
