"""The op table and the backends: the single list of ops, and the modules that implement them.

**The op table** (``OP_TABLE``) has one row per op: its name, its family (the file name it has
everywhere: ``reference/<family>.py``, ``kernels/cpu/<family>.py`` or the package
``kernels/cpu/<family>/``, ``kernels/cuda/<family>.py``, ``explain/<family>.py``,
``docs/<family>.md``), the category the model counter reports its work under, and the extra
functions it has beyond its ``<op>_forward(...) -> (y, cache)`` / ``<op>_backward(dy, cache)``
pair. Every backend exports exactly ``exported_names(backend)``; summary's cost categories,
gradcheck's cases and explain's explainers are read from, or checked against, this table
(``tests/test_op_table.py``). Adding an op is one row here plus one function in each of its
family's files.

**A backend** is a plain module exporting those functions with the reference's signatures
(``tests/test_backend_conformance.py``). Modules are imported lazily, on first use, so that
``import scratchnets`` stays cheap, a machine without CUDA never imports numba.cuda, and no
backend depends on another package having been imported first. ``register_backend`` adds one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

#: What the model counter reports an op's work as (``profile.summary``): mult-adds for the
#: weighted layers, the output elements (or, for pooling, the elements its windows read) of
#: the others; "data" ops only move data and "loss" is not part of a model's forward.
COST_CATEGORIES = (
    "mult_adds", "batch_norm", "activation", "pooling", "elementwise", "resize", "data", "loss",
)  # fmt: skip


@dataclass(frozen=True)
class Op:
    """One row of the op table.

    ``indices``: the compute backends also export ``<op>_indices(cache)``, torch's flat input
    index of each output (max pooling's ``return_indices``). ``fused``: functions of the cpu
    backend that run this op fused with what follows it (the eval fast path's epilogues,
    training's BN -> activation) or on channels-last arrays.
    """

    name: str
    family: str
    cost: str
    indices: bool = False
    fused: tuple[str, ...] = ()

    def __post_init__(self):
        if self.cost not in COST_CATEGORIES:
            raise ValueError(f"op {self.name!r}: unknown cost category {self.cost!r}")

    @property
    def pair(self) -> tuple[str, str]:
        return f"{self.name}_forward", f"{self.name}_backward"


def _family(family: str, cost: str, *names: str) -> list[Op]:
    return [Op(name, family, cost) for name in names]


OP_TABLE: tuple[Op, ...] = (
    Op("conv2d", "conv", "mult_adds",
       fused=("conv2d_bias_act_forward", "conv2d_bias_act_checked", "conv2d_bias_act_prepared")),
    Op("pad2d", "pad", "data"),
    Op("batch_norm2d", "batchnorm", "batch_norm",
       fused=("batch_norm2d_eval_affine", "batch_norm2d_act_forward")),
    *_family("activations", "activation",
             "relu", "relu6", "clip", "sigmoid", "hard_sigmoid", "hard_swish", "silu", "softmax"),
    Op("max_pool2d", "pooling", "pooling", indices=True),
    Op("avg_pool2d", "pooling", "pooling"),
    Op("global_avg_pool2d", "pooling", "pooling", fused=("global_avg_pool2d_channels_last",)),
    Op("adaptive_avg_pool2d", "pooling", "pooling"),
    Op("adaptive_max_pool2d", "pooling", "pooling", indices=True),
    Op("linear", "linear", "mult_adds"),
    Op("dropout", "dropout", "data"),
    *_family("upsample", "resize", "upsample_nearest2d", "upsample_bilinear2d"),
    *_family("elementwise", "elementwise", "add", "mul"),
    *_family("elementwise", "data", "concat", "slice"),
    Op("cross_entropy", "loss", "loss"),
)  # fmt: skip

OP_BY_NAME: dict[str, Op] = {op.name: op for op in OP_TABLE}
#: the op names, in table order
OPS: tuple[str, ...] = tuple(OP_BY_NAME)
#: every ``<op>_forward`` / ``<op>_backward`` name: what every backend exports and functional wraps
OP_NAMES: tuple[str, ...] = tuple(name for op in OP_TABLE for name in op.pair)
#: the families, in table order
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(op.family for op in OP_TABLE))

_MODULE_PATHS: dict[str, str] = {
    "reference": "scratchnets.reference",
    "cpu": "scratchnets.kernels.cpu",
    "cuda": "scratchnets.kernels.cuda",
    # values-free backends: shapes and counts, receptive fields (no backward)
    "meta": "scratchnets.profile.meta",
    "receptive": "scratchnets.explain.receptive",
    # the reference ops with every call recorded (explain --block)
    "trace": "scratchnets.explain.trace",
}
#: backends that compute values with kernels of their own (meta and receptive propagate shapes or
#: receptive-field bounds only; trace records the reference's calls)
COMPUTE_BACKENDS = ("reference", "cpu", "cuda")
_LOADED: dict[str, ModuleType] = {}

DEFAULT_BACKEND = "cpu"  # Numba kernels; "reference" is the readable spec


def exported_names(backend: str) -> tuple[str, ...]:
    """What backend ``backend`` exports, read from the table: every op's pair, and on the backends
    that compute values (and "meta", which gives its shape) each ``<op>_indices``; the cpu
    backend adds its fused functions."""
    names = list(OP_NAMES)
    if backend != "receptive":
        names += [f"{op.name}_indices" for op in OP_TABLE if op.indices]
    if backend == "cpu":
        names += [name for op in OP_TABLE for name in op.fused]
    return tuple(names)


def register_backend(name: str, module_path: str) -> None:
    """Make ``name`` resolve to the op module importable as ``module_path``."""
    _MODULE_PATHS[name] = module_path
    _LOADED.pop(name, None)


def available_backends() -> tuple[str, ...]:
    return tuple(_MODULE_PATHS)


def get_backend(name: str | None = None) -> ModuleType:
    """Return the op module of backend ``name`` (the default backend when None)."""
    name = DEFAULT_BACKEND if name is None else name
    if name not in _MODULE_PATHS:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {', '.join(map(repr, _MODULE_PATHS))}"
        )
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(_MODULE_PATHS[name])
    return _LOADED[name]
