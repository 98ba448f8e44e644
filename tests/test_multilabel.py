"""nll score --multilabel: independent P(y_k = 1) per class column, parity with scikit-learn per label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, log_loss

from helpers import assert_input_error
from nllcli import api
from nllcli.multilabel import MultilabelSums

NAMES = ["red", "green", "blue", "wide, shot"]


def data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.001, 0.999, (n, len(NAMES)))
    y = (rng.uniform(size=p.shape) < p ** 1.3).astype(int)
    w = rng.uniform(0.1, 3.0, n)
    return p, y, w


def write(tmp_path, p, y, w=None, values=None):
    df = pd.DataFrame(p if values is None else values, columns=[f"p_{c}" for c in NAMES])
    for k, name in enumerate(NAMES):
        df[f"y_{name}"] = y[:, k]
    df["tags"] = ["|".join(c for k, c in enumerate(NAMES) if y[i, k]) for i in range(len(y))]
    if w is not None:
        df["w"] = w
    df.to_csv(tmp_path / "ml.csv")  # with pandas' index
    return tmp_path / "ml.csv"


@pytest.mark.parametrize("kind", ["probs", "logits", "log-probs"])
def test_per_label_bce_equals_sklearn_log_loss(tmp_path, kind):
    p, y, w = data()
    values = {"probs": p, "logits": logit(p), "log-probs": np.log(p)}[kind]
    path = write(tmp_path, p, y, w, values)
    report = api.score(str(path), multilabel=True, target_prefix="y_", ignore=["tags"], weight="w", input=kind)
    for k, row in enumerate(report.per_class):
        assert row["class"] == NAMES[k]
        assert row["nll"] == pytest.approx(log_loss(y[:, k], p[:, k], sample_weight=w), rel=1e-10)
        assert row["brier"] == pytest.approx(brier_score_loss(y[:, k], p[:, k], sample_weight=w), rel=1e-10)
    cells = np.mean([log_loss(y[:, k], p[:, k], sample_weight=w) for k in range(len(NAMES))])
    assert report.metrics["nll"] == pytest.approx(cells, rel=1e-10)
    assert report.multilabel and report.to_dict()["multilabel"] is True


def test_a_list_column_gives_the_same_numbers_as_0_1_columns(tmp_path):
    p, y, _ = data(seed=1)
    path = write(tmp_path, p, y)
    columns = api.score(str(path), multilabel=True, target_prefix="y_", ignore=["tags"])
    listed = api.score(str(path), multilabel=True, label="tags", label_delimiter="|",
                       ignore=[f"y_{c}" for c in NAMES])
    assert listed.metrics == pytest.approx(columns.metrics, rel=1e-14)
    hits = ((p >= 0.5) == (y == 1))
    assert columns.metrics["accuracy"] == pytest.approx(hits.mean())
    assert columns.metrics["subset_accuracy"] == pytest.approx(hits.all(axis=1).mean())


def test_ece_per_label_and_pooled_against_numpy():
    p, y, _ = data(seed=2)
    sums = MultilabelSums.of_batch(p, y.astype(float), np.ones(len(y)), "probs", 0.0, 10)
    for k in range(len(NAMES)):
        bins = np.clip(np.ceil(p[:, k] * 10).astype(int) - 1, 0, 9)
        ece = sum(abs(y[bins == b, k].sum() - p[bins == b, k].sum()) for b in range(10)) / len(y)
        assert sums.ece(k) == pytest.approx(ece, rel=1e-12)


def test_sums_merge_exactly():
    p, y, w = data(seed=3)
    whole = MultilabelSums.of_batch(p, y.astype(float), w, "probs", 1e-12, 15)
    parts = (MultilabelSums.of_batch(p[:123], y[:123].astype(float), w[:123], "probs", 1e-12, 15)
             + MultilabelSums.of_batch(p[123:], y[123:].astype(float), w[123:], "probs", 1e-12, 15))
    np.testing.assert_allclose(parts.bce, whole.bce, rtol=1e-12)
    np.testing.assert_allclose(parts.bin_weight, whole.bin_weight, rtol=1e-12)
    assert parts.rows == whole.rows and parts.subset_right == pytest.approx(whole.subset_right)


def test_logits_are_exact_far_from_zero(tmp_path):
    z = np.array([[40.0, -40.0, 0.0, 800.0]])
    path = write(tmp_path, expit(z), np.array([[1, 0, 1, 0]]), values=z)
    report = api.score(str(path), multilabel=True, target_prefix="y_", ignore=["tags"], input="logits")
    nll = [row["nll"] for row in report.per_class]
    assert nll == pytest.approx([np.log1p(np.exp(-40.0)), np.log1p(np.exp(-40.0)), np.log(2), 800.0], rel=1e-12)


def test_cli_json_errors_and_gates(run, run_json, tmp_path):
    p, y, _ = data(seed=4)
    path = write(tmp_path, p, y)
    code, report, stderr = run_json("score", path, "--multilabel", "--label", "tags")
    assert code == 0, stderr
    assert report["multilabel"] and [r["class"] for r in report["per_class"]] == NAMES
    assert {"ece", "prevalence", "positives"} <= set(report["per_class"][0])
    gate = run("score", path, "--multilabel", "--label", "tags", "--max", "nll=0.01")
    assert gate.exit_code == 1 and "gate failed: nll" in gate.stderr
    assert_input_error(run("score", path, "--multilabel", "--label", "tags", "--by", "tags"), "--multilabel", "--by")
    bad = pd.read_csv(path)
    bad.loc[4, "tags"] = "red|purple"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert_input_error(run("score", tmp_path / "bad.csv", "--multilabel", "--label", "tags"), "'purple'", "row 5",
                       "column 'tags'")
    bad = pd.read_csv(path)
    bad.loc[2, "p_green"] = 1.5
    bad.to_csv(tmp_path / "bad2.csv", index=False)
    assert_input_error(run("score", tmp_path / "bad2.csv", "--multilabel", "--label", "tags"), "p_green", "row 3")
    assert_input_error(run("score", path, "--label-delimiter", "|"), "--multilabel")
