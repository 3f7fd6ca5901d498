"""``scratchnets`` command line: one subcommand per feature, each registered by its own module.

A feature module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed args; its return value is the exit status). Modules are imported only when the
command line is built, so a missing optional dependency only breaks its own command.

An error a command does not handle itself ends it with one line on stderr and exit status 1
(Ctrl-C: 130); ``--debug`` anywhere on the command line, or ``SCRATCHNETS_DEBUG=1``, shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: (module, what it adds) in the order ``--help`` lists them
COMMAND_MODULES = (
    "scratchnets.profile.cli",  # summary, verify
    "scratchnets.train.cli",  # train, evaluate, predict
    "scratchnets.data.cli",  # data download
    "scratchnets.benchmarks.cli",  # bench ops | train-step | convs | models | quantized | targets
    "scratchnets.gradcheck_cli",  # gradcheck
    "scratchnets.explain.cli",  # explain
    "scratchnets.export_cli",  # export keras
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchnets",
        description="From-scratch CNN layers for mobile architectures, checked against PyTorch "
        "and the papers. With no command, runs `verify`. --debug (anywhere) or "
        "SCRATCHNETS_DEBUG=1 shows tracebacks instead of one-line errors.",
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


def debugging() -> bool:
    """Whether errors should show their traceback (``--debug`` or ``SCRATCHNETS_DEBUG=1``)."""
    return os.environ.get("SCRATCHNETS_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["SCRATCHNETS_DEBUG"] = "1"  # commands that catch their own errors read it
    parser = build_parser()
    args = parser.parse_args(argv or ["verify"])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"scratchnets {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debugging():
            raise
        print(
            f"scratchnets {args.command}: error: {exc} ({type(exc).__name__}; --debug shows "
            "the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
