"""The poolings explained: the output-size rounding (floor, or ceil mode's overhang), one window
written out cell by cell, and how dy flows back: max pooling routes it to the window's winner
(the first maximum in scan order), average pooling spreads it over the window's cells."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..profile import meta
from ..profile.summary import op_other_work
from ..reference import pooling as ref_pool
from ._common import explainer, nchw, output_index, torch_results, values, window_count_lines
from .core import Element, Explanation, Source, index_text, num


def _pool_reads(op: str, shape, **arguments) -> int:
    """Elements the counter says this pooling reads (its "pooling" work), for the whole batch."""
    with meta.recording() as tape:
        getattr(meta, f"{op}_forward")(np.empty(shape), **arguments)
    return op_other_work(tape[0])["pooling"]


def window_cells(x, n, c, p, q, g: ref_pool.PoolGeometry):
    """(i, j, r, s, value or None) of window (p, q): None on the padding or past it (and
    everywhere when ``x`` is None: the cells' positions only)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = g.kernel, g.stride, g.dilation, g.padding
    H, W = g.in_shape[2:]
    for i in range(kh):
        for j in range(kw):
            r, s = p * sh - ph + i * dh, q * sw - pw + j * dw
            inside = x is not None and 0 <= r < H and 0 <= s < W
            yield i, j, r, s, (x[n, c, r, s] if inside else None)


def window_divisor(g: ref_pool.PoolGeometry, fixed: int, grow, p: int, q: int) -> int:
    """Average pooling's divisor of window (p, q) (``reference.pooling.divisor_rule``'s
    ``(fixed, grow)``): ``fixed``, else its cells inside the input grown by ``grow``."""
    if fixed:
        return fixed
    (H, W), (gh, gw) = g.in_shape[2:], grow
    cells = window_cells(None, 0, 0, p, q, g)
    return sum(-gh <= r < H + gh and -gw <= s < W + gw for _, _, r, s, _ in cells)


def _windowed_case(op, input, kernel, stride, padding, ceil_mode, seed, arrays, **extra):
    """Shared setup of max / avg pooling: x (drawn, or ``arrays["x"]``), the geometry, the
    sections on shapes and work."""
    shape = nchw(input if arrays is None else arrays["x"].shape)
    rng = np.random.default_rng(seed)
    x = values(rng, shape) if arrays is None else np.asarray(arrays["x"], np.float64)
    forward = getattr(ref_pool, f"{op}_forward")
    y, cache = forward(x, kernel, stride, padding, ceil_mode=ceil_mode, **extra)
    g = cache.geometry
    dy = values(rng, y.shape)
    dx = getattr(ref_pool, f"{op}_backward")(dy, cache)
    case = dict(input=shape, kernel=g.kernel, stride=g.stride, padding=g.padding,
                ceil_mode=ceil_mode, seed=seed) | extra  # fmt: skip
    e = Explanation(op, case, inputs={"x": x, "dy": dy})
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = g.kernel, g.stride, g.dilation, g.padding
    e.section(
        "shapes",
        f"x (N, C, H, W) = {shape}; one {kh}x{kw} window per output, per channel",
        *window_count_lines("h", shape[2], kh, sh, ph, dh, ceil_mode),
        *window_count_lines("w", shape[3], kw, sw, pw, dw, ceil_mode),
        f"y (N, C, OH, OW) = {y.shape}",
    )
    reads = _pool_reads(op, shape, kernel_size=kernel, stride=stride, padding=padding,
                        ceil_mode=ceil_mode, **extra)  # fmt: skip
    e.counts = dict(params=0, mult_adds=0, reads=y.size * kh * kw, counter_reads=reads)
    e.section(
        "params and work",
        f"no params, no multiply-adds; it reads N*C*OH*OW windows x kh*kw cells = "
        f"{y.size} x {kh * kw} = {y.size * kh * kw:,} elements (the counter: {reads:,}: "
        f"{'equal' if reads == y.size * kh * kw else 'DIFFERENT'})",
    )
    e.sources = [Source.of(forward), Source.of(getattr(ref_pool, f"{op}_backward"))]
    return e, x, y, dy, dx, g


def _off_input(r: int, s: int, g) -> str:
    """What a window tap outside x reads: the padding, or (ceil mode) past the padded input."""
    (H, W), (ph, pw) = g.in_shape[2:], g.padding
    on_padding = -ph <= r < H + ph and -pw <= s < W + pw
    return "padding" if on_padding else "past the padded input (ceil mode's overhang)"


def _default_window(y_shape, g) -> tuple[int, int, int, int]:
    """The window explained when ``--at`` is not given: the last channel's middle window, or
    along an axis where ceil mode's last window overhangs the padded input, that window (the one
    ceil mode adds)."""

    def along(axis: int) -> int:
        out, size = y_shape[2 + axis], g.in_shape[2 + axis]
        k, s, d, p = g.kernel[axis], g.stride[axis], g.dilation[axis], g.padding[axis]
        overhangs = (out - 1) * s + d * (k - 1) + 1 > size + 2 * p
        return out - 1 if overhangs else out // 2

    return 0, y_shape[1] - 1, along(0), along(1)


@explainer("max_pool2d")
def explain_max_pool2d(
    input=(1, 1, 5, 5), kernel=3, stride=2, padding=0, dilation=1, ceil_mode=False, seed=0,
    at=None, *, arrays=None,
) -> Explanation:  # fmt: skip
    """Max pooling: a selection forward, a routing backward."""
    nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)  # the layer's checks
    e, x, y, dy, dx, g = _windowed_case("max_pool2d", input, kernel, stride, padding, ceil_mode,
                                        seed, arrays, dilation=dilation)  # fmt: skip
    theirs = torch_results(
        lambda F, x: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode), {"x": x}, dy
    )
    e.section(
        "forward",
        "y[n, c, p, q] = max over the window: x[n, c, p*sh - ph + i*dh, q*sw - pw + j*dw], "
        "i < kh, j < kw",
        "padding (and ceil mode's overhang) is -inf: it never wins. Scan order is row-major; a "
        "cell wins when it is GREATER than the best so far, so ties go to the first maximum.",
    )
    e.section(
        "backward (dy = dL/dy given)",
        "dx[n, c, h, w] = sum of dy[n, c, p, q] over the windows (p, q) whose winner is (h, w)",
        "   (the max is a switch: the winner gets the whole gradient, every other cell 0; a pixel",
        "    that wins several overlapping windows collects several terms)",
    )
    n, c, p, q = output_index(at, y.shape, _default_window(y.shape, g))
    terms, best, winner = [], -np.inf, None
    for i, j, r, s, v in window_cells(x, n, c, p, q, g):
        if v is None:
            terms.append(f"tap ({i}, {j}) at ({r}, {s}): {_off_input(r, s, g)}, -inf")
            continue
        if winner is None or v > best:
            best, winner = v, (r, s)
        terms.append(f"{index_text('x', (n, c, r, s))} = {num(v)}")
    terms = [t + ("   <- the winner" if t.startswith(index_text("x", (n, c, *winner)) + " ") else "")
             for t in terms]  # fmt: skip
    e.elements.append(Element(
        "y", (n, c, p, q), "the largest cell of the window (first in scan order on a tie)",
        terms, best, y[n, c, p, q], None if theirs is None else theirs[0][n, c, p, q],
    ))  # fmt: skip
    r, s = winner
    routed, total = [], 0.0
    for a in range(y.shape[2]):
        for b in range(y.shape[3]):
            cells = [(cell[2], cell[3], cell[4]) for cell in window_cells(x, n, c, a, b, g)
                     if cell[4] is not None]  # fmt: skip
            first = cells[0]
            for cell in cells:  # the window's winner by the same scan
                if cell[2] > first[2] or cell[2] != cell[2]:
                    first = cell
            if first[:2] == (r, s):
                total += dy[n, c, a, b]
                routed.append(f"window ({a}, {b}) chose it: {index_text('dy', (n, c, a, b))} = "
                              f"{num(dy[n, c, a, b])}")  # fmt: skip
    e.elements.append(Element(
        "dx", (n, c, r, s), "the dy of every window this pixel won", routed, total,
        dx[n, c, r, s], None if theirs is None else theirs[1]["x"][n, c, r, s],
    ))  # fmt: skip
    return e


@explainer("avg_pool2d")
def explain_avg_pool2d(
    input=(1, 1, 5, 5), kernel=3, stride=2, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None, seed=0, at=None, *, arrays=None,
) -> Explanation:  # fmt: skip
    """Average pooling: a window mean forward, an even spread backward."""
    nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    e, x, y, dy, dx, g = _windowed_case(
        "avg_pool2d", input, kernel, stride, padding, ceil_mode, seed, arrays,
        count_include_pad=count_include_pad, divisor_override=divisor_override,
    )  # fmt: skip
    theirs = torch_results(
        lambda F, x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override), {"x": x}, dy,
    )  # fmt: skip
    fixed, grow = ref_pool.divisor_rule(g.padding, count_include_pad, divisor_override)
    rule = (f"D = divisor_override = {fixed}" if fixed else
            "D = the window's cells inside the padded input (padded zeros count, ceil mode's "
            "overhang does not)" if count_include_pad else
            "D = the window's real pixels (count_include_pad=False)")  # fmt: skip
    e.section(
        "forward",
        "y[n, c, p, q] = (1 / D[p, q]) * sum over the window of x (padding adds zeros)",
        rule,
    )
    e.section(
        "backward (dy = dL/dy given)",
        "dx[n, c, h, w] = sum over the windows (p, q) holding (h, w) of dy[n, c, p, q] / D[p, q]",
        "   (every cell of a window has slope 1/D: the gradient is spread evenly)",
    )
    H, W = g.in_shape[2:]

    def divisor(p, q) -> int:
        return window_divisor(g, fixed, grow, p, q)

    n, c, p, q = output_index(at, y.shape, _default_window(y.shape, g))
    terms, total = [], 0.0
    for _, _, r, s, v in window_cells(x, n, c, p, q, g):
        terms.append(f"{index_text('x', (n, c, r, s))} = {num(v)}" if v is not None
                     else f"({r}, {s}): {_off_input(r, s, g)}, adds 0")  # fmt: skip
        total += 0.0 if v is None else v
    D = divisor(p, q)
    terms.append(f"sum = {num(total)}, D = {D}: {num(total)} / {D}")
    e.elements.append(Element(
        "y", (n, c, p, q), "window sum / D", terms, total / D, y[n, c, p, q],
        None if theirs is None else theirs[0][n, c, p, q],
    ))  # fmt: skip
    h, w = H // 2, W // 2
    terms, total = [], 0.0
    for a in range(y.shape[2]):
        for b in range(y.shape[3]):
            if any((r, s) == (h, w) for _, _, r, s, _ in window_cells(x, n, c, a, b, g)):
                share = dy[n, c, a, b] / divisor(a, b)
                total += share
                terms.append(f"window ({a}, {b}): {index_text('dy', (n, c, a, b))} / D = "
                             f"{num(dy[n, c, a, b])} / {divisor(a, b)} = {num(share)}")  # fmt: skip
    e.elements.append(Element(
        "dx", (n, c, h, w), "sum of dy / D over the windows holding this pixel", terms, total,
        dx[n, c, h, w], None if theirs is None else theirs[1]["x"][n, c, h, w],
    ))  # fmt: skip
    return e


@explainer("global_avg_pool2d")
def explain_global_avg_pool2d(input=(1, 2, 3, 3), seed=0, at=None, *, arrays=None):
    """The mean of each channel's plane (``adaptive_avg_pool2d(x, 1)``)."""
    N, C, H, W = nchw(input if arrays is None else arrays["x"].shape)
    rng = np.random.default_rng(seed)
    x = values(rng, (N, C, H, W)) if arrays is None else np.asarray(arrays["x"], np.float64)
    y, cache = ref_pool.global_avg_pool2d_forward(x)
    dy = values(rng, y.shape)
    dx = ref_pool.global_avg_pool2d_backward(dy, cache)
    theirs = torch_results(lambda F, x: F.adaptive_avg_pool2d(x, 1), {"x": x}, dy)
    e = Explanation("global_avg_pool2d", dict(input=(N, C, H, W), seed=seed),
                    inputs={"x": x, "dy": dy})  # fmt: skip
    e.section("shapes", f"x (N, C, H, W) = {x.shape} -> y (N, C, 1, 1) = {y.shape}")
    e.section(
        "forward", f"y[n, c, 0, 0] = (1 / (H*W)) * sum_{{h, w}} x[n, c, h, w],  H*W = {H * W}"
    )
    e.section("backward (dy = dL/dy given)",
              "dx[n, c, h, w] = dy[n, c, 0, 0] / (H*W): every pixel gets the same share")  # fmt: skip
    e.sources = [Source.of(ref_pool.global_avg_pool2d_forward),
                 Source.of(ref_pool.global_avg_pool2d_backward)]  # fmt: skip
    n, c, _, _ = output_index(at, y.shape, (0, C - 1, 0, 0))
    e.elements.append(Element(
        "y", (n, c, 0, 0), "mean of the channel's plane",
        [f"{index_text('x', (n, c, h, w))} = {num(x[n, c, h, w])}"
         for h in range(H) for w in range(W)] + [f"sum = {num(x[n, c].sum())}, / {H * W}"],
        float(x[n, c].sum() / (H * W)), y[n, c, 0, 0],
        None if theirs is None else theirs[0][n, c, 0, 0],
    ))  # fmt: skip
    e.elements.append(Element(
        "dx", (n, c, H // 2, W // 2), "dy / (H*W)",
        [f"{index_text('dy', (n, c, 0, 0))} / {H * W} = {num(dy[n, c, 0, 0])} / {H * W}"],
        dy[n, c, 0, 0] / (H * W), dx[n, c, H // 2, W // 2],
        None if theirs is None else theirs[1]["x"][n, c, H // 2, W // 2],
    ))  # fmt: skip
    return e


def _explain_adaptive(kind: str, input, output_size, seed, at, arrays) -> Explanation:
    op = f"adaptive_{kind}_pool2d"
    N, C, H, W = nchw(input if arrays is None else arrays["x"].shape)
    (nn.AdaptiveAvgPool2d if kind == "avg" else nn.AdaptiveMaxPool2d)(output_size)
    rng = np.random.default_rng(seed)
    x = values(rng, (N, C, H, W)) if arrays is None else np.asarray(arrays["x"], np.float64)
    y, cache = getattr(ref_pool, f"{op}_forward")(x, output_size)
    dy = values(rng, y.shape)
    dx = getattr(ref_pool, f"{op}_backward")(dy, cache)
    theirs = torch_results(lambda F, x: getattr(F, op)(x, output_size), {"x": x}, dy)
    OH, OW = y.shape[2:]
    (r0, r1), (c0, c1) = cache.rows, cache.cols
    e = Explanation(op, dict(input=(N, C, H, W), output_size=(OH, OW), seed=seed),
                    inputs={"x": x, "dy": dy})  # fmt: skip
    e.section(
        "windows (torch's rule)",
        "output row i reads input rows [floor(i * H / OH), ceil((i + 1) * H / OH))",
        "rows:    "
        + ", ".join(f"{i}: [{r0[i]}, {r1[i]})" for i in range(OH))
        + f"   (H = {H}, OH = {OH})",
        "columns: "
        + ", ".join(f"{j}: [{c0[j]}, {c1[j]})" for j in range(OW))
        + f"   (W = {W}, OW = {OW})",
        "windows cover the input, may overlap by one and differ in size by at most one",
    )
    reduce = "mean" if kind == "avg" else "max (first in scan order on a tie)"
    e.section("forward", f"y[n, c, i, j] = {reduce} of x over window (i, j)")
    e.section(
        "backward (dy = dL/dy given)",
        "dx[n, c, h, w] = sum over the windows holding (h, w) of dy / area" if kind == "avg" else
        "dx[n, c, h, w] = sum of dy over the windows whose winner is (h, w)",
    )  # fmt: skip
    e.sources = [Source.of(getattr(ref_pool, f"{op}_forward")),
                 Source.of(getattr(ref_pool, f"{op}_backward"))]  # fmt: skip
    n, c, i, j = output_index(at, y.shape, (0, C - 1, OH // 2, OW // 2))
    cells = [(h, w) for h in range(r0[i], r1[i]) for w in range(c0[j], c1[j])]
    terms = [f"{index_text('x', (n, c, h, w))} = {num(x[n, c, h, w])}" for h, w in cells]
    window = [x[n, c, h, w] for h, w in cells]
    if kind == "avg":
        value = sum(window) / len(cells)
        terms.append(f"sum = {num(sum(window))}, area {len(cells)}")
    else:
        value = window[0]
        for v in window:
            value = v if v > value else value
    e.elements.append(Element(
        "y", (n, c, i, j), f"{reduce} of window rows [{r0[i]}, {r1[i]}) x columns [{c0[j]}, {c1[j]})",
        terms, value, y[n, c, i, j], None if theirs is None else theirs[0][n, c, i, j],
    ))  # fmt: skip
    h, w = cells[0] if kind == "avg" else cells[window.index(value)]
    terms, total = [], 0.0
    for a in range(OH):
        for b in range(OW):
            if not (r0[a] <= h < r1[a] and c0[b] <= w < c1[b]):
                continue
            area = (r1[a] - r0[a]) * (c1[b] - c0[b])
            if kind == "avg":
                total += dy[n, c, a, b] / area
                terms.append(f"window ({a}, {b}): {num(dy[n, c, a, b])} / {area}")
            else:
                flat = x[n, c, r0[a] : r1[a], c0[b] : c1[b]]
                first = np.unravel_index(int(np.argmax(flat)), flat.shape)
                if (r0[a] + first[0], c0[b] + first[1]) == (h, w):
                    total += dy[n, c, a, b]
                    terms.append(f"window ({a}, {b}) chose it: {num(dy[n, c, a, b])}")
    e.elements.append(Element(
        "dx", (n, c, h, w), "dy / area over the windows holding it" if kind == "avg" else
        "the dy of every window this pixel won", terms, total, dx[n, c, h, w],
        None if theirs is None else theirs[1]["x"][n, c, h, w],
    ))  # fmt: skip
    return e


@explainer("adaptive_avg_pool2d")
def explain_adaptive_avg_pool2d(
    input=(1, 1, 5, 7), output_size=(3, 4), seed=0, at=None, *, arrays=None
):
    """Adaptive average pooling: torch's variable windows, their means."""
    return _explain_adaptive("avg", input, output_size, seed, at, arrays)


@explainer("adaptive_max_pool2d")
def explain_adaptive_max_pool2d(
    input=(1, 1, 5, 7), output_size=(3, 4), seed=0, at=None, *, arrays=None
):
    """Adaptive max pooling: torch's variable windows, their maxima."""
    return _explain_adaptive("max", input, output_size, seed, at, arrays)
