"""Fuzzing: valid CSV and Parquet bytes, mutated (truncated, bytes flipped, delimiters, quotes and
newlines inserted), scored in-process. The contract: exit 0 or 2, never 3, never a traceback; when
the tool says 0, its nll equals a reference computed from the rows as an independent parser reads
the mutated bytes. Derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nllcli.cli import app  # conftest.py has set the environment first

EPS = float(np.finfo(np.float64).eps)
LABEL_NAMES = ("label", "y", "y_true", "target", "true_label", "class")
PREFIXES = ("p_", "prob_", "proba_")
HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the valid inputs ----------------------------------------------------------------------

def _rows(n: int = 24, seed: int = 3):
    rng = np.random.default_rng(seed)
    a = np.round(rng.uniform(0.01, 0.6, n), 6)
    b = np.round(rng.uniform(0.01, 0.39, n), 6)
    c = np.round(1.0 - a - b, 6)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    return [f"id-{i}" for i in range(n)], labels, np.column_stack([a, b, c])


IDS, LABELS, PROBS = _rows()
VALID_CSV = ("id,label,p_a,p_b,p_c\n" + "".join(
    f"{i},{y},{p[0]:.6f},{p[1]:.6f},{p[2]:.6f}\n" for i, y, p in zip(IDS, LABELS, PROBS))).encode()


def _parquet(compression: str) -> bytes:
    table = pa.table({"id": IDS, "label": list(LABELS), "p_a": PROBS[:, 0], "p_b": PROBS[:, 1],
                      "p_c": PROBS[:, 2]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression, row_group_size=10)
    return sink.getvalue()


VALID_PARQUET = {"none": _parquet("none"), "snappy": _parquet("snappy")}


# -- mutations -----------------------------------------------------------------------------

INSERTS = [b",", b'"', b"\n", b"\r\n", b"\r", b"\t", b" ", b'""', b'",', b",\n", b"\x00", b";", b"\xff",
           b"\xc3\xa9", b"-", b"e", b".", b"nan", b"1"]


@st.composite
def mutated(draw, data: bytes, max_ops: int = 3) -> bytes:
    """Apply 1..max_ops mutations: truncate, flip bytes, insert a delimiter/quote/newline, delete."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "insert", "delete"]))
        size = len(out)
        if size == 0:
            break
        at = draw(st.integers(0, size - 1))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            for offset in range(draw(st.integers(1, 4))):
                if at + offset < len(out):
                    out[at + offset] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[at:at] = draw(st.sampled_from(INSERTS))
        else:
            del out[at:at + draw(st.integers(1, 8))]
    return bytes(out)


# -- running ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _score(path, *extra):
    """Run in-process; also return what the real program would print besides its own lines:
    warnings, and exceptions "ignored" in callbacks (Python prints those with a traceback)."""
    from typer.testing import CliRunner

    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(app, ["score", str(path), "--format", "json", *extra])
    finally:
        sys.unraisablehook = hook
    leaked = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, HIDDEN)]
    leaked += [f"Exception ignored in {u.object!r}: {u.exc_type.__name__}: {u.exc_value}" for u in unraisable]
    return result, leaked


def _check_contract(result, leaked, allowed=(0, 2)) -> dict | None:
    """Exit code and streams; returns the JSON report when there is one."""
    where = f"exit {result.exit_code}, stderr {result.stderr!r}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, where
    assert result.exit_code in allowed, where
    assert not leaked, f"would be printed on stderr: {leaked}"
    if result.exit_code == 2:
        assert result.stdout == "", where
        assert len(result.stderr.splitlines()) == 1, where
        assert result.stderr.startswith("nll: error: "), where
        return None
    return json.loads(result.stdout)


# -- independent references ---------------------------------------------------------------

def _label_index(text: str, classes: list[str]) -> int:
    label = text.strip()
    if label in classes:
        return classes.index(label)
    positions = [str(i) for i in range(len(classes))]
    if not any(c.strip().lstrip("+-").isdigit() for c in classes) and label in positions:
        return positions.index(label)
    raise AssertionError(f"nll scored a row whose label {text!r} is not among {classes}")


def _class_column(header: list[str], name: str) -> int:
    for candidate in (*(p + name for p in PREFIXES), name):
        if candidate in header:
            return header.index(candidate)
    raise AssertionError(f"no column for class {name!r} in {header}")


def csv_reference(data: bytes, classes: list[str]) -> tuple[int, float]:
    """(rows, nll) from the mutated CSV bytes, parsed with Python's csv module.

    The key column plays no part in a plain score and is not parsed: its bytes need not be UTF-8
    (invalid bytes are kept as surrogates), those of the label and class columns must be.
    """
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False) if r]
    header, body = rows[0], rows[1:]
    assert all(len(r) == len(header) for r in body), "nll scored rows of uneven width"
    label_col = next((header.index(n) for wanted in LABEL_NAMES for n in header if n.lower() == wanted), None)
    if label_col is None:  # no label's name: the one column whose values all name classes
        label_col = next(j for j, n in enumerate(header) if all(r[j].strip() in classes for r in body))
    columns = [_class_column(header, c) for c in classes]
    used = [label_col, *columns]
    for field in [header[j] for j in used] + [r[j] for r in body for j in used]:
        try:
            field.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AssertionError(f"nll scored a label or class value that is not UTF-8: {exc}") from exc
    p = np.array([[float(r[j]) for j in columns] for r in body], dtype=np.float64)
    y = np.array([_label_index(r[label_col], classes) for r in body])
    return len(body), _nll(p, y)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    p_true = np.clip(p[np.arange(len(y)), y], EPS, 1 - EPS)
    return float(-np.mean(np.log(p_true)))


def parquet_reference(data: bytes, classes: list[str]) -> tuple[int, float]:
    """(rows, nll) from the mutated Parquet bytes: the label and class columns read with
    pyarrow.parquet (the key column plays no part in a plain score and is not read)."""
    try:
        header = pq.read_schema(pa.BufferReader(data)).names
        label_col = next(n for wanted in LABEL_NAMES for n in header if n.lower() == wanted)
        used = [label_col, *(header[_class_column(header, c)] for c in classes)]
        table = pq.read_table(pa.BufferReader(data), columns=used)
    except Exception as exc:  # noqa: BLE001 - the finding is that nll read it
        raise AssertionError(f"nll scored a Parquet file pyarrow.parquet cannot read: {exc}") from exc
    p = np.column_stack([table.column(header[_class_column(header, c)]).to_numpy(zero_copy_only=False)
                         .astype(np.float64) for c in classes])
    y = np.array([_label_index(str(v), classes) for v in table.column(label_col).to_pylist()])
    return table.num_rows, _nll(p, y)


def _check_scored(report: dict, rows: int, nll: float) -> None:
    assert report["rows"] == rows
    if math.isfinite(nll):
        assert report["metrics"]["nll"] == pytest.approx(nll, rel=1e-9, abs=1e-12)
    else:
        assert report["metrics"]["nll"] is None


# -- the fuzz tests ---------------------------------------------------------------------------

def test_valid_inputs_score(fuzz_dir):
    """The unmutated inputs pass and agree with the references (the baseline of every mutation)."""
    (fuzz_dir / "base.csv").write_bytes(VALID_CSV)
    report = _check_contract(*_score(fuzz_dir / "base.csv"), allowed=(0,))
    _check_scored(report, *csv_reference(VALID_CSV, report["classes"]))
    for name, data in VALID_PARQUET.items():
        (fuzz_dir / f"base-{name}.parquet").write_bytes(data)
        report = _check_contract(*_score(fuzz_dir / f"base-{name}.parquet"), allowed=(0,))
        _check_scored(report, *parquet_reference(data, report["classes"]))


@_fuzz(800)
@given(data=mutated(VALID_CSV))
def test_fuzz_csv(fuzz_dir, data):
    path = fuzz_dir / "fuzz.csv"
    path.write_bytes(data)
    report = _check_contract(*_score(path))
    if report is not None:
        _check_scored(report, *csv_reference(data, report["classes"]))


@_fuzz(500)
@given(data=st.sampled_from(sorted(VALID_PARQUET)).flatmap(lambda k: mutated(VALID_PARQUET[k], max_ops=2)))
def test_fuzz_parquet(fuzz_dir, data):
    path = fuzz_dir / "fuzz.parquet"
    path.write_bytes(data)
    report = _check_contract(*_score(path))
    if report is not None:
        _check_scored(report, *parquet_reference(data, report["classes"]))


@_fuzz(300)
@given(data=mutated(VALID_CSV), threshold=st.floats(0.5, 1.5), min_accuracy=st.sampled_from([None, 0.2, 0.4]))
def test_fuzz_csv_with_gate(fuzz_dir, data, threshold, min_accuracy):
    """Exit 1 exactly when a gate really fails, judged from the reference nll and the report."""
    path = fuzz_dir / "gate.csv"
    path.write_bytes(data)
    extra = ["--max", f"nll={threshold!r}"] + (["--min", f"accuracy={min_accuracy}"] if min_accuracy else [])
    result, leaked = _score(path, *extra)
    report = _check_contract(result, leaked, allowed=(0, 1, 2))
    if report is None:
        return
    rows, nll = csv_reference(data, report["classes"])
    _check_scored(report, rows, nll)
    fails = not (nll <= threshold)
    if min_accuracy is not None:
        fails = fails or not (report["metrics"]["accuracy"] >= min_accuracy)
    assert result.exit_code == (1 if fails else 0), (result.exit_code, nll, threshold, report["metrics"])
    # A mutated label name ('mabel') is found by its values, and said on one line before the report.
    lines = [line for line in result.stderr.splitlines() if "found by its values" not in line]
    if result.exit_code == 1:
        assert lines and all(line.startswith("nll: gate failed: ") for line in lines), result.stderr
    else:
        assert lines == [], result.stderr
