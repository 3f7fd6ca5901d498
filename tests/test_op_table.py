"""The op table is the single list of ops: every family has its file in every layer of the house
(reference, cpu, cuda, explain, docs, tests/ops), and every tool that goes over ops (gradcheck,
explain, the counter) covers exactly the table."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from scratchnets.backends import COST_CATEGORIES, FAMILIES, OP_TABLE, OPS, Op

ROOT = Path(__file__).resolve().parents[1]
#: the packages that hold one module per family, and what each module must define
FAMILY_PACKAGES = ("scratchnets.reference", "scratchnets.kernels.cpu", "scratchnets.kernels.cuda")


@pytest.mark.parametrize("package", FAMILY_PACKAGES)
@pytest.mark.parametrize("op", OP_TABLE, ids=lambda op: op.name)
def test_every_op_lives_in_its_familys_module(package, op):
    """``<package>.<family>`` defines (or, where the reference is already the fast code,
    re-exports) the op's pair and its indices."""
    try:
        module = importlib.import_module(f"{package}.{op.family}")
    except ImportError as error:
        if package.endswith("cuda") and "cuda" in str(error).lower():
            pytest.skip(f"numba.cuda unavailable: {error}")
        raise
    names = list(op.pair) + ([f"{op.name}_indices"] if op.indices else [])
    missing = [name for name in names if not callable(getattr(module, name, None))]
    assert not missing, f"{package}.{op.family} lacks {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_its_explainer_doc_page_and_tests(family):
    from scratchnets.explain import EXPLAINERS

    for op in (op for op in OP_TABLE if op.family == family):
        assert EXPLAINERS[op.name].__module__ == f"scratchnets.explain.{family}", op.name
    assert (ROOT / "docs" / f"{family}.md").is_file(), f"docs/{family}.md is missing"
    tests = ROOT / "tests" / "ops" / f"test_{family}.py"
    assert tests.is_file(), f"tests/ops/test_{family}.py is missing"
    text = tests.read_text()
    untested = [op.name for op in OP_TABLE if op.family == family and op.name not in text]
    assert not untested, f"tests/ops/test_{family}.py never names {untested}"


def test_gradcheck_has_a_case_for_every_op():
    import numpy as np

    from scratchnets.gradcheck import _cases

    assert {case.op for case in _cases(np.random.default_rng(0))} == set(OPS)


def test_the_counter_categorises_every_op():
    """Every op's work is reported somewhere: mult-adds, one of summary's other-work categories, or
    knowingly none (ops that only move data, and the loss)."""
    from scratchnets.profile.summary import OTHER_OP_CATEGORY

    for op in OP_TABLE:
        assert op.cost in COST_CATEGORIES
        counted_apart = op.cost in ("mult_adds", "data", "loss")
        assert (op.name in OTHER_OP_CATEGORY) != counted_apart, op.name


def test_a_row_with_an_unknown_cost_category_is_refused():
    with pytest.raises(ValueError, match="unknown cost category 'flops'"):
        Op("new_op", "elementwise", "flops")


def test_every_public_module_of_the_reference_is_a_family_of_the_table():
    """No op family outside the table (the uint8 family, reference/quantized.py with its
    fixed_point.py helpers, is the integer path's, listed in explain's QUANTIZED ops)."""
    modules = {p.stem for p in (ROOT / "scratchnets" / "reference").glob("*.py")}
    helpers = {"quantized", "fixed_point", "checks", "windows"}  # shared checks and geometry
    public = {m for m in modules if not m.startswith("_")} - helpers
    assert public == set(FAMILIES)


def test_kernels_import_no_private_name_of_the_reference():
    """The cpu and cuda kernels share the reference's checks and geometry through its public
    names (``prepare_conv``, ``conv_geometry``, ``prepare_pool``, ``checks.check_dy``, ...)."""
    import ast

    private = []
    for path in sorted((ROOT / "scratchnets" / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "scratchnets.reference"
            ):
                parts = node.module.split(".") + [alias.name for alias in node.names]
                private += [f"{path.name}: {node.module}.{p}" for p in parts if p.startswith("_")]
    assert not private, private
