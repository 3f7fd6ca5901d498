#!/usr/bin/env bash
# The project's test command: the main suite, then the numba.cuda kernels in a process of their
# own (NUMBA_ENABLE_CUDASIM must be set before numba is imported; on a GPU machine, run
# `python -m pytest tests/cuda` directly to test the real device).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q --ignore=tests/cuda "$@"
if [ -d tests/cuda ]; then
  NUMBA_ENABLE_CUDASIM=1 python3 -m pytest -q tests/cuda
fi
