"""Errors that end a command with a one-line message and a known exit code; text made safe to show."""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Sequence

EXIT_OK = 0
EXIT_GATE = 1
EXIT_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_SIGNAL_BASE = 128  # killed by signal N: exit 128 + N (SIGHUP 129, SIGTERM 143)

# Faults of the environment (permissions, a full disk, a closed stream), not bugs of ours: exit 2.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                                errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EBADF, errno.EPIPE, errno.EIO,
                                errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE, errno.ETXTBSY})


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


class OutputError(NllError):
    """The operating system refused an output (permission, read-only, full disk, closed stream)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"{path}: {reason}")


def environment_fault(exc: BaseException, path: str | None = None) -> OutputError | None:
    """An OSError caused by the environment as an OutputError naming ``path``; None for anything else."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    return OutputError(str(path or exc.filename or "output"), os.strerror(exc.errno))


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: clean up like Ctrl-C, then exit 128 + the signal number."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def format_rows(rows: Sequence[int], total: int | None = None, limit: int = 5) -> str:
    """'rows 3, 17, 42 (and 5 more)': 1-based data rows, the first few of them."""
    shown = ", ".join(str(r) for r in rows[:limit])
    total = len(rows) if total is None else total
    word = "row" if total == 1 else "rows"
    more = f" (and {total - min(limit, len(rows))} more)" if total > min(limit, len(rows)) else ""
    return f"{word} {shown}{more}"


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})  # controls, format (bidi, zero-width), separators


def _shown(char: str) -> str:
    if char.isprintable() or unicodedata.category(char) not in _HIDDEN_CATEGORIES:
        return char  # Python's isprintable() is stricter (no-break spaces, unassigned code points): keep those
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object) -> str:
    """``text`` safe to show on a terminal: control and format characters (C0, DEL, C1, bidi marks,
    zero-width characters, line and paragraph separators) escaped visibly as ``\\x1b``,
    ``\\u202e``, ``\\n``; every other character (accents, CJK, emoji) untouched."""
    text = str(text)
    return text if text.isprintable() else "".join(map(_shown, text))


def without_trailing_spaces(text: str) -> str:
    """``text`` with no spaces at the ends of its lines, each line ending in a newline (CI logs)."""
    return "".join(line.rstrip(" ") + "\n" for line in text.splitlines())
