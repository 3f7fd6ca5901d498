"""Folding BatchNorm into the convolution before it, for inference.

In eval mode BN is an affine map per channel with the running statistics, so conv -> BN is one
conv with new weights and a bias. With s = gamma / sqrt(running_var + eps) (shape (C_out,)):

    BN(conv(x))[o] = s[o] * (sum w[o] * x + b[o] - mean[o]) + beta[o]
                   = sum (s[o] * w[o]) * x + (s[o] * (b[o] - mean[o]) + beta[o])
    w'[o, c, i, j] = s[o] * w[o, c, i, j]        b'[o] = s[o] * (b[o] - mean[o]) + beta[o]

(b = 0 for a conv without bias.) This holds for every stride, padding, dilation and group count:
output channel o only ever reads w[o].

Which pairs fold is declared by the blocks themselves: a module's ``bn_folds`` attribute lists
``(conv path, bn path)`` pairs of dotted names relative to that module, e.g.
``(("conv_dw", "bn1"), ("conv_pw", "bn2"))``. ``fuse`` walks the model, replaces each conv by the
folded one and each BN by what remains of it: ``Identity`` for a plain BN, the activation for a
``BatchNormAct2d``. The result is an eval-mode model whose outputs equal the unfused eval outputs
up to rounding, and that has no BatchNorm left in the declared places.
"""

from __future__ import annotations

import copy
import time

import numpy as np
from numba import njit, prange
from numba.typed import List as TypedList

from ..arrays import is_device_array, to_numpy
from ..nn import BatchNorm2d, Conv2d, Hardswish, Identity, Module, ReLU, ReLU6, Sequential
from ..nn.module import planned_layout
from .blocks import BatchNormAct2d, Conv2dSame


def fold_bn(conv: Conv2d, bn: BatchNorm2d) -> Conv2d:
    """A new conv (same class, geometry, backend and dtype, with bias) equal to ``bn(conv(x))``
    in eval mode. The folding is computed in float64 and stored in the conv's dtype."""
    if not isinstance(conv, Conv2d) or not isinstance(bn, BatchNorm2d):
        raise TypeError(
            f"fold_bn needs a Conv2d and a BatchNorm2d, got {type(conv).__name__} and "
            f"{type(bn).__name__}"
        )
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"cannot fold a BatchNorm2d over {bn.num_features} channels into a conv with "
            f"{conv.out_channels} output channels"
        )

    if not bn.track_running_stats:
        raise ValueError(
            "cannot fold a BatchNorm2d with track_running_stats=False: it normalises with the "
            "batch's statistics in eval mode too, so it is not a fixed affine map"
        )
    scale, shift = bn.eval_scale_shift(conv.bias)  # (C_out,) each
    fused = type(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        rng=np.random.default_rng(0),  # overwritten below
        dtype=conv.dtype,
    )
    fused.weight.data[...] = to_numpy(conv.weight.data) * scale[:, None, None, None]  # s[o] w[o]
    fused.bias.data[...] = shift
    return fused.to(conv.backend).eval()


def _locate(root: Module, path: str) -> tuple[Module, str, Module]:
    """``(parent, attribute name, module)`` of the dotted ``path`` below ``root``."""
    *parents, name = path.split(".")
    parent = root
    for part in parents:
        parent = getattr(parent, part)
    return parent, name, getattr(parent, name)


def _norm_remainder(bn: BatchNorm2d) -> Module:
    """What stays of a folded BN: its activation for BatchNormAct2d, otherwise nothing."""
    return bn.act if isinstance(bn, BatchNormAct2d) else Identity().to(bn.backend)


def _device_copy(array):
    from numba import cuda  # only reached for a model that lives on the GPU

    copied = cuda.device_array_like(array)
    copied.copy_to_device(array)
    return copied


def _copy_model(model: Module, share: tuple = ()) -> Module:
    """A deep copy of ``model`` without its forward caches.

    numba.cuda device arrays cannot be deep-copied (their memory handles would be shared), so
    every device array among the parameters, gradients and buffers is copied on the device first
    and handed to ``deepcopy`` through its memo. The caches of the last forward are detached
    while copying (they may hold device arrays too) and put back afterwards.
    """
    memo = {id(array): array for array in share}  # arrays the copy uses as they are
    arrays = [b for _, b in model.named_buffers()]
    for _, param in model.named_parameters():
        arrays += [param.data, param.grad]
    for array in arrays:
        if is_device_array(array) and id(array) not in memo:
            memo[id(array)] = _device_copy(array)
    saved = [(m, m._cache, m._out_shape) for m in model.modules()]
    try:
        for module, _, _ in saved:
            module._cache = module._out_shape = None
        return copy.deepcopy(model, memo)
    finally:
        for module, cache, out_shape in saved:
            module._cache, module._out_shape = cache, out_shape


#: the activation layers a conv absorbs, by the name of the fused op's activation
FUSABLE_ACTIVATIONS = {ReLU6: "relu6", ReLU: "relu", Hardswish: "hard_swish"}


def fuse_activations(model: Module) -> Module:
    """In every ``Sequential`` of ``model`` (in place), a Conv2d followed by a ReLU / ReLU6 /
    Hardswish (with
    only Identity layers, e.g. folded BNs, between them) computes the activation itself
    (``Conv2d.fused_activation``) and the activation layer becomes Identity. Inference only."""
    for container in list(model.modules()):
        if not isinstance(container, Sequential):
            continue
        children = list(container.named_children())
        for index, (_, conv) in enumerate(children):
            if type(conv) not in (Conv2d, Conv2dSame) or conv.fused_activation is not None:
                continue
            following = [c for c in children[index + 1 :] if not isinstance(c[1], Identity)]
            if following and type(following[0][1]) in FUSABLE_ACTIVATIONS:
                name, activation = following[0]
                conv.fused_activation = FUSABLE_ACTIVATIONS[type(activation)]
                setattr(container, name, Identity().to(activation.backend))
    return model


def _unfolded_pairs(model: Module) -> list:
    """Every declared (conv, BN) pair of ``model`` whose BN is still there, as
    ``((conv parent, name, conv), (bn parent, name, bn))``: the places ``fuse`` and the eval
    fast path change."""
    pairs = []
    for _, block in list(model.named_modules()):
        for conv_path, bn_path in getattr(block, "bn_folds", ()):
            conv, bn = _locate(block, conv_path), _locate(block, bn_path)
            if (isinstance(bn[2], BatchNorm2d) and isinstance(conv[2], Conv2d)
                    and bn[2].track_running_stats):  # else eval uses batch statistics  # fmt: skip
                pairs.append((conv, bn))
    return pairs


def reparameterize_blocks(model: Module) -> Module:
    """Call ``reparameterize()`` on every block below ``model`` that has one (GhostNetV3's
    multi-branch convs summed into one conv each); returns ``model``."""
    for module in list(model.modules()):
        if module is not model and callable(getattr(type(module), "reparameterize", None)):
            module.reparameterize()
    return model


def fuse(model: Module, inplace: bool = False, activations: bool = False) -> Module:
    """Fold every declared (conv, BN) pair of ``model`` (see the module docstring), and with
    ``activations`` also the ReLU / ReLU6 / Hardswish after a conv into it (``fuse_activations``).

    Returns the fused model in eval mode: a deep copy unless ``inplace``. Pairs whose BN has
    already been folded are skipped, so fusing twice is harmless.
    """
    fused = model if inplace else _copy_model(model)
    for (conv_parent, conv_name, conv), (bn_parent, bn_name, bn) in _unfolded_pairs(fused):
        setattr(conv_parent, conv_name, fold_bn(conv, bn))
        setattr(bn_parent, bn_name, _norm_remainder(bn))
    if activations:
        fuse_activations(fused)
    return fused.eval()


def folded_copy(model: Module) -> Module:
    """The inference form of ``model`` as a new model: a deep copy with GhostNetV3's branches
    re-parameterised and every declared (conv, BN) pair folded; eval mode. ``model`` is left as
    it is (what an exporter writes)."""
    return fuse(reparameterize_blocks(_copy_model(model)), inplace=True)


class EvalFastPath:
    """A model mixin: in eval mode ``model(x)`` runs the model's inference copy, with no
    backward caches; ``train()`` returns to the training graph, which holds the parameters.

    The copy (``inference_copy``) shares every parameter and buffer array with the model: each
    BN is applied inside its conv's output pass, from its current statistics, and each ReLU /
    ReLU6 after a conv in a Sequential is fused into it, so there is nothing to go stale when a
    weight changes, however it changes (optimizer step, ``load_state_dict``,
    ``weight.data[0, 0] += 1``). The copy is rebuilt when the module layout changes, when an
    array is replaced (``p.data = new``), or when an array it derived values from changes
    (GhostNetV3's re-parameterised branches: those alone are snapshotted and compared).
    ``model.fast_eval = False`` keeps eval mode on the training graph (for gradients in eval
    mode: a backward after a fast-path forward is an error). Host backends only: on "cuda" eval
    runs the training graph.

    The first input of each shape and dtype runs the copy's forward and compiles its plan
    (``Module.inference_plan``): the layers as one flat loop of calls prepared for that shape
    (a conv's kernel, tile plan and weight views chosen once: ``conv2d_bias_act_prepared``),
    without module dispatch or argument checks; later inputs of that shape run the plan.
    """

    fast_eval = True
    #: how the plans lay out activations: "auto" (the default) builds an NCHW plan and one that
    #: turns channels-last where a chain of depthwise / pointwise convs allows it, times both on
    #: the first input of a shape and keeps the faster; "nchw" or "channels_last" choose
    inference_layout = "auto"

    def _runs_fast(self) -> bool:
        return not self.training and self.fast_eval and self.backend in ("cpu", "reference")

    def __call__(self, *args, **kwargs):
        if not self._runs_fast():
            return self.forward(*args, **kwargs)
        copy_ = self._inference_copy()
        if kwargs or len(args) != 1 or type(args[0]) is not np.ndarray:
            return copy_.forward(*args, **kwargs)
        return _planned_forward(copy_, args[0], self.inference_layout)

    def _tracked_arrays(self) -> list[np.ndarray]:
        """Every parameter's and host buffer's array, read through registry slots cached until
        any module's layout changes (``Module.layout_version``): walking the module tree each
        forward cost 1.6 ms of Python for MobileNetV2."""
        cached = self.__dict__.get("_tracked_slots")
        if cached is None or cached[0] != Module.layout_version:
            slots = [(owner._parameters, name, True) for owner in self.modules()
                     for name, p in owner._parameters.items() if p is not None]  # fmt: skip
            slots += [(owner._buffers, name, False) for owner in self.modules()
                      for name, b in owner._buffers.items() if isinstance(b, np.ndarray)]  # fmt: skip
            cached = self.__dict__["_tracked_slots"] = (Module.layout_version, slots)
        return [table[name].data if is_parameter else table[name]
                for table, name, is_parameter in cached[1]]  # fmt: skip

    def _inference_copy(self) -> Module:
        """The copy, rebuilt when the module layout changed, an array was replaced, or an array
        it derived values from (GhostNetV3's re-parameterised branches) changed."""
        state = self.__dict__.get("_fast_eval_state")
        arrays = self._tracked_arrays()
        if state is not None and _same_arrays(arrays, state[0]) and state[1].holds(state[2]):
            return state[3]
        self.__dict__.pop("_fast_eval_state", None)
        for module in self.modules():  # a backward must not use a training forward's caches
            module._cache = module._out_shape = None
        copy_ = inference_copy(self, arrays)
        in_copy = {id(a) for a in _arrays_of(copy_)}
        derived = [a for a in arrays if id(a) not in in_copy]  # read once, at building time
        self.__dict__["_fast_eval_state"] = (arrays, Snapshot(derived), derived, copy_)
        return copy_

    def __getstate__(self) -> dict:
        """Copies and pickles leave the inference copy out (it is rebuilt when needed)."""
        state = self.__dict__.copy()
        state.pop("_fast_eval_state", None)
        state.pop("_tracked_slots", None)
        return state

    def train(self, mode: bool = True):
        if mode:  # free the copy; the next eval forward rebuilds it (and drops training caches)
            self.__dict__.pop("_fast_eval_state", None)
        return super().train(mode)

    def backward(self, dy):
        if self._runs_fast():
            raise RuntimeError(
                f"{type(self).__name__}.backward after an eval-mode forward: eval runs the fused "
                "inference copy, which keeps no caches; set model.fast_eval = False for "
                "gradients in eval mode, or call model.train()"
            )
        return super().backward(dy)


def inference_copy(model: Module, arrays: list) -> Module:
    """The eval fast path's copy of ``model``: it shares ``arrays`` (every parameter and buffer)
    instead of copying them, re-parameterises GhostNetV3's branches (new, derived weights),
    attaches each declared BN to its conv as ``folded_bn`` (applied in the conv's output pass
    from the BN's current statistics: nothing to go stale) and fuses the activations."""
    copy_ = reparameterize_blocks(_copy_model(model, share=tuple(arrays)))
    for (_, _, conv), (bn_parent, bn_name, bn) in _unfolded_pairs(copy_):
        setattr(bn_parent, bn_name, _norm_remainder(bn))
        conv.folded_bn = bn.eval()
    fuse_activations(copy_)
    copy_.fast_eval = False
    for module in copy_.modules():
        module.__dict__["forward_only"] = True
    return copy_.eval()


#: input shapes / dtypes whose plans an inference copy keeps (the oldest is dropped)
PLANS_KEPT = 8


#: what ``EvalFastPath.inference_layout`` may be
INFERENCE_LAYOUTS = ("auto", "nchw", "channels_last")
#: "auto" times each layout's plan this many times (alternated), fastest of each counts ...
LAYOUT_TRIALS = 3
#: ... and keeps channels-last only when it takes at most this fraction of the NCHW plan's time
#: (two plans within timing noise of each other keep NCHW, the layout every kernel has)
CHANNELS_LAST_MARGIN = 0.97


def _planned_forward(copy_: Module, x: np.ndarray, layout: str):
    """``copy_.forward(x)`` through its compiled plan for x's shape and dtype
    (``Module.inference_plan``: the copy's layers as a flat loop of prepared calls, checks and
    dispatch done once), made on the first input of that shape and dtype in ``layout``
    (``_layout_plan``). Plans live on the copy, so they go whenever the copy is rebuilt."""
    plans = copy_.__dict__.setdefault("_plans", {})
    key = (x.shape, x.dtype, layout)
    plan = plans.get(key)
    if plan is not None:
        return plan[0](x)
    run, y, chosen = _layout_plan(copy_, x, layout)
    if len(plans) >= PLANS_KEPT:
        del plans[next(iter(plans))]
    plans[key] = (run, chosen)
    return y


def _layout_plan(copy_: Module, x: np.ndarray, layout: str) -> tuple:
    """``(run, y, chosen layout)``: the plan in ``layout``; for "auto" both plans, each run
    ``LAYOUT_TRIALS`` times in turn, and the faster kept (``CHANNELS_LAST_MARGIN``), once per
    architecture and input (``_LAYOUTS_TIMED``). Which one wins depends on the machine's BLAS:
    channels-last pointwise GEMMs read the weights transposed, which OpenBLAS's small-matrix
    kernels for AVX-512 run at half the speed of the NCHW orientation, and its AVX2 kernels at
    the same (bench/NOTES.md). A model with no chain that turns channels-last is built once."""
    if layout not in INFERENCE_LAYOUTS:
        raise ValueError(f"inference_layout must be one of {INFERENCE_LAYOUTS}, got {layout!r}")
    architecture = (type(copy_), x.shape, x.dtype, tuple(p.shape for p in copy_.parameters()))
    if layout == "auto":
        layout = _LAYOUTS_TIMED.get(architecture, layout)
    if layout != "auto":
        with planned_layout(layout == "channels_last"):
            return (*copy_.inference_plan(x), layout)
    with planned_layout(True) as tried:
        channels_last, y_last = copy_.inference_plan(x)
    if tried.turns == 0:
        _LAYOUTS_TIMED[architecture] = "nchw"
        return channels_last, y_last, "nchw"
    with planned_layout(False):
        nchw, y = copy_.inference_plan(x)
    best = {"nchw": np.inf, "channels_last": np.inf}
    for _ in range(LAYOUT_TRIALS):
        for name, run in (("nchw", nchw), ("channels_last", channels_last)):
            best[name] = min(best[name], _seconds(run, x))
    clearly_faster = best["channels_last"] <= CHANNELS_LAST_MARGIN * best["nchw"]
    chosen = _LAYOUTS_TIMED[architecture] = "channels_last" if clearly_faster else "nchw"
    return (channels_last, y_last, chosen) if chosen == "channels_last" else (nchw, y, chosen)


#: the layout "auto" chose, per (model class, input shape, dtype, parameter shapes): a copy
#: rebuilt after a weight was replaced (each epoch of training, say) is not timed again
_LAYOUTS_TIMED: dict[tuple, str] = {}


def _seconds(run, x) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def _arrays_of(model: Module) -> list:
    arrays = [p.data for p in model.parameters()]
    return arrays + [b for b in model.buffers() if isinstance(b, np.ndarray)]


def _same_arrays(arrays: list, before: list) -> bool:
    return len(arrays) == len(before) and all(a is b for a, b in zip(arrays, before, strict=True))


#: elements compared per parallel task of ``_chunks_differ``
SNAPSHOT_CHUNK = 1 << 16


class Snapshot:
    """A copy of a list of arrays (the eval fast path's derived-from weights), and one
    question: are these still the same arrays holding the same bytes? Contiguous 4- and 8-byte arrays (weights, BN statistics and counters) are
    compared as unsigned integers (bit patterns: NaN equals itself, a rewritten -0.0 is a
    change) by one parallel Numba pass over fixed-size chunks of all of them, one parallel
    region rather than one per array; anything else with ``np.array_equal``. (A checksum
    instead of the copy would read half the bytes, but a weighted sum misses systematic edits:
    doubling a layer's weights adds the same power of two to every bit pattern, and the
    weighted sum of those can vanish mod 2^64; the test that doubles a classifier caught it.)"""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = list(arrays)
        self.copies = [a.copy() for a in arrays]
        self.groups = []  # (typed list of live 1-D views, of copies, chunk table) per item size
        grouped = set()
        for bits in (np.uint32, np.uint64):
            index = [i for i, a in enumerate(arrays)
                     if a.itemsize == np.dtype(bits).itemsize and a.flags.c_contiguous]  # fmt: skip
            if not index:
                continue
            live, saved, chunks = TypedList(), TypedList(), []
            for k, i in enumerate(index):
                live.append(arrays[i].reshape(-1).view(bits))
                saved.append(self.copies[i].reshape(-1).view(bits))
                chunks += [(k, lo, min(lo + SNAPSHOT_CHUNK, arrays[i].size))
                           for lo in range(0, arrays[i].size, SNAPSHOT_CHUNK)]  # fmt: skip
            self.groups.append((live, saved, np.array(chunks, dtype=np.int64).reshape(-1, 3)))
            grouped.update(index)
        self.others = [i for i in range(len(arrays)) if i not in grouped]

    def holds(self, arrays: list[np.ndarray]) -> bool:
        if len(arrays) != len(self.arrays) or any(
            a is not b for a, b in zip(arrays, self.arrays, strict=True)
        ):
            return False
        if any(_chunks_differ(live, saved, chunks) for live, saved, chunks in self.groups):
            return False
        return all(np.array_equal(arrays[i], self.copies[i]) for i in self.others)


@njit(parallel=True, cache=True)
def _chunks_differ(live, saved, chunks) -> bool:
    """Whether any element differs between ``live[k]`` and ``saved[k]`` over the chunks
    ``(k, start, stop)`` of unsigned-integer views (branch-free count: vectorised)."""
    count = 0
    for c in prange(chunks.shape[0]):
        a, b = live[chunks[c, 0]], saved[chunks[c, 0]]
        differ = 0
        for i in range(chunks[c, 1], chunks[c, 2]):
            differ += a[i] != b[i]
        count += differ
    return count > 0
