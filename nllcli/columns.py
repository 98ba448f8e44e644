"""Which columns hold the label, the class probabilities, the targets, the key and the weights.

A prediction file comes in one of three layouts:

- wide: one column per class, found by ``--classes``, by a shared prefix (``p_``, ``prob_``,
  ``proba_``; the class name is the rest), or else every numeric column that has no other role;
- binary: a single probability column, P(class 1);
- list: one column holding the whole vector (Parquet ``list<double>``), chosen with ``--probs``
  or, when it is the file's only list column, by itself.

Never classes: the label, key, weight and ``--by`` columns, ``--ignore`` columns, index columns
(pandas' ``''``, ``Unnamed: N``, ``index``, ``__index_level_N__``, the index named in a Parquet
file's pandas metadata) and columns of predicted labels (``y_pred``, ``prediction``, ...).
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .errors import InputError, UsageError

CLASS_PREFIXES = ("p_", "prob_", "proba_")
LABEL_NAMES = ("label", "y", "y_true", "target", "true_label", "class")
DEFAULT_KEY = "id"
BINARY_LABELS = {"0": 0, "1": 1, "false": 0, "true": 1}
# Columns that pandas writes for a DataFrame's index: never classes.
INDEX_PATTERN = re.compile(r"(|index|Unnamed: \d+|__index_level_\d+__)", re.IGNORECASE)
# Columns of predicted labels (argmax classes): never classes, never the label.
PREDICTED_NAMES = ("y_pred", "pred", "preds", "prediction", "predictions", "predicted", "pred_label",
                   "predicted_label", "pred_class", "predicted_class", "y_hat", "yhat", "argmax")

WIDE_COLUMNS = 4096  # more class columns than this: read as one matrix, never one Arrow column each
PACKED = "\x00nll:classes"  # the batch column holding the class matrix (fixed-size lists, one a row)


class ColumnTypes(dict):
    """Column name -> type to read it as; ``packed`` names the class columns (in order) to deliver
    as one PACKED column of fixed-size lists when there are more than WIDE_COLUMNS of them;
    ``plain_text`` the dictionary columns a reader may deliver as plain strings instead (the label:
    Layout.label_indices matches labels of one narrow width in numpy, see FixedWidthCodes)."""

    def __init__(self, types=(), packed: list[str] | None = None, plain_text: tuple[str, ...] = ()):
        super().__init__(types)
        self.packed = packed if packed is not None and len(packed) > WIDE_COLUMNS else None
        self.plain_text = plain_text


def packed_id(columns: list[str]) -> bytes:
    """A short fingerprint of the packed columns, kept in the PACKED field's metadata, so that a
    batch's matrix is used only for the very columns it was read from."""
    import hashlib

    return hashlib.sha1("\x00".join(columns).encode("utf-8", "surrogatepass")).hexdigest().encode()


def packed_field(columns: list[str]) -> pa.Field:
    return pa.field(PACKED, pa.list_(pa.float64(), len(columns)), metadata={b"columns": packed_id(columns)})


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
    notes: list[str] = field(default_factory=list)  # what was guessed, for stderr

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

    def types(self, schema: pa.Schema) -> ColumnTypes:
        """Types to parse each column as: numbers as float64, labels and keys as text; more than
        WIDE_COLUMNS class columns are asked for as one matrix."""
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
        plain = (self.label,) if self.label and pa.types.is_dictionary(types.get(self.label, pa.null())) \
            and self.label not in self.groups else ()
        return ColumnTypes(types, packed=self.class_columns, plain_text=plain)

    def values(self, batch: pa.RecordBatch, first_row: int = 1) -> np.ndarray:
        """The (n, K) float64 matrix of class values (NaN where missing).

        Column-major, so that reductions over the classes of each row run over contiguous memory.
        """
        if self.list_column is not None:
            return _list_matrix(batch.column(self.list_column), len(self.class_names), self.source,
                                self.list_column, first_row)
        if PACKED in batch.schema.names and batch.schema.field(PACKED).metadata == {b"columns": self._packed_id}:
            flat = floats(batch.column(PACKED).flatten())
            return np.asfortranarray(flat.reshape(-1, len(self.class_columns)))
        # One conversion in Arrow, whatever the width: 49,152 x 10 in 0.13 ms against 0.20 column by
        # column, and without the GIL (two threads at once: 1.84x as fast as one, against 1.66x).
        return batch.select(self.class_columns).to_tensor(null_to_nan=True, row_major=False).to_numpy()

    def label_indices(self, batch: pa.RecordBatch, first_row: int) -> np.ndarray:
        """Class index of each row's label; an unknown or missing label is an InputError.

        Labels arrive dictionary-encoded, or as plain text of one narrow width (FixedWidthCodes),
        so names are matched once per distinct value.
        """
        labels = batch.column(self.label)
        if pa.types.is_string(labels.type):
            index = self._fixed_width_codes.codes(labels)
            if index is not None and index.min(initial=0) >= 0:
                return index
        if not pa.types.is_dictionary(labels.type):
            labels = labels.cast(pa.string()).dictionary_encode()
        names = labels.dictionary
        if not pa.types.is_string(names.type):  # casting imports pyarrow.compute: only when needed
            names = names.cast(pa.string())
        distinct = [v.strip() for v in names.to_pylist()]
        lookup = self._label_lookup
        # -1 marks an unknown label, -2 a missing one (also the slot for null codes, index -1).
        mapped = np.array([_label_code(lookup, v) for v in distinct] + [-2], dtype=np.intp)
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
        hint = ("one probability column is P(class 1): labels 0/1 or false/true, or name class 1 with "
                "--positive LABEL" if self.binary else "labels match class names, or integer positions 0..K-1")
        padding = next((v for v in seen if (whole_number(v) or "").startswith("-")), None)
        if padding is not None:  # torch's ignore_index (-100) in a file from training code
            hint += f"; to leave those rows out: --ignore-label {padding}"
        raise InputError(self.source, f"labels not among the classes {self.class_names}: {seen}",
                         column=self.label, rows=(first_row + bad).tolist(), total=bad.size, hint=hint)

    def rows_labelled(self, batch: pa.RecordBatch, value: str) -> np.ndarray:
        """Whether each row's label is ``value`` (--ignore-label): the same text once stripped, or the
        same whole number ('-100' and '-100.0'); a missing label is not."""
        labels = batch.column(self.label)
        if not pa.types.is_dictionary(labels.type):
            labels = labels.cast(pa.string()).dictionary_encode()
        names = labels.dictionary
        if not pa.types.is_string(names.type):
            names = names.cast(pa.string())
        number = whole_number(value)
        matches = np.array([v is not None and (v.strip() == value or (number is not None and
                                                                      whole_number(v.strip()) == number))
                            for v in names.to_pylist()] + [False], dtype=bool)
        return matches[integers(labels.indices, fill=-1)]

    @functools.cached_property
    def _fixed_width_codes(self) -> "FixedWidthCodes":
        return FixedWidthCodes(self._label_lookup)

    @functools.cached_property
    def _packed_id(self) -> bytes:
        return packed_id(self.class_columns)

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


def _label_code(lookup: dict[str, int], label: str) -> int:
    """The class index of a label's text, stripped: -1 unknown, -2 missing (blank)."""
    label = label.strip()
    return -2 if label == "" else _class_of(lookup, label)


def _class_of(lookup: dict[str, int], label: str) -> int:
    """The class index of a label, or -1; a whole number written as a float ('2.0') is tried as '2'."""
    found = lookup.get(label)
    if found is None:
        whole = whole_number(label)
        found = lookup.get(whole) if whole is not None else None
    return -1 if found is None else found


_EMPTY_SLOT = np.uint64(2**64 - 1)  # above every word of fewer than 8 bytes


class FixedWidthCodes:
    """Class indices of labels given as plain text, when a batch's labels all have one width of
    at most 8 bytes ("class_3", "dog", "0"): each label is read as one little-endian word, in
    place, and looked up in a hash table of the words met so far; a word not yet met is matched
    by its text (as a dictionary's distinct values are) and learnt.

    Cheaper than pyarrow's dictionary encoding in the CSV parser, which took a fifth of parsing
    a 4 MiB range of two classes (2.7 ms of 11.6, 131,704 rows; this: 0.9 ms). ``codes`` is None
    for any other batch (nulls, widths that differ or pass 8): the caller encodes it as before.
    Safe on several threads: the tables are replaced, never changed in place.
    """

    def __init__(self, lookup: dict[str, int]):
        self._lookup = lookup
        self._known: dict[int, dict[int, int]] = {}  # width -> word -> class index (-1 unknown, -2 missing)
        self._tables: dict[int, tuple[np.uint64, np.uint64, np.ndarray, np.ndarray]] = {}

    def codes(self, array: pa.Array) -> np.ndarray | None:
        """The class index (-1 unknown, -2 missing) of each label of a string array, or None."""
        n = len(array)
        if not n or array.null_count or not pa.types.is_string(array.type):
            return None
        _, offsets_buffer, data = array.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=n + 1, offset=array.offset * 4)
        first = int(offsets[0])
        width, rest = divmod(int(offsets[-1]) - first, n)
        if rest or not 0 < width <= 8 or not (np.diff(offsets) == width).all():
            return None
        inside = min(n, max(0, (data.size - first - 8) // width + 1))  # rows whose 8 bytes lie in the buffer
        words = np.empty(n, dtype=np.uint64)
        view = np.ndarray((inside,), dtype="<u8", buffer=data, offset=first, strides=(width,))
        if width < 8:
            np.bitwise_and(view, np.uint64((1 << (8 * width)) - 1), out=words[:inside])
        else:
            words[:inside] = view
        if inside < n:
            tail = bytes(memoryview(data)[first + inside * width:first + n * width])
            words[inside:] = [int.from_bytes(tail[i:i + width], "little") for i in range(0, len(tail), width)]
        codes, hit = self._probe(width, words)
        if not hit.all():
            missed = np.flatnonzero(~hit)
            distinct = _distinct(words[missed])  # not np.unique, which imports numpy.ma (17 ms)
            found = {word: _label_code(self._lookup, word.to_bytes(8, "little")[:width].decode("utf-8"))
                     for word in distinct.tolist()}
            codes[missed] = np.array(list(found.values()), dtype=np.intp)[np.searchsorted(distinct, words[missed])]
            self._learn(width, found)
        return codes

    def _probe(self, width: int, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index of each word, whether it was found in the table)."""
        table = self._tables.get(width)
        if table is None:
            return np.zeros(len(words), dtype=np.intp), np.zeros(len(words), dtype=bool)
        multiplier, shift, keys, codes = table
        slot = np.multiply(words, multiplier)
        np.right_shift(slot, shift, out=slot)
        slot = slot.view(np.intp)  # below 2^24: the same bits
        found, hit = np.take(codes, slot), np.take(keys, slot) == words
        if width == 8:  # eight 0xff bytes are the word of an empty slot (and no UTF-8 text)
            hit &= found != -3
        return found, hit

    def _learn(self, width: int, found: dict[int, int]) -> None:
        """Rebuild the table of one width: multiply-shift hashing, the multiplier drawn until no
        two words share a slot (the table is 2 to 4 times as large as the words it holds)."""
        known = {**self._known.get(width, {}), **found}
        words = np.array(list(known), dtype=np.uint64)
        for bits in range(max(3, len(known).bit_length() + 1), 24):
            for draw in range(1, 33, 2):  # odd multiples of 2^64 / golden ratio: no numpy.random to import
                multiplier = np.uint64((0x9E3779B97F4A7C15 * draw) & (2**64 - 1) | 1)
                shift = np.uint64(64 - bits)
                slot = (words * multiplier) >> shift
                if _distinct(slot).size == slot.size:
                    keys = np.full(1 << bits, _EMPTY_SLOT, dtype=np.uint64)
                    codes = np.full(1 << bits, -3, dtype=np.intp)
                    keys[slot.astype(np.intp)] = words
                    codes[slot.astype(np.intp)] = list(known.values())
                    self._known = {**self._known, width: known}
                    self._tables = {**self._tables, width: (multiplier, shift, keys, codes)}
                    return


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-d array."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


class _PositiveLookup(dict):
    """--positive LABEL: that label is class 1, any other (non-empty) label class 0."""

    def __init__(self, positive: str):
        super().__init__()
        self.positive = positive

    def get(self, key, default=None):
        return 1 if key == self.positive or whole_number(key) == self.positive else 0


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


def whole_number(text: str) -> str | None:
    """'2.0' or '2.000000000000000000e+00' -> '2' (a float label that is a whole number), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return str(int(value)) if math.isfinite(value) and value.is_integer() else None


def _list_matrix(column: pa.Array, width: int, source: str, name: str, first_row: int) -> np.ndarray:
    lengths = integers(column.value_lengths(), fill=-1)
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        raise InputError(source, f"probability lists must all have {width} values",
                         column=name, rows=(bad + first_row).tolist(), total=bad.size)
    return floats(column.flatten().cast(pa.float64())).reshape(-1, width)


# -- resolution ------------------------------------------------------------------------------


def _fold(name: str) -> str:
    return name.strip().casefold()


def find_column(names: list[str], wanted: str) -> str | None:
    """The column named ``wanted`` (also regardless of case and surrounding spaces), None if absent."""
    if wanted in names:
        return wanted
    folded = [n for n in names if _fold(n) == _fold(wanted)]
    return folded[0] if folded else None


def _find(names: list[str], wanted: str, source: str, role: str) -> str:
    found = find_column(names, wanted)
    if found is None:
        raise column_not_found(names, wanted, source, role)
    return found


def column_not_found(names: list[str], wanted: str, source: str, role: str) -> InputError:
    """"label column 'lable' is missing (did you mean 'label'? columns: ...)"."""
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6) or difflib.get_close_matches(
        _fold(wanted), [_fold(n) for n in names], n=1, cutoff=0.6)
    if close and close[0] not in names:  # matched on the folded names: show the real one
        close = [next(n for n in names if _fold(n) == close[0])]
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return InputError(source, f"{role} column {wanted!r} is missing ({suggestion}columns: {_shorten(names)})")


def _shorten(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


def _prefixed(names: list[str], prefix: str) -> list[str]:
    return [n for n in names if n.lower().startswith(prefix.lower()) and len(n) > len(prefix)]


def check_unique(schema: pa.Schema, source: str) -> None:
    """Column names must be distinct, also regardless of case and surrounding spaces."""
    duplicates = [n for n, count in Counter(schema.names).items() if count > 1]
    if duplicates:
        raise InputError(source, f"duplicate column names: {duplicates}")
    first_of: dict[str, str] = {}
    for name in schema.names:
        other = first_of.setdefault(_fold(name), name)
        if other != name:
            raise InputError(source, f"columns {other!r} and {name!r} differ only by case or surrounding "
                                     "spaces: rename one")


def index_columns(schema: pa.Schema) -> list[str]:
    """Columns that hold a pandas index: by their name, or listed in the file's pandas metadata."""
    listed = set()
    try:
        metadata = schema.pandas_metadata or {}
    except (ValueError, TypeError):  # metadata that is not JSON: no index listed
        metadata = {}
    for entry in metadata.get("index_columns", []) if isinstance(metadata, dict) else []:
        if isinstance(entry, str):
            listed.add(entry)
    return [n for n in schema.names if n in listed or INDEX_PATTERN.fullmatch(n.strip())]


def index_key(schema: pa.Schema) -> str | None:
    """The first named integer index column, which may serve as the key when there is no id column.

    pandas' unnamed '' is left out: an empty name cannot label per-sample rows.
    """
    return next((n for n in index_columns(schema) if n.strip() and pa.types.is_integer(schema.field(n).type)),
                None)


def _predicted(name: str) -> bool:
    return _fold(name) in PREDICTED_NAMES


def resolve_layout(schema: pa.Schema, source: str, *, classes: list[str] | None = None,
                   label: str | None = None, probs: str | None = None, key: str | None = None,
                   weight: str | None = None, positive: str | None = None,
                   reserved: list[str] | None = None, label_required: bool = True,
                   use_default_label: bool = True, groups: list[str] | None = None,
                   ignore: list[str] | None = None, sample=None) -> Layout:
    """Decide each column's role from the header (names and the types inferred from it).

    ``reserved`` columns (same-file targets) are read but are never classes, nor are ``groups``,
    ``ignore``, index and predicted-label columns. ``sample`` (the first rows, or a function
    reading them) lets the label be found by its values when no column has a label's name.
    """
    check_unique(schema, source)
    if callable(sample):  # read only when a decision needs the values
        sample = _LazySample(sample)
    names = schema.names
    ignored = [_find(names, c, source, "--ignore") for c in ignore or []]
    key_col = _find(names, key, source, "key") if key else next((n for n in names if _fold(n) == DEFAULT_KEY), None)
    label_col = _find(names, label, source, "label") if label else None
    if label_col is None and use_default_label:
        label_col = next((n for wanted in LABEL_NAMES for n in names if _fold(n) == wanted and n not in ignored),
                         None)
    weight_col = _find(names, weight, source, "weight") if weight else None
    group_cols = [_find(names, g, source, "--by") for g in groups or []]
    taken = {key_col, label_col, weight_col, *(reserved or []), *group_cols}
    never_classes = taken | set(ignored) | set(index_columns(schema)) | {n for n in names if _predicted(n)}
    layout = Layout(source, [], label=label_col, key=key_col, weight=weight_col,
                    extra=list(reserved or []), groups=group_cols)
    free = [n for n in names if n not in never_classes]
    lists = [n for n in free if _is_list(schema.field(n).type)]
    if not probs and not classes and len(lists) == 1 and not any(_prefixed(free, p) for p in CLASS_PREFIXES):
        probs = lists[0]  # the file's only list column is the probability vector

    if probs:
        layout.list_column = _find(names, probs, source, "probability list")
        value_type = schema.field(layout.list_column).type
        if not _is_list(value_type):
            raise InputError(source, f"--probs needs a list column (Parquet list<double>), found {value_type}",
                             column=layout.list_column)
        layout.class_names = classes or []  # filled from the first row's length when not given
        return layout

    numeric_rule = False
    if classes:
        present = set(names)  # looked up once per class: 200,000 classes are named
        layout.class_columns = [_class_column(present, c, source) for c in classes]
        layout.class_names = list(classes)
    else:
        for prefix in CLASS_PREFIXES:
            found = _prefixed(free, prefix)
            if found:
                layout.class_columns = found
                layout.class_names = [n[len(prefix):] for n in found]
                break
        else:
            numeric_rule = True
            layout.class_columns = [n for n in free if _numeric(schema.field(n).type)]
            layout.class_names = list(layout.class_columns)
    class_set = set(layout.class_columns)  # membership tests over 200,000 classes: not a list
    if layout.label is None and label_required and use_default_label and sample is not None:
        _label_by_values(layout, sample, [n for n in free if numeric_rule or n not in class_set], positive)
    if layout.label is None and label_required:
        raise InputError(source, f"no label column: name one with --label (looked for {', '.join(LABEL_NAMES)}, "
                                 f"and for one column whose values all name classes; columns: {_shorten(names)})")
    if not layout.class_columns:
        hint = "; or --probs COL for a list column" if lists else ""
        raise InputError(source, "no class columns: name them with --classes, or prefix them p_ "
                                 f"(columns: {_shorten(names)}){hint}")
    clash = taken & set(layout.class_columns) - {None}
    if clash:
        raise UsageError(f"{source}: column {sorted(str(c) for c in clash)[0]!r} cannot be both a class and a "
                         "label, key, weight or group")
    if numeric_rule and sample is not None and layout.label is not None:
        class_set = set(layout.class_columns)  # the label search may have taken one
        _check_text_classes(layout, sample, [n for n in free if n != layout.label and n not in class_set])
    if len(layout.class_columns) == 1:
        layout.binary = True
        if positive is None and sample is not None and layout.label is not None:
            positive = _positive_from_labels(layout, _texts(sample, layout.label) or [])
        layout.positive = positive
        layout.class_names = ["0", "1"] if positive is None else [f"not {positive}", positive]
    elif positive is not None:
        raise UsageError("--positive is for files with a single probability column")
    return layout


class _LazySample:
    """A sample table read on first use."""

    def __init__(self, read):
        self._read, self._table = read, None

    def __getattr__(self, name):
        if self._table is None:
            self._table = self._read()
        return getattr(self._table, name)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _texts(sample: pa.Table, column: str) -> list[str] | None:
    """The non-empty values of a sample column as label text; None if it holds something else."""
    if sample.schema.get_field_index(column) < 0:  # a lookup by name: column_names is a new list each time
        return None
    values = sample.column(column)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    texts = []
    for value in values.to_pylist():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, float):
            if not value.is_integer():
                return None  # a fraction names no class
        elif not isinstance(value, (int, str)):
            return None
        value = str(value).strip()
        if value:
            texts.append(value)
    return texts


def _names_classes(texts: list[str], lookup: dict) -> bool:
    """Every value names a class (or indexes one), as label_indices() will read it."""
    return all(v in lookup or whole_number(v) in lookup for v in set(texts))


def _label_by_values(layout: Layout, sample: pa.Table, candidates: list[str], positive: str | None) -> None:
    """Take as the label the one column whose sampled values all name classes; say so in the notes."""
    found = []
    name_of = dict(zip(layout.class_columns, layout.class_names))
    lookup = None  # of all the classes, built once: a candidate's own name is checked apart
    for name in candidates:
        texts = _texts(sample, name)
        if not texts:
            continue
        n_classes = len(name_of) - (name in name_of)
        if n_classes == 1:
            classes = [c for c in layout.class_columns if c != name]
            trial = Layout(layout.source, ["0", "1"], class_columns=classes, binary=True)
            x = positive or _binary_class_name(trial)
            matches = (positive is None and _names_classes(texts, trial._label_lookup)) or (
                x in texts and len(set(texts)) <= 2)
        else:
            lookup = lookup or Layout(layout.source, layout.class_names)._label_lookup
            matches = n_classes > 1 and name_of.get(name) not in texts and _names_classes(texts, lookup)
        if matches:
            found.append(name)
    if len(found) > 1:
        raise InputError(layout.source, f"no column is named as a label, and several hold class names: "
                                        f"{_shorten(found)}: name one with --label")
    if found:
        layout.label = found[0]
        if found[0] in layout.class_columns:
            j = layout.class_columns.index(found[0])
            del layout.class_columns[j], layout.class_names[j]
        layout.notes.append(f"{layout.source}: label column {found[0]!r} found by its values "
                            "(they all name classes; --label names another)")


def _binary_class_name(layout: Layout) -> str:
    """The class a single probability column is about: 'benign' for p_benign."""
    column = layout.class_columns[0]
    prefix = next((p for p in CLASS_PREFIXES if column.lower().startswith(p) and len(column) > len(p)), "")
    return column[len(prefix):]


def _positive_from_labels(layout: Layout, texts: list[str]) -> str | None:
    """p_X with labels that are not 0/1 but contain X: X is class 1 (as --positive X)."""
    x = _binary_class_name(layout)
    zero_one = Layout(layout.source, ["0", "1"], binary=True)._label_lookup
    if not texts or _names_classes(texts, zero_one) or x not in texts:
        return None
    layout.notes.append(f"{layout.source}: column {layout.class_columns[0]!r} taken as P({x}) against the "
                        f"other labels (as --positive {x})")
    return x


def _check_text_classes(layout: Layout, sample: pa.Table, text_columns: list[str]) -> None:
    """A text column named like a class (its name is among the labels) is a class that is not
    numeric: an error naming it and its first rows, never a class silently left out."""
    labels = set(_texts(sample, layout.label) or []) if layout.label else set()
    for name in text_columns:
        if name.strip() not in labels or name not in sample.column_names:
            continue
        values = sample.column(name).to_pylist()
        rows = [i + 1 for i, v in enumerate(values) if v is not None and not _is_float(str(v))]
        first = values[rows[0] - 1] if rows else None
        raise InputError(layout.source, f"looks like a class (its name is a label) but holds text {first!r}",
                         column=name, rows=rows[:5] or None, total=len(rows),
                         hint="fix those values, or --ignore the column")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _class_column(names: set[str], wanted: str, source: str) -> str:
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
