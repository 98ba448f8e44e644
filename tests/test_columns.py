"""Column roles in files as people write them: index and predicted-label columns, --ignore, the
label found by its values, float and numpy-style labels, binary and list layouts, and the errors
for names that are missing, ambiguous or columns that look like a class but are not numeric."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_input_error, write_csv
from nllcli.columns import FixedWidthCodes, Layout
from nllcli.errors import InputError

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
Y = np.array([0, 1, 2, 1])
NAMES = ["setosa", "versicolor", "virginica"]


def ref_nll(p=P, y=Y) -> float:
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def frame(**extra) -> pd.DataFrame:
    return pd.DataFrame(P, columns=NAMES, index=[10, 11, 12, 13]).assign(**extra)


def assert_scores(run_json, path, *args, nll=None, classes=NAMES):
    code, data, stderr = run_json("score", path, *args)
    assert code == 0, stderr
    assert data["classes"] == classes
    assert math.isclose(data["metrics"]["nll"], ref_nll() if nll is None else nll, rel_tol=1e-12)
    return data, stderr


# -- index and predicted-label columns ---------------------------------------------------------


@pytest.mark.parametrize("index_name", ["index", "Unnamed: 0"])
def test_pandas_index_is_not_a_class_and_keys_the_rows(run_json, tmp_path, index_name):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y]).rename_axis(index_name).to_csv(path)
    data, _ = assert_scores(run_json, path, "--worst", "1")
    assert data["worst"][0]["key"] == "13"  # the index names the worst row


def test_unnamed_pandas_index_is_not_a_class(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y]).to_csv(path)
    assert path.read_text().startswith(",setosa")
    data, _ = assert_scores(run_json, path, "--worst", "1")
    assert data["worst"][0]["row"] == 3 and "key" not in data["worst"][0]  # '' cannot name rows


def test_parquet_index_from_pandas_metadata(run_json, tmp_path):
    path = tmp_path / "preds.parquet"
    frame(label=np.array(NAMES)[Y]).rename_axis("sample").to_parquet(path)
    assert pq.read_schema(path).names[-1] == "sample"
    data, _ = assert_scores(run_json, path, "--worst", "1")
    assert data["worst"][0]["key"] == "13"


def test_id_column_is_the_key_before_the_index(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y], id=["a", "b", "c", "d"]).to_csv(path)
    data, _ = assert_scores(run_json, path, "--worst", "1")
    assert data["worst"][0]["key"] == "d"


def test_index_pairs_targets_only_when_both_files_have_it(run_json, tmp_path):
    preds, targets = tmp_path / "preds.csv", tmp_path / "targets.csv"
    frame(label=np.array(NAMES)[Y]).rename_axis("index").to_csv(preds)
    frame().iloc[::-1].rename_axis("index").to_csv(targets)  # rows in another order: paired by the index
    code, data, stderr = run_json("score", preds, "--targets", targets)
    assert code == 0, stderr
    assert math.isclose(data["metrics"]["kl"], 0.0, abs_tol=1e-15)
    frame().iloc[::-1].to_csv(targets, index=False)  # no index there: by position
    code, data, stderr = run_json("score", preds, "--targets", targets)
    assert code == 0, stderr
    assert data["metrics"]["kl"] > 0.1


@pytest.mark.parametrize("name", ["y_pred", "prediction", "predicted"])
def test_predicted_labels_are_never_classes(run_json, tmp_path, name):
    path = tmp_path / "preds.csv"
    pd.DataFrame(P, columns=["0", "1", "2"]).assign(label=Y, **{name: P.argmax(1)}).to_csv(path, index=False)
    assert_scores(run_json, path, classes=["0", "1", "2"])


def test_ignore_removes_a_column_from_the_classes(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y], fold=[1, 2, 1, 2]).to_csv(path, index=False)
    assert_scores(run_json, path, "--ignore", "fold")
    code, _, stderr = run_json("score", path)
    assert code == 2  # without it, 'fold' is a fourth class


def test_ignore_of_a_missing_column_suggests_the_closest(run, tmp_path):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y], fold=[1, 2, 1, 2]).to_csv(path, index=False)
    assert_input_error(run("score", path, "--ignore", "fodl"), "preds.csv", "'fodl'", "did you mean 'fold'")


def test_kl_takes_ignore(run_json, tmp_path):
    p, q = tmp_path / "p.csv", tmp_path / "q.csv"
    pd.DataFrame(P, columns=NAMES).to_csv(p, index=False)
    pd.DataFrame(P, columns=NAMES).assign(fold=[1, 2, 1, 2]).to_csv(q, index=False)
    code, data, stderr = run_json("kl", p, q, "--ignore", "fold")
    assert code == 0, stderr
    assert data["classes"] == NAMES and data["metrics"]["kl"] == 0.0


# -- classes that are not numeric ----------------------------------------------------------------


@pytest.mark.parametrize("bad", ["#DIV/0!", "0,5"])
def test_broken_numbers_in_a_class_column_are_an_error(run, tmp_path, bad):
    path = tmp_path / "preds.csv"
    cells = [f'"{bad}"', f'"{bad}"', "0.6", f'"{bad}"']
    rows = [(NAMES[y], *p[:2], c) for y, p, c in zip(Y, P, cells)]
    write_csv(path, ["label", *NAMES], rows)
    assert_input_error(run("score", path), "preds.csv", "'virginica'", repr(bad), "rows 1, 2, 4")


def test_text_column_named_like_a_class_is_an_error(run, tmp_path):
    path = tmp_path / "preds.csv"
    rows = [(NAMES[y], *p[:2], "n/a?") for y, p in zip(Y, P)]
    write_csv(path, ["label", *NAMES], rows)
    assert_input_error(run("score", path), "preds.csv", "'virginica'", "looks like a class", "rows 1, 2, 3, 4")


def test_ordinary_text_columns_stay_fine(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    frame(label=np.array(NAMES)[Y], camera=["top", "left", "top", "right"], filename=list("abcd"),
          split="test").to_csv(path, index=False)
    assert_scores(run_json, path)


# -- the label found by its values ---------------------------------------------------------------


def test_label_found_by_its_values_says_so(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    frame(species=np.array(NAMES)[Y], camera="top").to_csv(path)
    _, stderr = assert_scores(run_json, path)
    assert stderr.strip() == f"nll: {path}: label column 'species' found by its values (they all name classes; " \
                             "--label names another)"


def test_integer_label_found_by_its_values_is_not_a_class(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    pd.DataFrame(P, columns=["p_0", "p_1", "p_2"]).assign(truth=Y).to_csv(path, index=False)
    _, stderr = assert_scores(run_json, path, classes=["0", "1", "2"])
    assert "'truth'" in stderr


def test_two_columns_of_class_names_are_ambiguous(run, tmp_path):
    path = tmp_path / "preds.csv"
    frame(truth=np.array(NAMES)[Y], guess=np.array(NAMES)[P.argmax(1)]).to_csv(path, index=False)
    assert_input_error(run("score", path), "preds.csv", "'truth'", "'guess'", "--label")


def test_no_column_of_class_names_lists_the_columns(run, tmp_path):
    path = tmp_path / "preds.csv"
    frame(truth="nope").to_csv(path, index=False)
    assert_input_error(run("score", path), "preds.csv", "no label column", "'truth'", "--label")


@pytest.mark.parametrize("labels,classes", [(["0.0", "1.0", "2.0", "1.0"], ["0", "1", "2"]),
                                            (["0.0", "1.0", "2.0", "1.0"], NAMES)])
def test_float_labels_that_are_whole_numbers(run_json, tmp_path, labels, classes):
    path = tmp_path / "preds.csv"
    write_csv(path, ["y", *classes], [(lab, *p) for lab, p in zip(labels, P)])
    assert_scores(run_json, path, classes=classes)


def test_fractional_labels_are_still_an_error(run, tmp_path):
    path = tmp_path / "preds.csv"
    write_csv(path, ["y", "0", "1", "2"], [(lab, *p) for lab, p in zip(["0.5", "1", "2", "1"], P)])
    assert_input_error(run("score", path), "preds.csv", "'y'", "'0.5'", "row 1")


@pytest.mark.parametrize("comments", ["# ", ""])
def test_numpy_savetxt(run_json, tmp_path, comments):
    path = tmp_path / "preds.csv"
    np.savetxt(path, np.column_stack([Y, P]), delimiter=",", header="label,a,b,c", comments=comments)
    assert_scores(run_json, path, classes=["a", "b", "c"])


# -- binary and list layouts ---------------------------------------------------------------------


def test_p_x_with_labels_naming_x_means_positive_x(run_json, tmp_path):
    path = tmp_path / "preds.csv"
    p = np.array([0.9, 0.2, 0.6, 0.3])
    diagnosis = np.array(["benign", "malignant", "benign", "benign"])
    pd.DataFrame({"p_benign": p, "diagnosis": diagnosis}).to_csv(path, index=False)
    want = float(-np.mean(np.log(np.where(diagnosis == "benign", p, 1 - p))))
    code, data, stderr = run_json("score", path)
    assert code == 0, stderr
    assert data["classes"] == ["not benign", "benign"]
    assert math.isclose(data["metrics"]["nll"], want, rel_tol=1e-12)
    assert "(as --positive benign)" in stderr


def test_binary_labels_that_name_no_class_point_to_positive(run, tmp_path):
    path = tmp_path / "preds.csv"
    write_csv(path, ["label", "p_dog"], [("cat", 0.1), ("bird", 0.3)])
    assert_input_error(run("score", path), "preds.csv", "'label'", "--positive")


def test_a_lone_list_column_is_the_probability_vector(run_json, tmp_path):
    path = tmp_path / "preds.parquet"
    pq.write_table(pa.table({"probs": pa.array(list(P), pa.list_(pa.float64())), "label": Y}), path)
    assert_scores(run_json, path, classes=["0", "1", "2"])


def test_two_list_columns_point_to_probs(run, tmp_path):
    path = tmp_path / "preds.parquet"
    lists = pa.array(list(P), pa.list_(pa.float64()))
    pq.write_table(pa.table({"a": lists, "b": lists, "label": Y}), path)
    assert_input_error(run("score", path), "preds.parquet", "no class columns", "--probs")


# -- names -------------------------------------------------------------------------------------


def test_misspelt_label_lists_every_column_and_suggests(run, tmp_path):
    path = tmp_path / "preds.csv"
    header = ["id", "label", *[f"p_{c}" for c in "abcdefghij"]]
    write_csv(path, header, [("r1", "a", *[0.1] * 10)])
    line = assert_input_error(run("score", path, "--label", "lable"), "preds.csv", "'lable'",
                              "did you mean 'label'")
    assert all(repr(n) in line for n in header)


def test_many_columns_show_the_first_20_and_the_count(run, tmp_path):
    path = tmp_path / "preds.csv"
    header = ["label", *[f"p_{c}" for c in range(30)]]
    write_csv(path, header, [("0", *[1 / 30] * 30)])
    line = assert_input_error(run("score", path, "--weight", "w"), "preds.csv", "'w'", "(31 in all)")
    assert "'p_18'" in line and "'p_19'" not in line


@pytest.mark.parametrize("other", [" a", "A"])
def test_names_that_differ_by_spaces_or_case_are_an_error(run, tmp_path, other):
    path = tmp_path / "preds.csv"
    write_csv(path, ["label", "a", other, "b"], [("a", 0.5, 0.2, 0.3)])
    assert_input_error(run("score", path), "preds.csv", "'a'", repr(other), "differ only by case")


# -- labels as plain text of one width (FixedWidthCodes) --------------------------------------

def _label_layout(names: list[str], binary: bool = False, positive: str | None = None) -> Layout:
    columns = ["p"] if binary else [f"p_{n}" for n in names]
    return Layout("f.csv", names, class_columns=columns, label="label", binary=binary, positive=positive)


def _indices_or_error(layout: Layout, labels: pa.Array):
    batch = pa.record_batch([labels], names=["label"])
    try:
        return layout.label_indices(batch, first_row=1).tolist()
    except InputError as exc:
        return str(exc)


def _both_ways(names, labels, **kind):
    """label_indices of the labels as plain text and as a dictionary, each on a Layout of its own."""
    text = pa.array(labels, pa.string())
    return (_indices_or_error(_label_layout(names, **kind), text),
            _indices_or_error(_label_layout(names, **kind), text.dictionary_encode()))


@settings(max_examples=150, deadline=None)
@given(width=st.integers(1, 8), alphabet=st.sampled_from(["ab", "a b", "01", "é", "xyz\x00"]),
       data=st.data())
def test_plain_text_labels_give_the_indices_and_errors_of_a_dictionary(width, alphabet, data):
    words = st.text(alphabet, min_size=width, max_size=width).filter(lambda t: len(t.encode()) == width)
    names = data.draw(st.lists(words, min_size=2, max_size=6, unique=True))
    labels = data.draw(st.lists(st.one_of(st.sampled_from(names), words), min_size=1, max_size=300))
    start = data.draw(st.integers(0, len(labels) - 1))
    text, dictionary = _both_ways(names, labels[start:])
    assert text == dictionary
    sliced = pa.array(labels, pa.string()).slice(start)  # an offset into the buffers, as a CSV range's slices have
    assert _indices_or_error(_label_layout(names), sliced) == dictionary


@pytest.mark.parametrize("names, labels", [
    (["cat", "dog", "owl"], ["dog", "cat", "owl", "dog"]),
    (["cat", "dog", "owl"], ["1", "0", "2"]),  # positions
    (["cat", "dog", "owl"], ["dog", " cat", "owl"]),  # stripped (two widths: the dictionary path)
    (["cat", "dog", "owl"], [" 1 ", "1.0", "2.0"]),  # a whole number written as a float
    (["cat", "dog", "owl"], ["dog", "cow", "eel"]),  # unknown: the message names them
    (["cat", "dog", "owl"], ["dog", "   ", "cat"]),  # blank: missing
    (["12345678", "abcdefgh"], ["abcdefgh", "12345678"] * 40),  # eight bytes, the widest
    (["ÿÿÿÿ", "aaaaaaaa"], ["ÿÿÿÿ", "aaaaaaaa"]),  # eight bytes of 0xc3 0xbf
])
def test_plain_text_label_cases(names, labels):
    text, dictionary = _both_ways(names, labels)
    assert text == dictionary


def test_binary_labels_as_plain_text():
    for positive in (None, "yes"):
        for labels in (["1", "0", "1"], ["yes", "no_", "yes"], ["true", "fals"]):
            text, dictionary = _both_ways(["0", "1"], labels, binary=True, positive=positive)
            assert text == dictionary


def test_fixed_width_codes_learn_and_decline():
    codes = FixedWidthCodes({"cat": 0, "dog": 1})
    labels = pa.array(["dog", "cat"] * 5000)
    assert codes.codes(labels).tolist() == [1, 0] * 5000
    assert codes.codes(labels.slice(9999)).tolist() == [0]  # the last row, its word read past no buffer
    assert set(codes._tables) == {3}  # learnt: the second batch is found in the table
    assert codes.codes(pa.array(["dog", "horse"])) is None  # two widths
    assert codes.codes(pa.array(["dog", None])) is None  # a null
    assert codes.codes(pa.array(["unusually long"])) is None  # past 8 bytes
    assert codes.codes(pa.array(["dog"]).dictionary_encode()) is None
