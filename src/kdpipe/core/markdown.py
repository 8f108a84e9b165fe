"""Markdown tables, the one way every report (comparison, sweep, export) writes one."""
from __future__ import annotations


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A table's lines: the header, the alignment row (`align`: one letter per column, l for
    text, r for numbers) and one line per row of already formatted cells."""
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError(f"a table of {len(header)} columns ({align!r}) got rows of "
                         f"{sorted({len(row) for row in rows})} cells")
    rule = "|".join("---:" if a == "r" else "---" for a in align)
    return [line(header), f"|{rule}|", *(line(row) for row in rows)]


def line(cells: list[str]) -> str:
    return f"| {' | '.join(cells)} |"


def plus_minus(value: float, ci: float | None, sign: str = "") -> str:
    """A mean and its 95% CI half-width as every report writes them, e.g. +1.83 ± 0.76 (`sign`
    "+" for gains); the mean alone where there is no CI (one seed)."""
    return f"{value:{sign}.2f}" + (f" ± {ci:.2f}" if ci is not None else "")


def p_cell(p: float | None, places: int = 3) -> str:
    """A p value to `places` decimals, "< 0.001" below what they show (never a bare 0), "–"
    where there is none (one seed)."""
    if p is None:
        return "–"
    floor = 10.0 ** -places
    return f"< {floor:.{places}f}" if p < floor else f"{p:.{places}f}"


def p_is(p: float, places: int = 3) -> str:
    """The same in prose: "p = 0.031", or "p < 0.001" below what the decimals show."""
    cell = p_cell(p, places)
    return f"p {cell}" if cell.startswith("<") else f"p = {cell}"
