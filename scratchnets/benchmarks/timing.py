"""Shared benchmark plumbing: a median timer, torch's thread setup, a plain-text table.

Timing is wall-clock (``time.perf_counter``): what a user waits for, including the threads'
start-up and the BLAS calls. The median of ``repeat`` runs after a warm-up run (which also
triggers numba compilation) resists the noise of a shared machine better than the mean.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence

import numpy as np


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_times(
    fns: dict[str, Callable[[], object]], repeat: int = 5, warmup: int = 1, settle: float = 0.02
) -> dict[str, float]:
    """``median_time`` of each of ``fns`` (by name), the calls interleaved: ``warmup`` calls of
    each, then ``repeat`` rounds that time every function once. On a shared machine a slow
    spell then slows every side of a round alike instead of all the runs of one side, so the
    ratios of one run hold (a side timed in a block of its own read up to 2x off). Between two
    calls the process sleeps ``settle`` seconds, untimed: the side just run may leave worker
    threads spinning (OpenMP, ONNX Runtime's pool) that would steal a core from the next."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            time.sleep(settle)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def setup_torch(threads: int | None = None):
    """Import torch with one intra-op thread per core (``torch.set_num_threads(os.cpu_count())``)
    and, for its GPU side, TF32 off and cuDNN on: float32 is compared with float32."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    # set_flags, not attribute assignment: the latter raises once torch's own test utilities
    # (torch.testing._internal, imported by the module_db tests) have frozen the global flags
    torch.backends.cudnn.set_flags(_enabled=True, _allow_tf32=False)
    return torch


def import_torchvision():
    """Import torchvision on a CPU-only torch build (skips its meta-kernel registrations)."""
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import torchvision

    return torchvision


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), or platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: environment variables that make OpenBLAS pick another kernel or cache size than it would
FORCED_OPENBLAS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def numpy_blas() -> str:
    """NumPy's BLAS as threadpoolctl sees it: library, version, kernel and threads, e.g.
    "openblas 0.3.31 (SkylakeX kernel, 1 thread)"."""
    from threadpoolctl import threadpool_info

    pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
    return (
        "; ".join(
            f"{p['internal_api']} {p.get('version') or ''} ("
            + (f"{p['architecture']} kernel, " if p.get("architecture") else "")
            + f"{p['num_threads']} thread{'s' * (p['num_threads'] != 1)})"
            for p in pools
        )
        or "none found"
    )


def torch_blas(torch) -> str:
    """The BLAS torch was built with (its ``BLAS_INFO``) and torch's intra-op threads."""
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.split(", ") if "BLAS_INFO=" in part), "?")
    return f"{blas} ({torch.get_num_threads()} threads)"


def _native_openblas_kernel() -> str | None:
    """The kernel OpenBLAS picks on this CPU when nothing forces one (a fresh interpreter)."""
    env = {k: v for k, v in os.environ.items() if k not in FORCED_OPENBLAS}
    probe = (
        "import numpy, threadpoolctl; print(next((p.get('architecture') or '' for p in "
        "threadpoolctl.threadpool_info() if p['internal_api'] == 'openblas'), ''))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def forced_blas_warning() -> str | None:
    """A warning when OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE make NumPy's OpenBLAS run another
    kernel than this CPU would (slower numbers than a user sees), with the command to unset."""
    forced = {k: os.environ[k] for k in FORCED_OPENBLAS if k in os.environ}
    if not forced:
        return None
    from threadpoolctl import threadpool_info

    running = next(
        (p.get("architecture") for p in threadpool_info() if p["internal_api"] == "openblas"), None
    )
    native = _native_openblas_kernel()
    if running == native and "OPENBLAS_L2_SIZE" not in forced:
        return None  # e.g. OPENBLAS_CORETYPE naming the kernel this CPU picks anyway
    settings = " ".join(f"{k}={v}" for k, v in forced.items())
    return (
        f"{settings} forces NumPy's OpenBLAS to the {running} kernel; this CPU would run "
        f"{native}. These timings are not a user's: rerun with "
        f"`env {' '.join(f'-u {k}' for k in forced)} scratchnets bench ...`"
    )


def machine_info(backend: str = "cpu") -> dict:
    """CPU, cores, numba/BLAS thread setup, the BLAS libraries and kernel NumPy and torch run,
    and torch's threads: the header of every benchmark (with a warning when the environment
    forces an OpenBLAS kernel); for the "cuda" backend also the GPU and torch's CUDA / cuDNN
    versions and TF32 setting."""
    from scratchnets.kernels.cpu._threads import describe

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), **describe()}
    del info["blas"]  # numpy_blas says more
    info["numpy_blas"] = numpy_blas()
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_blas"] = torch_blas(torch)
        info["torch_threads"] = torch.get_num_threads()
    warning = forced_blas_warning()
    if warning:
        info["blas_warning"] = warning
    if backend == "cuda" and torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32"] = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def print_header(info: dict) -> None:
    for key, value in info.items():
        print(f"# WARNING: {value}" if key == "blas_warning" else f"# {key}: {value}")


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows of dicts as an aligned text table; ``columns`` = (key, header, format spec).

    A missing or None value prints as "-".
    """
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(
            ["-" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def max_rel_error(ours, theirs) -> float:
    """``max |ours - theirs| / max |theirs|`` in float64; device arrays and tensors are copied."""
    from scratchnets.arrays import to_numpy

    def host(a) -> np.ndarray:
        return np.asarray(to_numpy(a.detach().cpu() if hasattr(a, "detach") else a), np.float64)

    ours, theirs = host(ours), host(theirs)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, theirs {theirs.shape}")
    return float(np.max(np.abs(ours - theirs)) / max(1e-30, float(np.max(np.abs(theirs)))))


def machine_peaks(device: str = "cpu", n: int = 2048, copy_mib: int = 256, repeat: int = 5) -> dict:
    """The roofline of ``device``, measured: float32 GFLOP/s of an (n, n) @ (n, n) matmul
    (2 n^3 FLOPs; NumPy's BLAS on every usable core on "cpu", torch on "cuda") and GB/s of
    copying a ``copy_mib``
    MiB array (read + write = 2 * copy_mib MiB). Their ratio, FLOPs per byte, is the arithmetic
    intensity below which a kernel is memory-bound on this machine (the roofline's ridge point)."""
    floats = copy_mib * 2**18  # float32 elements
    if device == "cuda":
        torch = setup_torch()
        sync = torch.cuda.synchronize
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.float32) for _ in range(2))
        src, dst = (torch.empty(floats, device="cuda", dtype=torch.float32) for _ in range(2))

        def matmul():
            a @ b
            sync()

        def copy():
            dst.copy_(src)
            sync()
    else:
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        src, dst = np.ones(floats, np.float32), np.empty(floats, np.float32)
        matmul = lambda: a @ b  # noqa: E731
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    if device == "cuda":
        gflops = 2.0 * n**3 / median_time(matmul, repeat) / 1e9
    else:  # BLAS is single-threaded under our kernels (kernels/cpu/_threads.py): all cores here
        from threadpoolctl import threadpool_limits

        from scratchnets.kernels.cpu._threads import usable_cores

        with threadpool_limits(usable_cores(), user_api="blas"):
            gflops = 2.0 * n**3 / median_time(matmul, repeat) / 1e9
        time.sleep(0.2)  # BLAS's idle workers poll for ~0.1 s before they sleep
    gbs = 2.0 * 4 * floats / median_time(copy, repeat) / 1e9
    return {"matmul_gflops": gflops, "copy_gbs": gbs, "ridge_flop_per_byte": gflops / gbs}


def add_json_option(parser) -> None:
    """``--json [FILE]``: the results as JSON to FILE, or (no FILE) to stdout, the tables then
    going to stderr (``json_to_stdout`` / ``write_json``)."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON to FILE, or to stdout (tables then go to stderr)",
    )


def json_to_stdout(args) -> bool:
    """Whether ``--json`` without a FILE was given (stdout holds the JSON alone)."""
    return args.json == "-"


def write_json(result: dict, args) -> None:
    """``result`` as ``--json`` asked: to stdout, to its FILE, or nowhere."""
    import json

    if json_to_stdout(args):
        print(json.dumps(result, indent=2, default=str))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
