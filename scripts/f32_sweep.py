"""Sweep the float32 model parity check (``tests/model_twins.check_parity``) over many random
draws: per model, backend and OpenBLAS setting, how many draws pass.

Draw s builds the model with seed s, x from default_rng(4 + 10 s) and dy from
default_rng(5 + 10 s) (s = 0 is the case the test suite runs). Each BLAS setting runs in a
process of its own, since OpenBLAS reads OPENBLAS_CORETYPE when numpy is imported.

    python scripts/f32_sweep.py                      # 50 draws, every model, backend, setting
    python scripts/f32_sweep.py --draws 3 --models mobilenet_v2 --blas env

One JSON line per check goes to --log (the worst error / rounding-model ratio and the kink
flips replayed); the table of passed / run comes at the end. About a second per check.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from scratchnets.models.registry import models_where

ROOT = Path(__file__).resolve().parent.parent
#: the mobile architectures of the registry, in the order of their papers
MODELS = tuple(models_where(lambda cfg: cfg.mobile))
BACKENDS = ("reference", "cpu")
#: "env": the environment as it is, with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed;
#: "haswell": the older kernel some machines force
BLAS = {"env": {}, "haswell": {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}}


def model_and_twin(name: str, backend: str, seed: int):
    """The float32 model of draw ``seed``, its float64 twin and the input shape ``(N, 3, S, S)``,
    as the test suite builds them (tests/test_models_mobilenet.py, test_models_mobilenet_v3.py,
    test_models_ghostnet.py)."""
    import importlib

    import numpy as np

    if name.startswith("mobilenet"):
        from tests.model_twins import torch_twin

        suite = (
            "test_models_mobilenet_v3"
            if name.startswith("mobilenet_v3")
            else "test_models_mobilenet"
        )
        tests = importlib.import_module(f"tests.{suite}")
        _, width, size, classes = next(c for c in tests.PARITY_CASES if c[0] == name)
        model = tests.make_model(name, width, classes, np.float32, backend, seed=seed)
        return model, torch_twin(name, classes, width), (2, 3, size, size)
    from tests.test_models_ghostnet import F32_BATCH, SIZES, WIDTH, ghostnet_twin, make_model

    model = make_model(name, np.float32, backend, seed=seed)
    return model, ghostnet_twin(name, WIDTH), (F32_BATCH, 3, SIZES[-1], SIZES[-1])


def run_checks(args, blas: str) -> None:
    """This process's share: every draw of every model and backend, one JSON line each."""
    import numpy as np

    from tests.model_twins import check_parity

    for name in args.models:
        for backend in args.backends:
            for seed in range(args.draws):
                key = f"{blas} {backend}/{name} draw {seed}"
                try:
                    model, twin, shape = model_and_twin(name, backend, seed)
                    x = np.random.default_rng(4 + 10 * seed).standard_normal(shape)
                    check_parity(model, twin, x, np.random.default_rng(5 + 10 * seed), key)
                    failure = None
                except AssertionError as error:
                    failure = str(error).splitlines()[-1][:200]
                except Exception:  # a crash is a finding too; keep sweeping
                    failure = traceback.format_exc().splitlines()[-1][:200]
                result = dict(model=name, backend=backend, blas=blas, seed=seed, failure=failure)
                with open(args.log, "a") as log:
                    print(json.dumps({"result": result}), file=log)
                print(f"{key}: {'ok' if failure is None else 'FAILED ' + failure}", flush=True)


def tally(log: Path) -> str:
    """passed / run and the largest error / rounding-model ratio (of F32_SAFETY allowed) per
    (model, backend, BLAS setting), from the lines of ``log``."""
    counts = collections.defaultdict(lambda: [0, 0, 0.0])
    ratios = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if "ratio" in entry:
            ratios[entry["key"]] = entry["ratio"]
        if "result" in entry:
            r = entry["result"]
            cell = counts[r["model"], r["backend"], r["blas"]]
            cell[0] += r["failure"] is None
            cell[1] += 1
            key = f"{r['blas']} {r['backend']}/{r['model']} draw {r['seed']}"
            cell[2] = max(cell[2], ratios.get(key, 0.0))
    width = max([16] + [len(m) + 1 for m, _, _ in counts])
    rows = [f"{'model':<{width}} {'backend':<10} {'blas':<8} {'passed / run':>12}  worst ratio"]
    rows += [
        f"{m:<{width}} {b:<10} {s:<8} {f'{p} / {n}':>12}  {w:.1f}"
        for (m, b, s), (p, n, w) in sorted(counts.items())
    ]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--blas", nargs="+", choices=list(BLAS), default=list(BLAS))
    parser.add_argument("--log", default="f32_sweep.jsonl", help="JSON lines (appended)")
    parser.add_argument("--worker", choices=list(BLAS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    if args.worker:
        run_checks(args, args.worker)
        return 0
    args.log = str(Path(args.log).resolve())
    Path(args.log).unlink(missing_ok=True)
    for blas in args.blas:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
        env |= BLAS[blas] | {"PYTHONPATH": str(ROOT), "SCRATCHNETS_F32_LOG": args.log}
        command = [sys.executable, __file__, *(argv or sys.argv[1:])]
        command += ["--log", args.log, "--worker", blas]
        subprocess.run(command, env=env, cwd=ROOT, check=True)
    print(tally(Path(args.log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
