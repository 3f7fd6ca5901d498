"""``scratchnets summary`` and ``scratchnets verify``.

    scratchnets summary mobilenet_v2 [--width-mult 0.5] [--resolution 160] [--num-classes 2]
                        [--json | --markdown]
    scratchnets verify [--json | --markdown] [--only SUBSTRING]

``summary`` prints the per-layer table of one model (output shapes, parameters, multiply-adds);
``verify`` recomputes every published parameter / multiply-add count (``papers.ROWS``), then shows
the seeds' table (``papers.SEEDS_TABLE``: the seed's eight configurations side by side), and exits
with status 1 if any is a MISMATCH. Both trace the models on the meta backend: no arithmetic.
"""

from __future__ import annotations

import argparse

import numpy as np

from .. import models
from .summary import summary
from .verify import Counter, render_json, render_markdown, render_text, verify_all, verify_seeds


def _add_format(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="one JSON object")
    group.add_argument("--markdown", action="store_true", help="a GitHub markdown table")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "summary",
        help="per-layer output shapes, parameters and multiply-adds of a model",
        description="Trace MODEL on the meta backend (shapes only) and print one row per layer "
        "with its output shape, parameters and multiply-adds (conv + FC, per image), then the "
        "totals and the counting conventions.",
    )
    p.add_argument("model", help=f"one of: {', '.join(models.list_models())}")
    p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=None, help="input H = W (default 224; 299 "
                   "for xception)")  # fmt: skip
    p.add_argument("--num-classes", type=int, default=1000, help="classifier size (default 1000)")
    p.add_argument(
        "--reparameterize",
        action="store_true",
        help="count the inference form (GhostNetV3: re-param branches folded)",
    )
    _add_format(p)
    p.set_defaults(func=run_summary)

    v = subparsers.add_parser(
        "verify",
        help="recompute every published parameter / multiply-add count (the default command)",
        description="Recompute the parameter and multiply-add counts of the MobileNet, GhostNet, "
        "VGG16 and Xception papers and framework tables under each source's convention and "
        "print published / ours / difference / verdict, then the seeds' table (the eight "
        "configurations the seed compares, side by side). Exits 1 if any row is a MISMATCH.",
    )
    v.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="rows (and seeds'-table lines) whose key, source or text contain it",
    )
    v.add_argument("--wide", action="store_true",
                   help="one line per row with every column (about 240 characters wide)")  # fmt: skip
    _add_format(v)
    v.set_defaults(func=run_verify)


def run_summary(args) -> int:
    if args.resolution is not None and args.resolution < 1:
        raise ValueError(f"--resolution must be at least 1 pixel, got {args.resolution}")
    default = 299 if models.registry.resolve_name(args.model) == "xception" else 224
    resolution = default if args.resolution is None else args.resolution
    # counting never reads a weight
    model = models.create(args.model, args.num_classes, args.width_mult, init=False)
    if args.reparameterize:
        if not hasattr(model, "reparameterize"):
            raise SystemExit(f"{args.model} has no re-parameterised inference form")
        with np.errstate(all="ignore"):  # folding uninitialised weights: only shapes matter
            model.reparameterize()
    name = f"{args.model} (width {args.width_mult:g}, {resolution}x{resolution}, " + (
        f"{args.num_classes} classes)"
    )
    s = summary(model, (1, 3, resolution, resolution), name=name)
    print(s.to_json() if args.json else s.to_markdown() if args.markdown else s.to_text())
    return 0


def run_verify(args) -> int:
    counter = Counter()  # shared: the seeds' table cites rows the main table has counted
    results = verify_all(only=args.only, counter=counter)
    seeds = verify_seeds(only=args.only, counter=counter)
    if not results and not seeds:
        raise SystemExit(f"no published row or seeds'-table line matches --only {args.only!r}")
    if args.json or args.markdown:
        print((render_json if args.json else render_markdown)(results, seeds))
    else:
        print(render_text(results, seeds, wide=args.wide))
    return 0 if all(v.ok for v in [*results, *seeds]) else 1
