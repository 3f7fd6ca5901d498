"""The integer arithmetic of quantized inference, named once: gemmlowp's fixed-point helpers as
TensorFlow Lite's reference kernels use them (Jacob et al. 2018, arXiv 1712.05877, section 2.2).

A quantized tensor stores ``q`` (uint8) for the real value ``r = S (q - Z)``. A layer's int32
accumulator must be rescaled by the real multiplier ``M = S_in S_w / S_out`` (about 1e-3 to 1).
Integer-only hardware cannot multiply by a real, so ``M`` is written once, offline, as

    M = M0 * 2^(shift - 31),   M0 an int32 in [2^30, 2^31)   (``quantize_multiplier``)

and applied as an int32 x int32 -> int64 product keeping the high 32 bits with rounding
(``saturating_rounding_doubling_high_mul``: x * M0 / 2^31) followed by a rounding right shift
(``rounding_divide_by_pot``: / 2^-shift). ``multiply_by_quantized_multiplier`` composes them.

Every function works element-wise on NumPy int64 arrays (or Python ints) that hold int32 values,
and returns int64 arrays holding int32 values: the int64 width only leaves room for the exact
product, the results are what int32 hardware computes. Fixed-point numbers ``Qm.n`` below are
int32 raws with ``m`` integer and ``n = 31 - m`` fractional bits: a raw ``v`` means ``v / 2^n``.

The exp and reciprocal of the quantized softmax (``exp_on_negative_values``,
``one_over_one_plus_x_for_x_in_0_1``) are gemmlowp's: a Taylor polynomial on [-1/4, 0) and a
barrel shifter of constants exp(-2^k), and three Newton-Raphson steps from 48/17 - 32/17 d.
docs/quantization.md derives each one.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _int64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(M0, shift)`` with ``real ~= M0 * 2^(shift - 31)`` and ``M0`` in ``[2^30, 2^31)``.

    ``real = f * 2^shift`` with ``f`` in [0.5, 1) (``frexp``); ``M0 = round(f * 2^31)`` (half
    away from zero, C's ``round``); ``f`` rounding up to 1 becomes ``2^30`` with ``shift + 1``.
    A multiplier below 2^-31 is 0 (the output is the zero point).
    """
    if real < 0:
        raise ValueError(f"a quantized multiplier must be >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction * 2^shift, fraction in [0.5, 1)
    m0 = int(math.floor(fraction * 2**31 + 0.5))  # exact: fraction * 2^31 < 2^31 needs no rounding
    if m0 == 2**31:
        m0, shift = m0 // 2, shift + 1
    if shift < -31:
        return 0, 0
    return m0, shift


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """``floor(a * b / 2^31 + 1/2)`` for int32 ``a``, ``b``: the high half of the doubled product
    ``2ab``, rounded half up (gemmlowp's nudge of 2^30, or 1 - 2^30 for a negative product, and a
    division truncating towards zero). The one product that overflows int32,
    ``INT32_MIN * INT32_MIN``, saturates to ``INT32_MAX``."""
    a, b = _int64(a), _int64(b)
    product = a * b  # |a * b| <= 2^62: exact in int64
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))  # C's division by 2^31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """``x / 2^exponent`` rounded to nearest, ties away from zero (``0 <= exponent <= 31``): an
    arithmetic shift (a floor) plus one where the discarded bits exceed half, where "half" is
    ``2^(exponent - 1) - 1`` for ``x >= 0`` and ``2^(exponent - 1)`` for ``x < 0``."""
    x, exponent = _int64(x), _int64(exponent)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, m0, shift) -> np.ndarray:
    """``x * M0 * 2^(shift - 31)`` rounded as TFLite's ``MultiplyByQuantizedMultiplier``: a left
    shift for ``shift > 0`` (multipliers above 1), the rounding high multiply, then a rounding
    right shift for ``shift < 0``."""
    left, right = max(shift, 0), max(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(_int64(x) << left, m0), right
    )


def saturating_rounding_multiply_by_pot(x, exponent: int) -> np.ndarray:
    """``x * 2^exponent`` for int32 ``x``: a left shift saturating at the int32 limits
    (``exponent > 0``) or ``rounding_divide_by_pot`` (``exponent < 0``)."""
    x = _int64(x)
    if exponent <= 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def rescale(x, from_integer_bits: int, to_integer_bits: int) -> np.ndarray:
    """A ``Q(from).(31-from)`` raw as ``Q(to).(31-to)``: the same value with the binary point
    moved, rounding or saturating (gemmlowp's ``Rescale``)."""
    return saturating_rounding_multiply_by_pot(x, from_integer_bits - to_integer_bits)


def fixed_mul(a, b) -> np.ndarray:
    """The product of two fixed-point raws, ``Qa x Qb -> Q(a+b)``: their rounding high multiply
    (the integer bits add, so no shift is needed)."""
    return saturating_rounding_doubling_high_mul(a, b)


def _wrap_int32(x) -> np.ndarray:
    """int32 addition's wrap-around (gemmlowp adds raws without saturating)."""
    return (_int64(x) + 2**31) % 2**32 - 2**31


#: exp(-1/8) and 1/3 in Q0.31 (gemmlowp's constants)
EXP_MINUS_ONE_EIGHTH_Q0_31 = 1895147668
ONE_THIRD_Q0_31 = 715827883
#: exp(-2^k) in Q0.31 for k = -2 .. 4: the barrel shifter's multipliers
EXP_MINUS_POWERS_OF_TWO_Q0_31 = {
    -2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308, 2: 39332535, 3: 720401, 4: 242,
}  # fmt: skip


def exp_on_interval_between_negative_one_quarter_and_0_excl(a) -> np.ndarray:
    """``exp(a)`` for Q0.31 ``a`` in [-1/4, 0), as Q0.31: the Taylor series around -1/8,

        exp(a) = e^(-1/8) * (1 + x + x^2/2 + x^3/6 + x^4/24),   x = a + 1/8,

    with ``x^4/24 + x^3/6 + x^2/2`` evaluated as ``((x^4/4 + x^3) / 3 + x^2) / 2``."""
    x = _wrap_int32(_int64(a) + (1 << 28))  # a + 1/8
    x2 = fixed_mul(x, x)
    x3 = fixed_mul(x2, x)
    x4 = fixed_mul(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = saturating_rounding_multiply_by_pot(
        _wrap_int32(fixed_mul(_wrap_int32(x4_over_4 + x3), ONE_THIRD_Q0_31) + x2), -1
    )  # x^4/24 + x^3/6 + x^2/2
    constant = EXP_MINUS_ONE_EIGHTH_Q0_31
    return _wrap_int32(constant + fixed_mul(constant, _wrap_int32(x + poly)))


def exp_on_negative_values(a, integer_bits: int) -> np.ndarray:
    """``exp(a)`` for a ``Q(integer_bits)`` raw ``a <= 0``, as Q0.31.

    Split ``a = r - k/4`` with ``r`` in [-1/4, 0) (the low bits of ``a``, shifted down a
    quarter) and ``k/4 = r - a`` made of the bits 2^-2, 2^-1, ... 2^(integer_bits - 1);
    ``exp(a) = exp(r) * prod over the set bits 2^j of exp(-2^j)``. ``exp(0)`` is exactly the
    largest Q0.31 value."""
    a = _int64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter  # r, in [-1/4, 0)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0)
    )
    remainder = a_mod_quarter_minus_one_quarter - a  # k/4 >= 0
    for exponent, multiplier in EXP_MINUS_POWERS_OF_TWO_Q0_31.items():
        if integer_bits > exponent:
            bit_set = (remainder & (1 << (fractional_bits + exponent))) != 0
            result = np.where(bit_set, fixed_mul(result, multiplier), result)
    if integer_bits > 5:
        # gemmlowp: below -2^5 the exp underflows Q0.31 anyway; it clamps there
        clamp = -(1 << (fractional_bits + 5))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def rounding_half_sum(a, b) -> np.ndarray:
    """``(a + b) / 2`` rounded half away from zero, without int32 overflow."""
    total = _int64(a) + _int64(b)
    nudged = total + np.where(total >= 0, 1, -1)
    return np.where(nudged >= 0, nudged // 2, -((-nudged) // 2))


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """``1 / (1 + a)`` for Q0.31 ``a`` in [0, 1), as Q0.31: Newton-Raphson on
    ``f(x) = 1/x - d`` with ``d = (1 + a) / 2`` in [1/2, 1), started at the best linear guess
    ``48/17 - 32/17 d`` (Q2.29), three steps ``x <- x + x (1 - d x)``; the answer is ``x / 2``."""
    half_denominator = rounding_half_sum(a, INT32_MAX)  # Q0.31
    one_q2_29 = 1 << 29
    x = _wrap_int32(1515870810 + fixed_mul(half_denominator, -1010580540))  # Q2.29
    for _ in range(3):
        one_minus_dx = _wrap_int32(one_q2_29 - fixed_mul(half_denominator, x))  # Q2.29
        x = _wrap_int32(x + rescale(fixed_mul(x, one_minus_dx), 4, 2))
    return rescale(x, 1, 0)  # x / 2: the raw of Q2.29 read as Q1.30, then moved to Q0.31


def count_leading_zeros(x) -> np.ndarray:
    """Leading zero bits of ``x`` as a uint32 (32 for 0)."""
    x = _int64(x) & 0xFFFFFFFF
    bits = np.zeros(x.shape, dtype=np.int64)
    for shift in (16, 8, 4, 2, 1):
        small = x < (1 << (32 - shift))  # the top `shift` bits are zero
        bits = np.where(small, bits + shift, bits)
        x = np.where(small, x << shift, x)
    return np.where(x == 0, 32, bits)


def reciprocal(x, integer_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, bits_over_unit)`` with ``1 / x ~= scale * 2^-(31 + bits_over_unit)`` for a
    positive ``Q(integer_bits)`` raw ``x`` (TFLite's ``GetReciprocal``): ``x`` is normalised to
    ``1 + a`` with ``a`` in [0, 1) by a left shift and ``one_over_one_plus_x_for_x_in_0_1``
    gives ``1 / (1 + a)``."""
    x = _int64(x)
    headroom_plus_one = count_leading_zeros(x)
    bits_over_unit = integer_bits - headroom_plus_one
    shifted_minus_one = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)  # Q0.31 a
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), bits_over_unit
