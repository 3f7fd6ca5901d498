"""What an explanation is made of, and how it is printed (text) or exported (``--json``).

An ``Explanation`` of one concrete op call holds:

* ``sections``: titled lines of arithmetic with the case's numbers filled in (the output size with
  its floor, params and multiply-adds with formula and product, the forward / backward equations,
  what depthwise / pointwise / grouped changes);
* ``sources``: the reference functions that compute it, as file, line numbers and their lines,
  read from the source itself;
* ``counts``: the numbers the arithmetic arrives at (params, mult-adds) next to the model
  counter's for the same layer;
* ``inputs``: the arrays the case was drawn with (x, weights, dy), so a notebook can redo it;
* ``elements``: single elements of y, dx, dw, ... written out as the sum (or selection) the
  equation says, with the actual numbers, and each checked against the reference op's own result
  at that index (and torch's where it is installed).
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: how many terms of a long sum the text shows (the JSON keeps them all)
SHOWN_TERMS = 12

#: an element is "checked" when it equals the op's value to this relative tolerance (float64)
CHECK_RTOL = 1e-12


def num(v: float) -> str:
    """A number as the explanation prints it: 4 significant digits, plain zeros."""
    v = float(v)
    if v == 0:
        return "0"
    return f"{v:.4g}"


def index_text(name: str, index) -> str:
    """``name[i, j, ...]`` (``name`` alone for a scalar's empty index)."""
    return f"{name}[{', '.join(str(int(i)) for i in index)}]" if len(index) else name


@dataclass
class Element:
    """One element of a result written out by its equation, and the check of it.

    ``terms`` are the lines of the sum (``"x[0, 1, 2, 3] * w[1, 0, 0, 0] = 0.5 * -1.2 = -0.6"``);
    ``value`` is their total computed here, independently of the op; ``reference`` is the
    reference op's element at ``index`` and ``torch`` torch's (None without torch).
    """

    name: str
    index: tuple[int, ...]
    equation: str
    terms: list[str]
    value: float
    reference: float
    torch: float | None = None
    note: str = ""
    torch_rtol: float = CHECK_RTOL  # looser only where torch itself rounds (the note says why)
    steps: list[str] = field(default_factory=list)  # what follows the sum (always shown)

    @property
    def checked(self) -> bool:
        scale = max(1.0, abs(self.value))
        if abs(self.reference - self.value) > CHECK_RTOL * scale:
            return False
        return self.torch is None or abs(self.torch - self.value) <= self.torch_rtol * scale

    def lines(self) -> list[str]:
        out = [f"{index_text(self.name, self.index)}:  {self.equation}"]
        shown = self.terms if len(self.terms) <= SHOWN_TERMS + 2 else self.terms[:SHOWN_TERMS]
        out += [f"    {t}" for t in shown]
        if len(shown) < len(self.terms):
            out.append(f"    ... {len(self.terms) - len(shown)} more terms (--json lists all)")
        out += [f"    {step}" for step in self.steps]
        if self.note:
            out.append(f"    ({self.note})")
        check = f"reference op {num(self.reference)}"
        if self.torch is not None:
            check += f", torch {num(self.torch)}"
        verdict = "checked" if self.checked else "MISMATCH"
        out.append(f"    = {num(self.value)}    [{check}: {verdict}]")
        return out


@dataclass
class Source:
    """Lines of a reference function: ``path`` relative to the package's parent, 1-based
    ``first_line``, and the code after the docstring (``lines`` start at ``body_line``)."""

    function: str
    path: str
    first_line: int
    body_line: int
    lines: list[str]

    @classmethod
    def of(cls, func) -> Source:
        lines, first = inspect.getsourcelines(func)
        root = Path(inspect.getfile(func)).resolve().parents[2]
        path = Path(inspect.getfile(func)).resolve().relative_to(root).as_posix()
        body = _body_start(lines)
        return cls(
            f"{func.__module__}.{func.__name__}",
            path,
            first,
            first + body,
            [line.rstrip("\n") for line in lines[body:]],
        )

    def text(self) -> list[str]:
        last = self.body_line + len(self.lines) - 1
        out = [
            f"{self.function}  ({self.path}:{self.first_line}, body lines {self.body_line}-{last})"
        ]
        out += [f"  {self.body_line + k:4d}  {line}" for k, line in enumerate(self.lines)]
        return out


def _body_start(lines: list[str]) -> int:
    """Index of the first line after the signature and the docstring of a function's source."""
    func = ast.parse(textwrap.dedent("".join(lines))).body[0]
    first = func.body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = func.body[1] if has_docstring and len(func.body) > 1 else first
    return start.lineno - 1


@dataclass
class Explanation:
    """Everything printed for one op call (see the module docstring)."""

    op: str
    case: dict
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    elements: list[Element] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # params, mult_adds, the counter's
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # the drawn x, w, dy, ...

    def section(self, title: str, *lines: str) -> None:
        self.sections.append((title, list(lines)))

    @property
    def all_checked(self) -> bool:
        return all(e.checked for e in self.elements)

    def text(self) -> str:
        case = ", ".join(f"{k}={v}" for k, v in self.case.items())
        out = [f"== {self.op}({case})", ""]
        for title, lines in self.sections:
            out += [f"-- {title}", *(f"  {line}" for line in lines), ""]
        if self.sources:
            out.append("-- the reference code that computes it")
            for source in self.sources:
                out += [f"  {line}" for line in source.text()]
            out.append("")
        if self.elements:
            out.append("-- single elements, written out and checked")
            for element in self.elements:
                out += [f"  {line}" for line in element.lines()]
            out.append("")
        verdict = "every element checked" if self.all_checked else "an element does NOT match"
        out.append(f"{verdict} ({len(self.elements)} elements)")
        return "\n".join(out)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["sections"] = [{"title": t, "lines": lines} for t, lines in self.sections]
        for element, source in zip(data["elements"], self.elements, strict=True):
            element["checked"] = source.checked
        data["all_checked"] = self.all_checked
        return data

    def json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=jsonable)


def jsonable(v):
    """``json.dumps``'s ``default`` for NumPy scalars and arrays."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
