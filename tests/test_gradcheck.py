"""`scratchnets gradcheck`: every backend's backward against finite differences of its forward."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

import scratchnets as sn
from scratchnets.backends import register_backend
from scratchnets.cli import main
from scratchnets.gradcheck import check_all


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_every_backward_matches_central_differences(backend):
    results = check_all(backend)
    assert {r.op for r in results} == set(sn.backends.OPS)
    bad = [(r.case, r.input, r.error) for r in results if not r.ok]
    assert not bad, bad


def test_a_wrong_backward_is_caught():
    """A backend whose relu6 backward lets the gradient through above 6 must fail the check."""
    broken = types.ModuleType("broken_backend")
    broken.__dict__.update({n: getattr(sn.reference, n) for n in sn.backends.OP_NAMES})
    broken.relu6_forward = lambda x: (np.clip(x, 0, 6), x > 0)  # forgets the upper kink
    sys.modules["broken_backend"] = broken
    register_backend("broken", "broken_backend")
    failed = [r for r in check_all("broken", only="relu6") if not r.ok]
    assert failed and failed[0].op == "relu6"


def test_cli_prints_json_and_exit_status(capsys):
    assert main(["gradcheck", "--only", "linear", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {row["input"] for row in out["rows"]} == {"x", "w", "b"}
    assert all(row["ok"] for row in out["rows"])
    assert main(["gradcheck", "--backend", "broken", "--only", "relu6"]) == 1
