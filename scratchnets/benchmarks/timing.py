"""Shared benchmark plumbing: a median timer, torch's thread setup, a plain-text table.

Timing is wall-clock (``time.perf_counter``): what a user waits for, including the threads'
start-up and the BLAS calls. The median of ``repeat`` runs after a warm-up run (which also
triggers numba compilation) resists the noise of a shared machine better than the mean.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence


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


def setup_torch(threads: int | None = None):
    """Import torch with one intra-op thread per core (``torch.set_num_threads(os.cpu_count())``)."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
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


def machine_info() -> dict:
    """CPU, cores, numba/BLAS thread setup and torch's threads: the header of every benchmark."""
    from scratchnets.kernels.cpu._threads import describe

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), **describe()}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def print_header(info: dict) -> None:
    for key, value in info.items():
        print(f"# {key}: {value}")


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
