"""``scratchnets`` command line: one subcommand per feature, each registered by its own module.

A feature module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed args; its return value is the exit status). Modules are imported only when the
command line is built, so a missing optional dependency only breaks its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: (module, what it adds) in the order ``--help`` lists them
COMMAND_MODULES = (
    "scratchnets.profile.cli",  # summary, verify
    "scratchnets.train.cli",  # train, evaluate, predict
    "scratchnets.data.cli",  # data download
    "scratchnets.benchmarks.cli",  # bench ops | train-step | convs | models
    "scratchnets.gradcheck_cli",  # gradcheck
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchnets",
        description="From-scratch CNN layers for mobile architectures, checked against PyTorch "
        "and the papers. With no command, runs `verify`.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("scratchnets"):
                continue  # feature not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv or ["verify"])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
