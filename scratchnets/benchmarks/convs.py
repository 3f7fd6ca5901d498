"""``scratchnets bench convs``: the conv-cost study. Are factorised and separable convolutions,
cheaper on paper, also faster in practice?

The experiment (after the seed notebook): a stack of ``--layers`` (16) convolutions, each
C -> C channels, stride 1, "same" zero padding (``kh // 2`` rows and ``kw // 2`` columns, so a
1x3 pads (0, 1)), no bias, no activation, no BatchNorm, applied to one float32 input
``(--batch 32, C, --size 32, --size 32)`` for C in ``--channels`` (8 16 32 64). One pass is the
whole stack; the time reported is seconds per 100 passes (``--passes`` passes are timed and scaled
to 100), the median of ``--repeat`` runs. One "layer" of each type:

=============  ==========================================  =======================
type           convolutions in one layer                   MACs per output pixel
=============  ==========================================  =======================
conv5x5        dense 5x5                                   25 C
conv3x3        dense 3x3                                   9 C
conv3x3sep     depthwise 3x3 alone (groups = C), as the    9
               seed names it
sep3x3+1x1     depthwise 3x3 then pointwise 1x1: the       9 + C
               depthwise-separable layer that replaces a
               dense 3x3 (MobileNet)
conv1x1        dense 1x1 (pointwise)                       C
conv1x3        dense 1x3                                   3 C
conv3x1        dense 3x1                                   3 C
=============  ==========================================  =======================

MACs per pass = layers * N * H * W * C * (the last column). The savings the table compares:
one 5x5 against two 3x3 (same receptive field, 25/18 = 1.39x fewer MACs), one 3x3 against a 1x3
plus a 3x1 (9/6 = 1.5x), and a dense 3x3 against the separable pair (9C / (9 + C)).

Each engine runs the same weights on the same input: scratchnets' ``--backend`` (reference, cpu
or cuda; several may be given), and, with ``--compare-torch``, ``F.conv2d`` on the CPU and, when
torch sees a GPU, on the GPU. Before anything is timed, every scratchnets stack's output is
checked against torch's (float32 on the same device); that run is also the warm-up (numba
compiles on first call). The arithmetic intensity (FLOPs per byte of the unavoidable traffic:
input, output and weights of each conv, float32) is printed next to the achieved GFLOP/s and the
machine's measured roofline (a large matmul and a large copy), which is what decides whether a
layer type is compute-bound or memory-bound.

Run: ``scratchnets bench convs --compare-torch --plot convs.png`` (``python -m scratchnets.cli``
if the package is not installed).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .timing import (
    add_json_option,
    format_table,
    json_to_stdout,
    machine_info,
    machine_peaks,
    max_rel_error,
    median_time,
    print_header,
    setup_torch,
    write_json,
)

HELP = "conv-cost study: 16-layer 5x5/3x3/depthwise/1x1/1x3/3x1 stacks, scratchnets vs torch"


@dataclass(frozen=True)
class ConvType:
    """One layer of the stack: its convolutions as (kh, kw, depthwise) stages, in order."""

    name: str
    stages: tuple[tuple[int, int, bool], ...]

    def macs_per_pixel(self, channels: int) -> int:
        """Multiply-adds per output pixel of one layer: kh*kw*C per output channel, or kh*kw
        for a depthwise conv (groups = C: each output channel reads one input channel)."""
        return sum(kh * kw * (1 if dw else channels) * channels for kh, kw, dw in self.stages)

    def bytes_per_layer(self, batch: int, channels: int, size: int) -> int:
        """Unavoidable float32 traffic of one layer: each conv reads its input and weights and
        writes its output once, (2 * N*C*H*W + C * C_in/groups * kh*kw) * 4 bytes."""
        plane = batch * channels * size * size
        weights = sum(channels * (1 if dw else channels) * kh * kw for kh, kw, dw in self.stages)
        return 4 * (2 * plane * len(self.stages) + weights)


CONV_TYPES = {
    t.name: t
    for t in (
        ConvType("conv5x5", ((5, 5, False),)),
        ConvType("conv3x3", ((3, 3, False),)),
        ConvType("conv3x3sep", ((3, 3, True),)),
        ConvType("sep3x3+1x1", ((3, 3, True), (1, 1, False))),
        ConvType("conv1x1", ((1, 1, False),)),
        ConvType("conv1x3", ((1, 3, False),)),
        ConvType("conv3x1", ((3, 1, False),)),
    )
}

#: (saving, slow side, fast side as [(type, how many)], theoretical ratio as f(C))
SAVINGS = (
    ("5x5 vs two 3x3", "conv5x5", (("conv3x3", 2),), lambda c: 25 / 18),
    ("3x3 vs 1x3+3x1", "conv3x3", (("conv1x3", 1), ("conv3x1", 1)), lambda c: 9 / 6),
    ("3x3 vs dw3x3+1x1", "conv3x3", (("sep3x3+1x1", 1),), lambda c: 9 * c / (9 + c)),
    ("3x3 vs dw3x3 alone", "conv3x3", (("conv3x3sep", 1),), lambda c: c),
)

#: two float32 computations of the same stack (16 layers, sums of up to 25*64 terms) agree to
#: ~1e-6 relative; 1e-4 leaves room for deeper stacks while catching any wrong tap or padding
VALIDATION_TOLERANCE = 1e-4


def make_stack(conv: ConvType, channels: int, layers: int, rng) -> list[tuple]:
    """The stack's convolutions as ``(w, padding, groups)``: w (C, C_in/groups, kh, kw) with
    N(0, 1/fan_in) entries, so activations keep unit scale through the layers."""
    stack = []
    for _ in range(layers):
        for kh, kw, depthwise in conv.stages:
            c_in = 1 if depthwise else channels
            w = rng.standard_normal((channels, c_in, kh, kw)) / np.sqrt(c_in * kh * kw)
            stack.append((w.astype(np.float32), (kh // 2, kw // 2), channels if depthwise else 1))
    return stack


@dataclass
class Engine:
    """One implementation on one device: ``prepare(x, stack)`` returns the zero-argument function
    that runs one pass and returns the output; ``sync`` waits for queued device work."""

    name: str  # "cpu", "reference", "cuda", "torch-cpu", "torch-cuda"
    device: str  # "cpu" or "cuda": where it runs, the panel and torch twin it belongs to
    prepare: Callable[[np.ndarray, list], Callable[[], object]]
    sync: Callable[[], None]


def scratchnets_engine(backend: str) -> Engine:
    """scratchnets' ``conv2d_forward`` of ``backend``; on "cuda" the input and weights are copied
    to the GPU once, so a pass moves no data between host and device."""
    from scratchnets.backends import get_backend

    ops = get_backend(backend)
    if backend == "cuda":
        from numba import cuda

        put, sync = cuda.to_device, cuda.synchronize
    else:
        put, sync = (lambda a: a), (lambda: None)

    def prepare(x, stack):
        x, stack = put(x), [(put(w), pad, groups) for w, pad, groups in stack]

        def one_pass():
            y = x
            for w, pad, groups in stack:
                y, _ = ops.conv2d_forward(y, w, None, 1, pad, 1, groups)
            return y

        return one_pass

    return Engine(backend, "cuda" if backend == "cuda" else "cpu", prepare, sync)


def torch_engine(torch, device: str) -> Engine:
    """``torch.nn.functional.conv2d`` under ``no_grad`` on ``device``, same weights and padding."""
    conv2d = torch.nn.functional.conv2d
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def prepare(x, stack):
        put = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        x, stack = put(x), [(put(w), pad, groups) for w, pad, groups in stack]

        def one_pass():
            with torch.no_grad():
                y = x
                for w, pad, groups in stack:
                    y = conv2d(y, w, None, 1, pad, 1, groups)
                return y

        return one_pass

    return Engine(f"torch-{device}", device, prepare, sync)


def torch_device(torch, backend: str) -> str:
    """Where torch runs next to scratchnets ``backend``: the GPU for "cuda" when torch sees one,
    else the CPU (also under numba's CUDA simulator, where torch has no GPU)."""
    return "cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu"


def measure(one_pass, sync, passes: int, repeat: int) -> float:
    """Seconds per 100 passes: median over ``repeat`` runs of ``passes`` passes, scaled."""

    def run_passes():
        for _ in range(passes):
            one_pass()
        sync()

    return median_time(run_passes, repeat, warmup=0) * 100.0 / passes


def run_study(args, torch, progress: bool = True) -> list[dict]:
    """Validate then time every (conv type, channels) on every engine; one row per scratchnets
    backend, conv type and channel count, with the torch time on the same device."""
    from tqdm import tqdm

    ours = [scratchnets_engine(b) for b in dict.fromkeys(args.backend)]
    twin_of = {b: torch_device(torch, b) for b in args.backend}  # backend -> torch device
    devices = sorted(set(twin_of.values()))
    theirs = {d: torch_engine(torch, d) for d in devices}
    timed = ours + ([theirs[d] for d in devices] if args.compare_torch else [])
    engines = {e.name: e for e in (*ours, *theirs.values())}
    cases = [(CONV_TYPES[n], c) for n in args.convs for c in args.channels]
    bar = tqdm(
        total=len(cases) * len(timed), desc="bench convs", disable=not progress, file=sys.stderr
    )
    rows = []
    for conv, channels in cases:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, channels, args.size, args.size), dtype=np.float32)
        stack = make_stack(conv, channels, args.layers, rng)
        passes = {name: e.prepare(x, stack) for name, e in engines.items()}
        expected = {d: passes[e.name]() for d, e in theirs.items()}  # also torch's warm-up
        seconds = {}
        for engine in timed:
            bar.set_postfix_str(f"{conv.name} C={channels} {engine.name}")
            if engine.name in args.backend:  # validate (and compile) before timing
                error = max_rel_error(passes[engine.name](), expected[twin_of[engine.name]])
                if not error <= VALIDATION_TOLERANCE:
                    raise AssertionError(
                        f"{engine.name} {conv.name} C={channels}: output differs from torch by "
                        f"{error:.2e} (relative) on x {x.shape}"
                    )
                seconds[f"{engine.name} err"] = error
            seconds[engine.name] = measure(
                passes[engine.name], engine.sync, args.passes, args.repeat
            )
            bar.update()
        macs = args.layers * args.batch * args.size**2 * conv.macs_per_pixel(channels)
        traffic = args.layers * conv.bytes_per_layer(args.batch, channels, args.size)
        for engine in ours:
            row = {
                "backend": engine.name,
                "conv": conv.name,
                "channels": channels,
                "gmacs_per_pass": macs / 1e9,
                "flop_per_byte": 2 * macs / traffic,
                "ours_s": seconds[engine.name],
                "torch_device": twin_of[engine.name],
                "torch_s": seconds.get(f"torch-{twin_of[engine.name]}"),
                "max_rel_err": seconds[f"{engine.name} err"],
            }
            row["ours_gflops"] = 200 * macs / row["ours_s"] / 1e9  # 100 passes, 2 FLOPs per MAC
            if row["torch_s"] is not None:
                row["ratio"] = row["ours_s"] / row["torch_s"]
                row["torch_gflops"] = 200 * macs / row["torch_s"] / 1e9
            rows.append(row)
    bar.close()
    return rows


def savings(rows: list[dict]) -> list[dict]:
    """Theoretical and measured speed-up of each factorisation, per backend and channel count:
    time(slow side) / time(fast side), the fast side being a sum of layer types (2x conv3x3)."""
    table = {(r["backend"], r["conv"], r["channels"]): r for r in rows}
    out = []
    for backend, channels in dict.fromkeys((r["backend"], r["channels"]) for r in rows):
        for name, slow, fast, theory in SAVINGS:
            keys = [(backend, slow, channels), *((backend, f, channels) for f, _ in fast)]
            if not all(k in table for k in keys):
                continue
            row = {
                "backend": backend,
                "channels": channels,
                "saving": name,
                "theory": theory(channels),
            }
            for side in ("ours_s", "torch_s"):
                times = [table[keys[0]][side]] + [table[k][side] for k in keys[1:]]
                if None not in times:
                    counts = [n for _, n in fast]
                    fast_time = sum(n * t for n, t in zip(counts, times[1:], strict=True))
                    row[side.replace("_s", "_measured")] = times[0] / fast_time
            out.append(row)
    return out


COLUMNS = (
    ("backend", "backend", ""),
    ("conv", "conv", ""),
    ("channels", "C", "d"),
    ("gmacs_per_pass", "GMAC/pass", ".3f"),
    ("flop_per_byte", "FLOP/B", ".1f"),
    ("ours_s", "ours s/100", ".3f"),
    ("torch_s", "torch s/100", ".3f"),
    ("ratio", "ours/torch", ".2f"),
    ("ours_gflops", "ours GFLOP/s", ".1f"),
    ("torch_gflops", "torch GFLOP/s", ".1f"),
)

SAVINGS_COLUMNS = (
    ("backend", "backend", ""),
    ("channels", "C", "d"),
    ("saving", "comparison", ""),
    ("theory", "theory x", ".2f"),
    ("ours_measured", "ours x", ".2f"),
    ("torch_measured", "torch x", ".2f"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["cpu"],
        choices=("reference", "cpu", "cuda"),
        help="scratchnets backend(s) to time (default cpu)",
    )
    parser.add_argument(
        "--compare-torch",
        action="store_true",
        help="also time torch (CPU, and CUDA when available) in the same run",
    )
    parser.add_argument("--plot", default=None, metavar="FILE", help="draw the study to this PNG")
    add_json_option(parser)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument(
        "--convs",
        nargs="+",
        default=list(CONV_TYPES),
        choices=list(CONV_TYPES),
        help="conv types (default all)",
    )
    parser.add_argument("--passes", type=int, default=100, help="forward passes timed per run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="input height = width")
    parser.add_argument("--layers", type=int, default=16)


def run(args: argparse.Namespace) -> int:
    for name in ("passes", "repeat", "batch", "size", "layers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch = setup_torch()
    rows = run_study(args, torch)
    devices = sorted({torch_device(torch, b) for b in args.backend})
    result = {
        "machine": machine_info("cuda" if "cuda" in args.backend else "cpu"),
        "peaks": {d: machine_peaks(d) for d in devices},
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "rows": rows,
        "savings": savings(rows),
    }
    # with --json and no FILE, stdout carries only the JSON document
    with contextlib.redirect_stdout(sys.stderr if json_to_stdout(args) else sys.stdout):
        print_header(result["machine"] | {f"peak {d}": p for d, p in result["peaks"].items()})
        print(
            f"# batch {args.batch}, {args.size}x{args.size}, {args.layers} layers; seconds per "
            f"100 passes (timed {args.passes} passes, median of {args.repeat} runs)"
        )
        print(format_table(rows, COLUMNS))
        print("\nspeed-up of the factorised side (time of slow side / fast side; > 1 = saving)")
        print(format_table(result["savings"], SAVINGS_COLUMNS))
        if args.plot:
            from .plotting import plot_conv_study

            title = f"{args.layers} convs, batch {args.batch}, {args.size}x{args.size}"
            plot_conv_study(rows, args.plot, title)
            print(f"plot written to {args.plot}")
    write_json(result, args)
    return 0
