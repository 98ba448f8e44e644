"""A plain CSV file parsed in byte ranges on several threads gives the report of one stream: every
number (1e-12), the row count, and every error message with its true 1-based rows, whatever the
number of ranges, line ends (CRLF, no final newline), a byte-order mark or quoted fields."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import loads_strict
from nllcli import readers
from nllcli.errors import InputError

CLASSES = ["cat", "dog", "owl"]


def prediction_text(n: int, seed: int = 0, newline: str = "\n", final_newline: bool = True) -> str:
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(len(CLASSES)), n)
    labels = rng.choice(CLASSES, n)
    lines = ["id,label," + ",".join(f"p_{c}" for c in CLASSES)]
    lines += [f"{i},{y}," + ",".join(f"{v:.6f}" for v in row) for i, (y, row) in enumerate(zip(labels, q))]
    text = newline.join(lines)
    return text + newline if final_newline else text


def serial_and_split(run, monkeypatch, path, *args, range_bytes: int, threads: int = 3):
    """The CLI's result with one stream, then with the file cut into ranges of ``range_bytes``."""
    monkeypatch.setenv("NLL_THREADS", "1")
    one = run("score", path, *args)
    monkeypatch.setenv("NLL_THREADS", str(threads))
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", range_bytes)
    split = run("score", path, *args)
    return one, split


def assert_same_report(one, split):
    assert one.exit_code == split.exit_code == 0, (one.stderr, split.stderr)
    a, b = loads_strict(one.stdout), loads_strict(split.stdout)
    assert a["rows"] == b["rows"]
    compare(a, b)


def compare(a, b, path="report"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            compare(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-300), path
    else:
        assert a == b, path


def ranges_read(monkeypatch, path, range_bytes: int) -> int:
    """How many ranges the parallel path cuts the file into (so a test knows it split it)."""
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", range_bytes)
    source = readers.open_source(str(path))
    if not source._splittable():
        return 1
    return len(readers.csv_cuts(source, readers.csv_header_end(source), range_bytes)) - 1


@pytest.mark.parametrize("range_bytes", [300, 1000, 4096, 1 << 20])
@pytest.mark.parametrize("threads", [2, 3])
def test_ranges_give_the_report_of_one_stream(run, monkeypatch, tmp_path, range_bytes, threads):
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(700))
    args = ("--format", "json", "--worst", "5", "--by", "label", "--bins", "7")
    one, split = serial_and_split(run, monkeypatch, path, *args, range_bytes=range_bytes, threads=threads)
    assert_same_report(one, split)
    assert loads_strict(split.stdout)["rows"] == 700


def test_the_file_is_really_cut_into_ranges(monkeypatch, tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(700))
    assert ranges_read(monkeypatch, path, 300) > 50
    monkeypatch.setenv("NLL_THREADS", "4")
    source = readers.open_source(str(path))
    names = source.schema.names
    batches = list(source.batches(names, {n: source.schema.field(n).type for n in names}))
    assert sum(c.batch.num_rows for c in batches) == 700
    assert [c.first_row for c in batches][:3] == [1, 1 + batches[0].batch.num_rows,
                                                   1 + batches[0].batch.num_rows + batches[1].batch.num_rows]
    assert batches[-1].bytes_read == source.size


def test_ranges_are_scored_in_equal_slices(run, monkeypatch, tmp_path):
    """A range parsed whole reaches the kernels in equal parts of at most PARQUET_BATCH_ROWS rows,
    numbered on from the range's first row, with the report of one stream."""
    import pyarrow as pa

    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 10)
    batch = pa.record_batch({"x": np.arange(25)})
    assert [b.num_rows for b in readers.equal_slices([batch])] == [9, 9, 7]
    assert np.concatenate([b.column(0) for b in readers.equal_slices([batch, batch.slice(0, 10)])]).tolist() \
        == list(range(25)) + list(range(10))
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(700))
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 1000)
    monkeypatch.setenv("NLL_THREADS", "2")
    source = readers.open_source(str(path))
    names = source.schema.names
    chunks = list(source.batches(names, {n: source.schema.field(n).type for n in names}))
    assert max(c.batch.num_rows for c in chunks) <= 10 and len(chunks) >= 70
    assert [c.first_row for c in chunks] == list(np.cumsum([1] + [c.batch.num_rows for c in chunks[:-1]]))
    assert np.concatenate([c.batch.column("id") for c in chunks]).tolist() == list(range(700))
    one, split = serial_and_split(run, monkeypatch, path, "--format", "json", "--worst", "4", range_bytes=1000)
    assert_same_report(one, split)


@pytest.mark.parametrize("shape", ["crlf", "no final newline", "crlf, no final newline", "bom", "blank lines",
                                   "numpy header"])
def test_line_ends_and_marks(run, monkeypatch, tmp_path, shape):
    text = prediction_text(500, seed=1, newline="\r\n" if "crlf" in shape else "\n",
                           final_newline="no final newline" not in shape)
    if shape == "blank lines":
        lines = text.split("\n")
        text = "\n".join(line if i % 37 else line + "\n" for i, line in enumerate(lines))
    if shape == "numpy header":
        text = "# " + text
    data = text.encode()
    if shape == "bom":
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / "preds.csv"
    path.write_bytes(data)
    assert ranges_read(monkeypatch, path, 256) > 20
    one, split = serial_and_split(run, monkeypatch, path, "--format", "json", "--worst", "3", range_bytes=256)
    assert_same_report(one, split)
    assert loads_strict(split.stdout)["rows"] == 500


def test_quoted_fields_fall_back_to_one_stream(run, monkeypatch, tmp_path):
    """A quote in a range may open a field holding a line end: the cuts after it are not trusted."""
    lines = prediction_text(600, seed=2).splitlines()
    for i in (450, 451):  # a label with a line end inside its quotes, late in the file
        row = lines[i].split(",")
        lines[i] = ",".join([row[0], '"dog"', *row[2:]])
    lines[452] = lines[452].replace(",cat,", ',"c\nat",').replace(",dog,", ',"d\nog",').replace(",owl,", ',"o\nwl",')
    path = tmp_path / "preds.csv"
    path.write_text("\n".join(lines) + "\n")
    args = ("--format", "json", "--classes", ",".join(CLASSES), "--worst", "3")
    one, split = serial_and_split(run, monkeypatch, path, *args, range_bytes=300)
    assert one.exit_code == split.exit_code
    assert one.stdout == split.stdout and one.stderr == split.stderr


@pytest.mark.parametrize("libc", [True, False])
def test_a_quote_is_found_anywhere_in_a_range(monkeypatch, libc):
    """The quote test of a range (libc's memchr, or `in` without a C library) sees a quote at any
    position of any length of bytes, NUL bytes included."""
    if not libc:
        monkeypatch.setattr(readers, "_memchr", lambda: None)
    elif readers._memchr() is None:
        pytest.skip("no C library to load by name")
    big = b"0,cat,0.5,0.5\n" * 300_000
    cases = [b"", b"x", b'"', b'a,"b', b"\0\0\"", b"\0" * 9, big, big + b'"', b'"' + big, big[:-7] + b'"' + big[-6:]]
    assert [readers.holds_quote(data) for data in cases] == [b'"' in data for data in cases]


def test_a_fully_quoted_file(run, monkeypatch, tmp_path):
    """pandas' to_csv(quoting=csv.QUOTE_ALL): every field quoted, read in one stream."""
    lines = prediction_text(400, seed=3).splitlines()
    path = tmp_path / "preds.csv"
    path.write_text("\n".join(",".join(f'"{v}"' for v in line.split(",")) for line in lines) + "\n")
    one, split = serial_and_split(run, monkeypatch, path, "--format", "json", range_bytes=300)
    assert_same_report(one, split)


def broken(tmp_path, row: int, how: str):
    lines = prediction_text(800, seed=4).splitlines()
    fields = lines[row].split(",")
    if how == "text":
        fields[3] = "oops"
    elif how == "spreadsheet error":
        fields[2] = "#DIV/0!"
    elif how == "empty field":  # missing: pyarrow's null spellings, which a range does not know
        fields[3] = ""
    elif how == "NA":
        fields[2] = "NA"
    elif how == "short row":
        fields = fields[:-1]
    elif how == "long row":
        fields.append("0.1")
    lines[row] = ",".join(fields)
    path = tmp_path / "preds.csv"
    data = ("\n".join(lines) + "\n").encode()
    if how == "bad utf-8":
        data = data.replace(b"\n" + lines[row].encode(), b"\n" + lines[row].encode().replace(b"dog", b"d\xffg")
                            .replace(b"cat", b"c\xffat").replace(b"owl", b"o\xffwl"), 1)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["text", "spreadsheet error", "empty field", "NA", "short row", "long row",
                                 "bad utf-8"])
@pytest.mark.parametrize("row", [1, 377, 799])
def test_errors_name_the_true_rows(run, monkeypatch, tmp_path, how, row):
    path = broken(tmp_path, row, how)
    one, split = serial_and_split(run, monkeypatch, path, "--format", "json", range_bytes=400)
    assert one.exit_code == split.exit_code == 2, (one.stderr, split.stderr)
    assert split.stderr == one.stderr
    assert split.stdout == ""
    if how in ("text", "spreadsheet error", "empty field", "NA", "short row", "long row"):
        assert f"row {row}" in split.stderr or f"rows {row}" in split.stderr, split.stderr


def test_reader_errors_are_input_errors(monkeypatch, tmp_path):
    path = broken(tmp_path, 600, "text")
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 500)
    monkeypatch.setenv("NLL_THREADS", "2")
    source = readers.open_source(str(path))
    names = source.schema.names
    types = {n: source.schema.field(n).type for n in names}
    types["p_dog"] = readers.pa.float64()
    with pytest.raises(InputError, match="row 600"):
        for _ in readers.chunks([source], names, types):
            pass


def test_stdin_and_gzip_read_in_one_stream(run, monkeypatch, tmp_path):
    import gzip

    text = prediction_text(300, seed=5)
    path = tmp_path / "preds.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 256)
    assert not readers.open_source(str(path))._splittable()
    plain = tmp_path / "preds.csv"
    plain.write_text(text)
    monkeypatch.setenv("NLL_THREADS", "3")
    a = run("score", plain, "--format", "json")
    b = run("score", path, "--format", "json")
    c = run("score", "-", "--format", "json", input=text)
    assert a.exit_code == b.exit_code == c.exit_code == 0
    ra, rb, rc = (loads_strict(r.stdout) for r in (a, b, c))
    for other in (rb, rc):
        assert other["rows"] == ra["rows"] == 300
        assert other["metrics"]["nll"] == pytest.approx(ra["metrics"]["nll"], rel=1e-12)


def test_one_thread_reads_in_one_stream(monkeypatch, tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(300))
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 256)
    monkeypatch.setenv("NLL_THREADS", "1")
    assert readers.parse_threads() == 1
    assert not readers.open_source(str(path))._splittable()
    monkeypatch.setenv("NLL_THREADS", "2")
    assert readers.open_source(str(path))._splittable()


def _label_type(monkeypatch, path, threads: int = 2):
    """The type the label column of each batch arrives in, read as nll score reads it."""
    from nllcli import plan

    monkeypatch.setenv("NLL_THREADS", str(threads))
    job = plan.plan_score([str(path)])
    source, layout = job.sources[0], job.layout
    batches = source.batches(layout.columns, layout.types(source.schema))
    return {str(c.batch.schema.field("label").type) for c in batches}


def test_labels_of_one_width_arrive_as_plain_text(monkeypatch, tmp_path):
    """Ranges parse labels of one width of at most 8 bytes as plain text (matched in numpy), other
    labels, and one stream, as a dictionary."""
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 1000)
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(700))
    assert _label_type(monkeypatch, path) == {"string"}
    assert _label_type(monkeypatch, path, threads=1) == {"dictionary<values=string, indices=int32, ordered=0>"}
    several = tmp_path / "several.csv"
    several.write_text(prediction_text(700).replace(",owl,", ",barn_owl,"))
    assert _label_type(monkeypatch, several) == {"dictionary<values=string, indices=int32, ordered=0>"}


@pytest.mark.parametrize("later", ["barn_owl", "cow", " owl", "owl ", "", "2.0", "1"])
def test_labels_past_the_sample_of_another_width(run, monkeypatch, tmp_path, later):
    """A sample of one width, then labels of other widths, unknown, blank, positions or floats:
    the report, or the error and its rows, of one stream."""
    text = prediction_text(2000)
    head, tail = text[:len(text) * 3 // 4], text[len(text) * 3 // 4:]
    path = tmp_path / "preds.csv"
    path.write_text(head + tail.replace(",owl,", f",{later},"))
    args = ("--format", "json", "--worst", "3", "--bins", "5")
    one, split = serial_and_split(run, monkeypatch, path, *args, range_bytes=2000)
    if later in (" owl", "owl ", "2.0", "1"):
        assert_same_report(one, split)
    else:  # the same first rows; "(and N more)" counts those of the first bad batch, as ever
        assert one.exit_code == split.exit_code == 2 and "rows 1" in one.stderr
        assert split.stderr.split(" (and ")[0] == one.stderr.split(" (and ")[0]


def test_ignore_label_and_by_label_in_ranges(run, monkeypatch, tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(900))
    for args in (("--ignore-label", "owl"), ("--by", "label"), ("--by", "label", "--ignore-label", "cat")):
        one, split = serial_and_split(run, monkeypatch, path, "--format", "json", *args, range_bytes=700)
        assert_same_report(one, split)


def test_ranges_are_scored_in_the_calling_thread(monkeypatch, tmp_path):
    """CSV ranges and Parquet keep the cores busy reading: their batches are scored in the thread
    that runs the job (on one scoring thread past INLINE_SCORING_CLASSES classes), those of one
    stream (gzip) on parse_threads() scoring threads."""
    import gzip
    import threading

    import pyarrow.parquet as pq

    from nllcli import api, engine

    scoring = []
    score = engine.Scorer.score
    monkeypatch.setattr(engine.Scorer, "score", lambda self, part: scoring.append(
        threading.current_thread().name) or score(self, part))
    monkeypatch.setattr(readers, "CSV_RANGE_BYTES", 1000)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 100)
    monkeypatch.setenv("NLL_THREADS", "2")
    path = tmp_path / "preds.csv"
    path.write_text(prediction_text(700))
    ranges = api.score(str(path))
    assert len(scoring) > 5 and set(scoring) == {threading.current_thread().name}
    scoring.clear()
    pq.write_table(readers.open_source(str(path)).sample, tmp_path / "preds.parquet")
    parquet = api.score(str(tmp_path / "preds.parquet"))
    assert len(scoring) == 7 and set(scoring) == {threading.current_thread().name}
    assert parquet.metrics["nll"] == pytest.approx(ranges.metrics["nll"], rel=1e-12)
    scoring.clear()
    (tmp_path / "preds.csv.gz").write_bytes(gzip.compress(path.read_bytes()))
    one_stream = api.score(str(tmp_path / "preds.csv.gz"))
    assert scoring and all(name.startswith("nll-score") for name in scoring)
    assert one_stream.metrics["nll"] == pytest.approx(ranges.metrics["nll"], rel=1e-12)
    scoring.clear()
    rng = np.random.default_rng(1)
    k = engine.INLINE_SCORING_CLASSES + 1  # more classes: one scoring thread beside the parsing ones
    q = rng.dirichlet(np.ones(k), 300)
    wide = tmp_path / "wide.csv"
    wide.write_text("label," + ",".join(f"p_{j}" for j in range(k)) + "\n" + "".join(
        f"{rng.integers(k)}," + ",".join(f"{v:.6f}" for v in row) + "\n" for row in q))
    api.score(str(wide))
    assert len(scoring) > 5 and len(set(scoring)) == 1 and scoring[0].startswith("nll-score")
