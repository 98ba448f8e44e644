"""`nll score` against hard labels, through the CLI in-process (CliRunner, stdout and stderr apart).

Covers input formats, column detection, label handling, the numeric options, output formats,
per-sample output, gates, validation errors and internal errors. Soft targets (--targets,
--target-prefix, --label-smoothing) and `nll kl` are in test_cli_kl.py.
"""

from __future__ import annotations

import gzip
import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nllcli
from helpers import (add_broken_metric, arrow_table, assert_input_error, loads_strict, one_line, parquet_bytes,
                     table_text, write_csv)

EPS = float(np.finfo(np.float64).eps)

# A tiny hand-checkable file: the true class has probability 0.7, 0.6, 0.5, 0.2.
HEADER = ["id", "label", "p_a", "p_b", "p_c"]
ROWS = [
    ("r1", "a", 0.7, 0.2, 0.1),
    ("r2", "b", 0.1, 0.6, 0.3),
    ("r3", "c", 0.25, 0.25, 0.5),
    ("r4", "a", 0.2, 0.5, 0.3),  # the one mistake: argmax is b
]
P_TRUE = [0.7, 0.6, 0.5, 0.2]
NLL = -sum(math.log(p) for p in P_TRUE) / 4
ACCURACY = 0.75


# -- helpers ---------------------------------------------------------------------------------










def write_text(path, text: str):
    path.write_text(text)
    return path






def write_parquet(path, table: pa.Table):
    pq.write_table(table, path)
    return path






@pytest.fixture
def score_json(run_json):
    """run_json("score", ...)."""
    return lambda *args, input=None: run_json("score", *args, input=input)


@pytest.fixture
def preds(tmp_path):
    return write_csv(tmp_path / "preds.csv", HEADER, ROWS)


def check_tiny(data, classes=("a", "b", "c")):
    assert data["rows"] == 4
    assert data["classes"] == list(classes)
    assert data["units"] == "nats"
    assert data["metrics"]["nll"] == pytest.approx(NLL, rel=1e-12)
    assert data["metrics"]["accuracy"] == pytest.approx(ACCURACY)


# -- the report ------------------------------------------------------------------------------


def test_tiny_file_report(score_json, preds):
    code, data, err = score_json(preds)
    assert code == 0 and err == ""
    assert {"schema_version", "command", "inputs", "rows", "classes", "units", "metrics", "per_class",
            "clipped", "warnings"} <= set(data)
    assert data["schema_version"] == 1
    assert data["command"] == "score"
    assert data["inputs"] == {"preds": [str(preds)]}
    check_tiny(data)
    m = data["metrics"]
    assert m["cross_entropy"] == pytest.approx(NLL, rel=1e-12)
    assert m["entropy"] == 0.0
    assert m["kl"] == pytest.approx(NLL, rel=1e-12)  # hard labels: H = 0, so KL = CE
    assert m["perplexity"] == pytest.approx(math.exp(NLL), rel=1e-12)
    assert data["clipped"] == 0 and data["warnings"] == []
    per_class = {row["class"]: row for row in data["per_class"]}
    assert [row["class"] for row in data["per_class"]] == ["a", "b", "c"]
    assert per_class["a"]["rows"] == 2
    assert per_class["a"]["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.2)) / 2)
    assert per_class["a"]["accuracy"] == pytest.approx(0.5)
    assert per_class["b"]["nll"] == pytest.approx(-math.log(0.6))
    assert per_class["c"]["nll"] == pytest.approx(-math.log(0.5))
    assert per_class["c"]["accuracy"] == 1.0


def test_sample_file_matches_numpy(score_json, samples):
    import pandas as pd

    code, data, _ = score_json(samples / "robot_tools.csv")
    assert code == 0
    frame = pd.read_csv(samples / "robot_tools.csv")
    classes = ["wrench", "screwdriver", "hammer"]
    probs = frame[[f"p_{c}" for c in classes]].to_numpy()
    y = frame["label"].map(classes.index).to_numpy()
    p_true = np.clip(probs[np.arange(len(y)), y], EPS, 1 - EPS)
    assert data["rows"] == 1000
    assert data["classes"] == classes
    assert data["metrics"]["nll"] == pytest.approx(-np.log(p_true).mean(), rel=1e-9)
    assert data["metrics"]["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    # three planted true-class probabilities of exactly 0 are clipped (and one exact 1.0 or so)
    assert data["clipped"] >= 3
    assert any("clipped" in w for w in data["warnings"])


# -- input formats ---------------------------------------------------------------------------


def _csv(tmp_path):
    return [write_csv(tmp_path / "preds.csv", HEADER, ROWS)], None


def _tsv(tmp_path):
    return [write_csv(tmp_path / "preds.tsv", HEADER, ROWS, sep="\t")], None


def _csv_gz(tmp_path):
    path = tmp_path / "preds.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(table_text(HEADER, ROWS))
    return [path], None


def _parquet(tmp_path):
    return [write_parquet(tmp_path / "preds.parquet", arrow_table(HEADER, ROWS))], None


def _crlf(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_bytes(table_text(HEADER, ROWS).replace("\n", "\r\n").encode())
    return [path], None


def _bom_no_final_newline(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_bytes(b"\xef\xbb\xbf" + table_text(HEADER, ROWS).rstrip("\n").encode())
    return [path], None


def _stdin_csv(tmp_path):
    return ["-"], table_text(HEADER, ROWS)


def _stdin_tsv(tmp_path):
    return ["-"], table_text(HEADER, ROWS, sep="\t")


def _stdin_parquet(tmp_path):
    return ["-"], parquet_bytes(arrow_table(HEADER, ROWS))


def _stdin_gz(tmp_path):
    return ["-"], gzip.compress(table_text(HEADER, ROWS).encode())


@pytest.mark.parametrize("make", [_csv, _tsv, _csv_gz, _parquet, _crlf, _bom_no_final_newline, _stdin_csv, _stdin_tsv, _stdin_parquet,
                                  _stdin_gz], ids=lambda f: f.__name__.strip("_"))
def test_input_formats(score_json, tmp_path, make):
    paths, stdin = make(tmp_path)
    code, data, err = score_json(*paths, input=stdin)
    assert code == 0, err
    check_tiny(data)
    expected_name = "<stdin>" if paths == ["-"] else str(paths[0])
    assert data["inputs"]["preds"] == [expected_name]


def test_stdin_longer_than_one_block(score_json):
    # more than the 4 MiB read to find the header: the rest of stdin is streamed after it
    n = 200_000
    text = "id,label,p_a,p_b\n" + "".join(f"sample-{i:08d},{'ab'[i % 2]},0.25,0.75\n" for i in range(n))
    assert len(text) > 5 << 20
    code, data, err = score_json("-", input=text)
    assert code == 0, err
    assert data["rows"] == n
    assert data["metrics"]["nll"] == pytest.approx((-math.log(0.25) - math.log(0.75)) / 2, rel=1e-9)
    assert data["per_class"][0]["rows"] == n // 2


def test_parquet_with_float32_and_categorical_columns(score_json, tmp_path):
    table = pa.table({
        "id": ["r1", "r2", "r3", "r4"],
        "label": pa.array(["a", "b", "c", "a"]).dictionary_encode(),
        **{f"p_{c}": pa.array([row[2 + j] for row in ROWS], pa.float32()) for j, c in enumerate("abc")},
    })
    code, data, err = score_json(write_parquet(tmp_path / "p.parquet", table))
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx(NLL, rel=1e-6)


def test_several_files_are_one_dataset(score_json, tmp_path):
    first = write_csv(tmp_path / "part1.csv", HEADER, ROWS[:1])
    second = write_parquet(tmp_path / "part2.parquet", arrow_table(HEADER, ROWS[1:3]))
    third = write_csv(tmp_path / "part3.tsv", HEADER, ROWS[3:], sep="\t")
    code, data, err = score_json(first, second, third)
    assert code == 0, err
    check_tiny(data)
    assert data["inputs"]["preds"] == [str(first), str(second), str(third)]
    assert sum(row["rows"] for row in data["per_class"]) == 4


def test_several_csv_files_with_columns_in_other_orders(score_json, tmp_path):
    first = write_csv(tmp_path / "one.csv", HEADER, ROWS[:2])
    order = [3, 1, 4, 0, 2]  # p_b, label, p_c, id, p_a
    second = write_csv(tmp_path / "two.csv", [HEADER[i] for i in order], [[r[i] for i in order] for r in ROWS[2:]])
    code, data, err = score_json(first, second)
    assert code == 0, err
    check_tiny(data)


def test_directory_is_one_dataset(score_json, tmp_path):
    folder = tmp_path / "shards"
    (folder / "nested").mkdir(parents=True)
    write_csv(folder / "a.csv", HEADER, ROWS[:2])
    write_csv(folder / "nested" / "b.csv", HEADER, ROWS[2:])
    (folder / "README.md").write_text("not data\n")
    write_text(folder / ".hidden.csv", "junk\n")
    code, data, err = score_json(folder)
    assert code == 0, err
    check_tiny(data)
    assert data["inputs"]["preds"] == [str(folder / "a.csv"), str(folder / "nested" / "b.csv")]


def test_directory_skips_hidden_and_underscore_folders(score_json, tmp_path):
    # Jupyter checkpoints and Spark/Hive staging folders are not part of the dataset,
    # just as hidden and underscore files are not.
    folder = tmp_path / "shards"
    for sub in ("", ".ipynb_checkpoints", "_temporary/0"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    write_csv(folder / "part-0.csv", HEADER, ROWS)
    write_csv(folder / ".ipynb_checkpoints" / "part-0-checkpoint.csv", HEADER, ROWS)
    write_csv(folder / "_temporary" / "0" / "part-0.csv", HEADER, ROWS)
    write_text(folder / "_SUCCESS.csv", "")
    code, data, err = score_json(folder)
    assert code == 0, err
    assert data["inputs"]["preds"] == [str(folder / "part-0.csv")]
    check_tiny(data)


def test_several_files_continue_row_numbers_in_per_sample(run, tmp_path):
    header = ["label", "p_a", "p_b", "p_c"]
    rows = [row[1:] for row in ROWS]
    first = write_csv(tmp_path / "one.csv", header, rows[:3])
    second = write_csv(tmp_path / "two.csv", header, rows[3:])
    result = run("score", first, second, "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].replace('"', "").split(",")[0] == "row"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3"]


def test_error_in_second_file_names_that_file_and_its_row(run, tmp_path):
    first = write_csv(tmp_path / "one.csv", HEADER, ROWS)
    bad_rows = [("s1", "a", 0.5, 0.5, 0.0), ("s2", "b", 0.5, 0.7, 0.1)]
    second = write_csv(tmp_path / "two.csv", HEADER, bad_rows)
    assert_input_error(run("score", first, second), "two.csv", "row 2")


# -- column detection ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["p_", "prob_", "proba_", "P_"])
def test_class_prefixes(score_json, tmp_path, prefix):
    header = ["id", "label", *(prefix + c for c in "abc")]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, ROWS))
    assert code == 0, err
    check_tiny(data)


def test_every_numeric_column_without_prefix(score_json, tmp_path):
    header = ["id", "camera", "label", "a", "b", "c"]
    rows = [(r[0], "top", *r[1:]) for r in ROWS]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows))
    assert code == 0, err
    check_tiny(data)  # camera (text), id (key) and label are not classes


@pytest.mark.parametrize("classes", ["a,b,c", " a , b , c "])
def test_explicit_classes(score_json, preds, classes):
    code, data, err = score_json(preds, "--classes", classes)
    assert code == 0, err
    check_tiny(data)


def test_explicit_classes_set_the_order(score_json, preds):
    code, data, err = score_json(preds, "--classes", "c,a,b")
    assert code == 0, err
    check_tiny(data, classes=("c", "a", "b"))
    assert [row["class"] for row in data["per_class"]] == ["c", "a", "b"]
    assert data["per_class"][0]["nll"] == pytest.approx(-math.log(0.5))


@pytest.mark.parametrize("classes", ["a,,c", "a,b,a"])
def test_malformed_classes_option(run, preds, classes):
    result = run("score", preds, "--classes", classes)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--classes" in one_line(result.stderr)


def test_explicit_classes_pick_and_order_columns(score_json, tmp_path):
    header = ["id", "label", "c", "p_b", "a", "extra"]
    rows = [(r[0], r[1], r[4], r[3], r[2], 9.5) for r in ROWS]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows), "--classes", "a,b,c")
    assert code == 0, err
    check_tiny(data)


def test_explicit_class_without_column(run, preds):
    assert_input_error(run("score", preds, "--classes", "a,b,zebra"), "preds.csv", "zebra")


@pytest.mark.parametrize("name", ["label", "y", "y_true", "target", "true_label", "class", "Label",
                                  "Y_TRUE", "CLASS"])
def test_label_auto_detection(score_json, tmp_path, name):
    header = ["id", name, "a", "b", "c"]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, ROWS))
    assert code == 0, err
    check_tiny(data)


def test_explicit_label_column(score_json, tmp_path):
    header = ["id", "truth", "a", "b", "c"]
    path = write_csv(tmp_path / "preds.csv", header, ROWS)
    code, data, err = score_json(path, "--label", "truth")
    assert code == 0, err
    check_tiny(data)


def test_explicit_label_wins_over_default_name(score_json, tmp_path):
    # "label" holds junk; the real labels are in "gold"
    header = ["id", "label", "gold", "p_a", "p_b", "p_c"]
    rows = [(r[0], "zzz", *r[1:]) for r in ROWS]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows), "--label", "gold")
    assert code == 0, err
    check_tiny(data)


def test_numeric_default_key_is_never_a_class(score_json, tmp_path):
    header = ["ID", "label", "a", "b", "c"]
    rows = [(i + 1, *r[1:]) for i, r in enumerate(ROWS)]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows))
    assert code == 0, err
    check_tiny(data)


def test_explicit_numeric_key_is_never_a_class(run, tmp_path):
    header = ["sample", "label", "a", "b", "c"]
    rows = [(100 + i, *r[1:]) for i, r in enumerate(ROWS)]
    path = write_csv(tmp_path / "preds.csv", header, rows)
    result = run("score", path, "--key", "sample", "--per-sample", "-", "--format", "json")
    assert result.exit_code == 0, result.stderr
    check_tiny(loads_strict(result.stderr))
    lines = result.stdout.splitlines()
    assert lines[0].replace('"', "").split(",")[0] == "sample"
    assert [line.split(",")[0].strip('"') for line in lines[1:]] == ["100", "101", "102", "103"]


def test_explicit_key_ignores_case_like_label(run, preds):
    result = run("score", preds, "--key", "ID", "--label", "LABEL", "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].replace('"', "").split(",")[0] == "id"


def test_missing_explicit_key(run, preds):
    assert_input_error(run("score", preds, "--key", "nope"), "preds.csv", "nope")


# -- labels ----------------------------------------------------------------------------------


def test_integer_labels_index_classes_by_position(score_json, tmp_path):
    rows = [(r[0], "abc".index(r[1]), *r[2:]) for r in ROWS]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", HEADER, rows))
    assert code == 0, err
    check_tiny(data)
    assert [row["class"] for row in data["per_class"]] == ["a", "b", "c"]


def test_integer_labels_in_parquet(score_json, tmp_path):
    rows = [(r[0], "abc".index(r[1]), *r[2:]) for r in ROWS]
    code, data, err = score_json(write_parquet(tmp_path / "preds.parquet", arrow_table(HEADER, rows)))
    assert code == 0, err
    check_tiny(data)


def test_integer_class_names_match_by_name_not_position(score_json, tmp_path):
    # Classes named 2, 0, 1 in that column order: label "0" means the column p_0, not the first one.
    header = ["id", "label", "p_2", "p_0", "p_1"]
    rows = [("r1", 0, 0.1, 0.7, 0.2), ("r2", 1, 0.3, 0.1, 0.6), ("r3", 2, 0.5, 0.25, 0.25),
            ("r4", 0, 0.3, 0.2, 0.5)]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows))
    assert code == 0, err
    check_tiny(data, classes=("2", "0", "1"))


def test_labels_are_trimmed(score_json, tmp_path):
    rows = [(r[0], f" {r[1]} ", *r[2:]) for r in ROWS]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", HEADER, rows))
    assert code == 0, err
    check_tiny(data)


# -- binary: one probability column ------------------------------------------------------------

BINARY_P = [0.9, 0.2, 0.6, 0.3]
BINARY_Y = [1, 0, 0, 1]
BINARY_NLL = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.3)) / 4


@pytest.mark.parametrize("labels", [["1", "0", "0", "1"], ["true", "false", "false", "true"],
                                    ["True", "FALSE", "False", "TRUE"]], ids=["01", "truefalse", "mixedcase"])
@pytest.mark.parametrize("column", ["p_dog", "score"])
def test_binary_single_column(score_json, tmp_path, labels, column):
    rows = [(f"r{i}", y, p) for i, (y, p) in enumerate(zip(labels, BINARY_P))]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", ["id", "label", column], rows))
    assert code == 0, err
    assert data["classes"] == ["0", "1"]
    assert data["rows"] == 4
    assert data["metrics"]["nll"] == pytest.approx(BINARY_NLL, rel=1e-12)
    assert data["metrics"]["accuracy"] == pytest.approx(0.5)  # rows 1 and 2 right


def test_binary_with_positive_label(score_json, tmp_path):
    names = {1: "dog", 0: "cat"}
    rows = [(f"r{i}", names[y], p) for i, (y, p) in enumerate(zip(BINARY_Y, BINARY_P))]
    path = write_csv(tmp_path / "preds.csv", ["id", "label", "p_dog"], rows)
    code, data, err = score_json(path, "--positive", "dog")
    assert code == 0, err
    assert data["classes"] == ["not dog", "dog"]
    assert data["metrics"]["nll"] == pytest.approx(BINARY_NLL, rel=1e-12)


def test_binary_labels_need_positive(run, tmp_path):
    rows = [("r1", "dog", 0.9), ("r2", "cat", 0.2)]
    path = write_csv(tmp_path / "preds.csv", ["id", "label", "p_wolf"], rows)
    assert_input_error(run("score", path), "preds.csv", "'label'", "dog", "--positive")


def test_positive_needs_a_single_column(run, preds):
    result = run("score", preds, "--positive", "a")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--positive" in one_line(result.stderr)


def test_binary_logits(score_json, tmp_path):
    logits = [math.log(p / (1 - p)) for p in BINARY_P]
    rows = [(f"r{i}", y, z) for i, (y, z) in enumerate(zip(BINARY_Y, logits))]
    path = write_csv(tmp_path / "preds.csv", ["id", "label", "logit"], rows)
    code, data, err = score_json(path, "--input", "logits")
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx(BINARY_NLL, rel=1e-9)


# -- list layout (--probs) -------------------------------------------------------------------


def _list_table(labels):
    return pa.table({
        "id": [r[0] for r in ROWS],
        "label": labels,
        "probs": pa.array([list(r[2:]) for r in ROWS], pa.list_(pa.float64())),
    })


def test_probs_list_column_with_classes(score_json, tmp_path):
    path = write_parquet(tmp_path / "preds.parquet", _list_table([r[1] for r in ROWS]))
    code, data, err = score_json(path, "--probs", "probs", "--classes", "a,b,c")
    assert code == 0, err
    check_tiny(data)


def test_probs_list_column_without_classes(score_json, tmp_path):
    path = write_parquet(tmp_path / "preds.parquet", _list_table(["0", "1", "2", "0"]))
    code, data, err = score_json(path, "--probs", "probs")
    assert code == 0, err
    check_tiny(data, classes=("0", "1", "2"))


def test_probs_list_column_from_stdin(score_json, tmp_path):
    stdin = parquet_bytes(_list_table([0, 1, 2, 0]))
    code, data, err = score_json("-", "--probs", "probs", input=stdin)
    assert code == 0, err
    check_tiny(data, classes=("0", "1", "2"))


def test_probs_list_of_wrong_length(run, tmp_path):
    table = pa.table({"label": ["a", "b", "a"],
                      "probs": pa.array([[0.5, 0.5], [0.2, 0.8], [1.0]], pa.list_(pa.float64()))})
    path = write_parquet(tmp_path / "preds.parquet", table)
    assert_input_error(run("score", path, "--probs", "probs", "--classes", "a,b"),
                       "preds.parquet", "'probs'", "row 3")


def test_probs_list_wrong_length_row_number_beyond_first_batch(run, tmp_path):
    # Parquet is read in batches of 65,536 rows: the bad row is the 70,000th of the file.
    n = 70_000
    values = np.tile([0.25, 0.75], n).tolist()
    offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int32)
    offsets[-1] -= 1  # the last list has one value only
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[:-1], pa.float64()))
    table = pa.table({"label": pa.array(["1"] * n), "probs": lists})
    path = write_parquet(tmp_path / "big.parquet", table)
    assert_input_error(run("score", path, "--probs", "probs"), "big.parquet", "'probs'", "row 70000")


def test_probs_needs_a_list_column(run, preds):
    assert_input_error(run("score", preds, "--probs", "p_a"), "preds.csv", "p_a", "list")


# -- --input ----------------------------------------------------------------------------------


def test_logits(score_json, tmp_path):
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(5, 3))
    z[0] = [1000.0, 999.0, -1000.0]  # large logits must not overflow
    labels = [0, 2, 1, 1, 0]
    rows = [(f"r{i}", "abc"[y], *z[i]) for i, y in enumerate(labels)]
    path = write_csv(tmp_path / "logits.csv", ["id", "label", "a", "b", "c"],
                     [(r[0], r[1], *(repr(float(v)) for v in r[2:])) for r in rows])
    code, data, err = score_json(path, "--input", "logits")
    assert code == 0, err
    top = z.max(axis=1, keepdims=True)
    log_softmax = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(5), labels].mean()
    assert data["metrics"]["nll"] == pytest.approx(expected, rel=1e-12)
    assert data["metrics"]["accuracy"] == pytest.approx((z.argmax(1) == labels).mean())
    assert data["clipped"] == 0


def test_sample_logits_file(score_json, samples):
    import pandas as pd

    code, data, err = score_json(samples / "robot_tools_logits.csv", "--input", "logits")
    assert code == 0, err
    frame = pd.read_csv(samples / "robot_tools_logits.csv")
    classes = ["wrench", "screwdriver", "hammer"]
    assert data["classes"] == classes
    z = frame[classes].to_numpy()
    y = frame["label"].map(classes.index).to_numpy()
    top = z.max(axis=1, keepdims=True)
    log_q = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    assert data["metrics"]["nll"] == pytest.approx(-log_q[np.arange(len(y)), y].mean(), rel=1e-9)


def test_log_probs_equal_probs(score_json, tmp_path):
    rows = [(r[0], r[1], *(repr(math.log(v)) for v in r[2:])) for r in ROWS]
    path = write_csv(tmp_path / "logp.csv", HEADER, rows)
    code, data, err = score_json(path, "--input", "log-probs")
    assert code == 0, err
    check_tiny(data)


def test_log_probs_above_zero_are_rejected(run, tmp_path):
    rows = [("r1", "a", -0.1, 0.5)]
    path = write_csv(tmp_path / "logp.csv", ["id", "label", "p_a", "p_b"], rows)
    assert_input_error(run("score", path, "--input", "log-probs"), "logp.csv", "'p_b'", "row 1")


def test_unknown_input_kind(run, preds):
    result = run("score", preds, "--input", "odds")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr


# -- --eps, --tol, --renormalize ------------------------------------------------------------

ZERO_ROWS = [("r1", "a", 0.0, 1.0), ("r2", "b", 0.4, 0.6)]


def test_default_eps_clips_a_zero(score_json, tmp_path):
    path = write_csv(tmp_path / "zero.csv", ["id", "label", "p_a", "p_b"], ZERO_ROWS[:1])
    code, data, err = score_json(path)
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx(36.04365338911715, rel=1e-12)
    assert data["metrics"]["nll"] == pytest.approx(-math.log(EPS), rel=1e-12)
    assert data["clipped"] == 1
    assert any("clipped" in w for w in data["warnings"])


def test_explicit_eps(score_json, tmp_path):
    path = write_csv(tmp_path / "zero.csv", ["id", "label", "p_a", "p_b"], ZERO_ROWS)
    code, data, err = score_json(path, "--eps", "0.001")
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx((-math.log(0.001) - math.log(0.6)) / 2, rel=1e-12)


def test_eps_zero_gives_infinite_loss_as_null(run, tmp_path):
    path = write_csv(tmp_path / "zero.csv", ["id", "label", "p_a", "p_b"], ZERO_ROWS)
    result = run("score", path, "--eps", "0", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    data = loads_strict(result.stdout)
    assert data["metrics"]["nll"] is None
    assert data["metrics"]["perplexity"] is None
    assert data["metrics"]["accuracy"] == pytest.approx(0.5)
    assert data["clipped"] == 0
    assert any("nll" in w and "infinite" in w for w in data["warnings"])


def test_eps_zero_table_shows_inf(run, tmp_path):
    # JSON has no infinity (null there); the table can and should say inf, not n/a
    path = write_csv(tmp_path / "zero.csv", ["id", "label", "p_a", "p_b"], ZERO_ROWS)
    result = run("score", path, "--eps", "0")
    assert result.exit_code == 0
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        if line.split():
            rows.setdefault(line.split()[0], line.split()[1])  # the metric table comes first
    assert rows["nll"] == "inf", result.stdout
    assert rows["perplexity"] == "inf", result.stdout
    assert rows["accuracy"] == "0.500000"


@pytest.mark.parametrize("eps", ["-0.1", "0.5", "2"])
def test_eps_out_of_range(run, preds, eps):
    result = run("score", preds, "--eps", eps)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--eps" in one_line(result.stderr)


OFF_ROWS = [("r1", "a", 0.5, 0.49), ("r2", "b", 0.3, 0.7)]  # row 1 sums to 0.99


def test_tol(score_json, tmp_path):
    path = write_csv(tmp_path / "off.csv", ["id", "label", "p_a", "p_b"], OFF_ROWS)
    code, _, err = score_json(path)
    assert code == 2
    assert "--renormalize" in err
    code, data, err = score_json(path, "--tol", "0.02")
    assert code == 0, err
    # the values are scored as given, not renormalised
    assert data["metrics"]["nll"] == pytest.approx(-(math.log(0.5) + math.log(0.7)) / 2, rel=1e-12)


def test_renormalize(score_json, tmp_path):
    path = write_csv(tmp_path / "off.csv", ["id", "label", "p_a", "p_b"],
                     [("r1", "a", 0.3, 0.3), ("r2", "b", 0.1, 0.3)])
    code, data, err = score_json(path, "--renormalize")
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-12)


def test_renormalize_rejects_a_zero_row(run, tmp_path):
    path = write_csv(tmp_path / "off.csv", ["id", "label", "p_a", "p_b"],
                     [("r1", "a", 0.3, 0.3), ("r2", "b", 0.0, 0.0)])
    assert_input_error(run("score", path, "--renormalize"), "off.csv", "row 2")


# -- --weight ---------------------------------------------------------------------------------


def test_weights(score_json, tmp_path):
    header = [*HEADER, "w"]
    weights = [1.0, 3.0, 0.0, 2.0]
    rows = [(*r, w) for r, w in zip(ROWS, weights)]
    code, data, err = score_json(write_csv(tmp_path / "preds.csv", header, rows), "--weight", "w")
    assert code == 0, err
    assert data["classes"] == ["a", "b", "c"]  # the weight column is not a class
    expected = -sum(w * math.log(p) for w, p in zip(weights, P_TRUE)) / sum(weights)
    assert data["metrics"]["nll"] == pytest.approx(expected, rel=1e-12)
    assert data["metrics"]["accuracy"] == pytest.approx(4 / 6)
    assert data["rows"] == 4


def test_zero_weight_drops_an_infinite_loss(score_json, tmp_path):
    rows = [("r1", "a", 0.0, 1.0, 0.0), ("r2", "b", 0.5, 0.5, 1.0)]
    path = write_csv(tmp_path / "preds.csv", ["id", "label", "p_a", "p_b", "w"], rows)
    code, data, err = score_json(path, "--weight", "w", "--eps", "0")
    assert code == 0, err
    assert data["metrics"]["nll"] == pytest.approx(math.log(2), rel=1e-12)


# -- --base -----------------------------------------------------------------------------------


@pytest.mark.parametrize("base, units, scale", [("e", "nats", 1.0), ("2", "bits", math.log(2)),
                                                ("10", "bans", math.log(10))])
def test_base(run, preds, base, units, scale):
    result = run("score", preds, "--base", base, "--format", "json", "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    data = loads_strict(result.stderr)
    assert data["units"] == units
    for name in ("nll", "cross_entropy", "kl"):
        assert data["metrics"][name] == pytest.approx(NLL / scale, rel=1e-12)
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(NLL), rel=1e-12)  # unit-free
    assert data["metrics"]["accuracy"] == pytest.approx(ACCURACY)
    assert data["per_class"][1]["nll"] == pytest.approx(-math.log(0.6) / scale, rel=1e-12)
    rows = [line.split(",") for line in result.stdout.splitlines()[1:]]
    assert [float(r[-1]) for r in rows] == pytest.approx([-math.log(p) / scale for p in P_TRUE], rel=1e-12)


# -- output formats -------------------------------------------------------------------------


def test_table_when_piped_is_plain_text(run, preds):
    result = run("score", preds)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # no colour codes
    assert not any(ch in out for ch in "━─│┃")  # no box lines
    for name in ("nll", "cross_entropy", "entropy", "kl", "perplexity", "accuracy", "nats"):
        assert name in out
    assert f"{NLL:.6f}" in out
    assert "4 rows" in out and "preds.csv" in out
    assert result.stderr == ""


def test_ndjson_is_the_json_report_on_one_line(run, preds):
    pretty = run("score", preds, "--format", "json")
    compact = run("score", preds, "-f", "ndjson")
    assert pretty.exit_code == compact.exit_code == 0
    assert compact.stdout.count("\n") == 1 and compact.stdout.endswith("\n")
    assert loads_strict(compact.stdout) == loads_strict(pretty.stdout)
    assert pretty.stdout.count("\n") > 1


def test_unknown_format(run, preds):
    result = run("score", preds, "--format", "xml")
    assert result.exit_code == 2 and result.stdout == ""


# -- per-sample output ------------------------------------------------------------------------


def _check_per_sample_rows(records, key="id"):
    assert [r[key] for r in records] == ["r1", "r2", "r3", "r4"]
    assert [r["label"] for r in records] == ["a", "b", "c", "a"]
    assert [r["predicted"] for r in records] == ["a", "b", "c", "b"]
    assert [r["p_true"] for r in records] == pytest.approx(P_TRUE)
    assert [r["nll"] for r in records] == pytest.approx([-math.log(p) for p in P_TRUE], rel=1e-12)


def test_per_sample_csv(run, preds, tmp_path):
    import pandas as pd

    out = tmp_path / "out.csv"
    result = run("score", preds, "--per-sample", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    check_tiny(loads_strict(result.stdout))
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "label", "predicted", "p_true", "nll"]
    _check_per_sample_rows(frame.to_dict("records"))
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "preds.csv"]  # no temporary file left


def test_per_sample_parquet(run, preds, tmp_path):
    out = tmp_path / "out.parquet"
    result = run("score", preds, "--per-sample", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "label", "predicted", "p_true", "nll"]
    _check_per_sample_rows(table.to_pylist())


@pytest.mark.parametrize("name", ["out.csv", "out.parquet"])
def test_per_sample_file_permissions_follow_umask(run, preds, tmp_path, name):
    # Written under a temporary name and renamed: the file must still get the usual 0666 & ~umask
    # mode, not the 0600 of a private temporary file.
    out = tmp_path / name
    old = os.umask(0o022)
    try:
        assert run("score", preds, "--per-sample", out).exit_code == 0
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_per_sample_replaces_an_existing_file(run, preds, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    assert run("score", preds, "--per-sample", out).exit_code == 0
    assert out.read_text().startswith('"id"')


def test_per_sample_stdout_sends_report_to_stderr(run, preds):
    import pandas as pd

    result = run("score", preds, "--per-sample", "-", "--format", "json")
    assert result.exit_code == 0, result.stderr
    check_tiny(loads_strict(result.stderr))
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns) == ["id", "label", "predicted", "p_true", "nll"]
    _check_per_sample_rows(frame.to_dict("records"))


def test_per_sample_without_key_numbers_rows_from_zero(run, tmp_path):
    import pandas as pd

    path = write_csv(tmp_path / "preds.csv", HEADER[1:], [r[1:] for r in ROWS])
    result = run("score", path, "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns) == ["row", "label", "predicted", "p_true", "nll"]
    assert frame["row"].tolist() == [0, 1, 2, 3]


def test_per_sample_never_overwrites_an_input(run, preds):
    before = preds.read_text()
    result = run("score", preds, "--per-sample", preds)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--per-sample" in one_line(result.stderr)
    assert preds.read_text() == before


@pytest.mark.parametrize("target", ["out.txt", "missing_dir/out.csv"])
def test_per_sample_bad_target(run, preds, tmp_path, target):
    result = run("score", preds, "--per-sample", tmp_path / target)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--per-sample" in one_line(result.stderr)
    assert not (tmp_path / target).exists()


# -- gates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gates, failed", [
    (["--max", "nll=1"], []),
    (["--max", "nll=0.5"], ["nll"]),
    (["--min", "accuracy=0.9"], ["accuracy"]),
    (["--min", "accuracy=0.75", "--max", "perplexity=3"], []),
    (["--max", "nll=0.5", "--min", "accuracy=0.9", "--max", "kl=10"], ["nll", "accuracy"]),
    (["--max", "NLL=0.5"], ["nll"]),
])
def test_gates(run, preds, gates, failed):
    result = run("score", preds, *gates, "--format", "json")
    assert result.exit_code == (1 if failed else 0), result.stderr
    data = loads_strict(result.stdout)  # the report is printed either way
    check_tiny(data)
    lines = result.stderr.splitlines()
    assert len(lines) == len(failed)
    for line, metric in zip(lines, failed):
        assert "gate failed" in line and metric in line
    assert [g["metric"] for g in data["gates"] if not g["passed"]] == failed


def test_failed_gate_message(run, preds):
    result = run("score", preds, "--max", "nll=0.5")
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"nll: gate failed: nll = {NLL:.6g} is above the maximum 0.5"
    assert "nll" in result.stdout  # table still printed


def test_gate_on_infinite_loss_fails(run, tmp_path):
    path = write_csv(tmp_path / "zero.csv", ["id", "label", "p_a", "p_b"], ZERO_ROWS)
    result = run("score", path, "--eps", "0", "--max", "nll=100", "--format", "json")
    assert result.exit_code == 1
    loads_strict(result.stdout)
    assert "nll" in one_line(result.stderr)


@pytest.mark.parametrize("gate", [["--max", "bogus=1"], ["--min", "js=0.1"], ["--max", "nll"],
                                  ["--max", "nll=abc"], ["--max", "=1"], ["--min", "nll=nan"],
                                  ["--max", "nll=1=2"]])
def test_bad_gates_are_usage_errors(run, preds, tmp_path, gate):
    out = tmp_path / "out.csv"
    result = run("score", preds, *gate, "--per-sample", out)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert gate[0] in line
    assert not out.exists()


# -- version and help ---------------------------------------------------------------------------


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"nll {nllcli.__version__}"


def test_help_lists_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    assert "score" in result.stdout and "kl" in result.stdout


# -- validation errors ------------------------------------------------------------------------
# Each case: (file name, content as text or a function of the path, extra options, fragments the
# single stderr line must contain).


def _duplicate_header(path):
    return write_text(path, "id,label,p_a,p_a\nr1,a,0.5,0.5\n")


def _wide(rows, header=("id", "label", "p_a", "p_b")):
    return table_text(list(header), rows)


def _with_camera(bad_column):
    header = ["id", "camera", "label", "p_a", "p_b", "p_c"]
    rows = [["r1", "top", "a", "0.2", "0.3", "0.5"], ["r2", "left", "b", "0.2", "0.3", "0.5"],
            ["r3", "top", "c", "0.2", "0.3", "0.5"]]
    rows[1][header.index(bad_column)] = "oops"
    return table_text(header, rows)


ERROR_CASES = {
    "missing file": ("nope.csv", None, [], ["nope.csv", "no such file"]),
    "empty file": ("empty.csv", "", [], ["empty.csv", "empty"]),
    "blank lines only": ("blank.csv", "\n\n", [], ["blank.csv", "empty"]),
    "header only": ("header.csv", "id,label,p_a,p_b\n", [], ["header.csv", "no data rows"]),
    "header only parquet": ("header.parquet",
                            lambda p: write_parquet(p, pa.table({"label": pa.array([], pa.string()),
                                                                 "p_a": pa.array([], pa.float64()),
                                                                 "p_b": pa.array([], pa.float64())})),
                            [], ["header.parquet", "no data rows"]),
    "no label column": ("nolabel.csv", _wide([("r1", 0.5, 0.5)], ("id", "p_a", "p_b")), [],
                        ["nolabel.csv", "no label column", "--label"]),
    "named label missing": ("preds.csv", _wide([("r1", "a", 0.5, 0.5)]), ["--label", "gold"],
                            ["preds.csv", "gold"]),
    "no class columns": ("noclass.csv", "id,label,camera\nr1,a,top\n", [], ["noclass.csv", "no class columns"]),
    "unknown labels": ("unknown.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "zebra", 0.5, 0.5),
                                             ("r3", "b", 0.5, 0.5), ("r4", "yak", 0.5, 0.5)]), [],
                       ["unknown.csv", "'label'", "zebra", "yak", "rows 2, 4"]),
    "integer label out of range": ("unknown.csv", _wide([("r1", "0", 0.5, 0.5), ("r2", "2", 0.5, 0.5)]),
                                   [], ["unknown.csv", "'label'", "'2'", "row 2"]),
    "missing label": ("nolab.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "", 0.5, 0.5)]), [],
                      ["nolab.csv", "'label'", "missing label", "row 2"]),
    "NaN probability": ("nan.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", "NaN", 0.5)]), [],
                        ["nan.csv", "'p_a'", "NaN", "row 2"]),
    "empty probability": ("blank.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", 0.5, "")]), [],
                          ["blank.csv", "'p_b'", "row 2"]),
    "infinite probability": ("inf.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", 0.5, "inf")]), [],
                             ["inf.csv", "'p_b'", "infinite", "row 2"]),
    "negative probability": ("neg.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", 0.5, 0.5),
                                               ("r3", "b", -0.5, 1.5)]), [],
                             ["neg.csv", "'p_a'", "negative", "row 3"]),
    "probability above 1": ("big.csv", _wide([("r1", "a", 1.5, 0.0), ("r2", "b", 0.5, 0.5)]),
                            ["--renormalize"], ["big.csv", "'p_a'", "above 1", "row 1"]),
    "rows off the sum": ("sum.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", 0.5, 0.6),
                                           ("r3", "a", 0.5, 0.5), ("r4", "a", 0.1, 0.1)]), [],
                         ["sum.csv", "p_a", "sum to 1", "rows 2, 4", "--renormalize"]),
    "non-numeric value": ("text.csv", _wide([("r1", "a", 0.5, 0.5), ("r2", "b", 0.5, "half"),
                                             ("r3", "a", 0.5, 0.5)]), [],
                          ["text.csv", "'p_b'", "half", "row 2"]),
    "non-numeric value, extra column, last class": ("cam.csv", _with_camera("p_c"), [],
                                                    ["cam.csv", "'p_c'", "oops", "row 2"]),
    "non-numeric value, extra column, middle class": ("cam.csv", _with_camera("p_b"), [],
                                                      ["cam.csv", "'p_b'", "oops", "row 2"]),
    "non-numeric value, explicit classes": ("cam.csv", _with_camera("p_a"), ["--classes", "a,b,c"],
                                            ["cam.csv", "'p_a'", "oops", "row 2"]),
    "duplicate column names": ("dup.csv", _duplicate_header, [], ["dup.csv", "duplicate", "p_a"]),
    "negative weight": ("w.csv", _wide([("r1", "a", 0.5, 0.5, 1), ("r2", "b", 0.5, 0.5, -1)],
                                       ("id", "label", "p_a", "p_b", "w")), ["--weight", "w"],
                        ["w.csv", "'w'", "row 2"]),
    "NaN weight": ("w.csv", _wide([("r1", "a", 0.5, 0.5, 1), ("r2", "b", 0.5, 0.5, "nan")],
                                  ("id", "label", "p_a", "p_b", "w")), ["--weight", "w"],
                   ["w.csv", "'w'", "row 2"]),
    "weights all zero": ("w.csv", _wide([("r1", "a", 0.5, 0.5, 0), ("r2", "b", 0.5, 0.5, 0)],
                                        ("id", "label", "p_a", "p_b", "w")), ["--weight", "w"],
                         ["w.csv", "'w'", "weights sum to 0"]),
    "weight column missing": ("w.csv", _wide([("r1", "a", 0.5, 0.5)]), ["--weight", "w"], ["w.csv", "'w'"]),
    "malformed row": ("bad.csv", "id,label,p_a,p_b\nr1,a,0.5,0.5\nr2,a,0.5,0.5\nr3,b,0.5\n", [],
                      ["bad.csv", "malformed", "row 3"]),
    "binary garbage": ("junk.csv", lambda p: p.write_bytes(b"\x00\x01\x02garbage\x00\n"), [], ["junk.csv"]),
    "not UTF-8": ("latin.csv", lambda p: p.write_bytes("id,label,p_a,p_b\nr1,café,0.5,0.5\n".encode("latin-1")),
                  [], ["latin.csv", "UTF-8"]),
    "bad parquet": ("broken.parquet", lambda p: p.write_bytes(b"PAR1 not really parquet"), [],
                    ["broken.parquet", "Parquet"]),
}


def _make_case(tmp_path, name, content):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_validation_errors(run, tmp_path, case):
    name, content, options, fragments = ERROR_CASES[case]
    path = _make_case(tmp_path, name, content)
    assert_input_error(run("score", path, *options), *fragments)

    # No per-sample file is created, and an existing one is left alone.
    fresh = tmp_path / "fresh.parquet"
    assert_input_error(run("score", path, *options, "--per-sample", fresh), *fragments)
    assert not fresh.exists()
    kept = tmp_path / "kept.csv"
    kept.write_text("precious\n")
    before = sorted(os.listdir(tmp_path))
    assert_input_error(run("score", path, *options, "--per-sample", kept), *fragments)
    assert kept.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


STDOUT_CASES = ["missing file", "header only", "unknown labels", "NaN probability", "rows off the sum",
                "non-numeric value", "duplicate column names", "negative weight", "weights all zero",
                "malformed row"]


@pytest.mark.parametrize("case", STDOUT_CASES)
def test_validation_errors_with_per_sample_on_stdout(run, tmp_path, case):
    """Per-sample rows own stdout: an input error found before any row is scored leaves it empty."""
    name, content, options, fragments = ERROR_CASES[case]
    path = _make_case(tmp_path, name, content)
    result = run("score", path, *options, "--per-sample", "-", "--format", "json")
    assert_input_error(result, *fragments, streamed=case in LATE_CASES)


# Known only once every row has been read.
LATE_CASES = {"weights all zero"}


@pytest.mark.parametrize("stdin, fragments", [
    ("", ["<stdin>"]),
    ("id,label,p_a,p_b\n", ["<stdin>", "no data rows"]),
    ("id,label,p_a,p_b\nr1,a,0.5,0.5\nr2,b,0.5,0.7\n", ["<stdin>", "p_a", "row 2"]),
    ("id,label,p_a,p_b\nr1,a,0.5,0.5\nr2,b,0.5,oops\n", ["<stdin>", "'p_b'", "oops"]),
], ids=["empty", "header only", "sum", "non-numeric"])
def test_stdin_errors(run, stdin, fragments):
    assert_input_error(run("score", "-", input=stdin), *fragments)


def test_stdin_twice(run):
    result = run("score", "-", "-", input="id,label,p_a,p_b\nr1,a,0.5,0.5\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert "stdin" in one_line(result.stderr) or "standard input" in result.stderr


def test_files_with_different_columns(run, tmp_path):
    first = write_csv(tmp_path / "one.csv", HEADER, ROWS[:2])
    second = write_csv(tmp_path / "two.csv", ["id", "label", "p_a", "p_b", "p_d"], [r for r in ROWS[2:]])
    assert_input_error(run("score", first, second), "two.csv", "p_d")


def test_empty_directory(run, tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.md").write_text("hi\n")
    assert_input_error(run("score", folder), "nothing")


def test_row_numbers_point_past_the_first_block(run, tmp_path):
    # 4 MiB CSV blocks: a bad row deep in the file is still reported by its data-row number.
    n = 150_000
    lines = ["id,label,p_a,p_b"] + [f"r{i},a,0.25,0.75" for i in range(n)]
    lines[140_001] = "r140000,a,0.25,0.80"  # data row 140001
    path = write_text(tmp_path / "long.csv", "\n".join(lines) + "\n")
    assert_input_error(run("score", path), "long.csv", "row 140001")


@pytest.mark.parametrize("extra", ["", "top,"], ids=["plain", "extra column"])
def test_non_numeric_value_past_the_first_block(run, tmp_path, extra):
    n = 150_000
    header = "id,camera,label,p_a,p_b" if extra else "id,label,p_a,p_b"
    lines = [header] + [f"r{i},{extra}a,0.25,0.75" for i in range(n)]
    lines[140_001] = f"r140000,{extra}a,0.25,x"
    path = write_text(tmp_path / "long.csv", "\n".join(lines) + "\n")
    assert_input_error(run("score", path), "long.csv", "'p_b'", "'x'", "row 140001")


@pytest.mark.parametrize("rows", [2, 200_000], ids=["small", "many blocks"])
def test_no_background_thread_outlives_an_input_error(run, tmp_path, rows):
    """A reader still running when the program exits can abort the process (exit 134)."""
    import threading

    lines = ["id,label,p_a,p_b", "r0,a,0.5,0.5", "r1,b,0.9,0.9"] + [f"r{i},a,0.25,0.75" for i in range(2, rows)]
    path = write_text(tmp_path / "bad.csv", "\n".join(lines) + "\n")
    before = set(threading.enumerate())
    assert_input_error(run("score", path), "bad.csv", "row 2")
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []


# -- internal errors -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["batch", "report"])
def test_internal_error_is_one_line(run, preds, monkeypatch, stage):
    add_broken_metric(monkeypatch, stage)
    result = run("score", preds, "--format", "json")
    assert result.exit_code == 3
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert "--debug" in line and "RuntimeError" in line and "kaboom" in line


def test_internal_error_with_debug_shows_traceback(run, preds, monkeypatch):
    add_broken_metric(monkeypatch, "batch")
    result = run("score", preds, "--debug")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert "kaboom" in result.stderr
    assert "broken_kernel" in result.stderr  # the frame that raised


@pytest.mark.parametrize("stage", ["batch", "report"])
def test_internal_error_removes_per_sample_file(run, preds, tmp_path, monkeypatch, stage):
    add_broken_metric(monkeypatch, stage)
    out = tmp_path / "out.csv"
    result = run("score", preds, "--per-sample", out)
    assert result.exit_code == 3
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


def test_input_error_with_debug_keeps_exit_code(run, tmp_path):
    path = write_csv(tmp_path / "sum.csv", ["id", "label", "p_a", "p_b"], [("r1", "a", 0.5, 0.7)])
    result = run("score", path, "--debug")
    assert result.exit_code == 2
    assert "sum.csv" in result.stderr.splitlines()[-1]
