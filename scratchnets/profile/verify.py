"""Recompute every published number of ``papers.ROWS`` and judge it.

For each row the configured network is built (``scratchnets.models.create``, or one of the
``BUILDERS`` below that lay out [V1] Table 1, [V2] Table 2 or a single layer exactly as printed),
traced once on the meta backend (``summary``), and the row's quantity is counted under the row's
convention. Verdicts:

* ``match``: the count rounds or truncates to the printed value (``papers`` module docstring);
* ``erratum``: it does not, the row carries a documented ``Erratum``, and the corrected value /
  configuration / quantity does reproduce;
* ``MISMATCH``: anything else (``scratchnets verify`` then exits non-zero).

The seeds' table (``papers.SEEDS_TABLE``, ``verify_seeds``) puts the parameters and multiply-adds
of the seed's eight configurations side by side: each published number is the verdict of the
row it cites; a quantity no source has a number for is our count alone, verdict ``computed``,
tallied apart from matches.

Models are built with ``skip_init`` (no random draws: weights are never read) and cached per
configuration, so the whole table takes a few seconds.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .. import models
from ..models.blocks import SqueezeExcite, make_divisible
from ..nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    Module,
    ReLU,
    ReLU6,
    Sequential,
)
from ..nn.init import skip_init
from .conventions import CONVENTIONS, MACS, MACS_SE_SCALE, count_params
from .papers import SOURCES, V1_TABLE1, V2_TABLE2, ModelConfig, PaperRow, SeedEntry
from .summary import Summary, summary
from .tables import markdown_table, millions, text_table, thousands

# ------------------------------------------------------------------------ builders


def _conv_bn_act(c_in, c_out, k, stride=1, groups=1, act=ReLU) -> list[Module]:
    """conv (padding k//2, no bias) -> BN -> act: the unit of both papers' tables."""
    layers = [Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), BatchNorm2d(c_out)]
    return layers + ([act()] if act is not None else [])


def _expand_repeats(lines):
    """(index, line) in execution order: a run of lines with ``repeat`` r is emitted r times."""
    i = 0
    while i < len(lines):
        j = i + 1
        while lines[i].repeat > 1 and j < len(lines) and lines[j].repeat == lines[i].repeat:
            j += 1
        for _ in range(lines[i].repeat):
            yield from ((k, lines[k]) for k in range(i, j))
        i = j


def build_v1_table1(config: ModelConfig) -> tuple[Module, int]:
    """MobileNet from [V1] Table 1 as printed: conv / dw / pw lines (each + BN + ReLU), global
    average pooling, FC. Channels scale as ``int(c * alpha)`` ([V1] §3.3, Keras).

    Options: ``strides`` ((line index, stride), ...) overrides printed strides; ``full_conv``
    replaces every dw + pw pair by one full 3x3 conv (Table 4's "Conv MobileNet"); ``shallow``
    drops the 5x repeated separable layers at 14x14x512 (Table 5).
    """
    opts = dict(config.options)
    strides = dict(opts.get("strides", ()))

    def ch(c: int) -> int:
        return max(1, int(c * config.width))

    lines = [(i, line) for i, line in _expand_repeats(V1_TABLE1)]
    if opts.get("shallow"):
        lines = [(i, line) for i, line in lines if line.repeat == 1]
    layers: list[Module] = []
    k = 0
    while k < len(lines):
        i, line = lines[k]
        stride = strides.get(i, line.stride)
        if line.type == "Conv" and i == 0:  # the stem reads the 3 image channels
            layers += _conv_bn_act(3, ch(line.filter[3]), line.filter[0], stride)
        elif line.type == "Conv dw" and opts.get("full_conv"):  # dw + the pw after it
            pw = lines[k + 1][1]
            layers += _conv_bn_act(ch(pw.filter[2]), ch(pw.filter[3]), 3, stride)
            k += 1
        elif line.type == "Conv dw":
            c = ch(line.filter[2])
            layers += _conv_bn_act(c, c, line.filter[0], stride, groups=c)
        elif line.type == "Conv":
            layers += _conv_bn_act(ch(line.filter[2]), ch(line.filter[3]), line.filter[0], stride)
        elif line.type == "Avg Pool":  # global, so that the as-printed typo still runs
            layers += [AdaptiveAvgPool2d(1), Flatten()]
        else:  # "FC"
            layers.append(Linear(ch(line.filter[0]), config.classes))
        k += 1
    return Sequential(*layers), 3


def build_v2_table2(config: ModelConfig) -> tuple[Module, int]:
    """MobileNetV2 from [V2] Table 2 as printed (Table 1's bottleneck: 1x1 expand (t != 1) ->
    3x3 depthwise -> linear 1x1 projection, ReLU6). Widths ``make_divisible(c * alpha, 8)``, the
    1280 conv kept for alpha < 1; the classifier is the table's 1x1 conv with bias. Residual adds
    are left out: they cost no mult-adds and have no parameters."""
    layers: list[Module] = []
    c_in = 3
    for line in V2_TABLE2:
        if line.operator == "conv2d":
            c = make_divisible(line.c * config.width)
            layers += _conv_bn_act(c_in, c, 3, line.s, act=ReLU6)
        elif line.operator == "bottleneck":
            c = make_divisible(line.c * config.width)
            for repeat in range(line.n):
                hidden = c_in * line.t
                if line.t != 1:
                    layers += _conv_bn_act(c_in, hidden, 1, act=ReLU6)
                stride = line.s if repeat == 0 else 1
                layers += _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=ReLU6)
                layers += _conv_bn_act(hidden, c, 1, act=None)
                c_in = c
        elif line.c is not None:  # conv2d 1x1 to 1280
            c = make_divisible(line.c * max(1.0, config.width))
            layers += _conv_bn_act(c_in, c, 1, act=ReLU6)
        elif line.operator.startswith("avgpool"):
            layers.append(AdaptiveAvgPool2d(1))
        else:  # the classifier: conv2d 1x1 to k classes, with bias
            layers += [Conv2d(c_in, config.classes, 1), Flatten()]
            continue
        c_in = c
    return Sequential(*layers), 3


def _scaled(config: ModelConfig, name: str) -> int:
    return max(1, int(dict(config.options)[name] * config.width))


def build_standard_conv(config: ModelConfig) -> tuple[Module, int]:
    """One K x K conv, M -> N channels (alpha-scaled), 'same' padding: [V1] eq. (2)."""
    o = dict(config.options)
    m, n = _scaled(config, "M"), _scaled(config, "N")
    return Sequential(Conv2d(m, n, o["K"], padding=o["K"] // 2, bias=False)), m


def build_separable_conv(config: ModelConfig) -> tuple[Module, int]:
    """K x K depthwise conv then 1x1 pointwise, M -> N (alpha-scaled): [V1] eq. (5)."""
    k = dict(config.options)["K"]
    m, n = _scaled(config, "M"), _scaled(config, "N")
    dw = Conv2d(m, m, k, padding=k // 2, groups=m, bias=False)
    return Sequential(dw, Conv2d(m, n, 1, bias=False)), m


def build_conv_stack(config: ModelConfig) -> tuple[Module, int]:
    """Convs C -> C applied in turn, one per (kh, kw) in ``kernels``, 'same' padding."""
    c = _scaled(config, "C")
    convs = [
        Conv2d(c, c, (kh, kw), padding=(kh // 2, kw // 2), bias=False)
        for kh, kw in dict(config.options)["kernels"]
    ]
    return Sequential(*convs), c


BUILDERS = {
    "v1_table1": build_v1_table1,
    "v2_table2": build_v2_table2,
    "standard_conv": build_standard_conv,
    "separable_conv": build_separable_conv,
    "conv_stack": build_conv_stack,
}


def _kernel_area(config: ModelConfig) -> int:
    return sum(kh * kw for kh, kw in dict(config.options)["kernels"])


#: closed forms of the seed rows, from the configs alone (no counting)
FORMULAS = {
    # [V1]: (K^2 M D^2 + M N D^2) / (K^2 M N D^2)
    "separable": lambda row: (
        1 / dict(row.config.options)["N"] + 1 / dict(row.config.options)["K"] ** 2
    ),
    # C -> C convs cost C^2 H W per kernel tap: saving = 1 - taps / reference taps, in %
    "kernel_area": lambda row: 100 * (1 - _kernel_area(row.config) / _kernel_area(row.reference)),
}


# ------------------------------------------------------------------------- counting


class Counter:
    """Builds each configuration once and traces each (configuration, resolution) once."""

    def __init__(self):
        self._models: dict[tuple, tuple[Module, int]] = {}
        self._summaries: dict[ModelConfig, Summary] = {}

    def model(self, config: ModelConfig) -> tuple[Module, int]:
        """(model, input channels) for ``config`` (the resolution does not matter here)."""
        key = (config.name, config.width, config.classes, config.options)
        if key not in self._models:
            with skip_init():
                self._models[key] = self._build(config)
        return self._models[key]

    @staticmethod
    def _build(config: ModelConfig) -> tuple[Module, int]:
        if config.name in BUILDERS:
            return BUILDERS[config.name](config)
        options = dict(config.options)
        reparameterize = options.pop("reparameterize", False)
        model = models.create(config.name, config.classes, config.width, **options)
        if reparameterize:
            with np.errstate(all="ignore"):  # folding uninitialised weights: shapes are what count
                model.reparameterize()
        return model, 3

    def summary(self, config: ModelConfig) -> Summary:
        if config not in self._summaries:
            model, channels = self.model(config)
            shape = (1, channels, config.resolution, config.resolution)
            self._summaries[config] = summary(model, shape, name=config.label())
        return self._summaries[config]

    def _se_scale_multiplies(self, config: ModelConfig) -> int:
        """The elements the squeeze-excite gates of ``config``'s model scale, per image: each
        SE module's own multiply (x * g) in the summary."""
        se_modules = {name for name, module in self.model(config)[0].named_modules()
                      if isinstance(module, SqueezeExcite)}  # fmt: skip
        return sum(row.other_ops.get("elementwise", 0) for row in self.summary(config).rows
                   if row.name in se_modules and row.type == "mul")  # fmt: skip

    def count(self, row: PaperRow, config: ModelConfig | None = None, quantity: str | None = None):
        """The row's quantity for ``config`` (default the row's), in base units."""
        config, quantity = config or row.config, quantity or row.quantity
        if quantity == "params":
            return float(count_params(self.model(config)[0], row.convention))
        s = self.summary(config)
        if quantity == "macs":
            return float(s.total_macs)
        if quantity == "conv_macs":
            return float(s.total_macs - s.macs_by_kind().get("fully connected", 0))
        if quantity == "macs_se_scale":
            return float(s.total_macs + self._se_scale_multiplies(config))
        if quantity == "depthwise_layers":
            return float(sum(1 for r in s.rows if r.kind.startswith("depthwise")))
        if quantity.startswith("macs_pct:"):
            return 100.0 * s.macs_by_kind().get(quantity.split(":", 1)[1], 0) / s.total_macs
        if quantity.startswith("weights_pct:"):
            weights = s.weights_by_kind()
            return 100.0 * weights.get(quantity.split(":", 1)[1], 0) / sum(weights.values())
        ratio = s.total_macs / self.summary(row.reference).total_macs
        if quantity == "macs_ratio":
            return ratio
        if quantity == "macs_saving_pct":
            return 100.0 * (1.0 - ratio)
        raise ValueError(f"row {row.key}: unknown quantity {quantity!r}")


def rounding_match(row: PaperRow, ours: float, printed: str | None = None) -> str | None:
    """ "rounded" / "truncated" if ``ours`` prints as ``printed`` (default: the published value)
    at its precision, else None."""
    value, step = row.value(printed), row.step(printed)
    slack = 1e-9 * step  # float noise in shares and ratios
    if abs(ours - value) <= step / 2 + slack:
        return "rounded"
    if value - slack <= ours < value + step:
        return "truncated"
    return None


@dataclass(frozen=True)
class VerifiedRow:
    """A published number next to ours. ``ours`` and ``corrected_ours`` are in base units."""

    row: PaperRow
    ours: float
    verdict: str  # "match" | "erratum" | "MISMATCH"
    how: str | None  # "rounded" / "truncated": how the value (or its correction) reproduces
    corrected_ours: float | None = None  # the count under the erratum's config / quantity
    formula: float | None = None  # the seed rows' closed form

    @property
    def ok(self) -> bool:
        return self.verdict != "MISMATCH"

    def difference(self) -> float:
        """ours - published, in the row's unit."""
        return (self.ours - self.row.value()) / _unit(self.row)

    def explanation(self) -> str:
        e = self.row.erratum
        if self.verdict == "erratum":
            fix = (
                f"corrected {e.corrected}{_unit_text(self.row)}" if e.corrected
                else f"with {e.config.label()}" if e.config
                else f"counting {e.quantity}"
            )  # fmt: skip
            ours = f"ours {_format(self.row, self.corrected_ours)}" if self.corrected_ours else ""
            return f"{e.note}. {fix} {ours} ({self.how}). [{e.documented}]".replace("  ", " ")
        if self.verdict == "MISMATCH":
            return f"ours {_format(self.row, self.ours)} does not print as {self.row.published}"
        return ""

    def to_dict(self) -> dict:
        row = asdict(self.row)
        return {
            **row,
            "config": self.row.config.label(),
            "ours": self.ours,
            "ours_in_unit": self.ours / _unit(self.row),
            "difference_in_unit": self.difference(),
            "verdict": self.verdict,
            "how": self.how,
            "corrected_ours": self.corrected_ours,
            "formula": self.formula,
            "explanation": self.explanation(),
        }


def _unit(row: PaperRow) -> float:
    return row.value("1")


def _unit_text(row: PaperRow) -> str:
    return {"": "", "%": " %"}.get(row.unit, f" {row.unit}")


def _format(row: PaperRow, value: float | None, sign: str = "") -> str:
    """``value`` (base units) in the row's unit, one digit finer than the published value
    (exact integer counts as integers with thousands separators)."""
    if value is None:
        return "-"
    if row.unit == "" and row.step() == 1 and float(value).is_integer():
        return f"{int(value):{sign},}"
    digits = max(0, -round(np.log10(row.step() / _unit(row)))) + 1
    return f"{value / _unit(row):{sign},.{digits}f}"


def verify_row(row: PaperRow, counter: Counter | None = None) -> VerifiedRow:
    """Count ``row``'s quantity and give the verdict."""
    counter = counter or Counter()
    ours = counter.count(row)
    formula = FORMULAS[row.formula](row) if row.formula else None
    how = rounding_match(row, ours)
    if formula is not None and rounding_match(row, formula) is None:
        how = None  # the closed form must reproduce the printed value too
    if how is not None or row.erratum is None:
        return VerifiedRow(row, ours, "match" if how else "MISMATCH", how, formula=formula)
    e = row.erratum
    corrected_ours = ours
    if e.config is not None or e.quantity is not None:
        corrected_ours = counter.count(row, e.config, e.quantity)
    how = rounding_match(row, corrected_ours, e.corrected)
    return VerifiedRow(row, ours, "erratum" if how else "MISMATCH", how, corrected_ours, formula)


def verify_all(only: str | None = None, counter: Counter | None = None) -> list[VerifiedRow]:
    """Every row of ``papers.ROWS`` (those whose key, source or description contain ``only``,
    case-insensitively), verified."""
    from .papers import ROWS

    counter = counter or Counter()
    needle = (only or "").lower()
    chosen = [r for r in ROWS if needle in f"{r.key} {r.source} {r.where} {r.description}".lower()]
    return [verify_row(row, counter) for row in chosen]


# ----------------------------------------------------------------------- the seeds' table

#: how a seeds'-table count with no published number counts parameters
COMPUTED_CONVENTION = "trainable"


@dataclass(frozen=True)
class SeedCell:
    """One quantity ("params" or "macs") of a seeds'-table line: the published row verified, or,
    where no source publishes a number (``verified`` None), our count alone: verdict "computed",
    which is neither a match nor a mismatch."""

    quantity: str
    ours: float
    verified: VerifiedRow | None = None

    @property
    def verdict(self) -> str:
        return self.verified.verdict if self.verified else "computed"

    @property
    def convention(self) -> str:
        if self.quantity == "macs":
            return "macs"
        return self.verified.row.convention if self.verified else COMPUTED_CONVENTION

    def ours_text(self) -> str:
        """Parameters exactly, with the convention counted; multiply-adds in millions."""
        if self.quantity == "macs":
            return millions(self.ours)
        return f"{thousands(round(self.ours))} ({self.convention})"

    def published_text(self) -> str:
        if self.verified is None:
            return "-"
        r = self.verified.row
        return f"{r.published}{_unit_text(r)} [{r.source}]{'*' if r.unconfirmed else ''}"

    def explanation(self, entry: SeedEntry) -> str:
        if self.verified is None:
            counted = "conv + FC multiply-adds" if self.quantity == "macs" else self.convention
            return (
                f"no source publishes {self.quantity} for {entry.config.label()}: "
                f"{self.ours_text()} is only our count ({counted}), verified against nothing"
            )
        return self.verified.explanation()

    def to_dict(self, entry: SeedEntry) -> dict:
        r = self.verified.row if self.verified else None
        return {
            "verdict": self.verdict,
            "ours": self.ours,
            "convention": self.convention,
            "published": r.published if r else None,
            "unit": r.unit if r else None,
            "source": r.source if r else None,
            "key": r.key if r else None,
            "how": self.verified.how if self.verified else None,
            "explanation": self.explanation(entry),
        }


@dataclass(frozen=True)
class SeedResult:
    """A seeds'-table line: the configuration, its parameters and its multiply-adds."""

    entry: SeedEntry
    params: SeedCell
    macs: SeedCell

    @property
    def cells(self) -> tuple[SeedCell, SeedCell]:
        return self.params, self.macs

    @property
    def ok(self) -> bool:
        return all(cell.verdict != "MISMATCH" for cell in self.cells)

    def to_dict(self) -> dict:
        e = self.entry
        return {
            "key": e.key,
            "model": e.model,
            "alpha": e.config.width,
            "rho": e.rho,
            "resolution": e.config.resolution,
            "config": e.config.label(),
            "params": self.params.to_dict(e),
            "macs": self.macs.to_dict(e),
        }


def verify_seed(entry: SeedEntry, counter: Counter | None = None) -> SeedResult:
    """The published rows ``entry`` cites, verified; our count of ``entry.config`` where it cites
    none."""
    from .papers import ROWS

    counter = counter or Counter()
    by_key = {row.key: row for row in ROWS}

    def cell(quantity: str, key: str | None) -> SeedCell:
        if key is not None:
            verified = verify_row(by_key[key], counter)
            return SeedCell(quantity, verified.ours, verified)
        if quantity == "params":
            model = counter.model(entry.config)[0]
            return SeedCell(quantity, float(count_params(model, COMPUTED_CONVENTION)))
        return SeedCell(quantity, float(counter.summary(entry.config).total_macs))

    return SeedResult(entry, cell("params", entry.params), cell("macs", entry.macs))


def verify_seeds(only: str | None = None, counter: Counter | None = None) -> list[SeedResult]:
    """Every line of ``papers.SEEDS_TABLE`` (those whose key, model or cited keys contain
    ``only``, case-insensitively), verified."""
    from .papers import SEEDS_TABLE

    counter = counter or Counter()
    needle = (only or "").lower()
    searched = [
        (e, " ".join(filter(None, (e.key, e.model, e.params, e.macs)))) for e in SEEDS_TABLE
    ]
    chosen = [e for e, text in searched if needle in text.lower()]
    return [verify_seed(entry, counter) for entry in chosen]


# ----------------------------------------------------------------------------- output

TOLERANCE = (
    "A count matches a printed value P with last digit u if it rounds to P (|ours - P| <= u/2) "
    "or truncates to P (P <= ours < P + u): the sources do both."
)


def legend() -> str:
    lines = ["Conventions:", f"  macs: {MACS}", f"  macs_se_scale: {MACS_SE_SCALE}"]
    lines += [f"  {c.key}: {c.label} [{c.sources}]" for c in CONVENTIONS.values()]
    lines += ["Tolerance: " + TOLERANCE, "Sources:"]
    lines += [f"  [{key}] {text}" for key, text in SOURCES.items()]
    return "\n".join(lines)


def _cells(results: list[VerifiedRow]) -> tuple[list[str], list[list[str]], set[int]]:
    headers = ["Source", "What", "Config", "Quantity", "Published", "Ours", "Diff", "Verdict"]
    rows = []
    for n, v in enumerate(results, 1):
        r = v.row
        quantity = r.quantity if r.quantity != "params" else f"params ({r.convention})"
        verdict = v.verdict + (f" [{n}]" if v.verdict != "match" else "")
        rows.append([
            f"[{r.source}]{'*' if r.unconfirmed else ''} {r.where}", r.description,
            r.config.label(), quantity, r.published + _unit_text(r), _format(r, v.ours),
            _format(r, v.ours - r.value(), sign="+"), verdict,
        ])  # fmt: skip
    return headers, rows, {4, 5, 6}


#: arXiv ids of the papers among ``papers.SOURCES`` (also in the sources' legend)
ARXIV = {"V1": "1704.04861", "V2": "1801.04381", "V3": "1905.02244", "GN": "1911.11907",
         "GNv2": "2211.12905", "GNv3": "2404.11202"}  # fmt: skip
#: the text report's width (``--wide``: the published numbers one line per row, ~240 wide)
WIDTH = 120
#: the narrow table's "What" column: the description, config and quantity wrapped to this width
WHAT_WIDTH = 36


def _wrapped(text: str, width: int, indent: str = "") -> list[str]:
    """``text`` wrapped to ``width``; an arXiv id is never split from its word."""
    lines = textwrap.wrap(text.replace("arXiv ", "arXiv\xa0"), width, initial_indent=indent,
                          subsequent_indent=indent)  # fmt: skip
    return [line.replace("\xa0", " ") for line in lines]


def _lines(rows: list[list[str]]) -> list[list[str]]:
    """Rows whose cells hold several lines (``\\n``) as one table row per line."""
    out = []
    for row in rows:
        cells = [cell.split("\n") for cell in row]
        out += [[c[k] if k < len(c) else "" for c in cells] for k in range(max(map(len, cells)))]
    return out


def _narrow_cells(results: list[VerifiedRow]) -> tuple[list[str], list[list[str]], set[int]]:
    """The published numbers within ``WIDTH`` columns: the source with its arXiv id, and the
    description, configuration and quantity, each wrapped over several lines; every number with
    its unit (``--wide``: one line per row, ``_cells``)."""
    headers = ["Source", "What", "Published", "Ours", "Diff", "Verdict"]
    rows = []
    for n, v in enumerate(results, 1):
        r = v.row
        quantity = r.quantity if r.quantity != "params" else f"params ({r.convention})"
        source = f"[{r.source}]{'*' if r.unconfirmed else ''} {r.where}"
        source += f"\narXiv {ARXIV[r.source]}" if r.source in ARXIV else ""
        what = _wrapped(r.description, WHAT_WIDTH)
        what += _wrapped(f"{r.config.label()}; {quantity}", WHAT_WIDTH, "  ")
        unit = _unit_text(r)
        verdict = v.verdict + (f" [{n}]" if v.verdict != "match" else "")
        rows.append([source, "\n".join(what), r.published + unit, _format(r, v.ours) + unit,
                     _format(r, v.ours - r.value(), sign="+") + unit, verdict])  # fmt: skip
    return headers, _lines(rows), {2, 3, 4}


def _narrow_seed_cells(seeds: Sequence[SeedResult]) -> tuple[list[str], list[list[str]], set[int]]:
    """The seeds' table within ``WIDTH`` columns: conventions, sources and the two verdicts on
    a line of their own."""
    headers, rows, right = _seed_cells(seeds)
    breaks = {3: " (", 5: " [", 6: " [", 7: " / "}  # column -> where its second line starts
    split = [[cell.replace(breaks[k], "\n" + breaks[k].lstrip()) if k in breaks else cell
              for k, cell in enumerate(row)] for row in rows]  # fmt: skip
    return headers, _lines(split), right


def _notes(results: list[VerifiedRow]) -> list[str]:
    notes = [
        f"[{n}] {v.row.key}: {v.explanation()}"
        for n, v in enumerate(results, 1)
        if v.verdict != "match"
    ]
    formulas = [
        f"{v.row.key}: closed form {v.row.where} = {v.formula:.4f}, layers counted {v.ours:.4f}"
        for v in results
        if v.formula is not None
    ]
    return notes + formulas


def tally(results, verdicts: Sequence[str] = ("match", "erratum", "MISMATCH")) -> dict[str, int]:
    """How many of ``results`` (anything with a ``verdict``) have each of ``verdicts``."""
    counts = dict.fromkeys(verdicts, 0)
    for v in results:
        counts[v.verdict] += 1
    return counts


def _tally_text(results: list[VerifiedRow]) -> str:
    t = tally(results)
    return (
        f"{len(results)} published numbers: {t['match']} match, {t['erratum']} documented "
        f"errata, {t['MISMATCH']} MISMATCH. (* = from a secondary source, unconfirmed against the "
        "paper's text)"
    )


SEEDS_TITLE = (
    "Seeds' table: the configurations the project's seed compares (alpha: width multiplier; "
    "rho: resolution multiplier of 224, of 299 for Xception; px: input size). Published: what "
    "the sources give for exactly that configuration, ours counted under that source's "
    "convention; '-': no source gives it, so ours is only computed, not verified."
)


def _seed_flags(seeds: Sequence[SeedResult]) -> dict[tuple[str, str], str]:
    """The note label ("s1", "s2", ...) of every seeds'-table cell that is not a plain match."""
    flagged = [(s.entry.key, c.quantity) for s in seeds for c in s.cells if c.verdict != "match"]
    return {key: f"s{n}" for n, key in enumerate(flagged, 1)}


def _seed_cells(seeds: Sequence[SeedResult]) -> tuple[list[str], list[list[str]], set[int]]:
    headers = ["Model", "alpha", "rho (px)", "Ours params", "Ours MACs", "Published params",
               "Published MACs", "Verdict (params / MACs)"]  # fmt: skip
    flags = _seed_flags(seeds)
    rows = []
    for s in seeds:
        e = s.entry
        verdicts = [
            c.verdict + (f" [{flags[e.key, c.quantity]}]" if (e.key, c.quantity) in flags else "")
            for c in s.cells
        ]
        rows.append([
            e.model, f"{e.config.width:g}", f"{e.rho} ({e.config.resolution})",
            s.params.ours_text(), s.macs.ours_text(), s.params.published_text(),
            s.macs.published_text(), " / ".join(verdicts),
        ])  # fmt: skip
    return headers, rows, {1, 3, 4}


def _seed_notes(seeds: Sequence[SeedResult]) -> list[str]:
    flags = _seed_flags(seeds)
    return [
        f"[{flags[s.entry.key, c.quantity]}] {s.entry.key} {c.quantity}"
        + (f" ({c.verified.row.key})" if c.verified else "")
        + f": {c.explanation(s.entry)}"
        for s in seeds
        for c in s.cells
        if (s.entry.key, c.quantity) in flags
    ]


def seed_tally(seeds: Sequence[SeedResult]) -> dict[str, int]:
    """Verdicts of the seeds' table cells; "computed" (no published number) counted apart."""
    cells = [cell for s in seeds for cell in s.cells]
    return tally(cells, ("match", "erratum", "computed", "MISMATCH"))


def _seed_tally_text(seeds: Sequence[SeedResult]) -> str:
    t = seed_tally(seeds)
    return (
        f"Seeds' table: {len(seeds)} configurations, {2 * len(seeds)} numbers: {t['match']} match, "
        f"{t['erratum']} documented errata, {t['computed']} computed (no published number: our "
        f"count only, not verified), {t['MISMATCH']} MISMATCH."
    )


def _sections(
    results: list[VerifiedRow], seeds: Sequence[SeedResult], table: Callable, notes: Callable,
    cells: Callable = _cells, seed_cells: Callable = None,
) -> list[str]:  # fmt: skip
    """The published numbers and the seeds' table, each with its tally and notes: ``table``
    renders (headers, rows, right-aligned columns), ``notes(title, lines)`` a list of notes,
    ``cells`` / ``seed_cells`` give each table's (headers, rows, right-aligned columns)."""
    seed_cells = _seed_cells if seed_cells is None else seed_cells
    parts = []
    if results:
        parts += [table(*cells(results)), _tally_text(results)]
        parts.append(notes("Errata, mismatches and formulas:", _notes(results)))
    if seeds:
        parts += [SEEDS_TITLE, table(*seed_cells(seeds)), _seed_tally_text(seeds)]
        parts.append(
            notes("Seeds' table: errata, mismatches and computed counts:", _seed_notes(seeds))
        )
    return [p for p in parts if p]


def render_text(
    results: list[VerifiedRow], seeds: Sequence[SeedResult] = (), wide: bool = False
) -> str:
    """The report as text: the published numbers' table within 120 columns (``wide``: one line
    per row with every column), the seeds' table, the notes and the legend."""

    def notes(title: str, lines: list[str]) -> str:
        return "\n".join([title, *lines]) if lines else ""

    if wide:
        return "\n\n".join(_sections(results, seeds, text_table, notes) + [legend()])
    parts = _sections(results, seeds, text_table, notes, _narrow_cells, _narrow_seed_cells)
    return "\n\n".join(_fit(part) for part in [*parts, legend()])


def _fit(text: str) -> str:
    """Lines longer than ``WIDTH`` wrapped, their continuations indented (tables fit already)."""
    out = []
    for line in text.splitlines():
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        out += (
            [line]
            if len(line) <= WIDTH
            else _wrapped(line, WIDTH, "")[:1]
            + _wrapped(" ".join(_wrapped(line, WIDTH)[1:]), WIDTH, indent)
        )
    return "\n".join(out)


def render_markdown(results: list[VerifiedRow], seeds: Sequence[SeedResult] = ()) -> str:
    def notes(title: str, lines: list[str]) -> str:
        return "\n".join([f"**{title}**", *(f"- {n}" for n in lines)]) if lines else ""

    parts = _sections(results, seeds, markdown_table, notes)
    return "\n\n".join(parts + ["```\n" + legend() + "\n```"])


def render_json(results: list[VerifiedRow], seeds: Sequence[SeedResult] = ()) -> str:
    return json.dumps(
        {
            "rows": [v.to_dict() for v in results],
            "summary": {**tally(results), "total": len(results)},
            "seeds_table": {
                "rows": [s.to_dict() for s in seeds],
                "summary": {
                    **seed_tally(seeds),
                    "configurations": len(seeds),
                    "total": 2 * len(seeds),
                },  # fmt: skip
            },
            "conventions": {
                "macs": MACS,
                "macs_se_scale": MACS_SE_SCALE,
                **{c.key: c.label for c in CONVENTIONS.values()},
            },
            "tolerance": TOLERANCE,
            "sources": SOURCES,
        },
        indent=2,
        default=str,
    )
