"""Markdown for the report and the experiment comparison: percentages and pipe tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def percent_text(value: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for a missing value."""
    return "-" if value is None else f"{100 * float(value):.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table (no trailing newline); cells are formatted with ``str``."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
