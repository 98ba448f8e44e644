"""A corpus of broken and awkward inputs for `nll`, generated on the fly (no binary files checked in).

Each Case names the files it writes into a folder, the CLI arguments (``{d}`` stands for that
folder), the exit code the contract asks for, fragments of the expected stderr line (matched
case-insensitively) and, for valid inputs, the expected metrics. Expected metrics are computed
with numpy from the very rows the case writes, never by nllcli.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[Path], None]
    args: tuple[str, ...]
    exit: int
    message: tuple[str, ...] = ()  # every fragment must appear in stderr (case-insensitive)
    expect: Callable[[], dict[str, float]] | None = None  # metrics, for exit 0 / 1
    stdin: Callable[[], bytes] | None = None
    per_sample: bool = True  # also run with --per-sample appended (erroring cases: nothing is left)
    note: str = ""

    def argv(self, folder: Path) -> list[str]:
        return [a.replace("{d}", str(folder)) for a in self.args]

    def __str__(self) -> str:  # pytest ids
        return self.name


# -- reference maths (numpy only) -----------------------------------------------------------


def ref_nll(p: np.ndarray, y: np.ndarray, eps: float = EPS, w: np.ndarray | None = None) -> float:
    """-mean(log(clip(p[i, y_i], eps, 1 - eps))), weighted when w is given."""
    p = np.asarray(p, dtype=np.float64)
    p_true = p[np.arange(len(y)), np.asarray(y)]
    if eps > 0:
        p_true = np.clip(p_true, eps, 1 - eps)
    with np.errstate(divide="ignore"):
        loss = -np.log(p_true)
    if w is None:
        return float(loss.mean())
    w = np.asarray(w, dtype=np.float64)
    return float((w * loss).sum() / w.sum())


def ref_logits_nll(z: np.ndarray, y: np.ndarray) -> float:
    """-mean(log_softmax(z)[i, y_i]) with the usual max shift (may overflow to inf)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        return float(-(z[np.arange(len(y)), y] - lse).mean())


def ref_kl(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> dict[str, float]:
    """Mean KL(P||Q), H(P, Q), H(P) with Q clipped to [eps, 1 - eps] and 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.clip(np.asarray(q, np.float64), eps, 1 - eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
        plogq = np.where(p > 0, p * np.log(q), 0.0)
        kl = np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0.0)
    return {"kl": float(kl.sum(1).mean()), "cross_entropy": float(-plogq.sum(1).mean()),
            "entropy": float(-plogp.sum(1).mean())}


# -- writers --------------------------------------------------------------------------------


def text(name: str, content: str, encoding: str = "utf-8", newline: str = "\n") -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.replace("\n", newline).encode(encoding))

    return write


def raw(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data() if callable(data) else data)

    return write


def parquet(name: str, table: Callable[[], pa.Table], **options) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table(), target, **options)

    return write


def folder(name: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        (root / name).mkdir(parents=True, exist_ok=True)

    return write


def both(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for w in writers:
            w(root)

    return write


def csv_of(header: list[str], rows: list[list]) -> str:
    """Plain CSV text; floats written with repr so they read back exactly."""
    def cell(v):
        return repr(v) if isinstance(v, float) else str(v)

    return ",".join(header) + "\n" + "".join(",".join(cell(v) for v in row) + "\n" for row in rows)


# -- shared data ----------------------------------------------------------------------------

# A small valid 3-class file: labels by name, probabilities summing to 1.
P3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
Y3 = np.array([0, 1, 2, 1])
NAMES3 = ["a", "b", "c"]
HEADER3 = ["id", "label", "p_a", "p_b", "p_c"]


def rows3(p=P3, y=Y3, ids=None, labels=None) -> list[list]:
    ids = ids if ids is not None else [f"r{i + 1}" for i in range(len(p))]
    labels = labels if labels is not None else [NAMES3[j] for j in y]
    return [[ids[i], labels[i], *map(float, p[i])] for i in range(len(p))]


VALID3 = csv_of(HEADER3, rows3())


def nll3(**kw) -> Callable[[], dict[str, float]]:
    return lambda: {"nll": ref_nll(P3, Y3, **kw)}


def with_cell(row: int, column: str, value: str, header=HEADER3, base=None) -> str:
    """VALID3 with one cell (1-based data row) replaced by raw text."""
    rows = [list(r) for r in (base or rows3())]
    rows[row - 1][header.index(column)] = value
    return csv_of(header, rows)


def gz(data: str) -> bytes:
    return gzip.compress(data.encode(), mtime=0)


def parquet_bytes(table: pa.Table, **options) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def table3() -> pa.Table:
    return pa.table({"id": [f"r{i + 1}" for i in range(len(P3))], "label": [NAMES3[j] for j in Y3],
                     "p_a": P3[:, 0], "p_b": P3[:, 1], "p_c": P3[:, 2]})


def table_big(n: int = 2000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    return pa.table({"id": [f"r{i}" for i in range(n)], "label": [NAMES3[j] for j in rng.integers(0, 3, n)],
                     "p_a": p[:, 0], "p_b": p[:, 1], "p_c": p[:, 2]})


def truncated_parquet() -> bytes:
    data = parquet_bytes(table_big())
    return data[: len(data) // 2]


def corrupted_parquet() -> bytes:
    """Snappy-compressed pages with 64 bytes in the middle of the file inverted."""
    data = bytearray(parquet_bytes(table_big(), compression="snappy"))
    middle = len(data) // 2
    for i in range(middle - 32, middle + 32):
        data[i] ^= 0xFF
    return bytes(data)


def parquet_invalid_utf8_label() -> bytes:
    """A Parquet string column holding bytes that are not UTF-8 (as a foreign writer can produce):
    written with a placeholder label, then patched in the (uncompressed) file."""
    table = table3().set_column(1, "label", pa.array(["a", "QQ", "c", "b"]))
    return parquet_bytes(table, compression="none").replace(b"QQ", b"\xc3\x28")


def truncated_gzip() -> bytes:
    body = csv_of(HEADER3, rows3(np.tile(P3, (500, 1)), np.tile(Y3, 500)))
    data = gz(body)
    return data[: len(data) // 2]


def binary_csv() -> bytes:
    rng = np.random.default_rng(1)
    data = bytearray(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data[10:14] = b"\0\0\0\0"
    data[100:101] = b"\n"
    return bytes(data)


# 10,000 classes, 4 rows: integer class names 0..9999 (p_0 ... p_9999), integer labels.
K_WIDE = 10_000
_rng = np.random.default_rng(42)
P_WIDE = _rng.dirichlet(np.full(K_WIDE, 0.5), size=4)
Y_WIDE = np.array([0, 17, 9999, int(P_WIDE[3].argmax())])


def wide_csv() -> str:
    header = ["label"] + [f"p_{k}" for k in range(K_WIDE)]
    return csv_of(header, [[int(Y_WIDE[i]), *map(float, P_WIDE[i])] for i in range(len(Y_WIDE))])


# A list<double> column where only row 70,000 (second Parquet batch of 65,536) is ragged.
RAGGED_ROW = 70_000


def ragged_list_table() -> pa.Table:
    n = RAGGED_ROW + 10
    offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int32)
    values = np.tile([0.25, 0.75], n)
    # Row RAGGED_ROW (1-based) gets three values: shift every later offset by one.
    values = np.insert(values, 2 * RAGGED_ROW, 0.0)
    offsets[RAGGED_ROW:] += 1
    probs = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table({"label": pa.array(["1"] * n), "probs": probs})


SINGLE_P = np.array([0.8, 0.3, 0.6])
SINGLE_Y = np.array([1, 0, 1])

LOGITS = np.array([[1e308, -1e308, 0.0], [1e308, -1e308, 0.0], [-1e308, 1e308, 1e308]])

SUB = np.array([[5e-324, 1.0], [0.5, 0.5], [2.5e-320, 1.0]])
SUB_Y = np.array([0, 1, 0])

W = np.array([1.0, 0.0, 2.5, 0.5])

# KL: P the reference, Q the model; keyed by id.
KL_P = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8]])
KL_Q = np.array([[0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.0, 0.2, 0.8]])
KL_HEADER = ["id", "p_a", "p_b", "p_c"]


def kl_csv(p, ids=("k1", "k2", "k3"), header=KL_HEADER) -> str:
    return csv_of(header, [[ids[i], *map(float, p[i])] for i in range(len(p))])


# Soft targets for `score --targets`, paired by id.
TARGETS = np.array([[0.6, 0.3, 0.1], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6], [0.25, 0.5, 0.25]])


def bad_prob(row: int, column: str, value: str, args=()) -> tuple:
    return (text("p.csv", with_cell(row, column, value)), ("score", "{d}/p.csv", *args))


# -- the corpus -----------------------------------------------------------------------------

CASES: list[Case] = [
    # Files that are not there, empty, or not text at all.
    Case("missing_file", lambda d: None, ("score", "{d}/nope.csv"), 2, ("nope.csv", "no such file")),
    Case("empty_file", raw("p.csv", b""), ("score", "{d}/p.csv"), 2, ("p.csv", "empty")),
    Case("blank_lines_only", raw("p.csv", b"\n\n  \n"), ("score", "{d}/p.csv"), 2, ("p.csv", "empty")),
    Case("header_only", text("p.csv", ",".join(HEADER3) + "\n"), ("score", "{d}/p.csv"), 2,
         ("p.csv", "no data rows")),
    Case("zero_rows_parquet", parquet("p.parquet", lambda: table3().slice(0, 0)), ("score", "{d}/p.parquet"), 2,
         ("p.parquet", "no data rows")),
    Case("binary_named_csv", raw("p.csv", binary_csv), ("score", "{d}/p.csv"), 2, ("p.csv", "binary")),
    Case("directory_named_like_a_file", both(folder("p.csv"), text("p.csv/notes.md", "hello\n")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "directory")),
    Case("directory_as_kl_side", both(folder("pdir"), text("q.csv", kl_csv(KL_Q))),
         ("kl", "{d}/pdir", "{d}/q.csv"), 2, ("pdir", "directory")),
    Case("directory_with_a_bad_second_file",
         both(text("dir/a.csv", VALID3), text("dir/b.csv", with_cell(2, "p_b", "-0.3"))),
         ("score", "{d}/dir"), 2, ("b.csv", "p_b", "negative", "row 2")),
    Case("directory_files_with_different_columns",
         both(text("dir/a.csv", VALID3), text("dir/b.csv", VALID3.replace("p_c", "p_d"))),
         ("score", "{d}/dir"), 2, ("b.csv", "columns differ")),
    Case("directory_of_two_valid_files",
         both(text("dir/a.csv", VALID3), text("dir/b.csv", csv_of(HEADER3, rows3(P3[:2], Y3[:2])))),
         ("score", "{d}/dir"), 0,
         expect=lambda: {"nll": ref_nll(np.vstack([P3, P3[:2]]), np.concatenate([Y3, Y3[:2]]))}),

    # Damaged containers.
    Case("truncated_last_line", text("p.csv", VALID3 + "r5,b,0.25,0.5"), ("score", "{d}/p.csv"), 2,
         ("p.csv", "row 5")),
    Case("truncated_mid_file_row", text("p.csv", VALID3.replace("r2,b,0.1,0.8,0.1", "r2,b,0.1")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "row 2")),
    Case("row_with_extra_field", text("p.csv", VALID3.replace("r3,c,0.2,0.2,0.6", "r3,c,0.2,0.2,0.6,9")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "row 3")),
    Case("truncated_row_after_quoted_newline",
         text("p.csv", VALID3.replace("r1,", '"r\n1",').replace("r3,c,0.2,0.2,0.6", "r3,c,0.2")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "row 3"),
         note="row numbers are data rows, not physical lines"),
    Case("truncated_last_line_on_stdin", lambda d: None, ("score", "-"), 2, ("stdin", "row 5"),
         stdin=lambda: (VALID3 + "r5,b,0.25").encode()),
    Case("truncated_gzip", raw("p.csv.gz", truncated_gzip), ("score", "{d}/p.csv.gz"), 2, ("p.csv.gz",)),
    Case("truncated_parquet", raw("p.parquet", truncated_parquet), ("score", "{d}/p.parquet"), 2,
         ("p.parquet", "parquet")),
    Case("corrupted_parquet", raw("p.parquet", corrupted_parquet), ("score", "{d}/p.parquet"), 2,
         ("p.parquet",)),
    Case("parquet_magic_in_a_csv_name", raw("p.csv", b"PAR1 this is not parquet\n"), ("score", "{d}/p.csv"), 2,
         ("p.csv", "parquet")),

    # Encodings and line ends.
    Case("latin1_label", text("p.csv", VALID3.replace("r1,a", "r1,clé"), encoding="latin-1"),
         ("score", "{d}/p.csv"), 2, ("p.csv", "utf-8")),
    Case("malformed_row_with_invalid_utf8",
         raw("p.csv", VALID3.replace("r2,b,0.1,0.8,0.1", "r2,b\xe9,0.1,0.8").encode("latin-1")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "row 2")),
    Case("latin1_header", text("p.csv", VALID3.replace("p_a", "p_clé").replace(",a,", ",clé,"), encoding="latin-1"),
         ("score", "{d}/p.csv"), 2, ("p.csv", "utf-8")),
    Case("utf8_bom", raw("p.csv", b"\xef\xbb\xbf" + VALID3.encode()), ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("utf8_bom_on_key_column_kl", both(raw("p.csv", b"\xef\xbb\xbf" + kl_csv(KL_P).encode()),
                                           text("q.csv", kl_csv(KL_Q[::-1], ids=("k3", "k2", "k1")))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 0, expect=lambda: ref_kl(KL_P, KL_Q),
         note="the BOM must not hide the id column (pairing falls back to position otherwise)"),
    Case("crlf_line_ends", text("p.csv", VALID3, newline="\r\n"), ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("no_final_newline", text("p.csv", VALID3.rstrip("\n")), ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("trailing_blank_lines", text("p.csv", VALID3 + "\n\n"), ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("quoted_commas_and_newlines",
         text("p.csv", 'id,label,"p_x,y",p_z,p_w\n'
                       '"a,b\nc","x,y",0.7,0.2,0.1\n'
                       '"say ""hi""\r\nthere",z,0.1,0.8,0.1\n'
                       '"plain",w,"0.2",0.2,0.6\n'
                       '"r4",z,0.5,0.25,0.25\n'),
         ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("unicode_class_names", text("p.csv", csv_of(["id", "label", "p_clé", "p_锤子", "p_🔧"],
                                                     rows3(labels=["clé", "锤子", "🔧", "锤子"]))),
         ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("tsv", text("p.tsv", VALID3.replace(",", "\t")), ("score", "{d}/p.tsv"), 0, expect=nll3()),
    Case("gzip_csv", raw("p.csv.gz", lambda: gz(VALID3)), ("score", "{d}/p.csv.gz"), 0, expect=nll3()),
    Case("stdin_csv", lambda d: None, ("score", "-"), 0, expect=nll3(), stdin=lambda: VALID3.encode()),
    Case("stdin_empty", lambda d: None, ("score", "-"), 2, ("stdin", "empty"), stdin=lambda: b""),
    Case("stdin_twice", lambda d: None, ("score", "-", "-"), 2, ("standard input",), stdin=lambda: VALID3.encode()),

    # Columns.
    Case("duplicate_column_names", text("p.csv", VALID3.replace("p_c", "p_b")), ("score", "{d}/p.csv"), 2,
         ("p.csv", "duplicate", "p_b")),
    Case("duplicate_label_columns", text("p.csv", VALID3.replace("id,", "label,", 1)), ("score", "{d}/p.csv"), 2,
         ("p.csv", "duplicate", "label")),
    Case("flag_named_key_column", text("p.csv", VALID3.replace("id,", "--max,", 1)),
         ("score", "{d}/p.csv", "--key=--max"), 0, expect=nll3()),
    Case("flag_named_extra_column", text("p.csv", csv_of(["--max", *HEADER3], [["x", *r] for r in rows3()])),
         ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("spaces_after_commas_in_header", text("p.csv", VALID3.replace(",", ", ")), ("score", "{d}/p.csv"), 2,
         ("p.csv", "label"), note="decided: header names are not trimmed (as pandas); the message names the label"),
    Case("trailing_comma_on_every_line", text("p.csv", VALID3.replace("\n", ",\n")), ("score", "{d}/p.csv"), 0,
         expect=nll3()),
    Case("no_label_column", text("p.csv", VALID3.replace("label", "truth").replace(",a,", ",x,")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label")),
    Case("named_label_column_missing", text("p.csv", VALID3), ("score", "{d}/p.csv", "--label", "gold"), 2,
         ("p.csv", "gold")),
    Case("class_named_in_classes_missing", text("p.csv", VALID3), ("score", "{d}/p.csv", "--classes", "a,b,zz"), 2,
         ("p.csv", "zz")),
    Case("key_column_missing", text("p.csv", VALID3), ("score", "{d}/p.csv", "--key", "uid"), 2,
         ("p.csv", "uid")),

    # Labels.
    Case("labels_with_surrounding_spaces",
         text("p.csv", csv_of(HEADER3, rows3(labels=["  a", "b  ", "\tc ", " b"]))),
         ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("integer_labels", text("p.csv", csv_of(HEADER3, rows3(labels=["0", "1", "2", "1"]))),
         ("score", "{d}/p.csv"), 0, expect=nll3()),
    Case("integer_labels_out_of_range", text("p.csv", csv_of(HEADER3, rows3(labels=["0", "3", "2", "-1"]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "rows 2, 4")),
    Case("mixed_int_and_name_labels", text("p.csv", csv_of(HEADER3, rows3(labels=["a", "1", "2", "b"]))),
         ("score", "{d}/p.csv"), 0, expect=nll3(),
         note="documented: labels are class names, or integer positions 0..K-1 when names are not integers"),
    Case("name_label_with_integer_class_names",
         text("p.csv", csv_of(["id", "label", "p_0", "p_1", "p_2"], rows3(labels=["0", "1", "cat", "1"]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "row 3")),
    Case("unknown_label", text("p.csv", csv_of(HEADER3, rows3(labels=["a", "b", "d", "b"]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "row 3")),
    Case("missing_label_empty_cell", text("p.csv", csv_of(HEADER3, rows3(labels=["a", "", "c", "b"]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "missing", "row 2")),
    Case("missing_label_blank_cell", text("p.csv", csv_of(HEADER3, rows3(labels=["a", "b", "c", "   "]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "missing", "row 4")),
    Case("missing_label_parquet_null",
         parquet("p.parquet", lambda: table3().set_column(1, "label", pa.array(["a", None, "c", "b"]))),
         ("score", "{d}/p.parquet"), 2, ("p.parquet", "label", "missing", "row 2")),

    # Probability values.
    Case("nan_probability", *bad_prob(3, "p_b", "NaN"), 2, ("p.csv", "p_b", "nan", "row 3")),
    Case("empty_probability_cell", *bad_prob(2, "p_c", ""), 2, ("p.csv", "p_c", "missing", "row 2")),
    Case("inf_probability", *bad_prob(4, "p_a", "inf"), 2, ("p.csv", "p_a", "infinite", "row 4")),
    Case("negative_probability", *bad_prob(2, "p_a", "-0.1"), 2, ("p.csv", "p_a", "negative", "row 2")),
    Case("probability_above_one", *bad_prob(1, "p_a", "1.5"), 2, ("p.csv", "p_a", "above 1", "row 1")),
    Case("non_numeric_probability", *bad_prob(2, "p_b", "abc"), 2, ("p.csv", "p_b", "abc", "row 2")),
    Case("non_numeric_probability_after_unused_column",
         text("p.csv", csv_of(["id", "camera", "label", "p_a", "p_b", "p_c"],
                              [[r[0], "top", *r[1:]] for r in rows3()]).replace("0.8", "abc")),
         ("score", "{d}/p.csv"), 2, ("p.csv", "p_b", "abc", "row 2"),
         note="an unused column before the class columns must not shift the column named"),
    Case("non_numeric_in_last_column_after_unused_column",
         text("p.csv", csv_of(["camera", "label", "p_a", "p_b"], [["top", "a", 0.5, "x"], ["top", "b", 0.5, 0.5]])),
         ("score", "{d}/p.csv"), 2, ("p.csv", "p_b", "row 1"),
         note="the same column shift, here past the end of the list read: an IndexError"),
    Case("newline_in_class_column_name_and_a_bad_row_sum",
         text("p.csv", csv_of(["id", "label", "p_a", "p_b", '"p_c\nx"'],
                              rows3(p=np.vstack([P3[:1], [[0.5, 0.5, 0.5]], P3[2:]]),
                                    labels=["a", "b", '"c\nx"', "b"]))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "sum", "row 2"),
         note="the message names the columns; a newline in a name must not split the line"),
    Case("newline_in_a_column_name_and_a_missing_label_column",
         text("p.csv", VALID3.replace("p_a", '"p_a\nx"').replace(",a,", ',"a\nx",')),
         ("score", "{d}/p.csv", "--label", "gold"), 2, ("p.csv", "gold"),
         note="the message lists the columns; a newline in a name must not split the line"),
    Case("row_sums_to_zero", text("p.csv", csv_of(HEADER3, rows3(p=np.vstack([P3[:2], [[0.0, 0.0, 0.0]], P3[3:]])))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "sum", "row 3")),
    Case("row_sums_to_zero_renormalize",
         text("p.csv", csv_of(HEADER3, rows3(p=np.vstack([P3[:2], [[0.0, 0.0, 0.0]], P3[3:]])))),
         ("score", "{d}/p.csv", "--renormalize"), 2, ("p.csv", "sum to 0", "row 3")),
    Case("renormalize_unnormalised_rows", text("p.csv", csv_of(HEADER3, rows3(p=P3 * [[0.5], [1.2], [1.5], [1.0]]))),
         ("score", "{d}/p.csv", "--renormalize"), 0, expect=nll3(),
         note="values stay within [0, 1]: --renormalize is documented for probabilities, not counts"),
    Case("logits_given_as_probabilities",
         text("p.csv", csv_of(HEADER3, rows3(p=np.array([[2.3, -1.2, 0.5], [0.1, 3.0, -2.0],
                                                         [0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])))),
         ("score", "{d}/p.csv"), 2, ("p.csv", "--input logits", "row")),
    Case("huge_logits", text("p.csv", csv_of(["id", "label", "a", "b", "c"], rows3(p=LOGITS, labels=["a", "b", "c"]))),
         ("score", "{d}/p.csv", "--input", "logits"), 0,
         expect=lambda: {"nll": ref_logits_nll(LOGITS, np.array([0, 1, 2]))},
         note="decided: exit 0; the loss of row 2 overflows float64, so nll is inf (null in JSON, with a warning)"),
    Case("huge_logits_finite_result",
         text("p.csv", csv_of(["id", "label", "a", "b", "c"], rows3(p=LOGITS, labels=["a", "a", "b"]))),
         ("score", "{d}/p.csv", "--input", "logits"), 0,
         expect=lambda: {"nll": ref_logits_nll(LOGITS, np.array([0, 0, 1]))}),
    Case("logit_overflowing_float64", text("p.csv", csv_of(["id", "label", "a", "b", "c"],
                                                           [["r1", "a", "1e309", "0", "0"]])),
         ("score", "{d}/p.csv", "--input", "logits"), 2, ("p.csv", "non-finite", "row 1")),
    Case("positive_log_probs", text("p.csv", csv_of(["id", "label", "a", "b"], [["r1", "a", "0.5", "-1.0"]])),
         ("score", "{d}/p.csv", "--input", "log-probs"), 2, ("p.csv", "row 1", "--input logits")),
    Case("subnormal_probabilities", text("p.csv", csv_of(["label", "p_a", "p_b"], [["ab"[y], *map(float, r)]
                                                                                    for r, y in zip(SUB, SUB_Y)])),
         ("score", "{d}/p.csv"), 0, expect=lambda: {"nll": ref_nll(SUB, SUB_Y)}),
    Case("subnormal_probabilities_exact", text("p.csv", csv_of(["label", "p_a", "p_b"], [["ab"[y], *map(float, r)]
                                                                                          for r, y in zip(SUB, SUB_Y)])),
         ("score", "{d}/p.csv", "--eps", "0"), 0, expect=lambda: {"nll": ref_nll(SUB, SUB_Y, eps=0.0)}),
    Case("zero_probability_exact_maths", text("p.csv", csv_of(["label", "p_a", "p_b"], [["a", 0.0, 1.0], ["b", 0.5, 0.5]])),
         ("score", "{d}/p.csv", "--eps", "0"), 0,
         expect=lambda: {"nll": ref_nll(np.array([[0.0, 1.0], [0.5, 0.5]]), np.array([0, 1]), eps=0.0)}),
    Case("single_probability_column_binary",
         text("p.csv", csv_of(["label", "p_a"], [[int(y), float(p)] for p, y in zip(SINGLE_P, SINGLE_Y)])),
         ("score", "{d}/p.csv"), 0,
         expect=lambda: {"nll": ref_nll(np.column_stack([1 - SINGLE_P, SINGLE_P]), SINGLE_Y)},
         note="decided: one column is P(class 1) with 0/1 labels"),
    Case("single_probability_column_with_name_labels",
         text("p.csv", csv_of(["label", "p_a"], [["b", 1.0], ["c", 1.0]])),
         ("score", "{d}/p.csv"), 2, ("p.csv", "label", "rows 1, 2")),
    Case("ten_thousand_classes", text("p.csv", wide_csv()), ("score", "{d}/p.csv"), 0,
         expect=lambda: {"nll": ref_nll(P_WIDE, Y_WIDE)}),
    Case("single_row", text("p.csv", csv_of(HEADER3, rows3(P3[1:2], Y3[1:2]))), ("score", "{d}/p.csv"), 0,
         expect=lambda: {"nll": ref_nll(P3[1:2], Y3[1:2])}),
    Case("parquet_float32_and_categorical_labels",
         parquet("p.parquet", lambda: pa.table({"label": pa.array([NAMES3[j] for j in Y3]).dictionary_encode(),
                                                "p_a": pa.array(P3[:, 0], pa.float32()),
                                                "p_b": pa.array(P3[:, 1], pa.float32()),
                                                "p_c": pa.array(P3[:, 2], pa.float32())})),
         ("score", "{d}/p.parquet"), 0,
         expect=lambda: {"nll": ref_nll(P3.astype(np.float32).astype(np.float64), Y3)}),
    Case("parquet_integer_labels",
         parquet("p.parquet", lambda: table3().set_column(1, "label", pa.array(Y3, pa.int64()))),
         ("score", "{d}/p.parquet"), 0, expect=nll3()),
    Case("parquet_boolean_labels_binary",
         parquet("p.parquet", lambda: pa.table({"label": pa.array(SINGLE_Y.astype(bool)), "p_yes": SINGLE_P})),
         ("score", "{d}/p.parquet"), 0,
         expect=lambda: {"nll": ref_nll(np.column_stack([1 - SINGLE_P, SINGLE_P]), SINGLE_Y)}),
    Case("parquet_label_invalid_utf8", raw("p.parquet", parquet_invalid_utf8_label), ("score", "{d}/p.parquet"), 2,
         ("p.parquet", "label")),
    Case("parquet_string_probabilities",
         parquet("p.parquet", lambda: table3().set_column(2, "p_a", pa.array(["0.7", "x", "0.2", "0.5"]))),
         ("score", "{d}/p.parquet"), 2, ("p.parquet", "p_a")),
    Case("parquet_list_ragged_in_second_batch", parquet("p.parquet", ragged_list_table),
         ("score", "{d}/p.parquet", "--probs", "probs"), 2, ("p.parquet", "probs", f"row {RAGGED_ROW}")),

    # Weights.
    Case("weights_valid", text("p.csv", csv_of([*HEADER3, "w"], [[*r, float(w)] for r, w in zip(rows3(), W)])),
         ("score", "{d}/p.csv", "--weight", "w"), 0, expect=lambda: {"nll": ref_nll(P3, Y3, w=W)}),
    Case("weights_all_zero", text("p.csv", csv_of([*HEADER3, "w"], [[*r, 0] for r in rows3()])),
         ("score", "{d}/p.csv", "--weight", "w"), 2, ("p.csv", "w", "0")),
    Case("negative_weight", text("p.csv", csv_of([*HEADER3, "w"], [[*r, w] for r, w in zip(rows3(), [1, 1, -1, 1])])),
         ("score", "{d}/p.csv", "--weight", "w"), 2, ("p.csv", "w", "row 3")),
    Case("missing_weight", text("p.csv", csv_of([*HEADER3, "w"], [[*r, w] for r, w in zip(rows3(), [1, "", 1, 1])])),
         ("score", "{d}/p.csv", "--weight", "w"), 2, ("p.csv", "w", "row 2")),

    # Soft targets in another file.
    Case("targets_valid", both(text("p.csv", VALID3), text("t.csv", kl_csv(TARGETS, ids=("r1", "r2", "r3", "r4")))),
         ("score", "{d}/p.csv", "--targets", "{d}/t.csv"), 0,
         expect=lambda: {"cross_entropy": ref_kl(TARGETS, P3)["cross_entropy"], "kl": ref_kl(TARGETS, P3)["kl"]}),
    Case("targets_file_with_bad_row",
         both(text("p.csv", VALID3), text("t.csv", kl_csv(np.vstack([TARGETS[:2], [[0.5, 0.7, -0.2]], TARGETS[3:]]),
                                                          ids=("r1", "r2", "r3", "r4")))),
         ("score", "{d}/p.csv", "--targets", "{d}/t.csv"), 2, ("t.csv", "row 3")),
    Case("targets_file_missing_a_key",
         both(text("p.csv", VALID3), text("t.csv", kl_csv(TARGETS[:3], ids=("r1", "r2", "r3")))),
         ("score", "{d}/p.csv", "--targets", "{d}/t.csv"), 2, ("t.csv", "r4")),

    # KL: two files that must agree.
    Case("kl_valid_keys_in_other_order", both(text("p.csv", kl_csv(KL_P)),
                                              text("q.csv", kl_csv(KL_Q[[2, 0, 1]], ids=("k3", "k1", "k2")))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 0, expect=lambda: ref_kl(KL_P, KL_Q)),
    Case("kl_different_classes", both(text("p.csv", kl_csv(KL_P)),
                                      text("q.csv", kl_csv(KL_Q, header=["id", "p_a", "p_b", "p_d"]))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("p.csv", "class")),
    Case("kl_different_row_counts", both(text("p.csv", kl_csv(KL_P, header=["n", "p_a", "p_b", "p_c"])),
                                         text("q.csv", kl_csv(KL_Q[:2], header=["n", "p_a", "p_b", "p_c"]))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("row counts",)),
    Case("kl_duplicate_keys_in_p", both(text("p.csv", kl_csv(KL_P, ids=("k1", "k2", "k1"))),
                                        text("q.csv", kl_csv(KL_Q))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("p.csv", "duplicate", "k1")),
    Case("kl_duplicate_keys_in_q", both(text("p.csv", kl_csv(KL_P)),
                                        text("q.csv", kl_csv(KL_Q, ids=("k1", "k2", "k2")))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("q.csv", "duplicate", "k2")),
    Case("kl_key_missing_in_p", both(text("p.csv", kl_csv(KL_P[:2], ids=("k1", "k2"))),
                                     text("q.csv", kl_csv(KL_Q))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("p.csv", "k3")),
    Case("kl_key_missing_in_q", both(text("p.csv", kl_csv(KL_P)),
                                     text("q.csv", kl_csv(KL_Q[:2], ids=("k1", "k2")))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("q.csv", "k3")),
    Case("kl_bad_row_in_p", both(text("p.csv", kl_csv(np.vstack([KL_P[:1], [[0.5, 0.6, 0.2]], KL_P[2:]]))),
                                 text("q.csv", kl_csv(KL_Q))),
         ("kl", "{d}/p.csv", "{d}/q.csv"), 2, ("p.csv", "row 2")),

    # Options and gates.
    Case("gate_fails", text("p.csv", VALID3), ("score", "{d}/p.csv", "--max", "nll=0.01"), 1, ("gate", "nll"),
         expect=nll3()),
    Case("gate_passes", text("p.csv", VALID3), ("score", "{d}/p.csv", "--max", "nll=10", "--min", "accuracy=0.5"), 0,
         expect=nll3()),
    Case("gate_unknown_metric", text("p.csv", VALID3), ("score", "{d}/p.csv", "--max", "auc=0.9"), 2,
         ("auc", "unknown metric")),
    Case("gate_metric_of_other_command", both(text("p.csv", kl_csv(KL_P)), text("q.csv", kl_csv(KL_Q))),
         ("kl", "{d}/p.csv", "{d}/q.csv", "--max", "nll=1"), 2, ("nll", "unknown metric")),
    Case("gate_without_value", text("p.csv", VALID3), ("score", "{d}/p.csv", "--max", "nll"), 2,
         ("--max", "metric=number")),
    Case("gate_with_text_value", text("p.csv", VALID3), ("score", "{d}/p.csv", "--min", "accuracy=high"), 2,
         ("--min", "metric=number")),
    Case("gate_with_nan_value", text("p.csv", VALID3), ("score", "{d}/p.csv", "--max", "nll=nan"), 2,
         ("--max", "metric=number")),
    Case("eps_too_large", text("p.csv", VALID3), ("score", "{d}/p.csv", "--eps", "0.5"), 2, ("--eps",)),
    Case("eps_negative", text("p.csv", VALID3), ("score", "{d}/p.csv", "--eps", "-1e-9"), 2, ("--eps",)),
    Case("eps_not_a_number", text("p.csv", VALID3), ("score", "{d}/p.csv", "--eps", "tiny"), 2, ("--eps",)),
    Case("unknown_input_kind", text("p.csv", VALID3), ("score", "{d}/p.csv", "--input", "scores"), 2,
         ("--input",)),
    Case("negative_tol", text("p.csv", VALID3), ("score", "{d}/p.csv", "--tol", "-1"), 2, ("--tol",)),
    Case("per_sample_folder_missing", text("p.csv", VALID3),
         ("score", "{d}/p.csv", "--per-sample", "{d}/no/such/folder/out.csv"), 2, ("does not exist",),
         per_sample=False),
    Case("per_sample_is_a_directory", both(text("p.csv", VALID3), folder("out.csv")),
         ("score", "{d}/p.csv", "--per-sample", "{d}/out.csv"), 2, ("directory",), per_sample=False),
    Case("per_sample_unknown_extension", text("p.csv", VALID3),
         ("score", "{d}/p.csv", "--per-sample", "{d}/out.json"), 2, ("--per-sample",), per_sample=False),

    # Bounded reading: hostile bytes are refused after a bounded prefix, wide rows are read.
    Case("nul_bytes_past_the_first_block", raw("p.csv", bytes(3 << 20)), ("score", "{d}/p.csv"), 2,
         ("p.csv", "binary")),
    Case("gzip_of_nul_bytes", raw("p.csv.gz", lambda: gzip.compress(bytes(8 << 20), mtime=0)),
         ("score", "{d}/p.csv.gz"), 2, ("p.csv.gz", "binary")),
    Case("stdin_nul_bytes", lambda d: None, ("score", "-"), 2, ("stdin", "binary"), stdin=lambda: bytes(3 << 20)),
    Case("header_line_over_the_limit", raw("p.csv", b"p_a," * (17 << 18)), ("score", "{d}/p.csv"), 2,
         ("p.csv", "header line longer than 16 MiB")),
    Case("gzip_header_line_over_the_limit", raw("p.csv.gz", lambda: gzip.compress(b"p_a," * (17 << 18), mtime=0)),
         ("score", "{d}/p.csv.gz"), 2, ("p.csv.gz", "header line longer than 16 MiB")),
    Case("row_wider_than_a_block", text("p.csv", csv_of(HEADER3, [["K" * (2 << 20), *rows3()[0][1:]], *rows3()[1:]])),
         ("score", "{d}/p.csv"), 0, expect=nll3(), per_sample=False,
         note="the per-sample check reads its output with pyarrow's 1 MiB block, too small for this key"),
    Case("row_wider_than_a_block_gzip",
         raw("p.csv.gz", lambda: gz(csv_of(HEADER3, [*rows3()[:3], ["K" * (2 << 20), *rows3()[3][1:]]]))),
         ("score", "{d}/p.csv.gz"), 0, expect=nll3(), per_sample=False),
    Case("directory_with_a_subfolder",
         both(text("dir/a.csv", VALID3), text("dir/sub/b.csv", csv_of(HEADER3, rows3(P3[:2], Y3[:2])))),
         ("score", "{d}/dir"), 0,
         expect=lambda: {"nll": ref_nll(np.vstack([P3, P3[:2]]), np.concatenate([Y3, Y3[:2]]))}),
    Case("directory_with_a_broken_link", both(text("dir/a.csv", VALID3),
                                                 lambda d: (d / "dir" / "b.csv").symlink_to(d / "gone.csv")),
         ("score", "{d}/dir"), 2, ("b.csv", "broken symbolic link")),
]

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
