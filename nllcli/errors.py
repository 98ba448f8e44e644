"""Errors that end a command with a one-line message and a known exit code."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_GATE = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class NllError(Exception):
    """A problem the user can fix: bad input or bad usage. Exit code 2, no traceback."""

    exit_code = EXIT_INPUT


class InputError(NllError):
    """An input file that cannot be scored as it is."""

    def __init__(self, source: str, message: str, column: str | list[str] | None = None,
                 rows: Sequence[int] | None = None, total: int | None = None,
                 hint: str | None = None):
        self.source, self.column, self.rows, self.hint = source, column, rows, hint
        parts = [source]
        if isinstance(column, list):  # a range of class columns
            parts.append(f"columns {column[0]!r}..{column[-1]!r}")
        elif column is not None:
            parts.append(f"column {column!r}")
        text = ": ".join(parts) + f": {message}"
        if rows:
            text += f" at {format_rows(rows, total)}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class UsageError(NllError):
    """Options that do not fit together or do not fit the input."""


def format_rows(rows: Sequence[int], total: int | None = None, limit: int = 5) -> str:
    """'rows 3, 17, 42 (and 5 more)': 1-based data rows, the first few of them."""
    shown = ", ".join(str(r) for r in rows[:limit])
    total = len(rows) if total is None else total
    word = "row" if total == 1 else "rows"
    more = f" (and {total - min(limit, len(rows))} more)" if total > min(limit, len(rows)) else ""
    return f"{word} {shown}{more}"
