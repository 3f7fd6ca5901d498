"""The module system: ``Parameter``, ``Module``, ``Sequential`` and ``Identity``.

It mirrors ``torch.nn.Module`` where a user can see it (attribute assignment registers parameters
and submodules, dotted names, ``state_dict``/``load_state_dict``, ``train``/``eval``, the repr),
with one difference that is the point of the library: there is no autograd. Every module has an
explicit ``backward``::

    y = m(x)            # forward: computes y and keeps in ``m`` what backward needs (the cache)
    dx = m.backward(dy) # dL/dx from dL/dy; dL/dparam is ADDED to ``param.grad``

The cache of a forward is kept until the next forward (torch frees its graph after backward).
Calling ``backward`` twice after one forward therefore accumulates the parameter gradients twice,
exactly like two ``loss.backward(retain_graph=True)`` calls in torch.

Arrays live where the module's backend computes: NumPy arrays for "reference" and "cpu",
numba.cuda device arrays for "cuda" (``Module.to`` moves them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import numpy as np

from .. import backends, functional
from ..arrays import FLOAT_DTYPES, is_device_array, to_channels_first, to_channels_last, to_numpy

#: backends whose ops take and return numba.cuda device arrays instead of NumPy arrays
DEVICE_BACKENDS = frozenset({"cuda"})


def as_float_dtype(dtype) -> np.dtype:
    """``np.dtype(dtype)``, raising ValueError unless it is float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"modules hold float32 or float64 arrays, got dtype {dtype}")
    return dtype


def _host_copy(a) -> np.ndarray:
    """A NumPy copy of ``a`` that shares no memory with the module (device arrays come back)."""
    return a.copy_to_host() if is_device_array(a) else np.array(a, copy=True)


def _convert(a, dtype: np.dtype | None, on_device: bool):
    """``a`` in ``dtype`` (floating arrays only) and on the device or the host.

    Integer arrays (BatchNorm's ``num_batches_tracked``) keep their dtype and stay on the host:
    the layer increments them in Python.
    """
    if a is None:
        return None
    floating = np.dtype(a.dtype) in FLOAT_DTYPES
    target_dtype = dtype if (floating and dtype is not None) else np.dtype(a.dtype)
    on_device = on_device and floating
    if is_device_array(a) == on_device and a.dtype == target_dtype:
        return a
    host = to_numpy(a).astype(target_dtype, copy=False)
    if not on_device:
        return host
    from numba import cuda  # imported only when a module really moves to the GPU

    return cuda.to_device(np.ascontiguousarray(host))


def _copy_into(dst, value: np.ndarray) -> None:
    """Overwrite ``dst`` (host or device array) with ``value`` of the same shape, cast to dst's dtype."""
    if is_device_array(dst):
        dst.copy_to_device(np.ascontiguousarray(value, dtype=dst.dtype))
    else:
        np.copyto(dst, value, casting="unsafe")


def _indent_continuation(text: str) -> str:
    """Indent every line but the first by two spaces (how nested reprs are laid out)."""
    return text.replace("\n", "\n  ")


class Parameter:
    """A trainable array: ``data`` and the gradient ``grad`` that ``Module.backward`` accumulates.

    ``grad`` is None until a backward reaches the parameter (and again after ``zero_grad``).
    With ``requires_grad=False`` the parameter is frozen: backward leaves ``grad`` untouched.
    """

    def __init__(self, data, requires_grad: bool = True):
        self.data = data if is_device_array(data) else np.asarray(data)
        self.grad = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` skipped (torch returns the same pair)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, then assign ``Parameter``s and submodules as
    attributes (they are registered under that name, in that order) and buffers with
    ``register_buffer``. They implement ``forward(x)``, which ends with ``self._save(cache, y.shape)``,
    and ``backward(dy)``, which starts with ``cache = self._saved(dy)`` and hands parameter
    gradients to ``self._accumulate``.

    Attributes: ``training`` (train/eval mode), ``backend`` (the op backend every forward and
    backward dispatches to, ``backends.DEFAULT_BACKEND`` at construction) and ``dtype`` (float32
    unless set; layers with parameters refuse inputs of another dtype).
    """

    #: bumped whenever any module anywhere registers or removes a parameter, buffer or
    #: submodule: lets a caller cache the layout of a module tree (models/fuse.py does)
    layout_version = 0

    #: True on the modules of the eval fast path's inference copy (``models.fuse.inference_copy``):
    #: no backward follows their forwards, so a block may skip its caches and write into the
    #: buffers its own children just made (``models.blocks.residual_add``)
    forward_only = False

    def __init__(self):
        # the three registries go straight into __dict__: __setattr__ below reads them
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        self.training = True
        self.backend = backends.DEFAULT_BACKEND
        self.dtype = np.dtype(np.float32)
        self._cache = None  # what the last forward left for backward (an op's cache may be None)
        self._out_shape = None  # shape of the last forward's output; None: no forward yet

    # ---------------------------------------------------------------- registration (torch-like)

    def __setattr__(self, name: str, value) -> None:
        registries = self.__dict__.get("_parameters") is not None
        if isinstance(value, (Parameter, Module)):
            if not registries:
                raise AttributeError(
                    f"cannot assign {type(value).__name__} {name!r} before Module.__init__() call"
                )
            table = self._parameters if isinstance(value, Parameter) else self._modules
            if name not in table:  # a re-assignment keeps its place in the order, like torch
                self._forget(name)
            table[name] = value
            Module.layout_version += 1
            return
        for table_name, kind in (("_parameters", "Parameter"), ("_modules", "Module")):
            table = self.__dict__.get(table_name)
            if table is not None and name in table:
                if value is not None:
                    raise TypeError(
                        f"cannot assign {type(value).__name__} to {name!r}: it is a registered "
                        f"{kind} (assign a {kind} or None)"
                    )
                table[name] = None
                Module.layout_version += 1
                return
        if registries and name in self._buffers:
            self._buffers[name] = value
            Module.layout_version += 1
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # only called when ordinary lookup fails: look in the registries
        for table_name in ("_parameters", "_buffers", "_modules"):
            table = self.__dict__.get(table_name)
            if table is not None and name in table:
                return table[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if not self._forget(name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _forget(self, name: str) -> bool:
        """Remove ``name`` from the registries and ``__dict__``; True if it was anywhere."""
        found = self.__dict__.pop(name, _MISSING) is not _MISSING
        for table in (self._parameters, self._buffers, self._modules):
            found = table.pop(name, _MISSING) is not _MISSING or found
        Module.layout_version += 1
        return found

    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(
                f"a registered name must be a non-empty string without '.', got {name!r}"
            )
        registered = name in self._parameters or name in self._buffers or name in self._modules
        if hasattr(self, name) and not registered:
            raise KeyError(f"attribute {name!r} already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None: a declared but absent parameter, like ``bias=False``)."""
        self._check_new_name(name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} {name!r} as a Parameter")
        self._forget(name)
        self._parameters[name] = param
        Module.layout_version += 1

    def register_buffer(self, name: str, array) -> None:
        """Register a state array that is saved in ``state_dict`` but is not trained."""
        self._check_new_name(name)
        self._forget(name)
        self._buffers[name] = (
            array if array is None or is_device_array(array) else np.asarray(array)
        )
        Module.layout_version += 1

    def add_module(self, name: str, module: Module | None) -> None:
        """Register ``module`` as child ``name``; replacing a child keeps its place (as torch)."""
        self._check_new_name(name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"cannot register {type(module).__name__} {name!r} as a Module")
        if name not in self._modules:
            self._forget(name)
        self._modules[name] = module
        Module.layout_version += 1

    # ----------------------------------------------------------------------------- traversal

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True, _seen: set | None = None
    ) -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` for this module ("" by default) and all below it, pre-order."""
        if remove_duplicate:
            _seen = set() if _seen is None else _seen
            if id(self) in _seen:
                return
            _seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                child_prefix = f"{prefix}.{name}" if prefix else name
                yield from child.named_modules(child_prefix, remove_duplicate, _seen)

    def modules(self) -> Iterator[Module]:
        return (module for _, module in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return ((name, child) for name, child in self._modules.items() if child is not None)

    def children(self) -> Iterator[Module]:
        return (child for _, child in self.named_children())

    def _named_members(self, table_name: str, prefix: str, recurse: bool, remove_duplicate: bool):
        """Entries of one registry in every module, with dotted names; shared arrays once."""
        seen: set[int] = set()
        owners = self.named_modules(prefix, remove_duplicate) if recurse else [(prefix, self)]
        for owner_prefix, owner in owners:
            for name, value in getattr(owner, table_name).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{owner_prefix}.{name}" if owner_prefix else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(torch dotted name, Parameter)`` in registration order, each shared parameter once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate=True)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        return (param for _, param in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, object]]:
        return self._named_members("_buffers", prefix, recurse, remove_duplicate=True)

    def buffers(self, recurse: bool = True) -> Iterator[object]:
        return (buffer for _, buffer in self.named_buffers(recurse=recurse))

    def apply(self, fn) -> Module:
        """Call ``fn(module)`` on every submodule (children first) and on self; return self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---------------------------------------------------------------------------- state dict

    def _state_slots(self) -> dict[str, tuple[Module, str, str]]:
        """Every state_dict key -> (owning module, registry name, attribute name), torch order:
        per module (pre-order) its parameters, then its buffers. Shared arrays appear under each
        name, as in torch."""
        slots = {}
        for prefix, owner in self.named_modules(remove_duplicate=False):
            for table_name in ("_parameters", "_buffers"):
                for name, value in getattr(owner, table_name).items():
                    if value is not None:
                        slots[f"{prefix}.{name}" if prefix else name] = (owner, table_name, name)
        return slots

    @staticmethod
    def _slot_array(slot: tuple[Module, str, str]):
        owner, table_name, name = slot
        value = getattr(owner, table_name)[name]
        return value.data if isinstance(value, Parameter) else value

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{torch name: NumPy copy}`` of every parameter and buffer.

        Unlike torch's, whose tensors share storage with the module, these arrays are copies: a
        saved state dict never changes under a later training step.
        """
        return {
            name: _host_copy(self._slot_array(slot)) for name, slot in self._state_slots().items()
        }

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy ``state_dict`` (values: NumPy arrays or anything ``np.asarray`` accepts, e.g. CPU
        torch tensors) into the parameters and buffers, cast to each array's dtype, in place.

        Everything is checked before anything is written: a shape mismatch is always an error;
        with ``strict=True`` (the default) so are missing and unexpected keys. The ValueError
        lists every problem. Returns the missing and unexpected keys (both empty when strict).
        """
        slots = self._state_slots()
        missing = [name for name in slots if name not in state_dict]
        unexpected = [name for name in state_dict if name not in slots]
        values, problems = {}, []
        for name, slot in slots.items():
            if name not in state_dict:
                continue
            value = np.asarray(to_numpy(state_dict[name]))
            current_shape = tuple(self._slot_array(slot).shape)
            if value.shape != current_shape:
                problems.append(
                    f"size mismatch for {name}: copying an array of shape {value.shape} from the "
                    f"state dict, the shape in the current model is {current_shape}"
                )
            values[name] = value
        if strict and unexpected:
            problems.insert(
                0, "Unexpected key(s) in state_dict: " + ", ".join(map(repr, unexpected))
            )
        if strict and missing:
            problems.insert(0, "Missing key(s) in state_dict: " + ", ".join(map(repr, missing)))
        if problems:
            raise ValueError(
                f"Error(s) in loading state_dict for {self._get_name()}:\n\t"
                + "\n\t".join(problems)
            )
        for name, value in values.items():
            _copy_into(self._slot_array(slots[name]), value)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------- modes, devices, grads

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to None (torch's default ``set_to_none=True``)."""
        for param in self.parameters():
            param.grad = None

    def to(self, backend: str | None = None, dtype=None) -> Module:
        """Move every submodule to ``backend`` and/or convert its floating arrays to ``dtype``.

        Parameters, their gradients and floating buffers become device arrays on "cuda" and NumPy
        arrays elsewhere. The forward caches are dropped (they hold arrays of the old kind), so a
        backward needs a new forward. Returns self.
        """
        if backend is not None and backend not in backends.available_backends():
            raise ValueError(
                f"unknown backend {backend!r}; expected one of {backends.available_backends()}"
            )
        dtype = None if dtype is None else as_float_dtype(dtype)
        for module in self.modules():
            module.backend = module.backend if backend is None else backend
            module.dtype = module.dtype if dtype is None else dtype
            on_device = module.backend in DEVICE_BACKENDS
            module._cache = module._out_shape = None
            for param in module._parameters.values():
                if param is not None:
                    param.data = _convert(param.data, dtype, on_device)
                    param.grad = _convert(param.grad, dtype, on_device)
            for name, buffer in module._buffers.items():
                module._buffers[name] = _convert(buffer, dtype, on_device)
        return self

    # ------------------------------------------------------------------------ forward/backward

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{self._get_name()} does not implement forward()")

    def inference_plan(self, x, channels_last: bool = False) -> tuple[Callable, object]:
        """``(run, y)``: ``y = self.forward(x)``, and ``run``, a function that computes the same
        forward for any input of ``x``'s shape and dtype, with the work that depends only on
        those (checks, dispatch, kernel choice) done here once: the eval fast path's compiled
        plan (``models.fuse.EvalFastPath``). For forward-only modules (no caches). This default
        is the module's own ``forward``; containers and layers with per-shape work override
        it, and ``planned_as`` keeps a subclass with its own ``forward`` on this default.

        ``channels_last``: ``x`` and ``y`` are (N, H, W, C) instead (asked only of a module
        whose ``channels_last_convs()`` is not None; ``chain_plans`` chooses where)."""
        return self.forward, self.forward(x)

    def channels_last_convs(self) -> int | None:
        """How many convs this module's channels-last plan runs (``inference_plan(x,
        channels_last=True)``), or None where it has none: the default. Layers that do not
        care about the layout (elementwise activations) say 0."""
        return None

    def planned_as(self, cls: type, *hooks: str) -> bool:
        """Whether this module's forward, and the methods ``hooks`` it calls, are ``cls``'s, so
        that ``cls.inference_plan`` describes it (a subclass that overrides one of them falls
        back to ``Module.inference_plan``)."""
        mine = type(self)
        return all(getattr(mine, name) is getattr(cls, name) for name in ("forward", *hooks))

    def backward(self, dy):
        raise NotImplementedError(f"{self._get_name()} does not implement backward()")

    def absorbs(self, following: Module) -> bool:
        """Whether this module can run the module after it in a ``Sequential`` inside its own
        forward (``forward_absorbing``), its ``backward`` then covering both: no, by default;
        ``BatchNorm2d`` absorbs the activation after it."""
        return False

    def forward_absorbing(self, x, following: Module):
        """``following(self(x))`` where ``absorbs(following)``."""
        raise NotImplementedError(f"{self._get_name()} absorbs no following module")

    def _save(self, cache, out_shape) -> None:
        """Keep what backward needs and the shape dy must have (plain attributes, written to
        ``__dict__`` directly: ``__setattr__``'s registry checks cost ~1 us, paid twice per layer
        and forward)."""
        attributes = self.__dict__
        attributes["_cache"] = cache
        attributes["_out_shape"] = tuple(out_shape)

    def _saved(self, dy):
        """The cache of the last forward, after checking that there was one and that dy fits it."""
        if self._out_shape is None:
            raise RuntimeError(
                f"{self._get_name()}: backward() called before forward() (no cached forward pass; "
                "call the module on an input first)"
            )
        if tuple(np.shape(dy)) != self._out_shape:
            raise ValueError(
                f"{self._get_name()}.backward: dy has shape {tuple(np.shape(dy))}, expected the "
                f"shape of the forward output {self._out_shape}"
            )
        return self._cache

    def _accumulate(self, param: Parameter | None, grad) -> None:
        """``param.grad += grad`` (``param.grad = grad`` when None), on this module's backend."""
        if param is None or grad is None or not param.requires_grad:
            return
        if param.grad is None:
            param.grad = grad
        else:
            param.grad = functional.add_forward(param.grad, grad, backend=self.backend)[0]

    def _check_input(
        self, x, layout: tuple | None = None, match_dtype: bool = False, unbatched: bool = False
    ) -> None:
        """Raise a clear error unless ``x`` suits this module.

        ``x`` must be an array of this backend's kind with a float dtype (TypeError), equal to the
        module's dtype when ``match_dtype``; with a ``layout`` such as ``("N", 3, "H", "W")`` it
        must have that many dims and the given size wherever an int is given (ValueError). With
        ``unbatched``, the layout without its first (batch) axis is accepted too.
        """
        on_device = self.backend in DEVICE_BACKENDS
        if not (is_device_array(x) if on_device else isinstance(x, np.ndarray)):
            kind = "a numba.cuda device array" if on_device else "a NumPy array"
            raise TypeError(
                f"{self._get_name()} runs on backend {self.backend!r} and expects {kind}, got "
                f"{type(x).__name__}; move the data or the module with .to(...)"
            )
        dtype = np.dtype(x.dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{self._get_name()} expects a float32 or float64 input, got dtype {dtype}"
            )
        if match_dtype and dtype != self.dtype:
            raise TypeError(
                f"{self._get_name()} holds {self.dtype} arrays but got a {dtype} input; convert the "
                f"input with x.astype(np.{self.dtype}) or the module with .to(dtype=np.{dtype})"
            )
        if layout is None:
            return
        shape = tuple(x.shape)
        layouts = [layout, layout[1:]] if unbatched else [layout]
        if not any(
            len(shape) == len(want)
            and all(not isinstance(w, int) or got == w for got, w in zip(shape, want, strict=True))
            for want in layouts
        ):
            expected = " or ".join("(" + ", ".join(map(str, want)) + ")" for want in layouts)
            raise ValueError(f"{self!r} expects an input of shape {expected}, got {shape}")

    # ---------------------------------------------------------------------------------- repr

    def _get_name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        """The constructor arguments shown in the repr (one line); override in layers."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        children = [
            f"({name}): {_indent_continuation(repr(child))}"
            for name, child in self.named_children()
        ]
        if not children and len(lines) <= 1:
            return f"{self._get_name()}({extra})"
        body = "".join(f"\n  {line}" for line in lines + children)
        return f"{self._get_name()}({body}\n)"


_MISSING = object()


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse.

    ``Sequential(a, b, c)`` names the children "0", "1", "2" like torch (so state dict keys read
    ``"1.weight"``); ``Sequential(OrderedDict(name=module, ...))`` keeps the given names.
    Supports ``len``, iteration, ``seq[i]`` and ``seq[i:j]`` (a Sequential sharing the modules).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            named = list(modules[0].items())
        else:
            named = [(str(index), module) for index, module in enumerate(modules)]
        for name, module in named:
            if not isinstance(module, Module):
                raise TypeError(
                    f"Sequential takes Modules, got {type(module).__name__} at {name!r}"
                )
            self.add_module(name, module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(dict(list(self._modules.items())[index]))
        modules = list(self._modules.values())
        if not -len(modules) <= index < len(modules):
            raise IndexError(f"index {index} is out of range for a Sequential of {len(modules)}")
        return modules[index]

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        """y = f_n(... f_2(f_1(x))); a child that ``absorbs`` the next runs both (a BN and its
        activation in BN's passes)."""
        modules = tuple(self._modules.values())
        absorbed = []  # positions of the children run inside the child before them
        position = 0
        while position < len(modules):
            module = modules[position]
            following = modules[position + 1] if position + 1 < len(modules) else None
            if following is not None and module.absorbs(following):
                x = module.forward_absorbing(x, following)
                absorbed.append(position + 1)
                position += 2
            else:
                x = module(x)
                position += 1
        self._save(tuple(absorbed), x.shape)
        return x

    def inference_plan(self, x, channels_last=False):
        """The children's plans in order, Identity layers left out (one loop of calls)."""
        if not self.planned_as(Sequential):
            return super().inference_plan(x, channels_last)
        return chain_plans(self, x, channels_last)

    def channels_last_convs(self):
        return channels_last_convs(self) if self.planned_as(Sequential) else None

    def backward(self, dy):
        """dx = J_1^T (... J_n^T dy): each child's backward, last child first (an absorbed
        child's is the backward of the child that ran it)."""
        absorbed = self._saved(dy)
        for position, module in reversed(list(enumerate(self._modules.values()))):
            if position not in absorbed:
                dy = module.backward(dy)
        return dy


#: a chain of plans turns channels-last where its input plane has at most this many pixels and
#: every module left can follow, with at least two convs among them (``chain_plans``)
CHANNELS_LAST_PIXELS = 28 * 28


class PlanLayout:
    """How the plans being built lay out activations: ``channels_last`` says whether chains
    may turn channels-last, ``turns`` counts the chains that did (``planned_layout``)."""

    def __init__(self, channels_last: bool):
        self.channels_last, self.turns = channels_last, 0


#: the ``PlanLayout`` of the plans being built; None outside ``planned_layout``: NCHW plans
_PLAN_LAYOUT: ContextVar[PlanLayout | None] = ContextVar("plan_layout", default=None)


@contextmanager
def planned_layout(channels_last: bool) -> Iterator[PlanLayout]:
    """Within this block, ``Module.inference_plan`` builds plans whose chains turn channels-last
    where it pays (``channels_last``) or that stay NCHW throughout (the default). Yields the
    ``PlanLayout``, which counts the chains that turned."""
    layout = PlanLayout(channels_last)
    token = _PLAN_LAYOUT.set(layout)
    try:
        yield layout
    finally:
        _PLAN_LAYOUT.reset(token)


def channels_last_convs(modules) -> int | None:
    """How many convs ``modules`` run in a channels-last plan, None if one of them cannot."""
    counts = [m.channels_last_convs() for m in modules]
    return None if None in counts else sum(counts)


def _turns_channels_last(x, rest: list) -> bool:
    """Whether a chain turns channels-last before ``rest``, its modules left, given their input
    ``x``: the depthwise convs of small planes run faster channels-last
    (``kernels.cpu.channels_last``), and the plan pays one transpose in and one out. Only while
    ``planned_layout(True)`` builds (whether it pays overall is timed: ``models.fuse``)."""
    layout = _PLAN_LAYOUT.get()
    if not (
        layout is not None and layout.channels_last and type(x) is np.ndarray and x.ndim == 4
        and x.shape[2] * x.shape[3] <= CHANNELS_LAST_PIXELS
    ):  # fmt: skip
        return False
    convs = channels_last_convs(rest)
    return convs is not None and convs >= 2


def chain_plans(modules, x, channels_last: bool = False) -> tuple[Callable, object]:
    """``(run, y)`` of ``modules`` applied in order to ``x`` (``Module.inference_plan``): one
    loop over their plans, Identity layers left out. An NCHW chain turns channels-last
    (``to_channels_last``) before the first module from which on it pays
    (``_turns_channels_last``) and back at its end, so it takes and returns NCHW arrays;
    ``channels_last``: ``x`` is (N, H, W, C) already, and so is the result."""
    modules = [m for m in modules if type(m) is not Identity]
    steps, turned = [], False
    for index, module in enumerate(modules):
        if not channels_last and _turns_channels_last(x, modules[index:]):
            channels_last = turned = True
            _PLAN_LAYOUT.get().turns += 1
            x = to_channels_last(x)
            steps.append(to_channels_last)
        step, x = module.inference_plan(x, channels_last)
        steps.append(step)
    if turned:
        x = to_channels_first(x)
        steps.append(to_channels_first)
    if not steps:
        return _unchanged, x
    if len(steps) == 1:
        return steps[0], x
    steps = tuple(steps)

    def run(x):
        for step in steps:
            x = step(x)
        return x

    return run, x


def _unchanged(x):
    return x


class Identity(Module):
    """y = x; dx = dy. Accepts and ignores constructor arguments, like ``torch.nn.Identity``."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        self._save((), x.shape)
        return x

    def channels_last_convs(self):
        return 0  # any layout

    def backward(self, dy):
        self._saved(dy)
        return dy
