"""``scratchnets bench ops``: per-op kernels vs PyTorch on MobileNetV2's layer shapes.

For every distinct depthwise and pointwise convolution of MobileNetV2 at the given input size
(default batch 32, 128x128), plus BatchNorm and ReLU6 at one shape per resolution, time a
scratchnets backend's kernel (``--backend cpu``, the default, or ``cuda``) and torch on the same
device and float32 data in the same run: forward alone and forward + backward (random upstream
gradient), median of ``--repeat`` runs, and the ratio scratchnets / torch (< 1 means scratchnets
is faster). Each kernel's outputs are checked against torch before it is timed. On "cuda", torch
runs on the GPU with TF32 off and cuDNN on, and every timed call ends with a device synchronize
on both sides (kernel launches are asynchronous).

For the pointwise convolutions, which are GEMMs, the table also gives the GFLOP/s of the forward
and, on the CPU, NumPy's own matmul on the same product, ``(C_out, C_in) @ (C_in, N*H*W)``, and
their ratio ("of numpy").

Run: ``python -m scratchnets.cli bench ops [--backend cuda]`` or
``python -m scratchnets.benchmarks.ops``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..models.mobilenet_v2 import INVERTED_RESIDUAL_SETTING, LAST_CHANNELS, STEM_CHANNELS
from .convs import torch_device
from .timing import (
    format_table,
    machine_info,
    max_rel_error,
    median_time,
    print_header,
    setup_torch,
)

HELP = "per-op kernels vs torch on MobileNetV2 layer shapes (depthwise, pointwise, BN, ReLU6)"


def mobilenet_v2_shapes(size: int):
    """Distinct layer shapes of MobileNetV2 at a ``size`` x ``size`` input.

    Returns ``(depthwise, pointwise, activations)``: lists of (channels, hw, stride),
    (c_in, c_out, hw) and (channels, hw) (the expanded activations BN/ReLU6 see).
    """
    depthwise, pointwise, activations = [], [], []
    c_in, hw = STEM_CHANNELS, -(-size // 2)  # after the 3x3 stride-2 stem
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for k in range(n):
            stride, hidden = (s if k == 0 else 1), c_in * t
            if t != 1:
                pointwise.append((c_in, hidden, hw))  # expand
            activations.append((hidden, hw))
            depthwise.append((hidden, hw, stride))
            hw = -(-hw // stride)
            pointwise.append((hidden, c, hw))  # project
            c_in = c
    pointwise.append((c_in, LAST_CHANNELS, hw))  # the last 1x1 conv
    dedupe = lambda items: list(dict.fromkeys(items))  # noqa: E731 (keeps first-seen order)
    return dedupe(depthwise), dedupe(pointwise), dedupe(activations)


@dataclass(frozen=True)
class Target:
    """Where the benchmark runs: scratchnets' backend and torch's device, each with a way to
    place a NumPy array there and a way to wait for the work queued on it."""

    backend: str  # "cpu" or "cuda"
    ops: ModuleType  # the backend's op module
    put: Callable[[np.ndarray], object]  # NumPy array -> the backend's array
    sync: Callable[[], None]
    torch: ModuleType
    torch_device: str
    torch_sync: Callable[[], None]

    def tensor(self, a: np.ndarray, requires_grad: bool = False):
        """``a`` as a torch tensor on torch's device."""
        t = self.torch.from_numpy(a).to(self.torch_device)
        return t.requires_grad_(True) if requires_grad else t


def make_target(backend: str) -> Target:
    """The "cpu" kernels next to torch on the CPU, or the "cuda" kernels next to torch on the
    GPU (TF32 off and cuDNN on, by ``setup_torch``). Under numba's CUDA simulator, where torch
    sees no GPU, torch stays on the CPU: the path is exercised, the ratios mean nothing."""
    from scratchnets.backends import get_backend

    torch = setup_torch()
    torch_dev = torch_device(torch, backend)
    torch_sync = torch.cuda.synchronize if torch_dev == "cuda" else (lambda: None)
    if backend == "cpu":
        return Target(
            "cpu", get_backend("cpu"), lambda a: a, lambda: None, torch, "cpu", torch_sync
        )
    if backend != "cuda":
        raise ValueError(f"bench ops times the 'cpu' or 'cuda' backend, got {backend!r}")
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError(
            "bench ops --backend cuda needs an NVIDIA GPU that numba sees (numba.cuda.detect() "
            "says why not), or NUMBA_ENABLE_CUDASIM=1 for a dry run"
        )
    put = lambda a: cuda.to_device(np.ascontiguousarray(a))  # noqa: E731
    return Target("cuda", get_backend("cuda"), put, cuda.synchronize, torch, torch_dev, torch_sync)


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
    numpy_gemm: Callable[[], object] | None = None  # the same product in NumPy (CPU only)


def _bench(target: Target, name, ours_forward, ours_train, torch_forward, torch_train, **gemm):
    """An OpBench whose validation compares every output of the two training calls."""

    def validate():
        pairs = zip(ours_train(), torch_train(), strict=True)
        return max(max_rel_error(ours, theirs) for ours, theirs in pairs)

    return OpBench(name, ours_forward, ours_train, torch_forward, torch_train, validate, **gemm)


def _conv_bench(target: Target, name, x, w, stride, padding, groups, **gemm):
    torch, ops, put = target.torch, target.ops, target.put
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    xd, wd = put(x), put(w)
    y_shape = ops.conv2d_forward(xd, wd, None, stride, padding, 1, groups)[0].shape
    dy = rng.standard_normal(y_shape).astype(np.float32)
    dyd = put(dy)
    xt, wt, dyt = target.tensor(x, True), target.tensor(w, True), target.tensor(dy)

    def ours_forward():
        return ops.conv2d_forward(xd, wd, None, stride, padding, 1, groups)

    def ours_train():
        y, cache = ours_forward()
        return (y, *ops.conv2d_backward(dyd, cache)[:2])

    def torch_forward():
        with torch.no_grad():
            return F.conv2d(xt, wt, None, stride, padding, 1, groups)

    def torch_train():
        y = F.conv2d(xt, wt, None, stride, padding, 1, groups)
        return (y, *torch.autograd.grad(y, (xt, wt), dyt))

    return _bench(target, name, ours_forward, ours_train, torch_forward, torch_train, **gemm)


def depthwise_bench(target: Target, batch, channels, hw, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, hw, hw)).astype(np.float32)
    w = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)
    return _conv_bench(target, f"dw3x3 {channels}@{hw} s{stride}", x, w, stride, 1, channels)


def pointwise_bench(target: Target, batch, c_in, c_out, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c_in, hw, hw)).astype(np.float32)
    w = rng.standard_normal((c_out, c_in, 1, 1)).astype(np.float32)
    flops = 2.0 * batch * hw * hw * c_in * c_out
    numpy_gemm = None
    if target.backend == "cpu":
        w2 = w.reshape(c_out, c_in)
        cols = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(c_in, -1)
        numpy_gemm = lambda: w2 @ cols  # noqa: E731
    name = f"pw {c_in}->{c_out}@{hw}"
    return _conv_bench(target, name, x, w, 1, 0, 1, flops=flops, numpy_gemm=numpy_gemm)


def batchnorm_bench(target: Target, batch, channels, hw):
    torch, ops, put = target.torch, target.ops, target.put
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, hw, hw)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    weight, bias = rng.standard_normal((2, channels)).astype(np.float32)
    mean, var = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    # running statistics: updated in place by every training-mode call, on both sides alike
    xd, wd, bd, dyd, mean_d, var_d = map(put, (x, weight, bias, dy, mean, var))
    xt, wt, bt = (target.tensor(a, True) for a in (x, weight, bias))
    dyt, mean_t, var_t = map(target.tensor, (dy, mean, var))

    def ours_forward():
        return ops.batch_norm2d_forward(xd, wd, bd, mean_d, var_d, training=True)

    def ours_train():
        y, cache = ours_forward()
        return (y, *ops.batch_norm2d_backward(dyd, cache))

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.batch_norm(xt, mean_t, var_t, wt, bt, True)

    def torch_train():
        y = torch.nn.functional.batch_norm(xt, mean_t, var_t, wt, bt, True)
        return (y, *torch.autograd.grad(y, (xt, wt, bt), dyt))

    name = f"bn {channels}@{hw}"
    return _bench(target, name, ours_forward, ours_train, torch_forward, torch_train)


def relu6_bench(target: Target, batch, channels, hw):
    torch, ops, put = target.torch, target.ops, target.put
    rng = np.random.default_rng(0)
    x = (4 * rng.standard_normal((batch, channels, hw, hw))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xd, dyd = put(x), put(dy)
    xt, dyt = target.tensor(x, True), target.tensor(dy)

    def ours_forward():
        return ops.relu6_forward(xd)

    def ours_train():
        y, cache = ours_forward()
        return y, ops.relu6_backward(dyd, cache)

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.relu6(xt)

    def torch_train():
        y = torch.nn.functional.relu6(xt)
        return y, torch.autograd.grad(y, xt, dyt)[0]

    name = f"relu6 {channels}@{hw}"
    return _bench(target, name, ours_forward, ours_train, torch_forward, torch_train)


def build(target: Target, batch: int, size: int, pattern: str | None) -> list[OpBench]:
    """The benchmark rows whose name matches ``pattern`` (data is made here, nothing timed)."""
    depthwise, pointwise, activations = mobilenet_v2_shapes(size)
    makers = [
        lambda c=c, h=h, s=s: depthwise_bench(target, batch, c, h, s) for c, h, s in depthwise
    ]
    makers += [
        lambda a=a, b=b, h=h: pointwise_bench(target, batch, a, b, h) for a, b, h in pointwise
    ]
    # BN / ReLU6: the first expanded activation at each resolution
    per_resolution = list({h: (c, h) for c, h in reversed(activations)}.values())[::-1]
    makers += [lambda c=c, h=h: batchnorm_bench(target, batch, c, h) for c, h in per_resolution]
    makers += [lambda c=c, h=h: relu6_bench(target, batch, c, h) for c, h in per_resolution]
    benches = [make() for make in makers]
    if pattern:
        benches = [b for b in benches if re.search(pattern, b.name)]
    return benches


#: float32 kernels vs float32 torch: both round, sums of up to ~10^4 terms
VALIDATION_TOLERANCE = 1e-4


def run_benches(
    target: Target, benches: list[OpBench], repeat: int, progress: bool = True
) -> list[dict]:
    from tqdm import tqdm

    def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
        """Median ms of ``fn`` until its device work is done."""
        return 1e3 * median_time(lambda: (fn(), sync()), repeat)

    rows = []
    for bench in tqdm(benches, desc="bench ops", disable=not progress, file=sys.stderr):
        error = bench.validate()
        if not error <= VALIDATION_TOLERANCE:
            raise AssertionError(
                f"{bench.name}: scratchnets differs from torch by {error:.2e} (relative)"
            )
        row = {"op": bench.name, "max_rel_err": error}
        # torch first, then ours: each pool runs its own repeats back to back
        row["torch_fwd_ms"] = timed(bench.torch_forward, target.torch_sync)
        row["torch_fb_ms"] = timed(bench.torch_train, target.torch_sync)
        row["ours_fwd_ms"] = timed(bench.ours_forward, target.sync)
        row["ours_fb_ms"] = timed(bench.ours_train, target.sync)
        row["ratio_fwd"] = row["ours_fwd_ms"] / row["torch_fwd_ms"]
        row["ratio_fb"] = row["ours_fb_ms"] / row["torch_fb_ms"]
        if bench.flops is not None:
            row["ours_gflops"] = bench.flops / row["ours_fwd_ms"] / 1e6
            if bench.numpy_gemm is not None:
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
    parser.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="scratchnets backend to time; torch runs on the same device (default cpu)",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--ops", default=None, help="regex on op names, e.g. 'dw3x3' or '^pw'")
    parser.add_argument("--json", default=None, help="also write the rows and machine info here")


def run(args: argparse.Namespace) -> int:
    target = make_target(args.backend)
    benches = build(target, args.batch, args.size, args.ops)
    if not benches:
        print(f"no op matches {args.ops!r}", file=sys.stderr)
        return 1
    rows = run_benches(target, benches, args.repeat)
    info = machine_info(args.backend)
    settings = {"backend": args.backend, "torch_device": target.torch_device}
    settings |= {"batch": args.batch, "size": args.size}
    print_header({**info, **settings, "repeat": args.repeat})
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
