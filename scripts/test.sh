#!/usr/bin/env bash
# The project's test command: the main suite, then the numba.cuda tests (marked `cuda`: tests/cuda
# and the cuda sections of tests/ops) in a process of their own (NUMBA_ENABLE_CUDASIM must be set
# before numba is imported; on a GPU machine, run `python -m pytest -m cuda tests/cuda tests/ops`
# directly to test the real device).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pytest -q -m "not cuda" --ignore=tests/cuda "$@"
NUMBA_ENABLE_CUDASIM=1 python3 -m pytest -q -m cuda tests/cuda tests/ops
