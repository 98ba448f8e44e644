"""Calibration next to NLL: Brier score, ECE and MCE, the JSON calibration bins and loss histogram,
and the reliability and loss charts of the table.

Every number is checked against a reference written out plainly here: Brier against scikit-learn
(brier_score_loss with scale_by_half=False) or numpy, ECE and MCE against a loop over the rows
that bins each confidence with exact fractions (the edges are numpy.linspace(0, 1, B + 1); a
confidence equal to an edge falls in the bin that edge closes, 0 in the first, 1.0 in the last).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss

import nllcli
from nllcli import readers
from nllcli.summary import LOSS_EDGES, Summary, confidence_bins

BAR_HEADER = "accuracy (bar) vs confidence (|)"


# -- references, written out plainly ---------------------------------------------------------


def ref_bin(confidence: float, n_bins: int) -> int:
    """Bin of a confidence: the first whose upper edge (from linspace) is >= it, compared exactly."""
    c = Fraction(float(confidence))
    edges = [Fraction(float(e)) for e in np.linspace(0.0, 1.0, n_bins + 1)]
    for b in range(n_bins):
        if c <= edges[b + 1]:
            return b
    return n_bins - 1  # above 1 (within --tol): the last bin


def ref_calibration(confidences, correct, weights, n_bins):
    """(ECE, MCE, [(weight, mean confidence, accuracy) or (0, None, None) per bin]), exactly."""
    weight = [Fraction(0)] * n_bins
    conf_sum = [Fraction(0)] * n_bins
    hits = [Fraction(0)] * n_bins
    for c, ok, w in zip(confidences, correct, weights):
        b = ref_bin(c, n_bins)
        w = Fraction(float(w))
        weight[b] += w
        conf_sum[b] += w * Fraction(float(c))
        if ok:
            hits[b] += w
    total = sum(weight)
    rows, gaps, ece = [], [], Fraction(0)
    for b in range(n_bins):
        if weight[b] == 0:
            rows.append((0.0, None, None))
            continue
        accuracy, confidence = hits[b] / weight[b], conf_sum[b] / weight[b]
        gap = abs(accuracy - confidence)
        gaps.append(gap)
        ece += weight[b] / total * gap
        rows.append((float(weight[b]), float(confidence), float(accuracy)))
    return float(ece), float(max(gaps)), rows


def argmax_first(row) -> int:
    row = list(row)
    return row.index(max(row))


def softmax(z):
    top = max(z)
    e = [math.exp(v - top) for v in z]
    s = sum(e)
    return [v / s for v in e]


def random_probs(rng, n, k, sharpness=2.0):
    """Rows of probabilities and labels drawn from a flatter version: an over-confident model."""
    logits = rng.normal(scale=sharpness, size=(n, k))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    flat = np.sqrt(p)
    flat /= flat.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in flat])
    return p, labels


def frame(p, labels, names, weights=None, prefix="p_"):
    data = {"label": [names[j] for j in labels]}
    for j, name in enumerate(names):
        data[prefix + name] = p[:, j]
    if weights is not None:
        data["w"] = weights
    return pd.DataFrame(data)


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(v if isinstance(v, str) else repr(float(v)) for v in row)
                                  for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_of(path, df: pd.DataFrame):
    return write_csv(path, list(df.columns), df.itertuples(index=False))


def json_of(result):
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def check_calibration_rows(rows, expected, n_bins, total_weight):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    assert len(rows) == n_bins
    assert sum(r["weight"] for r in rows) == pytest.approx(total_weight, rel=1e-12)
    for b, (row, (weight, confidence, accuracy)) in enumerate(zip(rows, expected)):
        assert row["bin"] == pytest.approx([edges[b], edges[b + 1]], rel=1e-15, abs=1e-15)
        assert row["weight"] == pytest.approx(weight, rel=1e-12), b
        if confidence is None:
            assert row["confidence"] is None and row["accuracy"] is None, b
        else:
            assert row["confidence"] == pytest.approx(confidence, rel=1e-12), b
            assert row["accuracy"] == pytest.approx(accuracy, rel=1e-12, abs=1e-15), b


# -- confidence_bins, directly ---------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 10, 15])
def test_confidence_bins_at_zero_one_and_every_edge(n_bins):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    assert confidence_bins(np.array([0.0]), n_bins).tolist() == [0]
    assert confidence_bins(np.array([1.0]), n_bins).tolist() == [n_bins - 1]
    # An edge closes its bin: edge i (1..B) is in bin i - 1; just above it is bin i.
    at = confidence_bins(edges[1:], n_bins)
    assert at.tolist() == list(range(n_bins))
    above = np.nextafter(edges[1:-1], 2.0)
    assert confidence_bins(above, n_bins).tolist() == list(range(1, n_bins))
    below = np.nextafter(edges[1:], -1.0)
    assert confidence_bins(below, n_bins).tolist() == list(range(n_bins))
    smallest = np.array([np.nextafter(0.0, 1.0), 1e-300])
    assert confidence_bins(smallest, n_bins).tolist() == [0, 0]
    values = np.concatenate([[0.0, 1.0], edges, above, below])
    assert confidence_bins(values, n_bins).tolist() == [ref_bin(v, n_bins) for v in values]


@pytest.mark.parametrize("n_bins", [1, 2, 3, 7, 10, 15, 100])
def test_confidence_bins_match_the_reference_on_random_and_decimal_values(n_bins):
    rng = np.random.default_rng(n_bins)
    decimals = np.array([float(f"0.{d}") for d in range(1, 10)] + [i / 20 for i in range(21)])
    values = np.concatenate([rng.random(300), decimals, [1.0 + 1e-5]])  # within --tol above 1
    assert confidence_bins(values, n_bins).tolist() == [ref_bin(v, n_bins) for v in values]


# -- Brier ------------------------------------------------------------------------------------


NAMES = ["dog", "cat", "emu", "ant", "bee"]  # not in sorted order: scikit-learn sorts


def test_brier_multiclass_string_labels_shuffled_columns_vs_sklearn(run, tmp_path):
    rng = np.random.default_rng(1)
    p, labels = random_probs(rng, 300, len(NAMES))
    labels[labels == NAMES.index("emu")] = 0  # a class that never is the label
    df = frame(p, labels, NAMES)
    order = sorted(NAMES)
    expected = brier_score_loss(df["label"], df[[f"p_{n}" for n in order]].to_numpy(), labels=order,
                                scale_by_half=False)
    assert 0 < expected < 2
    report = nllcli.score(df)
    assert report.metrics["brier"] == pytest.approx(expected, rel=1e-12)
    data = json_of(run("score", csv_of(tmp_path / "p.csv", df), "--format", "json"))
    assert data["metrics"]["brier"] == pytest.approx(expected, rel=1e-12)


def test_brier_weighted_vs_sklearn(run, tmp_path):
    rng = np.random.default_rng(2)
    p, labels = random_probs(rng, 250, len(NAMES))
    w = rng.uniform(0, 4, size=250)
    w[:10] = 0.0
    df = frame(p, labels, NAMES, weights=w)
    order = sorted(NAMES)
    expected = brier_score_loss(df["label"], df[[f"p_{n}" for n in order]].to_numpy(), labels=order,
                                sample_weight=w, scale_by_half=False)
    assert nllcli.score(df, weight="w").metrics["brier"] == pytest.approx(expected, rel=1e-12)
    data = json_of(run("score", csv_of(tmp_path / "p.csv", df), "--weight", "w", "--format", "json"))
    assert data["metrics"]["brier"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_brier_binary_single_column_vs_sklearn(run, tmp_path, weighted):
    rng = np.random.default_rng(3)
    n = 200
    prob = rng.random(n)
    prob[:3] = [0.0, 1.0, 0.5]
    y = (rng.random(n) < prob ** 0.7).astype(int)
    w = rng.uniform(0, 3, size=n) if weighted else None
    expected = brier_score_loss(y, prob, sample_weight=w, scale_by_half=False)
    rows = [(str(label), v, *((wi,) if weighted else ())) for label, v, wi in
            zip(y, prob, w if weighted else [None] * n)]
    path = write_csv(tmp_path / "b.csv", ["label", "prob", *(["w"] if weighted else [])], rows)
    data = json_of(run("score", path, *(["--weight", "w"] if weighted else []), "--format", "json"))
    assert data["classes"] == ["0", "1"]
    assert data["metrics"]["brier"] == pytest.approx(expected, rel=1e-12)


def test_brier_binary_positive_label_vs_sklearn(run, tmp_path):
    rng = np.random.default_rng(4)
    prob = rng.random(120)
    y = np.where(rng.random(120) < prob, "spam", "ham")
    expected = brier_score_loss(y, prob, pos_label="spam", scale_by_half=False)
    path = write_csv(tmp_path / "b.csv", ["label", "prob"], list(zip(y, prob)))
    data = json_of(run("score", path, "--positive", "spam", "--format", "json"))
    assert data["metrics"]["brier"] == pytest.approx(expected, rel=1e-12)


def test_brier_of_logits_is_brier_of_their_softmax(run, tmp_path):
    rng = np.random.default_rng(5)
    z = rng.normal(scale=3, size=(150, 3))
    labels = rng.integers(0, 3, size=150)
    q = np.array([softmax(row) for row in z])
    expected = brier_score_loss(labels, q, labels=[0, 1, 2], scale_by_half=False)
    path = write_csv(tmp_path / "z.csv", ["label", "p_0", "p_1", "p_2"],
                     [(str(y), *row) for y, row in zip(labels, z)])
    data = json_of(run("score", path, "--input", "logits", "--format", "json"))
    assert data["metrics"]["brier"] == pytest.approx(expected, rel=1e-12)


def test_brier_extremes():
    df = pd.DataFrame({"label": ["a", "b", "a", "b"], "p_a": [1.0, 1.0, 1.0, 0.0], "p_b": [0.0, 0.0, 0.0, 1.0]})
    # right and certain: 0; wrong and certain: 2
    assert nllcli.score(df).metrics["brier"] == pytest.approx((0 + 2 + 0 + 0) / 4, abs=1e-15)


@pytest.mark.parametrize("weighted", [False, True])
def test_brier_soft_targets_vs_numpy(weighted):
    rng = np.random.default_rng(6)
    n, k = 200, 4
    q = rng.dirichlet(np.ones(k), size=n)
    t = rng.dirichlet(np.ones(k) * 0.5, size=n)
    t[:5] = np.eye(k)[rng.integers(0, k, size=5)]  # some one-hot rows among them
    w = rng.uniform(0, 2, size=n) if weighted else np.ones(n)
    df = pd.DataFrame({**{f"p_{j}": q[:, j] for j in range(k)}, **{f"t_{j}": t[:, j] for j in range(k)},
                       **({"w": w} if weighted else {})})
    per_row = ((q - t) ** 2).sum(axis=1)
    expected = float((w * per_row).sum() / w.sum())
    report = nllcli.score(df, target_prefix="t_", weight="w" if weighted else None)
    assert report.metrics["brier"] == pytest.approx(expected, rel=1e-12)
    # no label column: no accuracy, ECE, MCE nor calibration bins
    assert not {"accuracy", "ece", "mce"} & set(report.metrics)
    assert report.to_dict()["calibration"] == []


def test_brier_with_label_smoothing_uses_the_smoothed_targets():
    rng = np.random.default_rng(7)
    n, k, alpha = 100, 3, 0.2
    q = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(0, k, size=n)
    t = (1 - alpha) * np.eye(k)[labels] + alpha / k
    df = frame(q, labels, ["a", "b", "c"])
    report = nllcli.score(df, label_smoothing=alpha)
    assert report.metrics["brier"] == pytest.approx(float(((q - t) ** 2).sum(axis=1).mean()), rel=1e-12)
    # a label is present: calibration is still on the hard labels
    correct = [argmax_first(row) == y for row, y in zip(q, labels)]
    ece, mce, _ = ref_calibration(q.max(axis=1), correct, np.ones(n), 15)
    assert report.metrics["ece"] == pytest.approx(ece, rel=1e-12)
    assert report.metrics["mce"] == pytest.approx(mce, rel=1e-12)


# -- ECE and MCE ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 2, 5, 15, 40])
def test_ece_mce_and_bins_match_the_reference(n_bins):
    rng = np.random.default_rng(10 + n_bins)
    p, labels = random_probs(rng, 400, 4)
    df = frame(p, labels, ["a", "b", "c", "d"])
    correct = [argmax_first(row) == y for row, y in zip(p, labels)]
    ece, mce, rows = ref_calibration([max(row) for row in p], correct, np.ones(len(p)), n_bins)
    report = nllcli.score(df, bins=n_bins)
    assert report.metrics["ece"] == pytest.approx(ece, rel=1e-12)
    assert report.metrics["mce"] == pytest.approx(mce, rel=1e-12)
    assert report.metrics["accuracy"] == pytest.approx(np.mean(correct), rel=1e-15)
    check_calibration_rows(report.to_dict()["calibration"], rows, n_bins, len(p))


def test_one_bin_ece_is_accuracy_gap(run, tmp_path):
    rng = np.random.default_rng(20)
    p, labels = random_probs(rng, 300, 3)
    df = frame(p, labels, ["a", "b", "c"])
    accuracy = np.mean([argmax_first(row) == y for row, y in zip(p, labels)])
    gap = abs(accuracy - p.max(axis=1).mean())
    data = json_of(run("score", csv_of(tmp_path / "p.csv", df), "--bins", "1", "--format", "json"))
    assert data["metrics"]["ece"] == pytest.approx(gap, rel=1e-12)
    assert data["metrics"]["mce"] == pytest.approx(gap, rel=1e-12)
    assert len(data["calibration"]) == 1
    assert data["calibration"][0]["bin"] == [0.0, 1.0]
    assert data["calibration"][0]["weight"] == 300


def test_weighted_ece_equals_ece_of_repeated_rows():
    rng = np.random.default_rng(21)
    n = 200
    p, labels = random_probs(rng, n, 3)
    w = rng.integers(0, 5, size=n)  # zeros drop rows
    weighted = nllcli.score(frame(p, labels, ["a", "b", "c"], weights=w.astype(float)), weight="w")
    repeated = nllcli.score(frame(np.repeat(p, w, axis=0), np.repeat(labels, w), ["a", "b", "c"]))
    for name in ("ece", "mce", "accuracy", "brier", "nll"):
        assert weighted.metrics[name] == pytest.approx(repeated.metrics[name], rel=1e-12), name
    for a, b in zip(weighted.to_dict()["calibration"], repeated.to_dict()["calibration"]):
        assert a["weight"] == b["weight"]
        for field in ("confidence", "accuracy"):
            assert a[field] == (None if b[field] is None else pytest.approx(b[field], rel=1e-12))
    for a, b in zip(weighted.loss_histogram, repeated.loss_histogram):
        assert a["weight"] == b["weight"]
    # and both agree with the weighted reference
    correct = [argmax_first(row) == y for row, y in zip(p, labels)]
    ece, mce, rows = ref_calibration(p.max(axis=1), correct, w, 15)
    assert weighted.metrics["ece"] == pytest.approx(ece, rel=1e-12)
    assert weighted.metrics["mce"] == pytest.approx(mce, rel=1e-12)
    check_calibration_rows(weighted.to_dict()["calibration"], rows, 15, w.sum())


def test_zero_weight_rows_leave_their_bins_empty():
    # one row of weight 0 alone in a bin: the bin is empty (null) and does not count for MCE
    df = pd.DataFrame({"label": ["a", "a", "b"], "p_a": [0.95, 0.55, 0.9], "p_b": [0.05, 0.45, 0.1],
                       "w": [1.0, 0.0, 1.0]})
    report = nllcli.score(df, weight="w", bins=10)
    rows = report.to_dict()["calibration"]
    assert rows[5] == {"bin": pytest.approx([0.5, 0.6]), "weight": 0.0, "confidence": None, "accuracy": None}
    assert rows[9]["weight"] == 1.0 and rows[9]["accuracy"] == 1.0
    assert rows[8]["weight"] == 1.0 and rows[8]["accuracy"] == 0.0
    assert report.metrics["ece"] == pytest.approx((0.05 + 0.9) / 2, rel=1e-12)
    assert report.metrics["mce"] == pytest.approx(0.9, rel=1e-12)


def test_confidence_exactly_one_is_in_the_last_bin(run, tmp_path):
    rows = [("a", 1.0, 0.0, 0.0), ("b", 1.0, 0.0, 0.0), ("c", 0.0, 0.0, 1.0), ("a", 0.5, 0.3, 0.2)]
    path = write_csv(tmp_path / "one.csv", ["label", "p_a", "p_b", "p_c"], rows)
    for n_bins in (1, 2, 15):
        data = json_of(run("score", path, "--bins", n_bins, "--format", "json"))
        last = data["calibration"][-1]
        if n_bins > 1:
            assert last == {"bin": pytest.approx([1 - 1 / n_bins, 1.0]), "weight": 3.0, "confidence": 1.0,
                            "accuracy": pytest.approx(2 / 3)}
        ece, mce, expected = ref_calibration([1.0, 1.0, 1.0, 0.5], [True, False, True, True], [1] * 4, n_bins)
        assert data["metrics"]["ece"] == pytest.approx(ece, rel=1e-12)
        assert data["metrics"]["mce"] == pytest.approx(mce, rel=1e-12)
        check_calibration_rows(data["calibration"], expected, n_bins, 4)


def test_logit_confidence_of_one_is_in_the_last_bin(run, tmp_path):
    path = write_csv(tmp_path / "z.csv", ["label", "p_a", "p_b"], [("a", 0.0, -1000.0), ("b", 0.0, -800.0)])
    data = json_of(run("score", path, "--input", "logits", "--bins", "4", "--format", "json"))
    assert [r["weight"] for r in data["calibration"]] == [0.0, 0.0, 0.0, 2.0]
    assert data["calibration"][-1]["confidence"] == 1.0
    assert data["metrics"]["ece"] == pytest.approx(0.5) and data["metrics"]["mce"] == pytest.approx(0.5)


def test_binary_column_confidence_on_a_boundary(run, tmp_path):
    # P(1) = 0.6 gives rows [0.4, 0.6]: confidence 0.6, which with --bins 5 is at most the edge
    # linspace(0, 1, 6)[3] = 0.6000000000000001, so in bin 2, (0.4, 0.6]; 0.4 gives confidence 0.6
    # too (1 - 0.4). 0.8 is exactly linspace(0, 1, 6)[4]: bin 3. 0.5 ties: class 0, confidence 0.5.
    probs = [0.6, 0.6, 0.4, 0.8, 0.2, 0.5, 0.5, 1.0, 0.0]
    labels = ["1", "0", "0", "1", "1", "0", "1", "1", "0"]
    path = write_csv(tmp_path / "b.csv", ["label", "prob"], list(zip(labels, probs)))
    data = json_of(run("score", path, "--bins", "5", "--format", "json"))
    q = [[1 - v, v] for v in probs]
    conf = [max(row) for row in q]
    correct = [argmax_first(row) == int(y) for row, y in zip(q, labels)]
    assert ref_bin(conf[0], 5) == 2 and ref_bin(0.8, 5) == 3 and ref_bin(0.5, 5) == 2
    ece, mce, expected = ref_calibration(conf, correct, [1] * len(q), 5)
    assert [r["weight"] for r in data["calibration"]] == [0.0, 0.0, 5.0, 2.0, 2.0]
    assert data["metrics"]["ece"] == pytest.approx(ece, rel=1e-12)
    assert data["metrics"]["mce"] == pytest.approx(mce, rel=1e-12)
    assert data["metrics"]["accuracy"] == pytest.approx(np.mean(correct))
    check_calibration_rows(data["calibration"], expected, 5, len(q))


def test_uniform_rows_on_an_edge_of_fifteen_bins(run, tmp_path):
    # Five classes at 0.2: confidence 0.2 == linspace(0, 1, 16)[3], the edge that closes bin 2.
    # The argmax of a tie is the first class, so the row is right only for label a.
    # 0.6 == linspace(0, 1, 16)[9] closes bin 8.
    rows = [("a", 0.2, 0.2, 0.2, 0.2, 0.2), ("b", 0.2, 0.2, 0.2, 0.2, 0.2), ("e", 0.2, 0.2, 0.2, 0.2, 0.2),
            ("c", 0.1, 0.1, 0.6, 0.1, 0.1), ("a", 0.1, 0.1, 0.6, 0.1, 0.1)]
    path = write_csv(tmp_path / "u.csv", ["label", "p_a", "p_b", "p_c", "p_d", "p_e"], rows)
    data = json_of(run("score", path, "--format", "json"))  # default: 15 bins
    weights = [r["weight"] for r in data["calibration"]]
    assert weights[2] == 3.0 and weights[8] == 2.0 and sum(weights) == 5.0
    assert data["calibration"][2]["accuracy"] == pytest.approx(1 / 3)
    assert data["calibration"][8]["accuracy"] == pytest.approx(1 / 2)
    conf = [0.2, 0.2, 0.2, 0.6, 0.6]
    ece, mce, expected = ref_calibration(conf, [True, False, False, True, False], [1] * 5, 15)
    assert data["metrics"]["ece"] == pytest.approx(ece, rel=1e-12)
    assert data["metrics"]["mce"] == pytest.approx(mce, rel=1e-12)
    check_calibration_rows(data["calibration"], expected, 15, 5)


def test_calibration_bin_ranges_are_the_linspace_edges():
    """The [lo, hi] of each JSON bin are the edges the rows were binned by, exactly.

    For --bins 5, linspace(0, 1, 6)[3] is 0.6000000000000001: a confidence of that value is in
    bin 2, so bin 2 must read [0.4, 0.6000000000000001], not [0.4, 0.6] (else its own mean
    confidence lies above its upper end).
    """
    df = pd.DataFrame({"label": ["a", "b"], "p_a": [0.6000000000000001, 0.1], "p_b": [0.3999999999999999, 0.9]})
    rows = nllcli.score(df, bins=5).to_dict()["calibration"]
    assert rows[2]["weight"] == 1.0 and rows[2]["confidence"] == 0.6000000000000001
    for row in rows:
        if row["weight"]:
            lo, hi = row["bin"]
            assert lo < row["confidence"] <= hi, row
    for n_bins in (3, 5, 10, 15):
        edges = np.linspace(0.0, 1.0, n_bins + 1).tolist()
        rows = nllcli.score(df, bins=n_bins).to_dict()["calibration"]
        assert [r["bin"] for r in rows] == [[edges[b], edges[b + 1]] for b in range(n_bins)], n_bins


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), st.integers(1, 40))
def test_confidence_bins_match_the_reference_on_any_values(values, n_bins):
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    values = values + [float(edges[i]) for i in range(0, n_bins + 1, max(1, n_bins // 3))]
    assert confidence_bins(np.array(values), n_bins).tolist() == [ref_bin(v, n_bins) for v in values]


def _values_at_every_edge(n_bins: int, rng) -> np.ndarray:
    """Random confidences, the equal-width and fine edges, the ulps either side, 0, 1 and above 1."""
    from nllcli.losses import FINE_EDGES

    edges = np.concatenate([np.linspace(0.0, 1.0, n_bins + 1), FINE_EDGES, [0.0, 1.0, 5e-324]])
    near = np.concatenate([edges, np.nextafter(edges, 2.0), np.nextafter(edges, -1.0)])
    tail = 1.0 - 10.0 ** -rng.uniform(3, 12, 300)  # the fine bins near 1 are narrow
    return np.concatenate([np.clip(near, 0.0, 1.0 + 1e-6), tail, rng.uniform(0.0, 1.0, 700)])


@pytest.mark.parametrize("n_bins", [1, 2, 3, 7, 10, 15, 100, 1000, 1024, 2000, 10000])
def test_width_bins_added_from_the_fine_bins_are_those_of_each_value(n_bins):
    """Summary fills its equal-width bins from the fine bins that lie inside one of them and bins
    only the rows of the fine bins an edge cuts: the same rows land in the same bins as binning
    every confidence (confidence_bins, checked against exact fractions above), weighted or not."""
    from nllcli.summary import width_bins_of_fine

    rng = np.random.default_rng(n_bins)
    c = _values_at_every_edge(n_bins, rng)
    n = len(c)
    correct = rng.random(n) < c
    expected = confidence_bins(c, n_bins)
    for weights in (None, rng.uniform(0.0, 3.0, n)):
        w = np.ones(n) if weights is None else weights
        got = Summary.of_batch({"nll": np.zeros(n)}, 2, weights, rng.integers(0, 2, n), correct,
                               confidence=c, n_bins=n_bins)
        sums = {"weight": w, "correct": w * correct, "confidence": w * c, "weight_sq": w * w}
        for name, values in sums.items():
            want = np.bincount(expected, weights=values, minlength=n_bins)
            np.testing.assert_allclose(getattr(got, f"bin_{name}"), want, rtol=1e-12, atol=1e-12, err_msg=name)
        if weights is None:  # counts, exactly
            np.testing.assert_array_equal(got.bin_weight, np.bincount(expected, minlength=n_bins))
            np.testing.assert_array_equal(got.bin_correct, np.bincount(expected[correct], minlength=n_bins))
    # a fine bin marked as inside one equal-width bin holds only values of that bin, at both ends
    from nllcli.losses import FINE_EDGES

    inside = width_bins_of_fine(n_bins)
    lower, upper = np.nextafter(FINE_EDGES[:-1], 2.0), FINE_EDGES[1:]
    ends = confidence_bins(lower, n_bins), confidence_bins(upper, n_bins)
    kept = inside >= 0
    np.testing.assert_array_equal(ends[0][kept], inside[kept])
    np.testing.assert_array_equal(ends[1][kept], inside[kept])
    assert (ends[0][~kept] != ends[1][~kept]).all()  # marked cut only when an edge cuts it
    if n_bins == 15:
        assert (~kept).sum() == 14  # one fine bin per interior edge: 1.4% of [0, 1] binned row by row


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30), st.integers(1, 60))
def test_width_bins_from_the_fine_bins_match_the_reference_on_any_values(values, n_bins):
    c = np.array(values)
    got = Summary.of_batch({"nll": np.zeros(len(c))}, 1, None, np.zeros(len(c), dtype=np.intp),
                           np.ones(len(c), dtype=bool), confidence=c, n_bins=n_bins)
    np.testing.assert_array_equal(got.bin_weight, np.bincount([ref_bin(v, n_bins) for v in values],
                                                              minlength=n_bins))


@pytest.mark.parametrize("bins", ["0", "-1", "10001"])
def test_bins_out_of_range_is_a_usage_error(run, calib_csv, bins):
    result = run("score", calib_csv, "--bins", bins)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--bins" in result.stderr


@pytest.mark.parametrize("n_bins", [3, 15])
def test_logits_ece_matches_the_softmax_reference(run, tmp_path, n_bins):
    rng = np.random.default_rng(30 + n_bins)
    n, k = 300, 4
    z = rng.normal(scale=2.5, size=(n, k))
    labels = rng.integers(0, k, size=n)
    q = [softmax(row) for row in z]
    conf = [max(row) for row in q]
    correct = [argmax_first(row) == y for row, y in zip(z, labels)]
    ece, mce, expected = ref_calibration(conf, correct, [1] * n, n_bins)
    path = write_csv(tmp_path / "z.csv", ["label", "p_a", "p_b", "p_c", "p_d"],
                     [("abcd"[y], *row) for y, row in zip(labels, z)])
    data = json_of(run("score", path, "--input", "logits", "--bins", n_bins, "--format", "json"))
    assert data["metrics"]["ece"] == pytest.approx(ece, rel=1e-12)
    assert data["metrics"]["mce"] == pytest.approx(mce, rel=1e-12)
    check_calibration_rows(data["calibration"], expected, n_bins, n)
    # the same model as log-probabilities gives the same calibration
    shifted = z - z.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    path = write_csv(tmp_path / "lq.csv", ["label", "p_a", "p_b", "p_c", "p_d"],
                     [("abcd"[y], *row) for y, row in zip(labels, log_q)])
    data = json_of(run("score", path, "--input", "log-probs", "--bins", n_bins, "--format", "json"))
    assert data["metrics"]["ece"] == pytest.approx(ece, rel=1e-9)
    assert data["metrics"]["mce"] == pytest.approx(mce, rel=1e-9)


def test_renormalized_probabilities_are_binned_after_renormalizing():
    rows = pd.DataFrame({"label": ["a", "b"], "p_a": [0.6, 0.3], "p_b": [0.2, 0.3]})  # 0.75, tie 0.5
    report = nllcli.score(rows, renormalize=True, bins=4)
    assert [r["weight"] for r in report.calibration] == [0.0, 1.0, 1.0, 0.0]
    assert report.metrics["ece"] == pytest.approx((0.25 + 0.5) / 2)
    assert report.metrics["mce"] == pytest.approx(0.5)


def test_empty_bins_are_null_and_ignored_by_mce():
    df = pd.DataFrame({"label": ["a", "a", "b", "b"], "p_a": [0.99, 0.97, 0.52, 0.55],
                       "p_b": [0.01, 0.03, 0.48, 0.45]})
    report = nllcli.score(df, bins=10)
    rows = json.loads(json.dumps(report.to_dict()))["calibration"]
    filled = [b for b, r in enumerate(rows) if r["weight"]]
    assert filled == [5, 9]
    for b, r in enumerate(rows):
        if b not in filled:
            assert r["weight"] == 0 and r["confidence"] is None and r["accuracy"] is None
    assert report.metrics["mce"] == pytest.approx(0.535)  # bin 5: confidence 0.535, accuracy 0
    assert report.metrics["ece"] == pytest.approx((2 * 0.02 + 2 * 0.535) / 4)


def test_ties_take_the_first_class():
    df = pd.DataFrame({"label": ["a", "b", "c"], "p_a": [0.4, 0.4, 0.2], "p_b": [0.4, 0.4, 0.4],
                       "p_c": [0.2, 0.2, 0.4]})
    report = nllcli.score(df, bins=5)
    # predicted a, a, b: only the first is right; every confidence is 0.4 (bin 1, (0.2, 0.4])
    assert report.metrics["accuracy"] == pytest.approx(1 / 3)
    assert [r["weight"] for r in report.calibration] == [0, 3, 0, 0, 0]
    assert report.metrics["ece"] == pytest.approx(0.4 - 1 / 3)


# -- streaming ------------------------------------------------------------------------------


def _table(seed=40, n=1000, k=3):
    rng = np.random.default_rng(seed)
    p, labels = random_probs(rng, n, k)
    p[:7] = np.eye(k)[rng.integers(0, k, size=7)]  # some confidences of 1.0
    w = rng.uniform(0, 3, size=n)
    w[::50] = 0.0
    return pa.Table.from_pandas(frame(p, labels, [f"c{j}" for j in range(k)], weights=w), preserve_index=False)


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 333])
def test_results_do_not_depend_on_batch_size(monkeypatch, batch_rows):
    table = _table()
    whole = nllcli.score(table, weight="w", bins=12).to_dict()
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", batch_rows)
    assert len(table.to_batches(batch_rows)) > 1
    split = nllcli.score(table, weight="w", bins=12).to_dict()
    for name, value in whole["metrics"].items():
        assert split["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    for a, b in zip(whole["calibration"], split["calibration"], strict=True):
        assert a["bin"] == b["bin"]
        assert b["weight"] == pytest.approx(a["weight"], rel=1e-12)
        for field in ("confidence", "accuracy"):
            if a[field] is None:
                assert b[field] is None
            else:
                assert b[field] == pytest.approx(a[field], rel=1e-12, abs=1e-15)
    for a, b in zip(whole["loss_histogram"], split["loss_histogram"], strict=True):
        assert a["range"] == b["range"]
        assert b["weight"] == pytest.approx(a["weight"], rel=1e-12, abs=1e-12)


def test_summaries_of_parts_merge_to_the_summary_of_the_whole():
    rng = np.random.default_rng(41)
    n = 90
    conf = rng.uniform(0.3, 1.0, size=n)
    conf[:4] = [1.0, 0.5, 0.3, 0.6]
    labels = rng.integers(0, 3, size=n)
    correct = rng.random(n) < conf
    w = rng.uniform(0, 2, size=n)
    loss = rng.exponential(size=n)
    args = lambda s: dict(values={"nll": loss[s]}, n_classes=3, weights=w[s], labels=labels[s],  # noqa: E731
                          correct=correct[s], confidence=conf[s], n_bins=6, loss=loss[s])
    whole = Summary.of_batch(**args(slice(None)))
    merged = Summary.of_batch(**args(slice(0, 13))) + Summary.of_batch(**args(slice(13, 14))) \
        + Summary.of_batch(**args(slice(14, n)))
    for field in ("bin_weight", "bin_confidence", "bin_correct", "loss_histogram"):
        np.testing.assert_allclose(getattr(merged, field), getattr(whole, field), rtol=1e-12, err_msg=field)
    assert merged.calibration_errors() == pytest.approx(whole.calibration_errors(), rel=1e-12)
    ece, mce, _ = ref_calibration(conf, correct, w, 6)
    assert whole.calibration_errors() == pytest.approx((ece, mce), rel=1e-12)
    with pytest.raises(ValueError):
        whole + Summary.of_batch(**{**args(slice(None)), "n_bins": 7})


# -- loss histogram --------------------------------------------------------------------------


def _hist_ref(losses, weights, scale=1.0):
    edges = [e / scale for e in LOSS_EDGES] + [math.inf]
    out = [0.0] * len(LOSS_EDGES)
    for x, w in zip(losses, weights):
        b = len(out) - 1 if x == math.inf else next(i for i in range(len(out)) if edges[i] <= x < edges[i + 1])
        out[b] += w
    return out


@pytest.mark.parametrize("base", ["e", "2"])
def test_loss_histogram_counts_each_per_sample_loss_in_its_bin(run, tmp_path, base):
    rng = np.random.default_rng(50)
    n = 400
    p, labels = random_probs(rng, n, 4, sharpness=4.0)
    p[0] = [1.0, 0.0, 0.0, 0.0]  # loss 0 (clipped to eps: about 2.2e-16)
    labels[0] = 0
    df = frame(p, labels, ["a", "b", "c", "d"])
    per_sample = tmp_path / "ps.csv"
    result = run("score", csv_of(tmp_path / "p.csv", df), "--base", base, "--per-sample", per_sample,
                 "--format", "json")
    data = json_of(result)
    scale = math.log(2) if base == "2" else 1.0
    assert data["units"] == ("bits" if base == "2" else "nats")
    hist = data["loss_histogram"]
    assert len(hist) == len(LOSS_EDGES)
    for row, low, high in zip(hist, LOSS_EDGES, [*LOSS_EDGES[1:], None]):
        assert row["range"][0] == pytest.approx(low / scale, rel=1e-15)
        assert row["range"][1] == (None if high is None else pytest.approx(high / scale, rel=1e-15))
    assert sum(r["weight"] for r in hist) == n
    # each per-sample loss (in the report's units) falls in the range [lo, hi) of its bin
    losses = pd.read_csv(per_sample)["nll"].to_numpy()
    expected = [-math.log(max(row[y], np.finfo(float).eps)) / scale for row, y in zip(p, labels)]
    assert losses == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert [r["weight"] for r in hist] == _hist_ref(losses, [1.0] * n, scale)
    assert len([r for r in hist if r["weight"]]) >= 5  # the data spans several bins


def test_loss_histogram_weighted_and_infinite_losses(run, tmp_path):
    rows = [("a", 1.0, 0.0, 2.0), ("b", 1.0, 0.0, 0.5), ("a", 0.5, 0.5, 1.5), ("b", 0.99, 0.01, 0.0)]
    path = write_csv(tmp_path / "p.csv", ["label", "p_a", "p_b", "w"], rows)
    result = run("score", path, "--weight", "w", "--eps", "0", "--format", "json")
    data = json.loads(result.stdout)
    hist = [r["weight"] for r in data["loss_histogram"]]
    # losses 0 (w 2), inf (w 0.5), log 2 = 0.69 (w 1.5), -log 0.01 = 4.6 (w 0)
    expected = [0.0] * len(LOSS_EDGES)
    expected[0], expected[-1], expected[5] = 2.0, 0.5, 1.5  # bins [0, 0.01), [40, inf), [0.5, 1)
    assert hist == expected
    assert sum(hist) == 4.0


def test_kl_has_a_loss_histogram_but_no_calibration(run, tmp_path):
    p = write_csv(tmp_path / "p.csv", ["id", "a", "b"], [("k1", 0.5, 0.5), ("k2", 0.9, 0.1)])
    q = write_csv(tmp_path / "q.csv", ["id", "label", "a", "b"], [("k1", "a", 0.6, 0.4), ("k2", "a", 0.2, 0.8)])
    result = run("kl", p, q, "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json_of(result)
    assert not {"brier", "ece", "mce", "accuracy"} & set(data["metrics"])
    assert data["calibration"] == []
    assert sum(r["weight"] for r in data["loss_histogram"]) == 2
    table = run("kl", p, q)
    assert table.exit_code == 0
    assert BAR_HEADER not in table.stdout and "loss (nats)" in table.stdout


# -- soft targets without labels ---------------------------------------------------------------


@pytest.fixture
def soft_files(tmp_path):
    preds = write_csv(tmp_path / "preds.csv", ["id", "p_a", "p_b", "p_c"],
                      [("k1", 0.7, 0.2, 0.1), ("k2", 0.1, 0.6, 0.3), ("k3", 0.3, 0.3, 0.4)])
    targets = write_csv(tmp_path / "targets.csv", ["id", "a", "b", "c"],
                        [("k3", 0.0, 0.5, 0.5), ("k1", 1.0, 0.0, 0.0), ("k2", 0.2, 0.7, 0.1)])
    return preds, targets


def test_soft_targets_without_labels_report_brier_but_no_ece(run, soft_files):
    preds, targets = soft_files
    data = json_of(run("score", preds, "--targets", targets, "--format", "json"))
    assert not {"ece", "mce", "accuracy"} & set(data["metrics"])
    assert data["calibration"] == []
    q = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    t = np.array([[1.0, 0.0, 0.0], [0.2, 0.7, 0.1], [0.0, 0.5, 0.5]])
    assert data["metrics"]["brier"] == pytest.approx(float(((q - t) ** 2).sum(axis=1).mean()), rel=1e-12)
    assert sum(r["weight"] for r in data["loss_histogram"]) == 3
    table = run("score", preds, "--targets", targets)
    assert table.exit_code == 0
    assert BAR_HEADER not in table.stdout and "loss (nats)" in table.stdout


@pytest.mark.parametrize("gate", [["--min", "ece=0.1"], ["--max", "ece=0.1"], ["--max", "mce=0.5"],
                                  ["--min", "accuracy=0.5"]])
def test_label_gates_without_a_label_are_usage_errors(run, soft_files, gate):
    preds, targets = soft_files
    result = run("score", preds, "--targets", targets, *gate)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    metric = gate[1].split("=")[0]
    assert metric in result.stderr and "label" in result.stderr


def test_label_gate_without_a_label_is_refused_by_the_library(soft_files):
    preds, targets = soft_files
    with pytest.raises(nllcli.UsageError, match="label"):
        nllcli.score(preds, targets=targets, min=["ece=0"])


# -- gates --------------------------------------------------------------------------------------


@pytest.fixture
def calib_csv(tmp_path):
    """Hand-checkable: 4 rows, 15 bins. Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (wrong).

    0.9 is in bin 13 (0.8667, 0.9333]; 0.6 == linspace[9] closes bin 8, 0.55 is in bin 8 too.
    ECE = (2 |0.5 - 0.9| + 2 |0.5 - 0.575|) / 4 = 0.2375, MCE = 0.4, accuracy 0.5.
    """
    rows = [("a", 0.9, 0.1), ("b", 0.9, 0.1), ("a", 0.6, 0.4), ("a", 0.45, 0.55)]
    return write_csv(tmp_path / "calib.csv", ["label", "p_a", "p_b"], rows)


def test_hand_checked_file(run, calib_csv):
    data = json_of(run("score", calib_csv, "--format", "json"))
    assert data["metrics"]["ece"] == pytest.approx(0.2375, rel=1e-12)
    assert data["metrics"]["mce"] == pytest.approx(0.4, rel=1e-12)
    assert data["metrics"]["accuracy"] == 0.5
    brier = (2 * 0.01 + 2 * 0.81 + 2 * 0.16 + 2 * 0.55 ** 2) / 4
    assert data["metrics"]["brier"] == pytest.approx(brier, rel=1e-12)


@pytest.mark.parametrize("gates, failed", [
    (["--max", "ece=0.3"], []),
    (["--max", "ece=0.2"], ["ece"]),
    (["--max", "mce=0.39"], ["mce"]),
    (["--max", "mce=0.4", "--max", "ece=0.24"], []),
    (["--min", "accuracy=0.6"], ["accuracy"]),
    (["--min", "accuracy=0.5", "--max", "brier=0.8"], []),
    (["--max", "brier=0.5", "--max", "ECE=0.1", "--min", "accuracy=0.75"], ["brier", "ece", "accuracy"]),
])
def test_calibration_gates(run, calib_csv, gates, failed):
    result = run("score", calib_csv, *gates, "--format", "json")
    assert result.exit_code == (1 if failed else 0), result.stderr
    data = json_of(result)  # the report is printed either way
    assert [g["metric"] for g in data["gates"] if not g["passed"]] == failed
    lines = result.stderr.splitlines()
    assert len(lines) == len(failed)
    for line, metric in zip(lines, failed):
        assert line.startswith(f"nll: gate failed: {metric} = ")


def test_gate_on_ece_through_the_library(calib_csv):
    report = nllcli.score(calib_csv, max=["ece=0.2"])
    assert [g.metric for g in report.failed_gates] == ["ece"]


# -- rendering ---------------------------------------------------------------------------------


def test_table_has_the_reliability_and_loss_charts(run, calib_csv):
    result = run("score", calib_csv)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out and not any(ch in out for ch in "━─│┃█▏")  # piped: plain text
    assert BAR_HEADER in out and "confidence bin" in out
    assert "loss (nats)" in out
    for name in ("brier", "ece", "mce"):
        assert name in out
    lines = out.splitlines()
    # one line per filled bin: 0.53-0.60 (2 rows) and 0.87-0.93 (2 rows)
    bin_lines = [line for line in lines if line.lstrip().startswith(("0.53-0.60", "0.87-0.93"))]
    assert len(bin_lines) == 2
    assert all("|" in line and "#" in line for line in bin_lines)
    assert not any(line.lstrip().startswith("0.00-0.07") for line in lines)  # empty bins are left out
    # the loss chart: every fixed bin, the last open-ended
    assert any(line.lstrip().startswith(">= 40") for line in lines)
    assert any(line.lstrip().startswith("0-0.01") for line in lines)


def test_table_loss_chart_in_bits(run, calib_csv):
    out = run("score", calib_csv, "--base", "2").stdout
    assert "loss (bits)" in out and "loss (nats)" not in out
    assert any(line.lstrip().startswith(f">= {40 / math.log(2):g}") for line in out.splitlines())


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_has_no_chart_text(run, calib_csv, fmt):
    result = run("score", calib_csv, "--format", fmt)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert len(data["calibration"]) == 15 and len(data["loss_histogram"]) == len(LOSS_EDGES)
    for text in (BAR_HEADER, "confidence bin", "loss (nats)", "#"):
        assert text not in result.stdout
    assert result.stderr == ""


def test_weighted_table_shows_weighted_rows(run, tmp_path):
    rows = [("a", 0.9, 0.1, 2.5), ("b", 0.9, 0.1, 0.5), ("a", 0.3, 0.7, 0.0)]
    path = write_csv(tmp_path / "w.csv", ["label", "p_a", "p_b", "w"], rows)
    result = run("score", path, "--weight", "w")
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.lstrip().startswith("0.87-0.93"))
    assert line.split()[1:4] == ["3", "0.900", "0.833"]
    assert not any(x.lstrip().startswith("0.67-0.73") for x in result.stdout.splitlines())  # weight 0
