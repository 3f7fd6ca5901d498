"""The tiled GEMMs of the CPU backend (``kernels/cpu/gemm.py``): BLAS called per tile from numba
workers, with the BN / activation epilogue on each tile. Checked against float64 products (the
float32 results within float32 rounding of K-term sums), on transposed views, batches, every tile
plan shape and the epilogue's activations; and the tile plans cover each output exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchnets.kernels.cpu import gemm
from scratchnets.kernels.cpu.activations import hard_swish_forward

DTYPES = st.sampled_from([np.float32, np.float64])
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


def _close(ours, exact, terms, dtype, magnitude):
    """Within the rounding of a float sum of ``terms`` products of size ``magnitude``."""
    tolerance = 2 * (terms + 2) * EPS[dtype] * magnitude
    np.testing.assert_allclose(ours, exact, rtol=0, atol=tolerance)


@given(
    st.integers(1, 3), st.integers(1, 200), st.integers(0, 70), st.integers(1, 1500),
    DTYPES, st.booleans(), st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_matmul_equals_the_float64_product(batch, rows, inner, columns, dtype, transposed, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((inner, rows) if transposed else (rows, inner)).astype(dtype)
    a = a.T if transposed else a  # a transposed view is read as it lies
    b = rng.standard_normal((batch, inner, columns)).astype(dtype)
    out = np.full((batch, rows, columns), np.nan, dtype)
    assert gemm.matmul(a, b, out) is out
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    _close(out, exact, inner, dtype, magnitude=4.0 * max(inner, 1) ** 0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("rows", "columns"),
    [(16, 12544), (96, 12544), (24, 3136), (576, 196), (1280, 49), (7, 3), (1, 1), (300, 1)],
)
def test_matmul_on_the_tile_plans_of_mobilenet_shapes(rows, columns, dtype):
    """Shapes whose plans cut columns, rows, both, or nothing; one image and two."""
    rng = np.random.default_rng(rows + columns)
    inner = 40
    for batch in (1, 2):
        a = rng.standard_normal((rows, inner)).astype(dtype)
        b = rng.standard_normal((batch, inner, columns)).astype(dtype)
        out = gemm.matmul(a, b, np.empty((batch, rows, columns), dtype))
        _close(out, np.matmul(a.astype(np.float64), b), inner, dtype, magnitude=30.0)


@given(st.integers(1, 4), st.integers(1, 150), st.integers(1, 90), st.integers(1, 300), DTYPES,
       st.integers(0, 2**32 - 1))  # fmt: skip
def test_sum_of_matmuls_equals_the_float64_sum(batch, rows, inner, columns, dtype, seed):
    """dW = sum_n dy[n] @ x[n].T, with x[n].T a transposed view (as the pointwise backward)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, rows, inner)).astype(dtype)
    b = rng.standard_normal((batch, columns, inner)).astype(dtype).transpose(0, 2, 1)
    ours = gemm.sum_of_matmuls(a, b)
    exact = np.einsum("nmk,nkp->mp", a.astype(np.float64), b.astype(np.float64))
    _close(ours, exact, batch * inner, dtype, magnitude=4.0 * (batch * inner) ** 0.5)


def _epilogue(y, scale, shift, activation):
    """The ops in sequence: multiply, add (each rounded), then the activation."""
    y = y * scale[:, None] if scale is not None else y
    y = y + shift[:, None] if shift is not None else y
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    if activation == "hard_swish":
        return hard_swish_forward(y)[0]
    return y


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hard_swish"])
@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_epilogue_equals_the_ops_after_the_product_bit_for_bit(activation, with_scale, dtype):
    """On a plan of many tiles (96 x 12544 per image), the epilogue of every tile is the
    separate ops' result on the same product, to the bit."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((96, 16)).astype(dtype)
    b = (3 * rng.standard_normal((2, 16, 12544))).astype(dtype)
    scale = rng.uniform(0.5, 2, 96).astype(dtype) if with_scale else None
    shift = rng.standard_normal(96).astype(dtype)
    assert len(gemm.tile_plan(2, 96, 12544, 16, 2)) > 8
    product = gemm.matmul(a, b, np.empty((2, 96, 12544), dtype))
    fused = gemm.tiled_matmul(a, b, np.empty((2, 96, 12544), dtype), scale, shift, activation)
    np.testing.assert_array_equal(fused, _epilogue(product, scale, shift, activation))


def test_refuses_mixed_dtypes_and_unknown_activations():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float64)
    with pytest.raises(TypeError, match="one dtype"):
        gemm.matmul(a, b, np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        gemm.tiled_matmul(a, a.T, np.empty((2, 2), np.float32), activation="tanh")
    with pytest.raises(ValueError, match="do not fit"):
        gemm.matmul(a, a, np.empty((2, 3), np.float32))  # inner 3 against 2 rows
    with pytest.raises(ValueError, match="do not fit"):
        gemm.sum_of_matmuls(a[None], a[None])


@given(st.integers(1, 9), st.integers(1, 2000), st.integers(1, 20000), st.integers(1, 1000),
       st.integers(1, 8))  # fmt: skip
def test_a_tile_plan_covers_every_output_once(batch, rows, columns, inner, cores):
    plan = gemm.tile_plan(batch, rows, columns, inner, cores)
    covered = np.zeros((batch, rows, columns), np.int8) if batch * rows * columns < 5e6 else None
    for n, r0, r1, c0, c1 in plan:
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= columns
        if covered is not None:
            covered[n, r0:r1, c0:c1] += 1
    if covered is not None:
        assert (covered == 1).all()
    else:
        assert sum((r1 - r0) * (c1 - c0) for _, r0, r1, c0, c1 in plan) == batch * rows * columns
    most_per_image = max(1, columns // gemm.MIN_TILE_COLUMNS) * max(1, rows // gemm.MIN_TILE_ROWS)
    assert len(plan) >= min(cores, batch * most_per_image)  # every core busy, if cuts allow
    per_image = len(plan) // batch  # tiles of about equal size (cuts on cache-line multiples)
    elements = rows * columns / per_image
    small_enough = (
        elements <= gemm.most_tile_elements(inner) or elements * inner < 2 * gemm.MIN_TILE_MACS
    )
    assert small_enough or per_image == most_per_image
    widths = [c1 - c0 for _, r0, _, c0, c1 in plan if r0 == 0]
    assert max(widths) - min(widths) <= 2 * gemm.COLUMN_ALIGN


def test_a_long_inner_dimension_gets_larger_tiles():
    """Tiles over a long inner dimension are cut less finely (BLAS repacks a tile's panels of
    (rows + columns) x inner values on every call): MobileNetV1's 512 -> 512 layer at 8x8 pixels,
    batch 8, as forward / dx (inner 512) against the same output with inner 64."""
    short, long = gemm.tile_plan(8, 512, 64, 64, 2), gemm.tile_plan(8, 512, 64, 512, 2)
    assert len(long) * 4 == len(short)
    for plan, inner in ((short, 64), (long, 512)):
        biggest = max((r1 - r0) * (c1 - c0) for _, r0, r1, c0, c1 in plan)
        assert biggest <= gemm.most_tile_elements(inner)
