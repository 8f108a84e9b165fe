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
