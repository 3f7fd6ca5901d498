"""``scratchnets bench <benchmark>``: the registry of benchmark sub-subcommands.

A benchmark is a module with ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``
(returns the exit status). Adding one is one line in ``BENCHMARKS``; a module that is not
present in this build is skipped, like the top-level commands.
"""

from __future__ import annotations

import argparse
import importlib

#: (sub-subcommand, module) in the order ``scratchnets bench --help`` lists them
BENCHMARKS = (
    ("ops", "scratchnets.benchmarks.ops"),
    ("train-step", "scratchnets.benchmarks.train_step"),
    ("convs", "scratchnets.benchmarks.convs"),
    ("models", "scratchnets.benchmarks.models"),
    ("quantized", "scratchnets.benchmarks.quantized"),
    ("targets", "scratchnets.benchmarks.targets"),
)


def register(subparsers) -> None:
    """Add ``bench`` and one sub-subcommand per available benchmark module."""
    bench = subparsers.add_parser(
        "bench", help="time scratchnets next to PyTorch (validated first)"
    )
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, module_name in BENCHMARKS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # benchmark not present in this build
            raise
        parser = benchmarks.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
    bench.set_defaults(func=lambda args: bench.print_help() or 0)
