"""scripts/f32_sweep.py runs end to end: one draw, one model, one backend, one BLAS setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch_models

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "f32_sweep.py"


def test_sweep_runs_and_tallies(tmp_path):
    log = tmp_path / "sweep.jsonl"
    command = [sys.executable, SCRIPT, "--draws", "1", "--models", "mobilenet_v1"]
    command += ["--backends", "reference", "--blas", "env", "--log", log]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    assert "reference/mobilenet_v1 draw 0: ok" in done.stdout
    assert done.stdout.splitlines()[-1].startswith(
        "mobilenet_v1     reference  env             1 / 1"
    )
