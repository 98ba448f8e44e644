"""Top-k accuracy (--top-k K): parity with scikit-learn's top_k_accuracy_score, in score, groups and compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import top_k_accuracy_score

import nllcli
from nllcli import losses
from nllcli import compare

from helpers import assert_input_error, write_csv

CLASSES = ["a", "b", "c", "d", "e"]


def frame(seed: int, n: int = 500, weighted: bool = False) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, len(CLASSES)))
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, len(CLASSES), n)
    data = {"id": np.arange(n), "label": np.array(CLASSES)[y], "group": rng.choice(["g1", "g2", "g3"], n)}
    if weighted:
        data["w"] = rng.uniform(0, 3, n)
    data.update({f"p_{c}": q[:, j] for j, c in enumerate(CLASSES)})
    return pd.DataFrame(data), q, y


@pytest.mark.filterwarnings("ignore:'k' .* will result in a perfect score")  # scikit-learn, at k = K
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_scikit_learn(k, weighted):
    df, q, y = frame(k, weighted=weighted)
    w = df["w"].to_numpy() if weighted else None
    report = nllcli.score(df, top_k=k, weight="w" if weighted else None)
    expected = top_k_accuracy_score(y, q, k=k, labels=range(len(CLASSES)), sample_weight=w)
    assert report.metrics["top_k_accuracy"] == pytest.approx(expected, rel=1e-10)
    assert report.to_dict()["top_k"] == k
    assert any("every row counts" in w for w in report.warnings) == (k >= len(CLASSES))


def test_per_group_matches_scikit_learn():
    df, q, y = frame(11, weighted=True)
    report = nllcli.score(df, top_k=2, weight="w", by=["group"])
    for group in report.groups:
        rows = (df["group"] == group["by"]["group"]).to_numpy()
        expected = top_k_accuracy_score(y[rows], q[rows], k=2, labels=range(len(CLASSES)),
                                        sample_weight=df["w"].to_numpy()[rows])
        assert group["metrics"]["top_k_accuracy"] == pytest.approx(expected, rel=1e-10)


def test_top_one_is_the_accuracy_even_with_ties():
    q = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.4, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([1, 0, 2, 2])
    assert losses.top_k_hits(q, labels, 1).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert losses.top_k_hits(q, labels, 2).tolist() == [1.0, 1.0, 0.0, 0.0]  # ties: the first column ranks higher
    assert losses.top_k_hits(q, labels, 3).tolist() == [1.0, 1.0, 1.0, 1.0]
    df, _, _ = frame(3)
    report = nllcli.score(df, top_k=1)
    assert report.metrics["top_k_accuracy"] == report.metrics["accuracy"]


def test_logits_rank_like_their_probabilities():
    df, q, y = frame(5)
    logits = df.copy()
    for j, c in enumerate(CLASSES):
        logits[f"p_{c}"] = np.log(q[:, j]) + 3.0
    by_probs = nllcli.score(df, top_k=3).metrics["top_k_accuracy"]
    assert nllcli.score(logits, top_k=3, input="logits").metrics["top_k_accuracy"] == by_probs


def test_cli_json_gate_and_groups(run_json, tmp_path):
    df, q, y = frame(8, n=200)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    code, data, err = run_json("score", path, "--top-k", "2", "--by", "group", "--min", "top_k_accuracy=0.99")
    assert code == 1, err
    expected = top_k_accuracy_score(y, q, k=2, labels=range(len(CLASSES)))
    assert data["top_k"] == 2
    assert data["metrics"]["top_k_accuracy"] == pytest.approx(expected, rel=1e-10)
    assert all("top_k_accuracy" in g["metrics"] for g in data["groups"])
    assert data["gates"][0]["metric"] == "top_k_accuracy" and data["gates"][0]["passed"] is False
    assert "gate failed: top_k_accuracy" in err


def test_groups_table_shows_it(run, tmp_path):
    df, _, _ = frame(9, n=60)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    result = run("score", path, "--top-k", "2", "--by", "group")
    assert result.exit_code == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("group"))
    assert "top_k_accuracy" in header.split()


def test_compare_pairs_it():
    base, q, y = frame(21)
    new = base.copy()
    rng = np.random.default_rng(2)
    sharper = q ** 2 * rng.uniform(0.5, 1.5, q.shape)
    sharper /= sharper.sum(axis=1, keepdims=True)
    for j, c in enumerate(CLASSES):
        new[f"p_{c}"] = sharper[:, j]
    report = compare(base, new, top_k=2, resamples=200, by=["group"])
    row = next(r for r in report.comparison if r["metric"] == "top_k_accuracy")
    expected_base = top_k_accuracy_score(y, q, k=2, labels=range(len(CLASSES)))
    expected_new = top_k_accuracy_score(y, sharper, k=2, labels=range(len(CLASSES)))
    assert row["base"] == pytest.approx(expected_base, rel=1e-10)
    assert row["new"] == pytest.approx(expected_new, rel=1e-10)
    assert row["delta"] == pytest.approx(expected_new - expected_base, abs=1e-12)
    assert row["ci"][0] <= row["delta"] <= row["ci"][1]
    assert [r["metric"] for r in report.comparison] == ["nll", "accuracy", "top_k_accuracy", "brier"]
    assert all(any(c["metric"] == "top_k_accuracy" for c in g["comparison"]) for g in report.groups)


def test_absent_without_the_option_or_a_label(tmp_path):
    df, _, _ = frame(4, n=30)
    assert "top_k_accuracy" not in nllcli.score(df).metrics
    assert nllcli.score(df).to_dict()["top_k"] is None
    targets = df[["id"] + [f"p_{c}" for c in CLASSES]]
    soft = nllcli.score(df.drop(columns="label"), targets=targets, top_k=2)
    assert "top_k_accuracy" not in soft.metrics  # no label, no rank of the true class


def test_bad_values_are_usage_errors(run, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["label", "p_a", "p_b"], [("a", 0.6, 0.4)])
    assert_input_error(run("score", path, "--top-k", "0"), "--top-k 0", "at least 1")
    assert_input_error(run("score", path, "--min", "top_k_accuracy=0.5"), "needs --top-k")


def test_a_new_metric_is_one_row_of_the_table(monkeypatch, run_json, tmp_path):
    """What adding a metric takes: a kernel and a row of metrics.METRICS. Score, its groups, the
    gates, the JSON and compare then have it, with no other change."""
    from nllcli import metrics

    def mean_confidence(pred, labels, targets, settings):  # the kernel: per-sample top probability
        return pred.probs().max(axis=1)

    row = metrics.Metric("confidence", ("score",), lambda s, job: s.mean("confidence"), quantity=mean_confidence,
                         paired=lambda scored: scored.summed["confidence"], in_groups=True)
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, row))
    df, q, y = frame(31, n=300, weighted=True)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    w = df["w"].to_numpy()
    expected = float(np.sum(w * q.max(axis=1)) / np.sum(w))
    code, data, err = run_json("score", path, "--weight", "w", "--by", "group", "--min", "confidence=0.99")
    assert code == 1 and "gate failed: confidence" in err
    assert data["metrics"]["confidence"] == pytest.approx(expected, rel=1e-12)
    for group in data["groups"]:
        rows = (df["group"] == group["by"]["group"]).to_numpy()
        assert group["metrics"]["confidence"] == pytest.approx(
            np.sum(w[rows] * q[rows].max(axis=1)) / np.sum(w[rows]), rel=1e-12)
    report = compare(df, df, weight="w", resamples=50)
    row = next(r for r in report.comparison if r["metric"] == "confidence")
    assert row["base"] == row["new"] == pytest.approx(expected, rel=1e-12) and row["delta"] == 0.0
