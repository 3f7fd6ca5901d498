"""Finite-difference gradient checks: every op's hand-written backward against central differences.

For an op ``y = f(x, w, ...)`` and a random upstream gradient ``dy``, the scalar
``L = sum(y * dy)`` has ``dL/dx = backward(dy)[x]``. The check compares that with

    dL/dx[i] ~= (L(x + h e_i) - L(x - h e_i)) / (2 h)

in float64, whose error is O(h^2) (Taylor remainder) plus O(eps64 * |L| / h) (rounding): about
1e-8 relative for h = 1e-6. Inputs are drawn away from the kinks of ReLU6, hard-sigmoid and
max-pool, where the derivative is not defined and a central difference straddles two slopes.

``scratchnets gradcheck`` runs every case below on a backend and prints a table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .arrays import to_numpy
from .backends import OPS, get_backend

#: a backward result is accepted when max|analytic - numeric| <= TOLERANCE * max(1, max|numeric|)
TOLERANCE = 1e-6


def numeric_grad(fn: Callable[[np.ndarray], float], x, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``fn(x)`` w.r.t. the array ``x`` (float64).

    ``fn`` gets a private float64 copy of x with one element perturbed at a time.
    """
    x = np.array(to_numpy(x), dtype=np.float64)  # private copy, perturbed in place
    g = np.empty_like(x)
    for i in np.ndindex(x.shape):
        original = x[i]
        x[i] = original + h
        f_plus = float(fn(x))
        x[i] = original - h
        f_minus = float(fn(x))
        x[i] = original
        g[i] = (f_plus - f_minus) / (2 * h)
    return g


@dataclass(frozen=True)
class Case:
    """One op call: ``inputs`` are differentiated, ``run(ops, inputs)`` returns ``(y, cache)``.

    ``grad_names`` name the entries of the op's backward result, in order (None: not checked).
    """

    name: str
    op: str
    inputs: dict[str, np.ndarray]
    run: Callable
    grad_names: tuple[str | None, ...]


def _away_from(x: np.ndarray, kinks: tuple[float, ...], margin: float = 1e-2) -> np.ndarray:
    """Move entries closer than ``margin`` to a kink to ``kink + 2 margin``."""
    for k in kinks:
        x = np.where(np.abs(x - k) < margin, k + 2 * margin, x)
    return x


def _cases(rng: np.random.Generator) -> list[Case]:
    def randn(*shape):
        return rng.standard_normal(shape)

    def bn_run(training):
        def run(ops, v):
            mean, var = np.zeros(3), np.ones(3)  # fresh running stats: forward updates them
            return ops.batch_norm2d_forward(v["x"], v["weight"], v["bias"], mean, var, training)

        return run

    activation_x = _away_from(rng.uniform(-8, 8, (2, 3, 4, 4)), (-3.0, 0.0, 3.0, 6.0))
    distinct = rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) / 7.0  # no ties in max-pool
    target = rng.integers(0, 5, size=4)
    cases = [
        Case(
            "conv2d grouped 3x2 s(2,1) pad(1,0,1,1)",
            "conv2d",
            {"x": randn(2, 4, 5, 6), "w": randn(4, 2, 3, 2), "b": randn(4)},
            lambda ops, v: ops.conv2d_forward(
                v["x"], v["w"], v["b"], stride=(2, 1), padding=(1, 0, 1, 1), groups=2
            ),
            ("x", "w", "b"),
        ),
        Case(
            "conv2d depthwise x2 3x3 s2 dilation 2",
            "conv2d",
            {"x": randn(1, 3, 7, 7), "w": randn(6, 1, 3, 3)},
            lambda ops, v: ops.conv2d_forward(
                v["x"], v["w"], stride=2, padding=2, dilation=2, groups=3
            ),
            ("x", "w", None),
        ),
        Case(
            "conv2d pointwise 1x1",
            "conv2d",
            {"x": randn(2, 5, 3, 4), "w": randn(3, 5, 1, 1), "b": randn(3)},
            lambda ops, v: ops.conv2d_forward(v["x"], v["w"], v["b"]),
            ("x", "w", "b"),
        ),
        Case(
            "batch_norm2d train",
            "batch_norm2d",
            {"x": randn(3, 3, 3, 2), "weight": randn(3), "bias": randn(3)},
            bn_run(True),
            ("x", "weight", "bias"),
        ),
        Case(
            "batch_norm2d eval",
            "batch_norm2d",
            {"x": randn(2, 3, 2, 2), "weight": randn(3), "bias": randn(3)},
            bn_run(False),
            ("x", "weight", "bias"),
        ),
        *[
            Case(
                op,
                op,
                {"x": activation_x},
                lambda ops, v, op=op: getattr(ops, f"{op}_forward")(v["x"]),
                ("x",),
            )
            for op in ("relu", "relu6", "sigmoid", "hard_sigmoid", "hard_swish", "silu")
        ],
        Case(
            "clip [-2.5, 1.5]",
            "clip",
            {"x": _away_from(rng.uniform(-4, 4, (2, 3, 4, 4)), (-2.5, 1.5))},
            lambda ops, v: ops.clip_forward(v["x"], -2.5, 1.5),
            ("x",),
        ),
        Case(
            "softmax over the channels",
            "softmax",
            {"x": randn(2, 5, 3, 2)},
            lambda ops, v: ops.softmax_forward(v["x"], 1),
            ("x",),
        ),
        Case(
            "max_pool2d 3x3 s2 p1",
            "max_pool2d",
            {"x": distinct},
            lambda ops, v: ops.max_pool2d_forward(v["x"], 3, 2, 1),
            ("x",),
        ),
        Case(
            "max_pool2d 3x2 s2 p1 dilation (2, 1) ceil_mode",
            "max_pool2d",
            {"x": distinct},
            lambda ops, v: ops.max_pool2d_forward(v["x"], (3, 2), 2, 1, (2, 1), ceil_mode=True),
            ("x",),
        ),
        Case(
            "avg_pool2d 3x3 s2 p1 ceil_mode (the last window overhangs)",
            "avg_pool2d",
            {"x": randn(2, 2, 6, 5)},
            lambda ops, v: ops.avg_pool2d_forward(v["x"], 3, 2, 1, ceil_mode=True),
            ("x",),
        ),
        Case(
            "avg_pool2d 3x3 s2 p1 exclude pad",
            "avg_pool2d",
            {"x": randn(2, 2, 5, 6)},
            lambda ops, v: ops.avg_pool2d_forward(v["x"], 3, 2, 1, count_include_pad=False),
            ("x",),
        ),
        *(
            Case(
                f"adaptive_{kind}_pool2d 5x7 -> (3, 4)",
                f"adaptive_{kind}_pool2d",
                {"x": distinct[:, :, :5, :] if kind == "max" else randn(2, 2, 5, 7)},
                lambda ops, v, kind=kind: getattr(ops, f"adaptive_{kind}_pool2d_forward")(
                    v["x"], (3, 4)
                ),
                ("x",),
            )
            for kind in ("avg", "max")
        ),
        Case(
            "avg_pool2d 2x3 s(1,2) p(1,1) divisor_override=5",
            "avg_pool2d",
            {"x": randn(2, 2, 5, 6)},
            lambda ops, v: ops.avg_pool2d_forward(v["x"], (2, 3), (1, 2), 1, divisor_override=5),
            ("x",),
        ),
        Case(
            "global_avg_pool2d",
            "global_avg_pool2d",
            {"x": randn(2, 3, 3, 5)},
            lambda ops, v: ops.global_avg_pool2d_forward(v["x"]),
            ("x",),
        ),
        Case(
            "linear",
            "linear",
            {"x": randn(3, 4), "w": randn(5, 4), "b": randn(5)},
            lambda ops, v: ops.linear_forward(v["x"], v["w"], v["b"]),
            ("x", "w", "b"),
        ),
        Case(
            "dropout p=0.3",
            "dropout",
            {"x": randn(2, 3, 4, 4)},
            lambda ops, v: ops.dropout_forward(v["x"], 0.3, True, seed=7),
            ("x",),
        ),
        *(
            Case(
                f"pad2d {mode} (top, bottom, left, right) = (2, 1, 3, 0)",
                "pad2d",
                {"x": randn(2, 2, 4, 5)},
                lambda ops, v, mode=mode: ops.pad2d_forward(v["x"], (2, 1, 3, 0), mode, 0.5),
                ("x",),
            )
            for mode in ("constant", "reflect", "replicate", "circular")
        ),
        Case(
            "upsample_nearest2d 3x4 -> 7x5",
            "upsample_nearest2d",
            {"x": randn(2, 2, 3, 4)},
            lambda ops, v: ops.upsample_nearest2d_forward(v["x"], (7, 5)),
            ("x",),
        ),
        Case(
            "upsample_bilinear2d 3x3 -> 7x7",
            "upsample_bilinear2d",
            {"x": randn(1, 2, 3, 3)},
            lambda ops, v: ops.upsample_bilinear2d_forward(v["x"], (7, 7)),
            ("x",),
        ),
        Case(
            "add (N,C,H,W) + (N,C,1,1)",
            "add",
            {"a": randn(2, 3, 4, 4), "b": randn(2, 3, 1, 1)},
            lambda ops, v: ops.add_forward(v["a"], v["b"]),
            ("a", "b"),
        ),
        Case(
            "mul (N,C,H,W) * (N,C,1,1)",
            "mul",
            {"a": randn(2, 3, 4, 4), "b": randn(2, 3, 1, 1)},
            lambda ops, v: ops.mul_forward(v["a"], v["b"]),
            ("a", "b"),
        ),
        Case(
            "concat channels",
            "concat",
            {"a": randn(2, 2, 3, 3), "b": randn(2, 3, 3, 3)},
            lambda ops, v: ops.concat_forward([v["a"], v["b"]], axis=1),
            ("a", "b"),
        ),
        Case(
            "slice channels 1:4",
            "slice",
            {"x": randn(2, 5, 3, 3)},
            lambda ops, v: ops.slice_forward(v["x"], 1, 4, axis=1),
            ("x",),
        ),
        Case(
            "cross_entropy label_smoothing=0.1",
            "cross_entropy",
            {"logits": 3 * randn(4, 5)},
            lambda ops, v: ops.cross_entropy_forward(v["logits"], target, label_smoothing=0.1),
            ("logits",),
        ),
    ]
    assert {c.op for c in cases} == set(OPS), "every op needs a gradient-check case"
    return cases


@dataclass(frozen=True)
class Result:
    case: str
    op: str
    input: str
    error: float  # max|analytic - numeric| / max(1, max|numeric|)

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE


def check_case(case: Case, backend: str = "reference", seed: int = 0) -> list[Result]:
    """Compare the backward of ``case`` on ``backend`` with central differences of its forward."""
    ops = get_backend(backend)
    y, cache = case.run(ops, case.inputs)
    dy = np.random.default_rng(seed).standard_normal(np.shape(to_numpy(y)))
    grads = ops.__dict__[f"{case.op}_backward"](dy, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    results = []
    for name, analytic in zip(case.grad_names, grads, strict=True):
        if name is None:
            continue

        def loss(value, name=name):
            y, _ = case.run(ops, {**case.inputs, name: value})
            return np.sum(to_numpy(y) * dy)

        numeric = numeric_grad(loss, case.inputs[name])
        error = np.max(np.abs(to_numpy(analytic) - numeric)) / max(1.0, np.max(np.abs(numeric)))
        results.append(Result(case.name, case.op, name, float(error)))
    return results


def check_all(backend: str = "reference", seed: int = 0, only: str | None = None) -> list[Result]:
    """Run every gradient-check case (those whose name contains ``only``, if given)."""
    cases = [c for c in _cases(np.random.default_rng(seed)) if only is None or only in c.name]
    return [r for case in cases for r in check_case(case, backend, seed)]
