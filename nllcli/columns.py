"""Which columns hold the label, the class probabilities, the targets, the key and the weights.

A prediction file comes in one of three layouts:

- wide: one column per class, found by ``--classes``, by a shared prefix (``p_``, ``prob_``,
  ``proba_``; the class name is the rest), or else every numeric column that has no other role;
- binary: a single probability column, P(class 1);
- list: one column holding the whole vector (Parquet ``list<double>``), chosen with ``--probs``.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .errors import InputError, UsageError

CLASS_PREFIXES = ("p_", "prob_", "proba_")
LABEL_NAMES = ("label", "y", "y_true", "target", "true_label", "class")
DEFAULT_KEY = "id"
BINARY_LABELS = {"0": 0, "1": 1, "false": 0, "true": 1}


@dataclass
class Layout:
    """The resolved roles of a file's columns."""

    source: str
    class_names: list[str]
    class_columns: list[str] = field(default_factory=list)  # wide layout (one per class)
    list_column: str | None = None
    label: str | None = None
    key: str | None = None
    weight: str | None = None
    positive: str | None = None  # binary layout: which label is class 1 (None: 0/1 or false/true)
    binary: bool = False
    extra: list[str] = field(default_factory=list)  # more columns to read (same-file targets)
    groups: list[str] = field(default_factory=list)  # --by columns

    @property
    def columns(self) -> list[str]:
        """The columns to read, each once."""
        wanted = [self.key, self.label, self.weight, self.list_column, *self.class_columns, *self.extra,
                  *self.groups]
        return list(dict.fromkeys(c for c in wanted if c is not None))

    @functools.cached_property
    def class_array(self) -> pa.Array:
        """The class names as an Arrow array, to turn class indices into names."""
        return pa.array(self.class_names, pa.string())

    def types(self, schema: pa.Schema) -> dict[str, pa.DataType]:
        """Types to parse each column as: numbers as float64, labels and keys as text."""
        types = {c: pa.float64() for c in self.class_columns}
        if self.weight:
            types[self.weight] = pa.float64()
        for text in (self.label, *self.groups):
            if text and text not in types and text != self.key:
                types[text] = pa.dictionary(pa.int32(), pa.string())
        if self.key:
            types[self.key] = pa.string()
        if self.list_column:
            types[self.list_column] = pa.list_(pa.float64())
        return types

    def values(self, batch: pa.RecordBatch, first_row: int = 1) -> np.ndarray:
        """The (n, K) float64 matrix of class values (NaN where missing).

        Column-major, so that reductions over the classes of each row run over contiguous memory.
        """
        if self.list_column is not None:
            return _list_matrix(batch.column(self.list_column), len(self.class_names), self.source,
                                self.list_column, first_row)
        if len(self.class_columns) > 64:  # many classes: one conversion, not one per column
            return batch.select(self.class_columns).to_tensor(null_to_nan=True, row_major=False).to_numpy()
        n = batch.num_rows
        out = np.empty((n, len(self.class_columns)), dtype=np.float64, order="F")
        for j, name in enumerate(self.class_columns):
            out[:, j] = floats(batch.column(name))
        return out

    def label_indices(self, batch: pa.RecordBatch, first_row: int) -> np.ndarray:
        """Class index of each row's label; an unknown or missing label is an InputError.

        Labels arrive dictionary-encoded, so names are matched once per distinct value.
        """
        labels = batch.column(self.label)
        if not pa.types.is_dictionary(labels.type):
            labels = labels.cast(pa.string()).dictionary_encode()
        names = labels.dictionary
        if not pa.types.is_string(names.type):  # casting imports pyarrow.compute: only when needed
            names = names.cast(pa.string())
        distinct = [v.strip() for v in names.to_pylist()]
        lookup = self._label_lookup
        # -1 marks an unknown label, -2 a missing one (also the slot for null codes, index -1).
        mapped = np.array([-2 if v == "" else lookup.get(v, -1) for v in distinct] + [-2], dtype=np.intp)
        index = mapped[integers(labels.indices, fill=-1)]
        if index.min(initial=0) >= 0:
            return index
        missing = np.flatnonzero(index == -2)
        if missing.size:
            raise InputError(self.source, "missing label", column=self.label,
                             rows=(first_row + missing).tolist(), total=missing.size)
        bad = np.flatnonzero(index == -1)
        codes = integers(labels.indices, fill=-1)[bad]
        seen = list(dict.fromkeys(distinct[c] for c in codes[:100]))[:5]
        raise InputError(self.source, f"labels not among the classes {self.class_names}: {seen}",
                         column=self.label, rows=(first_row + bad).tolist(), total=bad.size,
                         hint="labels match class names, or integer positions 0..K-1")

    @functools.cached_property
    def _label_lookup(self) -> dict[str, int]:
        """Label text -> class index.

        Labels match class names; integer labels also index the classes by position when the
        class names are not themselves integers. A binary file takes 0/1 or false/true, or with
        --positive, that label against all others.
        """
        if self.binary and self.positive is not None:
            return _PositiveLookup(self.positive)
        if self.binary:
            return {**BINARY_LABELS, "False": 0, "True": 1, "FALSE": 0, "TRUE": 1, "0.0": 0, "1.0": 1}
        lookup = {name: j for j, name in enumerate(self.class_names)}
        if not any(_is_int(n) for n in self.class_names):
            for j in range(len(self.class_names)):
                lookup.setdefault(str(j), j)
        return lookup


class _PositiveLookup(dict):
    """--positive LABEL: that label is class 1, any other (non-empty) label class 0."""

    def __init__(self, positive: str):
        super().__init__()
        self.positive = positive

    def get(self, key, default=None):
        return 1 if key == self.positive else 0


def integers(array: pa.Array, fill: int) -> np.ndarray:
    """An integer Arrow array as numpy (nulls replaced by ``fill``), without a pandas round trip."""
    if array.null_count:
        array = array.fill_null(fill)
    return np.frombuffer(array.buffers()[1], dtype=array.type.to_pandas_dtype(), count=len(array),
                         offset=array.offset * array.type.byte_width)


def floats(array: pa.Array) -> np.ndarray:
    """A float64 Arrow array as numpy (nulls as NaN), zero-copy where there are no nulls."""
    if array.null_count:
        array = array.fill_null(float("nan"))
    return np.frombuffer(array.buffers()[1], dtype=np.float64, count=len(array), offset=array.offset * 8)


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()


def _list_matrix(column: pa.Array, width: int, source: str, name: str, first_row: int) -> np.ndarray:
    lengths = integers(column.value_lengths(), fill=-1)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        raise InputError(source, f"probability lists must all have {width} values",
                         column=name, rows=(bad + first_row).tolist(), total=bad.size)
    return floats(column.flatten().cast(pa.float64())).reshape(-1, width)


# -- resolution ------------------------------------------------------------------------------


def _find(names: list[str], wanted: str, source: str, role: str) -> str:
    if wanted in names:
        return wanted
    folded = [n for n in names if n.lower() == wanted.lower()]
    if len(folded) == 1:
        return folded[0]
    raise InputError(source, f"no {role} column {wanted!r} (columns: {_shorten(names)})")


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


def _prefixed(names: list[str], prefix: str) -> list[str]:
    return [n for n in names if n.lower().startswith(prefix.lower()) and len(n) > len(prefix)]


def check_unique(schema: pa.Schema, source: str) -> None:
    duplicates = [n for n, count in Counter(schema.names).items() if count > 1]
    if duplicates:
        raise InputError(source, f"duplicate column names: {duplicates}")


def resolve_layout(schema: pa.Schema, source: str, *, classes: list[str] | None = None,
                   label: str | None = None, probs: str | None = None, key: str | None = None,
                   weight: str | None = None, positive: str | None = None,
                   reserved: list[str] | None = None, label_required: bool = True,
                   use_default_label: bool = True, groups: list[str] | None = None) -> Layout:
    """Decide each column's role from the header (names and the types inferred from it).

    ``reserved`` columns (same-file targets) are read but are never classes, nor are ``groups``.
    """
    check_unique(schema, source)
    names = schema.names
    key_col = _find(names, key, source, "key") if key else next((n for n in names if n.lower() == DEFAULT_KEY), None)
    label_col = _find(names, label, source, "label") if label else None
    if label_col is None and use_default_label:
        label_col = next((n for wanted in LABEL_NAMES for n in names if n.lower() == wanted), None)
    if label_col is None and label_required:
        raise InputError(source, f"no label column: name one with --label (looked for {', '.join(LABEL_NAMES)})")
    weight_col = _find(names, weight, source, "weight") if weight else None
    group_cols = [_find(names, g, source, "--by") for g in groups or []]
    taken = {key_col, label_col, weight_col, *(reserved or []), *group_cols}
    layout = Layout(source, [], label=label_col, key=key_col, weight=weight_col,
                    extra=list(reserved or []), groups=group_cols)

    if probs:
        layout.list_column = _find(names, probs, source, "probability list")
        value_type = schema.field(layout.list_column).type
        if not (pa.types.is_list(value_type) or pa.types.is_large_list(value_type)
                or pa.types.is_fixed_size_list(value_type)):
            raise InputError(source, f"--probs needs a list column (Parquet list<double>), found {value_type}",
                             column=layout.list_column)
        layout.class_names = classes or []  # filled from the first row's length when not given
        return layout

    if classes:
        layout.class_columns = [_class_column(names, c, source) for c in classes]
        layout.class_names = list(classes)
    else:
        free = [n for n in names if n not in taken]
        for prefix in CLASS_PREFIXES:
            found = _prefixed(free, prefix)
            if found:
                layout.class_columns = found
                layout.class_names = [n[len(prefix):] for n in found]
                break
        else:
            layout.class_columns = [n for n in free if _numeric(schema.field(n).type)]
            layout.class_names = list(layout.class_columns)
    if not layout.class_columns:
        raise InputError(source, "no class columns: name them with --classes, or prefix them p_ "
                                 f"(columns: {_shorten(names)})")
    clash = taken & set(layout.class_columns) - {None}
    if clash:
        raise UsageError(f"{source}: column {sorted(clash)[0]!r} cannot be both a class and a label, key, weight or group")
    if len(layout.class_columns) == 1:
        layout.binary = True
        layout.positive = positive
        layout.class_names = ["0", "1"] if positive is None else [f"not {positive}", positive]
    elif positive is not None:
        raise UsageError("--positive is for files with a single probability column")
    return layout


def _class_column(names: list[str], wanted: str, source: str) -> str:
    for candidate in (wanted, *(p + wanted for p in CLASS_PREFIXES)):
        if candidate in names:
            return candidate
    raise InputError(source, f"class {wanted!r} has no column (looked for {wanted}, "
                             f"{', '.join(p + wanted for p in CLASS_PREFIXES)})")


def target_layout(schema: pa.Schema, source: str, class_names: list[str], other: str, *,
                  prefix: str | None = None, probs: str | None = None, key: str | None = None,
                  explicit: bool = False) -> Layout:
    """Columns of target distributions over ``class_names``, in that order.

    Found by ``prefix`` (beside the predictions in the same file), as a list column, or the way
    class columns of a prediction file are found; the class sets of both sides must agree.
    ``other`` names the predictions, for messages.
    """
    check_unique(schema, source)
    if prefix:
        found = _prefixed(schema.names, prefix)
        if not found:
            raise InputError(source, f"no target columns with prefix {prefix!r}")
        layout = Layout(source, [n[len(prefix):] for n in found], class_columns=found)
    else:
        layout = resolve_layout(schema, source, classes=class_names if explicit else None, probs=probs,
                                key=key, label_required=False)
        layout.label = None
        if probs:
            layout.class_names = list(class_names)
    here, there = set(layout.class_names), set(class_names)  # sets: 200,000 classes are compared
    missing = [c for c in class_names if c not in here]
    extra = [c for c in layout.class_names if c not in there]
    if missing or extra:
        raise InputError(source, f"class sets differ: {missing or 'none'} missing here, "
                                 f"{extra or 'none'} missing in {other}")
    if layout.class_columns:
        column_of = dict(zip(layout.class_names, layout.class_columns))
        layout.class_columns = [column_of[c] for c in class_names]
    layout.class_names = list(class_names)
    layout.binary, layout.positive = False, None
    return layout


def parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    classes = [c.strip() for c in text.split(",")]
    if not all(classes):
        raise UsageError(f"--classes {text!r}: empty class name")
    if len(set(classes)) != len(classes):
        raise UsageError(f"--classes {text!r}: a class is named twice")
    return classes
