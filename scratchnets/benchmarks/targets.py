"""``scratchnets bench targets``: the CPU speed targets of the project, measured in one run.

One row per target, each a ratio measured in this run on this machine (never compared across
runs: a shared machine's timings move by 10-30 % between runs), with the goal and whether it is
met:

* **eval forward** at ``--resolution`` (224) and each ``--batch`` (1, 8), every ``--models``
  model: ours / torch <= 0.8 (``bench models``' inference columns: the eval fast path against
  the torch twin under ``no_grad``, logits checked first); MobileNetV2 at batch 1 also ours /
  ONNX Runtime <= 2 (``--no-onnx`` skips it);
* **pointwise GEMMs** of each model at batch 1: the 1x1 convs' (C_out, C_in) @ (C_in, HW)
  products alone, with their epilogue-free ``kernels.cpu.gemm.matmul``, as a share of the
  machine's measured matmul peak (a 2048^3 float32 matmul on every core) >= 60 %; NumPy's
  single BLAS call and torch's ``matmul`` on the same shapes in the detail;
* **training step** (``bench models``' train-mode forward, loss, backward and SGD update) at
  ``--train-resolution`` (128): MobileNetV2 batch 32 <= 0.7 and batch 8 <= 0.9 of torch, every
  other model at batch 8 <= 1.0 (no model slower than torch);
* **uint8 MobileNetV2 1.0/224** at batch 1 (``bench quantized``: bytes checked against TFLite's
  reference kernels first): faster than our float path of the same network, and within 3x of
  TensorFlow Lite's XNNPACK (skipped, with a line saying so, without the file or ai-edge-litert).

Run: ``scratchnets bench targets --json bench/targets_cpu.json``; ``--from FILE`` prints a saved
run's table again (the README's table is that rendering of ``bench/targets_cpu.json``, checked by
a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .timing import (
    add_json_option,
    json_to_stdout,
    machine_info,
    machine_peaks,
    median_time,
    print_header,
    setup_torch,
    write_json,
)

HELP = "every CPU speed target in one run: eval, GEMMs, training step, uint8 (met or not)"

#: the eval forward's models: the mobile architectures of the mission
MODELS = (
    "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "ghostnet_100", "ghostnetv2_100", "ghostnetv3_100",
)  # fmt: skip
#: the uint8 file of the integer target
QUANT_FILE = "mobilenet_v2_1.0_224_quant.tflite"
EVAL_GOAL, ORT_GOAL, GEMM_GOAL, XNNPACK_GOAL = 0.8, 2.0, 0.6, 3.0
#: training-step goals, ours / torch: MobileNetV2 by batch, every other model at batch 8
TRAIN_GOALS = {("mobilenet_v2", 32): 0.7, ("mobilenet_v2", 8): 0.9}
TRAIN_OTHERS_GOAL = 1.0


def _row(target: str, measured: float, goal: float, detail: str, higher_is_better=False) -> dict:
    met = measured >= goal if higher_is_better else measured <= goal
    return {"target": target, "measured": measured, "goal": f"{'>=' if higher_is_better else '<='} "
            f"{goal:g}", "met": bool(met), "detail": detail}  # fmt: skip


def _models_args(args, models, resolution, batch, inference_only, onnx) -> SimpleNamespace:
    return SimpleNamespace(
        backend="cpu", models=list(models), resolution=resolution, batch=batch, num_classes=1000,
        repeat=args.repeat, compare_torch=True, compare_onnx=onnx, inference_only=inference_only,
    )  # fmt: skip


def eval_rows(args, torch, bar) -> list[dict]:
    from .models import bench_model

    rows = []
    for batch in args.batch:
        for name in args.models:
            onnx = not args.no_onnx and name == "mobilenet_v2" and batch == 1
            ns = _models_args(args, [name], args.resolution, batch, True, onnx)
            r = bench_model(name, ns, torch, bar)
            where = f"{args.resolution} px b{batch}"
            rows.append(_row(f"eval {name} {where}: ours / torch", r["infer_ratio"], EVAL_GOAL,
                             f"{r['ours_infer_ms']:.1f} / {r['torch_infer_ms']:.1f} ms"))  # fmt: skip
            if onnx:
                rows.append(_row(f"eval {name} {where}: ours / ONNX Runtime", r["infer_onnx_ratio"],
                                 ORT_GOAL, f"{r['ours_infer_ms']:.1f} / {r['onnx_infer_ms']:.1f} ms"))  # fmt: skip
    return rows


def pointwise_shapes(name: str, resolution: int) -> list[tuple[int, int, int]]:
    """(C_out, C_in, HW) of every pointwise conv of model ``name`` at batch 1 (with repeats)."""
    from scratchnets import models, profile

    summary = profile.summary(models.create(name, init=False), (1, 3, resolution, resolution))
    return [(r.output_shape[1], r.input_shape[1], r.output_shape[2] * r.output_shape[3])
            for r in summary.rows if r.kind.startswith("pointwise")]  # fmt: skip


def gemm_rows(args, torch, peak_gflops: float, bar) -> list[dict]:
    from scratchnets.kernels.cpu import gemm

    rows = []
    rng = np.random.default_rng(0)
    for name in args.models:
        bar.set_postfix_str(f"{name} pointwise GEMMs")
        flops, seconds = 0.0, {"ours": 0.0, "numpy": 0.0, "torch": 0.0}
        for c_out, c_in, hw in pointwise_shapes(name, args.resolution):
            w = rng.standard_normal((c_out, c_in), dtype=np.float32)
            x = rng.standard_normal((1, c_in, hw), dtype=np.float32)
            out = np.empty((1, c_out, hw), np.float32)
            gemm.matmul(w, x, out)
            error = np.abs(out[0] - w.astype(np.float64) @ x[0]).max()
            if not error <= 1e-3 * max(1.0, float(np.abs(out).max())):
                raise AssertionError(f"{name}: pointwise GEMM {(c_out, c_in, hw)} off by {error}")
            tw, tx = torch.from_numpy(w), torch.from_numpy(x[0])
            flops += 2.0 * c_out * c_in * hw
            repeat = max(args.repeat, 5)
            seconds["ours"] += median_time(lambda: gemm.matmul(w, x, out), repeat)  # noqa: B023
            seconds["numpy"] += median_time(lambda: np.matmul(w, x, out=out), repeat)  # noqa: B023
            seconds["torch"] += median_time(lambda: torch.matmul(tw, tx), repeat)  # noqa: B023
        share = {who: flops / s / 1e9 / peak_gflops for who, s in seconds.items()}
        detail = (f"ours {flops / seconds['ours'] / 1e9:.0f} GFLOP/s in {1e3 * seconds['ours']:.2f}"
                  f" ms; one NumPy BLAS call {share['numpy']:.0%}, torch {share['torch']:.0%}")  # fmt: skip
        rows.append(_row(f"pointwise GEMMs {name} {args.resolution} px b1: share of peak",
                         share["ours"], GEMM_GOAL, detail, higher_is_better=True))  # fmt: skip
        bar.update()
    return rows


def train_rows(args, torch, bar) -> list[dict]:
    from .models import bench_model

    rows = []
    runs = [("mobilenet_v2", b) for b in args.train_batch]
    runs += [(name, 8) for name in args.models if name != "mobilenet_v2"]
    for name, batch in runs:
        ns = _models_args(args, [name], args.train_resolution, batch, False, False)
        r = bench_model(name, ns, torch, bar)
        goal = TRAIN_GOALS.get((name, batch), TRAIN_OTHERS_GOAL)
        rows.append(_row(f"train step {name} {args.train_resolution} px b{batch}: ours / torch",
                         r["train_ratio"], goal,
                         f"{r['ours_train_ms']:.0f} / {r['torch_train_ms']:.0f} ms"))  # fmt: skip
    return rows


def quantized_rows(args, bar) -> tuple[list[dict], str | None]:
    """The uint8 rows, or none and why (no file, no ai-edge-litert)."""
    from .quantized import DEFAULT_DIR, bench_file

    path = DEFAULT_DIR / QUANT_FILE
    if not path.is_file():
        return [], f"uint8 target skipped: {path} not found"
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ModuleNotFoundError:
        return [], "uint8 target skipped: ai-edge-litert is not installed"
    r = bench_file(path, 1, args.repeat, bar)
    detail = f"{r['ours_cpu_ms']:.1f} ms; float {r['ours_float_ms']:.1f} ms, XNNPACK " \
             f"{r['tflite_default_ms']:.2f} ms"  # fmt: skip
    return [
        _row("uint8 mobilenet_v2 224 px b1: int8 / our float", r["cpu_vs_float"], 1.0, detail),
        _row(
            "uint8 mobilenet_v2 224 px b1: int8 / XNNPACK",
            r["cpu_vs_tflite_default"],
            XNNPACK_GOAL,
            detail,
        ),
    ], None


def markdown(result: dict) -> str:
    """The README's table of a run: target, measured, goal, met, detail."""
    lines = ["| target | measured | goal | met | detail |", "|---|---:|---|:---:|---|"]
    for r in result["rows"]:
        value = f"{r['measured']:.1%}" if "share of peak" in r["target"] else f"{r['measured']:.3f}"
        lines.append(f"| {r['target']} | {value} | {r['goal']} | {'yes' if r['met'] else '**no**'}"
                     f" | {r['detail']} |")  # fmt: skip
    met = sum(r["met"] for r in result["rows"])
    machine = result["machine"]
    lines.append("")
    lines.append(f"{met} of {len(result['rows'])} targets met; {machine.get('cpu', '?')}, "
                 f"{machine.get('usable_cores', '?')} cores, matmul peak "
                 f"{result['peak']['matmul_gflops']:.0f} GFLOP/s, {result['date']}.")  # fmt: skip
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--resolution", type=int, default=224, help="eval and GEMM input side")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="eval batches")
    parser.add_argument("--train-resolution", type=int, default=128)
    parser.add_argument("--train-batch", type=int, nargs="+", default=[32, 8],
                        help="MobileNetV2's training-step batches (the others run at 8)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime target")
    parser.add_argument("--no-quantized", action="store_true", help="skip the uint8 targets")
    parser.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                        help="print the table of a saved --json run instead of measuring")  # fmt: skip
    add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    import datetime

    from tqdm import tqdm

    if args.from_file is not None:
        if not args.from_file.is_file():
            raise FileNotFoundError(f"--from: no such file {args.from_file}")
        print(markdown(json.loads(args.from_file.read_text())))
        return 0
    from .models import MODELS as BENCHMARKED
    from .models import check_onnx_available
    from .quantized import SIDES

    unknown = sorted(set(args.models) - set(BENCHMARKED))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {', '.join(BENCHMARKED)}")
    if min(args.batch + args.train_batch) < 1 or args.repeat < 1:
        raise ValueError("--batch, --train-batch and --repeat must be >= 1")
    if not args.no_onnx:
        check_onnx_available()
    torch = setup_torch()
    peak = machine_peaks("cpu")
    notes = []
    others = [name for name in args.models if name != "mobilenet_v2"]
    quantized_steps = 0 if args.no_quantized else len(SIDES)  # bench_file's updates
    total = len(args.models) * (len(args.batch) + 1) + len(args.train_batch) + len(others)
    total += quantized_steps
    with tqdm(total=total, desc="bench targets", file=sys.stderr) as bar:
        rows = eval_rows(args, torch, bar)
        rows += gemm_rows(args, torch, peak["matmul_gflops"], bar)
        rows += train_rows(args, torch, bar)
        if not args.no_quantized:
            uint8, skipped = quantized_rows(args, bar)
            rows += uint8
            notes += [skipped] if skipped else []
    result = {
        "machine": machine_info("cpu"),
        "peak": peak,
        "date": datetime.date.today().isoformat(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k != "func"},
        "rows": rows,
    }  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr if json_to_stdout(args) else sys.stdout):
        print_header(result["machine"] | {"peak cpu": peak})
        print(markdown(result))
        for note in notes:
            print(note)
    write_json(result, args)
    return 0
