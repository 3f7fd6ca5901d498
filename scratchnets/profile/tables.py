"""Plain-text and GitHub-markdown tables, and number formatting, shared by ``summary`` and ``verify``."""

from __future__ import annotations

from collections.abc import Sequence


def thousands(n: int) -> str:
    """``3504872`` -> ``"3,504,872"``."""
    return f"{n:,}"


def millions(n: float, digits: int = 1) -> str:
    """``300774272`` -> ``"300.8 M"``."""
    return f"{n / 1e6:,.{digits}f} M"


def shape_text(shape) -> str:
    """``(1, 32, 112, 112)`` -> ``"1x32x112x112"``; None (no array) -> ``"-"``."""
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """An aligned table: columns padded to their widest cell, those in ``right`` right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells) -> str:
        padded = (
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return "\n".join([line(headers), rule, *(line(row) for row in rows), rule])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A GitHub table (``|`` inside cells escaped); columns in ``right`` right-aligned."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if i in right else "---" for i in range(len(headers))]
    return "\n".join([line(headers), line(align), *(line(row) for row in rows)])
