"""``scratchnets gradcheck``: every op's backward against central differences, as a table."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gradcheck",
        help="check every op's hand-written backward against finite differences (float64)",
        description="Compare each op's backward with central differences of its own forward, "
        "in float64, on small random inputs. Exits 1 if any gradient is off.",
    )
    p.add_argument(
        "--backend", default="reference", help="reference | cpu | cuda (default: reference)"
    )
    p.add_argument("--only", metavar="TEXT", help="only the cases whose name contains TEXT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from .gradcheck import TOLERANCE, check_all

    results = check_all(args.backend, args.seed, args.only)
    failed = [r for r in results if not r.ok]
    if args.json:
        rows = [{"case": r.case, "input": r.input, "error": r.error, "ok": r.ok} for r in results]
        print(json.dumps({"backend": args.backend, "tolerance": TOLERANCE, "rows": rows}))
    else:
        width = max(len(r.case) for r in results) if results else 10
        print(f"finite-difference check of {args.backend!r} backward passes (float64, h=1e-6)")
        print(f"{'case':{width}s}  {'grad':8s}  {'rel. error':>10s}  verdict")
        for r in results:
            print(f"{r.case:{width}s}  d{r.input:7s}  {r.error:10.2e}  {'ok' if r.ok else 'FAIL'}")
        print(f"{len(results) - len(failed)}/{len(results)} gradients within {TOLERANCE:g}")
    return 1 if failed else 0
