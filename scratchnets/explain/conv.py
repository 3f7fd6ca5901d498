"""conv2d explained: the output-size floor, what depthwise / pointwise / grouped changes, and one
element of y, dx (the flipped kernel, the stride grid), dw and db written out."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import conv as ref_conv
from ..reference.windows import pair
from ._common import (
    counted,
    explainer,
    nchw,
    output_index,
    product_line,
    torch_results,
    values,
    window_count_lines,
)
from .core import Element, Explanation, Source, index_text, num


def _conv_kind(c_in: int, c_out: int, kernel: tuple[int, int], groups: int) -> list[str]:
    kh, kw = kernel
    cg = c_in // groups
    standard = c_out * c_in * kh * kw
    if groups == 1 and kernel == (1, 1):
        return [
            "pointwise (1x1, groups=1): no spatial neighbourhood; at every pixel (p, q) the output",
            "is a matrix-vector product over channels: y[n, :, p, q] = W (C_out x C_in) @ x[n, :, p, q] + b",
        ]
    if groups == 1:
        return [f"standard convolution: every output channel reads all {c_in} input channels."]
    if groups == c_in:
        lines = [
            f"depthwise (groups = C_in = {c_in}): output channel co reads input channel "
            f"co // {c_out // groups} only,",
            "so the sum over input channels has ONE term: a per-channel 2-d filter.",
            f"weights {c_out} * 1 * {kh} * {kw} = {c_out * kh * kw:,} instead of "
            f"{c_out} * {c_in} * {kh} * {kw} = {standard:,} for a standard conv "
            f"(1/{c_in} of it).",
        ]
        if c_out == c_in and kh == kw:
            lines.append(
                f"a depthwise-separable block (this + a 1x1 conv to M channels) costs "
                f"1/M + 1/{kh * kw} of a standard {kh}x{kw} conv (MobileNetV1, section 3.1)."
            )
        elif c_out == c_in:  # 1xK / Kx1: a factorised filter, as in GhostNetV2's DFC attention
            lines.append(
                f"a {kh}x{kw} filter is one of a factorised pair (with a {kw}x{kh} one, as in "
                f"GhostNetV2's DFC attention): together {kh * kw + kw * kh} multiply-adds per "
                f"output for a {max(kh, kw)}x{max(kh, kw)} reach that a full kernel pays "
                f"{max(kh, kw) ** 2} for."
            )
        return lines
    return [
        f"grouped ({groups} groups): input channels are split into {groups} groups of {cg}; each",
        f"group feeds its own {c_out // groups} output channels. Weights 1/{groups} of a standard conv.",
    ]


@explainer("conv2d")
def explain_conv2d(
    input=(1, 4, 7, 7), out_channels=4, kernel=3, stride=1, padding=0, dilation=1, groups=1,
    bias=True, seed=0, at=None, *, arrays=None,
) -> Explanation:  # fmt: skip
    """A 2-d convolution, forward and backward (``reference.conv``). ``padding``: int, (ph, pw)
    or (top, bottom, left, right). ``arrays`` ({"x", "w", "b"}): explain these instead of drawn
    values (a model layer's real input and weights)."""
    N, C_in, H, W = nchw(input if arrays is None else arrays["x"].shape)
    layer = nn.Conv2d(
        C_in, out_channels, kernel, stride, padding, dilation, groups, bias, dtype=np.float64
    )  # built first: bad arguments get the layer's own errors
    w_shape = (out_channels, C_in // groups, *pair(kernel, "kernel"))
    g = ref_conv.conv_geometry((N, C_in, H, W), w_shape, stride, padding, dilation, groups)
    (kh, kw), (sh, sw), (dh, dw), pads = g.kernel, g.stride, g.dilation, g.pads
    top, bottom, left, right = pads
    ph, pw = top, left  # the offsets of the first window
    C_out, Cg, Mg = out_channels, C_in // groups, out_channels // groups
    rng = np.random.default_rng(seed)
    if arrays is None:
        x, w = values(rng, (N, C_in, H, W)), values(rng, (C_out, Cg, kh, kw), 0.5)
        b = values(rng, (C_out,), 0.1) if bias else None
    else:
        x, w, b = (None if arrays.get(k) is None else np.asarray(arrays[k], np.float64)
                   for k in ("x", "w", "b"))  # fmt: skip
    y, cache = ref_conv.conv2d_forward(x, w, b, (sh, sw), pads, (dh, dw), groups)
    OH, OW = y.shape[2:]
    dy = values(rng, y.shape)
    dx, dw_, db = ref_conv.conv2d_backward(dy, cache)
    inputs = {"x": x, "w": w} | ({"b": b} if bias else {})
    theirs = torch_results(
        lambda F, x, w, b=None: F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, (sh, sw), 0,
                                         (dh, dw), groups), inputs, dy,
    )  # fmt: skip

    case = dict(input=(N, C_in, H, W), out_channels=C_out, kernel=(kh, kw), stride=(sh, sw),
                padding=pads if (top, left) != (bottom, right) else (ph, pw), dilation=(dh, dw),
                groups=groups, bias=bias, seed=seed)  # fmt: skip
    e = Explanation("conv2d", case, inputs=inputs | {"dy": dy})
    e.section(
        "shapes",
        f"x (N, C_in, H, W) = {x.shape};  w (C_out, C_in/groups, kh, kw) = {w.shape}"
        + (f";  b (C_out,) = {b.shape}" if bias else ";  no bias"),
        *window_count_lines("h", H, kh, sh, (top, bottom), dh),
        *window_count_lines("w", W, kw, sw, (left, right), dw),
        f"y (N, C_out, OH, OW) = {y.shape}",
    )
    e.section("what kind of conv", *_conv_kind(C_in, C_out, (kh, kw), groups))
    macs = N * C_out * OH * OW * Cg * kh * kw
    params = C_out * Cg * kh * kw + (C_out if bias else 0)
    counter = counted(layer, (N, C_in, H, W))
    e.counts = dict(params=params, mult_adds=macs, counter_params=counter[0],
                    counter_mult_adds=counter[1])  # fmt: skip
    e.section(
        "params and multiply-adds",
        product_line("weights", ["C_out", "C_in/groups", "kh", "kw"], [C_out, Cg, kh, kw])
        + (f";  + bias {C_out} = {params:,} params" if bias else " params"),
        product_line(
            "mult-adds",
            ["N", "C_out", "OH", "OW", "C_in/groups", "kh", "kw"],
            [N, C_out, OH, OW, Cg, kh, kw],
        ),  # fmt: skip
        f"the counter (scratchnets summary of this nn.Conv2d): params {counter[0]:,}, mult-adds "
        f"{counter[1]:,}: {'equal' if counter == (params, macs) else 'DIFFERENT'}",
    )
    e.section(
        "forward",
        "y[n, co, p, q] = b[co] + sum_{c < C_in/groups} sum_{i < kh} sum_{j < kw}",
        "                 x[n, g*C_in/groups + c, p*sh - ph + i*dh, q*sw - pw + j*dw] * w[co, c, i, j]",
        f"with g = co // (C_out/groups) = co // {Mg}; reads outside x are padding zeros. Each output",
        f"sums {Cg} * {kh} * {kw} = {Cg * kh * kw} products.",
    )
    e.section(
        "backward (dy = dL/dy given)",
        "dx[n, ci, h, w] = sum over co in ci's group, taps (i, j) with p = (h + ph - i*dh) / sh and",
        "                  q = (w + pw - j*dw) / sw whole numbers inside y:  dy[n, co, p, q] * w[co, c, i, j]",
        "   (stride 1: dy's window read against the kernel rotated 180 degrees, a full correlation;",
        "    stride > 1: the taps whose offset is not a multiple of the stride reach no output;",
        "    this is the transposed convolution, each dy scattered back through the kernel)",
        "dw[co, c, i, j] = sum_{n, p, q} dy[n, co, p, q] * x[n, g*C_in/groups + c, p*sh - ph + i*dh, q*sw - pw + j*dw]",
        "db[co]          = sum_{n, p, q} dy[n, co, p, q]",
    )
    e.sources = [Source.of(ref_conv.conv2d_forward), Source.of(ref_conv.conv2d_backward)]

    def tap(n, c, r, s):  # x at an unpadded position, or None on the padding
        return x[n, c, r, s] if 0 <= r < H and 0 <= s < W else None

    # y element
    n, co, p, q = output_index(at, y.shape, (0, C_out - 1, OH // 2, OW // 2))
    grp = co // Mg
    terms, total, on_padding = [], 0.0, 0
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                r, s = p * sh - ph + i * dh, q * sw - pw + j * dw
                xv = tap(n, grp * Cg + c, r, s)
                if xv is None:
                    on_padding += 1
                    continue
                prod = xv * w[co, c, i, j]
                total += prod
                terms.append(f"{index_text('x', (n, grp * Cg + c, r, s))} * "
                             f"{index_text('w', (co, c, i, j))} = {num(xv)} * {num(w[co, c, i, j])} = {num(prod)}")  # fmt: skip
    if bias:
        total += b[co]
        terms.append(f"+ b[{co}] = {num(b[co])}")
    e.elements.append(Element(
        "y", (n, co, p, q), f"b[co] + sum over group {grp}'s {Cg} input channel(s) and the {kh}x{kw} taps",
        terms, total, y[n, co, p, q], None if theirs is None else theirs[0][n, co, p, q],
        f"{on_padding} of the {Cg * kh * kw} taps fall on the padding (zeros)" if on_padding else "",
    ))  # fmt: skip

    # dx element: the pixel under the centre tap of the y element's window (clipped into x), in
    # the last input channel of its group; dw: the centre tap of that output channel's filter
    y_co, y_p, y_q = co, p, q
    ci = (y_co // Mg) * Cg + Cg - 1
    h = min(max(y_p * sh - ph + (kh // 2) * dh, 0), H - 1)
    w0 = min(max(y_q * sw - pw + (kw // 2) * dw, 0), W - 1)
    grp, c = ci // Cg, ci % Cg
    terms, total, unreached = [], 0.0, 0
    for i in reversed(range(kh)):  # ascending p: dy's window in order, the kernel reversed
        for j in reversed(range(kw)):
            rr, ss = h + ph - i * dh, w0 + pw - j * dw
            if rr % sh or ss % sw or not (0 <= rr // sh < OH and 0 <= ss // sw < OW):
                unreached += 1
                continue
            for o in range(grp * Mg, (grp + 1) * Mg):
                prod = dy[n, o, rr // sh, ss // sw] * w[o, c, i, j]
                total += prod
                terms.append(f"{index_text('dy', (n, o, rr // sh, ss // sw))} * {index_text('w', (o, c, i, j))}"
                             f" = {num(dy[n, o, rr // sh, ss // sw])} * {num(w[o, c, i, j])} = {num(prod)}")  # fmt: skip
    e.elements.append(Element(
        "dx", (n, ci, h, w0), "sum of dy * w over the outputs whose window read x here (kernel flipped)",
        terms, total, dx[n, ci, h, w0], None if theirs is None else theirs[1]["x"][n, ci, h, w0],
        f"{unreached} of the {kh * kw} taps reach no output here (off the stride grid or past "
        f"the edge of y)" if unreached else "",
    ))  # fmt: skip

    # dw element
    co, c, i, j = y_co, Cg - 1, kh // 2, kw // 2
    grp = co // Mg
    terms, total = [], 0.0
    for n in range(N):
        for p in range(OH):
            for q in range(OW):
                xv = tap(n, grp * Cg + c, p * sh - ph + i * dh, q * sw - pw + j * dw)
                if xv is None:
                    continue
                prod = dy[n, co, p, q] * xv
                total += prod
                terms.append(f"{index_text('dy', (n, co, p, q))} * "
                             f"{index_text('x', (n, grp * Cg + c, p * sh - ph + i * dh, q * sw - pw + j * dw))}"
                             f" = {num(dy[n, co, p, q])} * {num(xv)} = {num(prod)}")  # fmt: skip
    e.elements.append(Element(
        "dw", (co, c, i, j), "sum over n, p, q of dy * the x this tap read (a correlation of x with dy)",
        terms, total, dw_[co, c, i, j], None if theirs is None else theirs[1]["w"][co, c, i, j],
    ))  # fmt: skip
    if bias:
        terms = [f"{index_text('dy', (n, co, p, q))} = {num(dy[n, co, p, q])}"
                 for n in range(N) for p in range(OH) for q in range(OW)]  # fmt: skip
        e.elements.append(Element(
            "db", (co,), "sum over n, p, q of dy[n, co, p, q]", terms, float(dy[:, co].sum()),
            db[co], None if theirs is None else theirs[1]["b"][co],
        ))  # fmt: skip
    return e
