"""Files of many classes (issue 11): more than WIDE_COLUMNS class columns are read as one matrix.

20,000 classes keep the suite fast; the 200,000-class figures (peak memory) are measured by hand
(README, "Limits"). Every test that can also runs the ordinary path (one Arrow column per class,
forced by raising WIDE_COLUMNS) and asks for the very same numbers and messages.
"""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.special
from helpers import assert_input_error

from nllcli import columns as columns_module
from nllcli import readers
from nllcli.columns import PACKED, resolve_layout

K = 20_000
N = 9
EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20_000)
    p, q = rng.dirichlet(np.ones(K), size=N), rng.dirichlet(np.ones(K), size=N)
    return p, q, rng.integers(0, K, N)


def _names():
    return [f"p_c{j}" for j in range(K)]


def _csv_text(matrix, labels=None, sep=",", line_end="\n", quote_every=0) -> str:
    header = ["id", *(["label"] if labels is not None else []), *_names()]
    lines = [sep.join(header)]
    for i, row in enumerate(matrix):
        cells = [repr(float(v)) for v in row]
        if quote_every:
            cells = [f'"{c}"' if j % quote_every == 0 else c for j, c in enumerate(cells)]
        lines.append(sep.join([f"r{i}", *([f"c{labels[i]}"] if labels is not None else []), *cells]))
    return line_end.join(lines) + line_end


def _parquet(path, matrix, labels=None, dtype=np.float64):
    table = {"id": pa.array([f"r{i}" for i in range(len(matrix))])}
    if labels is not None:
        table["label"] = pa.array([f"c{y}" for y in labels])
    table.update({name: matrix[:, j].astype(dtype) for j, name in enumerate(_names())})
    pq.write_table(pa.table(table), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    p, q, labels = data
    folder = tmp_path_factory.mktemp("wide")
    (folder / "p.csv").write_text(_csv_text(p, labels))
    (folder / "q.csv").write_text(_csv_text(q))
    _parquet(folder / "p.parquet", p, labels)
    _parquet(folder / "q.parquet", q)
    return folder


@pytest.fixture
def ordinary(monkeypatch):
    """Read wide files the ordinary way, one Arrow column per class."""
    monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
    monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)


def _matrix(path, **layout):
    """The class matrix of a file as the reader and Layout.values give it, and whether it was packed."""
    source = readers.open_source(str(path))
    found = resolve_layout(source.schema, source.name, sample=source.head, **layout)
    chunks = list(source.batches(found.columns, found.types(source.schema)))
    packed = all(PACKED in c.batch.schema.names and c.batch.num_columns < 10 for c in chunks)
    values = np.concatenate([found.values(c.batch, c.first_row) for c in chunks])
    return values, packed


def _nll(p, labels):
    return float(np.mean(-np.log(np.clip(p[np.arange(len(labels)), labels], EPS, 1 - EPS))))


# -- exact values ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p.csv", "p.parquet"])
def test_score_equals_numpy(run_json, files, data, name):
    p, _, labels = data
    code, report, stderr = run_json("score", files / name)
    assert code == 0, stderr
    assert report["rows"] == N and len(report["classes"]) == K
    assert report["metrics"]["nll"] == pytest.approx(_nll(p, labels), rel=1e-10)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_kl_equals_scipy(run_json, files, data, suffix):
    p, q, _ = data
    code, report, stderr = run_json("kl", files / f"p{suffix}", files / f"q{suffix}")
    assert code == 0, stderr
    assert report["metrics"]["kl"] == pytest.approx(np.mean(scipy.special.rel_entr(p, q).sum(axis=1)), rel=1e-10)
    assert report["metrics"]["entropy"] == pytest.approx(np.mean(scipy.special.entr(p).sum(axis=1)), rel=1e-10)


@pytest.mark.parametrize("command", [("score", "p.csv"), ("score", "p.parquet"), ("kl", "p.csv", "q.parquet")])
def test_both_paths_give_the_same_report(run_json, files, monkeypatch, command):
    code, wide, _ = run_json(*command[:1], *(files / n for n in command[1:]))
    monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
    monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)
    code_ordinary, ordinary_report, _ = run_json(*command[:1], *(files / n for n in command[1:]))
    assert code == code_ordinary == 0
    assert wide["metrics"] == ordinary_report["metrics"]  # the same doubles, not only close ones


@pytest.mark.parametrize("variant", ["plain", "gzip", "tsv", "crlf", "quoted", "no final line end"])
def test_csv_variants_read_the_exact_matrix(tmp_path, data, variant):
    p, _, labels = data
    text = _csv_text(p, labels, sep="\t" if variant == "tsv" else ",", line_end="\r\n" if variant == "crlf" else "\n",
                     quote_every=7 if variant == "quoted" else 0)
    path = tmp_path / ("p.tsv" if variant == "tsv" else "p.csv.gz" if variant == "gzip" else "p.csv")
    if variant == "no final line end":
        text = text.rstrip("\n")
    if variant == "gzip":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_bytes(text.encode())
    values, packed = _matrix(path)
    assert packed
    assert np.array_equal(values, p)


def test_classes_in_another_order(tmp_path, data):
    p, _, labels = data
    path = tmp_path / "p.csv"
    path.write_text(_csv_text(p, labels))
    order = np.random.default_rng(1).permutation(K)
    values, packed = _matrix(path, classes=[f"c{j}" for j in order])
    assert packed and np.array_equal(values, p[:, order])


def test_parquet_float32_and_row_groups(tmp_path, data):
    p = data[0][:, :9000]  # more than WIDE_COLUMNS, more than two slices of WIDE_SLICE columns
    columns = {f"p_c{j}": p[:, j].astype(np.float32) for j in range(p.shape[1])}
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"label": [f"c{j}" for j in range(N)], **columns}), path, row_group_size=4)
    values, packed = _matrix(path)  # groups of 4, 4 and 1 rows
    assert packed and np.array_equal(values, p.astype(np.float32).astype(np.float64))


def test_standard_input(run_json, files, data):
    p, _, labels = data
    code, report, stderr = run_json("score", "-", input=(files / "p.csv").read_bytes())
    assert code == 0, stderr
    assert report["metrics"]["nll"] == pytest.approx(_nll(p, labels), rel=1e-10)


def test_wide_parquet_sample_leaves_out_the_class_columns(files):
    source = readers.open_source(str(files / "p.parquet"))
    assert source.head().column_names == ["id", "label"]


def test_ordinary_files_keep_the_ordinary_path(samples):
    source = readers.open_source(str(samples / "robot_tools.csv"))
    found = resolve_layout(source.schema, source.name, sample=source.head)
    assert found.types(source.schema).packed is None
    assert PACKED not in next(source.batches(found.columns, found.types(source.schema))).batch.schema.names


# -- errors name the file, the column and the rows --------------------------------------------


def _broken_csv(tmp_path, data, edit) -> str:
    p, _, labels = data
    lines = _csv_text(p, labels).split("\n")
    edit(lines)
    path = tmp_path / "broken.csv"
    path.write_text("\n".join(lines))
    return path


def _set_field(lines, row, column, value):
    cells = lines[row].split(",")
    cells[2 + column] = value
    lines[row] = ",".join(cells)


@pytest.mark.parametrize("wide_path", [True, False])
def test_non_numeric_class_value(run, tmp_path, data, monkeypatch, wide_path):
    def edit(lines):
        _set_field(lines, 4, 12_345, "abc")
        _set_field(lines, 7, 12_345, "x")

    path = _broken_csv(tmp_path, data, edit)
    if not wide_path:
        monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
        monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)
    assert_input_error(run("score", path), str(path), "column 'p_c12345'", "non-numeric value 'abc'", "rows 4, 7")


@pytest.mark.parametrize("wide_path", [True, False])
def test_missing_class_value_and_wrong_width(run, tmp_path, data, monkeypatch, wide_path):
    if not wide_path:
        monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
        monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)
    missing = _broken_csv(tmp_path, data, lambda lines: _set_field(lines, 6, 300, ""))
    assert_input_error(run("score", missing), str(missing), "p_c", "row 6")

    def cut(lines):
        lines[5] = lines[5].rsplit(",", 1)[0]

    short = _broken_csv(tmp_path, data, cut)
    assert_input_error(run("score", short), str(short), "malformed CSV", "row 5")


def test_missing_value_message_is_the_ordinary_one(run, tmp_path, data, monkeypatch):
    path = _broken_csv(tmp_path, data, lambda lines: _set_field(lines, 6, 300, ""))
    wide_line = assert_input_error(run("score", path))
    monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
    monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)
    assert assert_input_error(run("score", path)) == wide_line


def test_parquet_text_class_column(run, tmp_path, data):
    p, _, labels = data
    table = pq.read_table(_parquet(tmp_path / "tmp.parquet", p, labels))
    column = table.schema.get_field_index("p_c777")
    table = table.set_column(column, "p_c777", pa.array(["abc"] * N))
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)
    result = run("score", path)  # the p_ prefix makes it a class column
    assert result.exit_code == 2 and "p_c777" in result.stderr and "Traceback" not in result.stderr


def test_header_row_wider_than_the_header(run, tmp_path, data):
    path = _broken_csv(tmp_path, data, lambda lines: lines.__setitem__(1, lines[1] + ",0.5"))
    assert_input_error(run("score", path), str(path), "malformed CSV", "row 1")


def test_blank_lines_are_not_rows(tmp_path, data):
    p, _, labels = data
    lines = _csv_text(p, labels).split("\n")
    lines.insert(3, "")
    path = tmp_path / "p.csv"
    path.write_text("\n".join(lines) + "\n\n")
    values, packed = _matrix(path)
    assert packed and np.array_equal(values, p)


def test_csv_sample_types_label_and_key_as_text(files):
    source = readers.open_source(str(files / "p.csv"))
    assert source.schema.field("id").type == pa.string() and source.schema.field("p_c0").type == pa.float64()
    assert source.sample.column_names == ["id", "label"]
    assert len(source.schema) == K + 2


def test_quoted_delimiter_in_a_class_field(run, tmp_path, data, monkeypatch):
    """A quoted "0,5" is one field (text, not a number): both paths name its column and row."""
    path = _broken_csv(tmp_path, data, lambda lines: _set_field(lines, 2, 9_999, '"0,5"'))
    wide_line = assert_input_error(run("score", path), "column 'p_c9999'", "'0,5'", "row 2")
    monkeypatch.setattr(columns_module, "WIDE_COLUMNS", 10 ** 9)
    monkeypatch.setattr(readers, "WIDE_COLUMNS", 10 ** 9)
    assert assert_input_error(run("score", path)) == wide_line
