"""Smoke tests of ``scratchnets bench convs|models|ops|train-step`` at tiny sizes.

The benchmarks are not tests of speed; these check that each command runs end to end through
``scratchnets.cli.main`` (validation against torch included), that its JSON says what the table
says (MAC counts, theoretical savings, ratios), and that ``--plot`` writes a PNG. The CUDA path
runs under numba's simulator in a subprocess (the simulator must be chosen before numba loads).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratchnets.benchmarks import convs, models, ops, quantized, targets, timing
from scratchnets.cli import main
from tests.test_tflite_reader import WEIGHTS, needs_files

TINY_CONVS = "--layers 2 --batch 2 --size 8 --channels 4 8 --passes 1 --repeat 1".split()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def small_peaks(monkeypatch):
    """Measure the roofline on a 128^3 matmul and a 4 MiB copy instead of 2048^3 and 256 MiB."""
    small = functools.partial(timing.machine_peaks, n=128, copy_mib=4, repeat=1)
    monkeypatch.setattr(convs, "machine_peaks", small)
    monkeypatch.setattr(models, "machine_peaks", small)
    monkeypatch.setattr(targets, "machine_peaks", small)


def run_json(capsys, argv: list[str]) -> tuple[dict, str]:
    """Run ``scratchnets <argv> --json``: the JSON parsed from stdout (which must hold nothing
    else) and what went to stderr (the tables and progress)."""
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def run_cuda_simulated(argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m scratchnets.cli <argv>`` in a subprocess under numba's CUDA simulator."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    command = [sys.executable, "-m", "scratchnets.cli", *argv]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bench_convs_cpu_and_reference(capsys, tmp_path):
    png = tmp_path / "convs.png"
    argv = [
        "bench",
        "convs",
        "--backend",
        "cpu",
        "reference",
        "--compare-torch",
        "--plot",
        str(png),
    ]
    result, err = run_json(capsys, argv + TINY_CONVS)
    rows = result["rows"]
    assert len(rows) == 2 * len(convs.CONV_TYPES) * 2  # backends x conv types x channel counts
    by_key = {(r["backend"], r["conv"], r["channels"]): r for r in rows}
    # 2 layers * N 2 * 8x8 pixels * (C * 25 C) for the 5x5 and (9 + C) C for the separable pair
    assert by_key["cpu", "conv5x5", 8]["gmacs_per_pass"] * 1e9 == pytest.approx(
        2 * 2 * 64 * 25 * 64
    )
    assert by_key["cpu", "sep3x3+1x1", 4]["gmacs_per_pass"] * 1e9 == pytest.approx(
        2 * 2 * 64 * (9 + 4) * 4
    )
    for row in rows:
        assert row["ours_s"] > 0 and row["torch_s"] > 0 and row["torch_device"] == "cpu"
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["torch_s"])
        assert row["max_rel_err"] <= convs.VALIDATION_TOLERANCE
    savings = {(s["backend"], s["channels"], s["saving"]): s for s in result["savings"]}
    assert savings["cpu", 8, "5x5 vs two 3x3"]["theory"] == pytest.approx(25 / 18)
    assert savings["reference", 4, "3x3 vs dw3x3+1x1"]["theory"] == pytest.approx(36 / 13)
    fast = by_key["cpu", "conv1x3", 4]["ours_s"] + by_key["cpu", "conv3x1", 4]["ours_s"]
    assert savings["cpu", 4, "3x3 vs 1x3+3x1"]["ours_measured"] == pytest.approx(
        by_key["cpu", "conv3x3", 4]["ours_s"] / fast
    )
    assert set(result["peaks"]) == {"cpu"} and result["peaks"]["cpu"]["matmul_gflops"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "3x3 vs 1x3+3x1" in err  # the tables went to stderr


def test_bench_convs_validation_catches_a_wrong_kernel(monkeypatch, capsys):
    """A kernel whose output is off by one part in 10^3 must stop the run before timing."""
    real = convs.scratchnets_engine

    def skewed(backend):
        engine = real(backend)
        prepare = engine.prepare

        def prepare_skewed(x, stack):
            one_pass = prepare(x, stack)
            return lambda: one_pass() * 1.001

        engine.prepare = prepare_skewed
        return engine

    monkeypatch.setattr(convs, "scratchnets_engine", skewed)
    assert main(["bench", "convs", "--backend", "cpu", "--convs", "conv3x3", *TINY_CONVS]) == 1
    assert "differs from torch" in capsys.readouterr().err


def test_bench_convs_text_table_and_json_file(capsys, tmp_path):
    out = tmp_path / "convs.json"
    argv = ["bench", "convs", "--convs", "conv1x1", "--json", str(out), *TINY_CONVS]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "conv1x1" in table and "ours s/100" in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["channels"] for r in rows] == [4, 8] and all(r["torch_s"] is None for r in rows)


def test_bench_models_cpu(capsys):
    argv = "bench models --models mobilenet_v1 --resolution 64 --batch 2 --repeat 1".split()
    result, err = run_json(capsys, [*argv, "--num-classes", "10", "--compare-torch"])
    (row,) = result["rows"]
    assert row["model"] == "mobilenet_v1" and row["max_rel_err"] <= models.VALIDATION_TOLERANCE
    # MobileNetV1 at 224x224 is 569 MMACs (the paper's Table 8); at 64x64 about (64/224)^2 of it
    assert row["mmacs_per_image"] == pytest.approx(569 * (64 / 224) ** 2, rel=0.05)
    for phase, flops_per_mac in (("infer", 2), ("train", 6)):
        seconds = row[f"ours_{phase}_ms"] / 1e3
        assert row[f"ours_{phase}_img_s"] == pytest.approx(2 / seconds)
        gflops = flops_per_mac * row["mmacs_per_image"] * 1e6 * 2 / seconds / 1e9
        assert row[f"ours_{phase}_gflops"] == pytest.approx(gflops)
        assert row[f"{phase}_ratio"] == pytest.approx(
            row[f"ours_{phase}_ms"] / row[f"torch_{phase}_ms"]
        )
    assert "training step" in err


def test_bench_models_inference_only(capsys):
    argv = "bench models --models mobilenet_v2 --resolution 32 --batch 1 --repeat 1".split()
    result, err = run_json(capsys, [*argv, "--num-classes", "5", "--inference-only"])
    (row,) = result["rows"]
    assert row["ours_infer_ms"] > 0 and "ours_train_ms" not in row
    assert "training step" not in err and "inference" in err


def test_bench_models_compare_onnx(capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    argv = "bench models --models mobilenet_v2 --resolution 32 --batch 2 --repeat 1".split()
    result, err = run_json(
        capsys, [*argv, "--num-classes", "5", "--inference-only", "--compare-onnx"]
    )
    (row,) = result["rows"]
    assert row["infer_onnx_ratio"] == pytest.approx(row["ours_infer_ms"] / row["onnx_infer_ms"])
    assert "ours/onnx" in err


@needs_files
def test_bench_quantized_validates_and_times_every_side(capsys):
    path = WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite"
    result, err = run_json(
        capsys, ["bench", "quantized", str(path), "--batch", "2", "--repeat", "1"]
    )
    (row,) = result["rows"]
    assert (row["model"], row["batch"]) == ("mobilenet_v1_0.25_128_quant", 2)
    for side in quantized.SIDES:
        assert row[f"{side}_ms"] > 0
    assert row["cpu_vs_tflite_ref"] == pytest.approx(row["ours_cpu_ms"] / row["tflite_ref_ms"])
    assert 0 <= row["xnnpack_max_steps"] <= 16  # XNNPACK rounds differently, by a few steps
    assert "TFLite ref" in err


def test_bench_targets_measures_every_kind_of_target(capsys, tmp_path):
    argv = ("bench targets --models mobilenet_v3_small --resolution 32 --batch 1 "
            "--train-resolution 32 --train-batch 2 --repeat 1 --no-onnx --no-quantized").split()  # fmt: skip
    result, err = run_json(capsys, argv)
    kinds = [row["target"].split()[0] for row in result["rows"]]
    assert kinds == [
        "eval",
        "pointwise",
        "train",
        "train",
    ]  # V3-Small eval + GEMMs; V2, V3-Small train
    for row in result["rows"]:
        goal = float(row["goal"].split()[1])
        assert row["met"] == (
            row["measured"] >= goal if ">=" in row["goal"] else row["measured"] <= goal
        )
    assert "targets met" in err
    saved = tmp_path / "targets.json"
    saved.write_text(json.dumps(result))
    assert main(["bench", "targets", "--from", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == targets.markdown(result)


def test_the_readme_target_table_is_the_saved_runs():
    """README's targets table is ``bench targets --from bench/targets_cpu.json``, character for
    character (between its marker comments), so no number in it can drift from the JSON."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    start, end = "<!-- bench targets: bench/targets_cpu.json -->\n", "\n<!-- /bench targets -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0]
    saved = json.loads((root / "bench" / "targets_cpu.json").read_text())
    assert table.strip() == targets.markdown(saved)


def test_bench_quantized_names_a_missing_file(capsys, tmp_path):
    assert main(["bench", "quantized", str(tmp_path / "none.tflite")]) == 1
    assert "no such .tflite file" in capsys.readouterr().err


def test_bench_convs_cuda_under_the_simulator(tmp_path):
    """The cuda path end to end (device arrays, synchronize, validation) in numba's simulator."""
    argv = "--layers 1 --batch 1 --size 4 --channels 2 --passes 1 --repeat 1".split()
    convs_ = ["--convs", "conv3x3", "conv1x1", "conv3x3sep"]
    done = run_cuda_simulated(["bench", "convs", "--backend", "cuda", *convs_, "--json", *argv])
    rows = json.loads(done.stdout)["rows"]
    assert [(r["backend"], r["conv"]) for r in rows] == [
        ("cuda", "conv3x3"),
        ("cuda", "conv1x1"),
        ("cuda", "conv3x3sep"),
    ]
    assert all(r["max_rel_err"] <= convs.VALIDATION_TOLERANCE for r in rows)


TINY_OPS = "--batch 2 --size 16 --repeat 1".split()


def cuda_available() -> bool:
    from numba import cuda

    return cuda.is_available()


def test_bench_ops_cpu(capsys, tmp_path):
    out = tmp_path / "ops.json"
    pattern = "^(dw3x3 96@8 s2|pw 16->96@8|bn 32@8|relu6 32@8)$"
    assert main(["bench", "ops", "--ops", pattern, "--json", str(out), *TINY_OPS]) == 0
    table = capsys.readouterr().out
    rows = {r["op"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dw3x3 96@8 s2", "pw 16->96@8", "bn 32@8", "relu6 32@8"}
    for row in rows.values():
        assert row["max_rel_err"] <= ops.VALIDATION_TOLERANCE
        assert row["ratio_fb"] == pytest.approx(row["ours_fb_ms"] / row["torch_fb_ms"])
    pointwise = rows["pw 16->96@8"]
    flops = 2 * 2 * 8 * 8 * 16 * 96  # 2 FLOPs x N x H x W x C_in x C_out
    assert pointwise["ours_gflops"] == pytest.approx(flops / pointwise["ours_fwd_ms"] / 1e6)
    assert pointwise["of_numpy"] == pytest.approx(
        pointwise["ours_gflops"] / pointwise["numpy_gflops"]
    )
    assert "dw3x3  total fwd+bwd" in table and "# backend: cpu" in table


def test_bench_ops_validation_catches_a_wrong_kernel(monkeypatch, capsys):
    """A depthwise kernel whose output is off by one part in 10^3 must stop the run."""
    real = ops.make_target

    def skewed(backend):
        target = real(backend)
        conv2d_forward = target.ops.conv2d_forward

        class Skewed:
            def __getattr__(self, name):
                return getattr(target.ops, name)

            @staticmethod
            def conv2d_forward(*args):
                y, cache = conv2d_forward(*args)
                return y * 1.001, cache

        return dataclasses.replace(target, ops=Skewed())

    monkeypatch.setattr(ops, "make_target", skewed)
    assert main(["bench", "ops", "--ops", "^dw3x3 96@8 s2$", *TINY_OPS]) == 1
    assert "differs from torch" in capsys.readouterr().err


def test_bench_ops_waits_for_the_device_after_every_timed_call():
    """On a GPU every timed call must end with a synchronize of its side (launches are async).
    Checked on the CPU target with counting sync functions: the simulator is too slow for
    MobileNetV2's layer shapes, and the real run is in bench/cuda_commands.md."""
    calls = {"ours": 0, "torch": 0}
    target = dataclasses.replace(
        ops.make_target("cpu"),
        sync=lambda: calls.__setitem__("ours", calls["ours"] + 1),
        torch_sync=lambda: calls.__setitem__("torch", calls["torch"] + 1),
    )
    benches = ops.build(target, batch=2, size=16, pattern="^relu6 32@8$")
    ops.run_benches(target, benches, repeat=3, progress=False)
    # forward and forward+backward, each 1 warm-up + 3 timed calls
    assert calls == {"ours": 8, "torch": 8}


@pytest.mark.skipif(cuda_available(), reason="a GPU is present: the cuda benchmark can run")
def test_bench_ops_cuda_without_a_gpu_says_so(capsys):
    assert main(["bench", "ops", "--backend", "cuda", *TINY_OPS]) == 1
    error = capsys.readouterr().err.strip()
    assert "needs an NVIDIA GPU" in error and len(error.splitlines()) == 1


def test_bench_train_step_cpu(capsys, tmp_path):
    out = tmp_path / "step.json"
    argv = ["bench", "train-step", "--batch", "2", "--size", "32", "--repeat", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())["result"]
    assert result["backend"] == "cpu" and result["logits_rel_err"] <= 1e-3
    assert result["ratio"] == pytest.approx(result["ours_step_ms"] / result["torch_step_ms"])
    assert "MobileNetV2 train step, batch 2 x 3 x 32 x 32" in capsys.readouterr().out


def _header_in_a_fresh_process(**env) -> str:
    """A benchmark header printed by a new interpreter (OpenBLAS reads its variables at load)."""
    code = "import torch; from scratchnets.benchmarks import timing as t; "
    code += "t.print_header(t.machine_info())"
    base = {k: v for k, v in os.environ.items() if k not in timing.FORCED_OPENBLAS}
    done = subprocess.run(
        [sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_bench_header_names_the_blas_kernel_and_warns_when_one_is_forced():
    """numpy's and torch's BLAS in every header; OPENBLAS_CORETYPE forcing an older kernel than
    this CPU's is a warning with the command to unset it (OpenBLAS builds of numpy only)."""
    plain = _header_in_a_fresh_process()
    assert "# numpy_blas: " in plain and "# torch_blas: " in plain
    assert "WARNING" not in plain
    if "openblas" not in plain or "Haswell kernel" in plain:
        pytest.skip("needs numpy on OpenBLAS, on a CPU whose own kernel is newer than Haswell")
    forced = _header_in_a_fresh_process(OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="512")
    assert "(Haswell kernel" in forced
    warning = next(line for line in forced.splitlines() if line.startswith("# WARNING"))
    assert "OPENBLAS_CORETYPE=Haswell" in warning
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE scratchnets bench" in warning
