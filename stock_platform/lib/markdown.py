"""Markdown tables for Dagster metadata and reports (no Dagster here)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(rows: Iterable[Sequence], columns: Sequence[str], fmt: str = "{:.4g}") -> str:
    """`rows` (sequences in the order of `columns`) as a markdown table; floats formatted with `fmt`."""
    def cell(value) -> str:
        return fmt.format(value) if isinstance(value, float) else str(value)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    return head + "".join("\n| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
