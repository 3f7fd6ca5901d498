"""``scratchnets bench ops``: per-op CPU kernels vs PyTorch on MobileNetV2's layer shapes.

For every distinct depthwise and pointwise convolution of MobileNetV2 at the given input size
(default batch 32, 128x128), plus BatchNorm and ReLU6 at one shape per resolution, time the
scratchnets "cpu" kernel and torch on the same float32 data in the same run: forward alone and
forward + backward (random upstream gradient), median of ``--repeat`` runs, and the ratio
scratchnets / torch (< 1 means scratchnets is faster). Each kernel's outputs are checked against
torch before it is timed. For the pointwise convolutions, which are GEMMs, the table also gives
the GFLOP/s of the forward next to NumPy's own matmul on the same product,
``(C_out, C_in) @ (C_in, N*H*W)``, and their ratio ("of numpy").

Run: ``python -m scratchnets.cli bench ops`` or ``python -m scratchnets.benchmarks.ops``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .timing import format_table, machine_info, median_time, print_header, setup_torch

HELP = "per-op CPU kernels vs torch on MobileNetV2 layer shapes (depthwise, pointwise, BN, ReLU6)"

#: MobileNetV2's inverted-residual settings (expansion t, output channels c, repeats n, stride s)
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2_shapes(size: int):
    """Distinct layer shapes of MobileNetV2 at a ``size`` x ``size`` input.

    Returns ``(depthwise, pointwise, activations)``: lists of (channels, hw, stride),
    (c_in, c_out, hw) and (channels, hw) (the expanded activations BN/ReLU6 see).
    """
    depthwise, pointwise, activations = [], [], []
    c_in, hw = 32, -(-size // 2)  # after the 3x3 stride-2 stem
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for k in range(n):
            stride, hidden = (s if k == 0 else 1), c_in * t
            if t != 1:
                pointwise.append((c_in, hidden, hw))  # expand
            activations.append((hidden, hw))
            depthwise.append((hidden, hw, stride))
            hw = -(-hw // stride)
            pointwise.append((hidden, c, hw))  # project
            c_in = c
    pointwise.append((c_in, 1280, hw))  # the last 1x1 conv
    dedupe = lambda items: list(dict.fromkeys(items))  # noqa: E731 (keeps first-seen order)
    return dedupe(depthwise), dedupe(pointwise), dedupe(activations)


@dataclass
class OpBench:
    """One row: how to run each side, and how to check ours against torch first."""

    name: str
    ours_forward: Callable[[], object]
    ours_train: Callable[[], object]  # forward + backward
    torch_forward: Callable[[], object]
    torch_train: Callable[[], object]
    validate: Callable[[], float]  # largest relative error of ours vs torch (y and grads)
    flops: float | None = None  # forward FLOPs of a GEMM-shaped op
    numpy_gemm: Callable[[], object] | None = None


def _rel(ours, theirs) -> float:
    theirs = np.asarray(theirs, dtype=np.float64)
    return float(
        np.max(np.abs(np.asarray(ours, np.float64) - theirs)) / max(1e-30, np.max(np.abs(theirs)))
    )


def _conv_bench(torch, cpu, name, x, w, stride, padding, groups, flops=None, numpy_gemm=None):
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    y_shape = cpu.conv2d_forward(x, w, None, stride, padding, 1, groups)[0].shape
    dy = rng.standard_normal(y_shape).astype(np.float32)
    xt, wt, dyt = (torch.from_numpy(a) for a in (x, w, dy))
    xt.requires_grad_(True)
    wt.requires_grad_(True)

    def ours_forward():
        return cpu.conv2d_forward(x, w, None, stride, padding, 1, groups)

    def ours_train():
        y, cache = ours_forward()
        return (y, *cpu.conv2d_backward(dy, cache)[:2])

    def torch_forward():
        with torch.no_grad():
            return F.conv2d(xt, wt, None, stride, padding, 1, groups)

    def torch_train():
        y = F.conv2d(xt, wt, None, stride, padding, 1, groups)
        return (y, *torch.autograd.grad(y, (xt, wt), dyt))

    def validate():
        return max(
            _rel(a, b.detach().numpy()) for a, b in zip(ours_train(), torch_train(), strict=True)
        )

    return OpBench(
        name, ours_forward, ours_train, torch_forward, torch_train, validate, flops, numpy_gemm
    )


def depthwise_bench(torch, cpu, batch, channels, hw, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, hw, hw)).astype(np.float32)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    return _conv_bench(torch, cpu, f"dw3x3 {channels}@{hw} s{stride}", x, w, stride, 1, channels)


def pointwise_bench(torch, cpu, batch, c_in, c_out, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c_in, hw, hw)).astype(np.float32)
    w = rng.standard_normal((c_out, c_in, 1, 1)).astype(np.float32)
    w2, cols = (
        w.reshape(c_out, c_in),
        np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c_in, -1),
    )
    flops = 2.0 * batch * hw * hw * c_in * c_out
    return _conv_bench(
        torch, cpu, f"pw {c_in}->{c_out}@{hw}", x, w, 1, 0, 1, flops, lambda: w2 @ cols
    )


def batchnorm_bench(torch, cpu, batch, channels, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, hw, hw)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    weight, bias = rng.standard_normal((2, channels)).astype(np.float32)
    stats = lambda: (np.zeros(channels, np.float32), np.ones(channels, np.float32))  # noqa: E731
    xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x, weight, bias, dy))
    for tensor in (xt, wt, bt):
        tensor.requires_grad_(True)

    def ours_forward():
        return cpu.batch_norm2d_forward(x, weight, bias, *stats(), training=True)

    def ours_train():
        y, cache = ours_forward()
        return (y, *cpu.batch_norm2d_backward(dy, cache))

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.batch_norm(xt, *map(torch.from_numpy, stats()), wt, bt, True)

    def torch_train():
        y = torch.nn.functional.batch_norm(xt, *map(torch.from_numpy, stats()), wt, bt, True)
        return (y, *torch.autograd.grad(y, (xt, wt, bt), dyt))

    def validate():
        return max(
            _rel(a, b.detach().numpy()) for a, b in zip(ours_train(), torch_train(), strict=True)
        )

    return OpBench(
        f"bn {channels}@{hw}", ours_forward, ours_train, torch_forward, torch_train, validate
    )


def relu6_bench(torch, cpu, batch, channels, hw):
    rng = np.random.default_rng(0)
    x = (4 * rng.standard_normal((batch, channels, hw, hw))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def ours_train():
        y, cache = cpu.relu6_forward(x)
        return y, cpu.relu6_backward(dy, cache)

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.relu6(xt)

    def torch_train():
        y = torch.nn.functional.relu6(xt)
        return y, torch.autograd.grad(y, xt, dyt)[0]

    def validate():
        return max(
            _rel(a, b.detach().numpy()) for a, b in zip(ours_train(), torch_train(), strict=True)
        )

    name = f"relu6 {channels}@{hw}"
    return OpBench(
        name, lambda: cpu.relu6_forward(x), ours_train, torch_forward, torch_train, validate
    )


def build(torch, batch: int, size: int, pattern: str | None) -> list[OpBench]:
    """All benchmark rows (constructors are cheap; data is made here, nothing is timed)."""
    from scratchnets.kernels import cpu

    depthwise, pointwise, activations = mobilenet_v2_shapes(size)
    makers = [
        lambda c=c, h=h, s=s: depthwise_bench(torch, cpu, batch, c, h, s) for c, h, s in depthwise
    ]
    makers += [
        lambda a=a, b=b, h=h: pointwise_bench(torch, cpu, batch, a, b, h) for a, b, h in pointwise
    ]
    # BN / ReLU6: the first expanded activation at each resolution
    per_resolution = list({h: (c, h) for c, h in reversed(activations)}.values())[::-1]
    makers += [lambda c=c, h=h: batchnorm_bench(torch, cpu, batch, c, h) for c, h in per_resolution]
    makers += [lambda c=c, h=h: relu6_bench(torch, cpu, batch, c, h) for c, h in per_resolution]
    benches = [make() for make in makers]
    if pattern:
        benches = [b for b in benches if re.search(pattern, b.name)]
    return benches


#: float32 kernels vs float32 torch: both round, sums of up to ~10^4 terms
VALIDATION_TOLERANCE = 1e-4


def run_benches(benches: list[OpBench], repeat: int, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    rows = []
    for bench in tqdm(benches, desc="bench ops", disable=not progress, file=sys.stderr):
        error = bench.validate()
        if not error <= VALIDATION_TOLERANCE:
            raise AssertionError(
                f"{bench.name}: scratchnets differs from torch by {error:.2e} (relative)"
            )
        row = {"op": bench.name, "max_rel_err": error}
        # torch first, then ours: each pool runs its own repeats back to back
        row["torch_fwd_ms"] = 1e3 * median_time(bench.torch_forward, repeat)
        row["torch_fb_ms"] = 1e3 * median_time(bench.torch_train, repeat)
        row["ours_fwd_ms"] = 1e3 * median_time(bench.ours_forward, repeat)
        row["ours_fb_ms"] = 1e3 * median_time(bench.ours_train, repeat)
        row["ratio_fwd"] = row["ours_fwd_ms"] / row["torch_fwd_ms"]
        row["ratio_fb"] = row["ours_fb_ms"] / row["torch_fb_ms"]
        if bench.flops is not None:
            row["ours_gflops"] = bench.flops / row["ours_fwd_ms"] / 1e6
            row["numpy_gflops"] = bench.flops / median_time(bench.numpy_gemm, repeat) / 1e9
            row["of_numpy"] = row["ours_gflops"] / row["numpy_gflops"]
        rows.append(row)
    return rows


COLUMNS = (
    ("op", "op", ""),
    ("ours_fwd_ms", "ours fwd ms", ".2f"),
    ("torch_fwd_ms", "torch fwd ms", ".2f"),
    ("ratio_fwd", "ratio", ".2f"),
    ("ours_fb_ms", "ours fwd+bwd ms", ".2f"),
    ("torch_fb_ms", "torch fwd+bwd ms", ".2f"),
    ("ratio_fb", "ratio", ".2f"),
    ("ours_gflops", "GFLOP/s", ".1f"),
    ("numpy_gflops", "numpy GFLOP/s", ".1f"),
    ("of_numpy", "of numpy", ".0%"),
)


def summary(rows: list[dict]) -> list[str]:
    """Totals per kind of op (sum of medians) and the ratios of the totals."""
    lines = []
    for prefix in ("dw3x3", "pw", "bn", "relu6"):
        kind = [r for r in rows if r["op"].startswith(prefix + " ")]
        if kind:
            ours, theirs = (sum(r[k] for r in kind) for k in ("ours_fb_ms", "torch_fb_ms"))
            lines.append(
                f"{prefix:6s} total fwd+bwd: ours {ours:8.1f} ms, torch {theirs:8.1f} ms, ratio {ours / theirs:.2f}"
            )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--ops", default=None, help="regex on op names, e.g. 'dw3x3' or '^pw'")
    parser.add_argument("--json", default=None, help="also write the rows and machine info here")


def run(args: argparse.Namespace) -> int:
    torch = setup_torch()
    benches = build(torch, args.batch, args.size, args.ops)
    if not benches:
        print(f"no op matches {args.ops!r}", file=sys.stderr)
        return 1
    rows = run_benches(benches, args.repeat)
    info = machine_info()
    print_header({**info, "batch": args.batch, "size": args.size, "repeat": args.repeat})
    print(format_table(rows, COLUMNS))
    print("\n".join(summary(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "args": vars(args) | {"func": None}, "rows": rows},
                f,
                indent=2,
                default=str,
            )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scratchnets.benchmarks.ops", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
