"""``scratchnets bench quantized``: Google's uint8 MobileNets, our integer model next to
TensorFlow Lite on the same machine, and next to our float path.

For each uint8 ``.tflite`` file (default: the four in ``../shared/weights``) and each ``--batch``,
the time per image (median of ``--repeat`` runs after a warm-up) of:

* **ours int8 cpu**: ``QuantizedModel`` on the Numba kernels (``kernels/cpu/quantized.py``);
* **ours int8 ref**: the same on the NumPy reference (``reference/quantized.py``);
* **TFLite ref**: ai-edge-litert with ``OpResolverType.BUILTIN_REF``, the reference kernels whose
  bytes we reproduce (one ``invoke`` per image: the graphs reshape their logits to a constant
  ``(1, 1001)``, so TFLite cannot run them batched);
* **TFLite default**: ai-edge-litert's default resolver (XNNPACK), ``num_threads`` = the usable
  cores: what a user of TensorFlow Lite runs;
* **ours float**: the dequantized float model (``QuantizedModel.dequantize``), eval mode, cpu
  backend, on the same images' reals.

Before timing, our output bytes are checked equal to TFLite's reference kernels on the benchmark's
random batch (a mismatch stops the run); XNNPACK's largest difference from them is printed (it
rounds differently, up to a few steps).

Run: ``scratchnets bench quantized --batch 1 8``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from .timing import (
    add_json_option,
    format_table,
    json_to_stdout,
    machine_info,
    median_time,
    print_header,
    write_json,
)

HELP = "uint8 MobileNets: our integer model vs TensorFlow Lite (reference and XNNPACK) and float"

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "weights"
DEFAULT_FILES = (
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v2_1.0_224_quant.tflite",
)
SIDES = ("ours_cpu", "ours_ref", "tflite_ref", "tflite_default", "ours_float")


def _interpreter(path: Path, reference: bool):
    """A function running TFLite on a batch of NHWC images, one ``invoke`` per image: Google's
    graphs reshape the logits to a constant ``(1, 1001)``, so TFLite cannot batch them."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    options = {"num_threads": len(os.sched_getaffinity(0))} if not reference else {}
    if reference:
        options["experimental_op_resolver_type"] = OpResolverType.BUILTIN_REF
    interpreter = Interpreter(model_path=str(path), **options)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]

    def run(nhwc):
        outputs = []
        for image in nhwc:
            interpreter.set_tensor(index, image[None])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(output))
        return np.concatenate(outputs)

    return run


def bench_file(path: Path, batch: int, repeat: int, bar) -> dict:
    """Validate, then time the five sides on one file at one batch size: one table row."""
    from scratchnets.models import load_pretrained

    model = load_pretrained(path).to("cpu")
    size = model.pretrained_cfg["size"]
    nchw = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    nhwc = np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    tflite_ref = _interpreter(path, reference=True)
    tflite_default = _interpreter(path, reference=False)
    bar.set_postfix_str(f"{path.stem} b{batch} validate")
    expected = tflite_ref(nhwc).copy()
    for backend in ("cpu", "reference"):
        ours = model.to(backend)(nchw)
        if not np.array_equal(ours, expected):
            steps = np.abs(ours.astype(int) - expected.astype(int)).max()
            raise AssertionError(f"{path.name}: {backend} output differs from TFLite's by {steps}")
    xnnpack_steps = int(np.abs(tflite_default(nhwc).astype(int) - expected.astype(int)).max())
    float_model = model.dequantize().to("cpu")
    scale, zero_point = model.input_q
    reals = (scale * (nchw.astype(np.float32) - zero_point)).astype(np.float32)
    runs = {
        "ours_cpu": lambda: model.to("cpu")(nchw),
        "ours_ref": lambda: model.to("reference")(nchw),
        "tflite_ref": lambda: tflite_ref(nhwc),
        "tflite_default": lambda: tflite_default(nhwc),
        "ours_float": lambda: float_model(reals),
    }
    row = {"model": path.stem, "batch": batch, "xnnpack_max_steps": xnnpack_steps}
    for side, run in runs.items():
        bar.set_postfix_str(f"{path.stem} b{batch} {side}")
        row[f"{side}_ms"] = 1e3 * median_time(run, repeat, warmup=1) / batch
        bar.update()
    row["cpu_vs_tflite_ref"] = row["ours_cpu_ms"] / row["tflite_ref_ms"]
    row["cpu_vs_tflite_default"] = row["ours_cpu_ms"] / row["tflite_default_ms"]
    row["cpu_vs_float"] = row["ours_cpu_ms"] / row["ours_float_ms"]
    return row


COLUMNS = (
    ("model", "model", ""),
    ("batch", "batch", "d"),
    ("ours_cpu_ms", "ours int8 cpu", ".2f"),
    ("ours_ref_ms", "ours int8 ref", ".2f"),
    ("tflite_ref_ms", "TFLite ref", ".2f"),
    ("tflite_default_ms", "TFLite default", ".2f"),
    ("ours_float_ms", "ours float", ".2f"),
    ("cpu_vs_tflite_ref", "cpu/TFLite ref", ".2f"),
    ("cpu_vs_tflite_default", "cpu/TFLite default", ".2f"),
    ("cpu_vs_float", "int8/float", ".2f"),
    ("xnnpack_max_steps", "XNNPACK steps", "d"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="*", type=Path, help="uint8 .tflite files (default: the four in "
        "../shared/weights)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if min(args.batch) < 1 or args.repeat < 1:
        raise ValueError(f"--batch and --repeat must be >= 1, got {args.batch}, {args.repeat}")
    files = args.files or [DEFAULT_DIR / name for name in DEFAULT_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such .tflite file: {', '.join(missing)}")
    total = len(files) * len(args.batch) * len(SIDES)
    with tqdm(total=total, desc="bench quantized", file=sys.stderr) as bar:
        rows = [bench_file(f, b, args.repeat, bar) for f in files for b in args.batch]
    result = {
        "machine": machine_info("cpu"),
        "args": {k: (v if k != "files" else [str(f) for f in files]) for k, v in
                 vars(args).items() if k != "func"},
        "rows": rows,
    }  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr if json_to_stdout(args) else sys.stdout):
        print_header(result["machine"])
        print(f"# milliseconds per image, median of {args.repeat}; ours == TFLite ref, byte for "
              "byte, checked first")  # fmt: skip
        print(format_table(rows, COLUMNS))
    write_json(result, args)
    return 0
