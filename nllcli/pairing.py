"""Pairing the rows of two files: by key, in any order (KeyIndex), or by position.

Both pairers take the rows of one file batch by batch and give, for each batch, the positions of
the partner rows in the other file, or None when some have no partner; what is wrong is said by
finish(), once every row has been seen. align_by_position pairs two streams slice by slice,
with the same message when the row counts differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .columns import integers
from .errors import InputError


def align_by_position(left: Iterator, right: Iterator, left_name: str, right_name: str) -> Iterator:
    """Pairs of equal-length slices of two chunk streams, row i with row i."""
    from .readers import Chunk

    right = iter(right)
    current, offset = None, 0
    left_rows = 0
    for chunk in left:
        pos, n_rows = 0, chunk.batch.num_rows
        while pos < n_rows:
            if current is None or offset == current.batch.num_rows:
                current, offset = next(right, None), 0
                if current is None:
                    total_left = left_rows + n_rows + sum(c.batch.num_rows for c in left)
                    raise count_mismatch(left_name, total_left, right_name, left_rows + pos)
            take = min(n_rows - pos, current.batch.num_rows - offset)
            yield (Chunk(chunk.batch.slice(pos, take), chunk.source, chunk.first_row + pos),
                   Chunk(current.batch.slice(offset, take), current.source, current.first_row + offset))
            pos += take
            offset += take
        left_rows += n_rows
    leftover = (current.batch.num_rows - offset if current is not None else 0) + sum(c.batch.num_rows for c in right)
    if leftover:
        raise count_mismatch(left_name, left_rows, right_name, left_rows + leftover)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def count_mismatch(left_name, left_rows, right_name, right_rows) -> InputError:
    return InputError(left_name, f"row counts differ: {left_rows} rows here, {right_rows} rows in {right_name} "
                                 "(pairing by position; use --key to pair by an id column)")


class ByPosition:
    """Row i of one file with row i of another file of ``total`` rows, batch after batch."""

    def __init__(self, total: int, name: str):
        self.total, self.name = total, name
        self.seen = 0  # rows of the other file so far

    def rows(self, n: int) -> np.ndarray | None:
        """Positions of the next ``n`` rows here, or None when this file has run out."""
        start, self.seen = self.seen, self.seen + n
        return np.arange(start, self.seen) if self.seen <= self.total else None

    def finish(self, other_name: str) -> None:
        if self.seen != self.total:
            raise count_mismatch(other_name, self.seen, self.name, self.total)


class KeyIndex:
    """The rows of one file by key, to pair the rows of another file with them in any order.

    Keys missing on either side or repeated are collected while streaming and reported by
    finish(), once every row has been seen (with the count and the first examples).
    """

    def __init__(self, keys, name: str, column: str):
        import pyarrow.compute as pc

        counts = pc.value_counts(keys)
        duplicated = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
        if duplicated:
            raise InputError(name, f"duplicate keys: {duplicated[:5]}", column=column)
        self.keys, self.name, self.column = keys, name, column
        self.used = np.zeros(len(keys), dtype=np.int64)
        self.missing = 0
        self.missing_examples: list = []

    def rows(self, keys) -> np.ndarray | None:
        """Positions of ``keys`` in this file, or None when some are not there (then recorded)."""
        import pyarrow.compute as pc

        rows = integers(pc.index_in(keys, value_set=self.keys), fill=-1)
        absent = np.flatnonzero(rows < 0)
        if absent.size:
            self.missing += absent.size
            self.missing_examples += keys.take(absent[:5]).to_pylist()
            return None
        self.used += np.bincount(rows, minlength=len(self.used))
        return rows

    def finish(self, other_name: str) -> None:
        if self.missing:
            raise InputError(other_name, f"{_count(self.missing, 'key')} with no row in {self.name}: "
                                         f"{self.missing_examples[:5]}", column=self.column)
        repeated = np.flatnonzero(self.used > 1)
        if repeated.size:
            raise InputError(other_name, f"duplicate keys: {self.keys.take(repeated[:5]).to_pylist()}",
                             column=self.column)
        unused = np.flatnonzero(self.used == 0)
        if unused.size:
            raise InputError(self.name, f"{_count(unused.size, 'key')} with no row in {other_name}: "
                                        f"{self.keys.take(unused[:5]).to_pylist()}", column=self.column)


class KeyProblems:
    """What is wrong with a join by key done in pieces (one per hash bucket of the keys), added with
    ``+`` and reported by ``check()`` with the messages of KeyIndex, as if one index had seen every row.

    Examples are kept with the position of their row in its whole input, so the first ones shown
    are those the one-pass join would show.
    """

    def __init__(self, missing: int = 0, missing_examples: list | None = None,
                 duplicated_targets: list | None = None, repeated: list | None = None,
                 unused: int = 0, unused_examples: list | None = None):
        self.missing, self.unused = missing, unused
        # (position, key) pairs, the first few of each bucket
        self.missing_examples = missing_examples or []
        self.duplicated_targets = duplicated_targets or []
        self.repeated = repeated or []
        self.unused_examples = unused_examples or []

    def __add__(self, other: "KeyProblems") -> "KeyProblems":
        def first(a: list, b: list) -> list:
            return sorted(a + b, key=lambda pair: pair[0])[:5]

        return KeyProblems(self.missing + other.missing, first(self.missing_examples, other.missing_examples),
                           first(self.duplicated_targets, other.duplicated_targets),
                           first(self.repeated, other.repeated), self.unused + other.unused,
                           first(self.unused_examples, other.unused_examples))

    def check(self, name: str, target_name: str, column: str) -> None:
        """Raise the error KeyIndex would raise for these rows (``name``: the file paired with the targets)."""
        def keys(pairs: list) -> list:
            return [key for _, key in pairs[:5]]

        if self.duplicated_targets:
            raise InputError(target_name, f"duplicate keys: {keys(self.duplicated_targets)}", column=column)
        if self.missing:
            raise InputError(name, f"{_count(self.missing, 'key')} with no row in {target_name}: "
                                   f"{keys(self.missing_examples)}", column=column)
        if self.repeated:
            raise InputError(name, f"duplicate keys: {keys(self.repeated)}", column=column)
        if self.unused:
            raise InputError(target_name, f"{_count(self.unused, 'key')} with no row in {name}: "
                                          f"{keys(self.unused_examples)}", column=column)
