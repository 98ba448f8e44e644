"""Calibration estimators beside ECE/MCE: equal-mass bins (ece_mass, --bins-kind mass), classwise ECE,
L2 and debiased L2 ECE, and the Brier decomposition, against plain numpy references written from the
definitions, merged across partitions, and through the CLI (JSON, table, gates, groups, compare)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import nllcli
from helpers import assert_input_error
from nllcli import compare, losses
from nllcli.engine import Partition, score_partition
from nllcli.plan import plan_score
from nllcli.readers import Chunk
from nllcli.report import build_report
from nllcli.summary import State, Summary, confidence_bins

CLASSES = ["a", "b", "c", "d"]
NEW = ["ece_mass", "classwise_ece", "ece_l2", "ece_l2_debiased", "brier_reliability", "brier_resolution",
       "brier_uncertainty"]


def model(seed: int, n: int, k: int = len(CLASSES), sharpness: float = 2.0):
    """Probabilities, labels drawn from a tempered version of them (so the model is miscalibrated)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, sharpness, (n, k))
    q = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    truth = np.exp(z / 1.6) / np.exp(z / 1.6).sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > truth.cumsum(axis=1)).sum(axis=1).clip(0, k - 1)
    return q, y


def frame(q: np.ndarray, y: np.ndarray, **columns) -> pd.DataFrame:
    df = pd.DataFrame({f"p_{c}": q[:, j] for j, c in enumerate(CLASSES[: q.shape[1]])})
    df["label"] = np.array(CLASSES)[y]
    for name, values in columns.items():
        df[name] = values
    return df


# -- plain numpy references, from the definitions ----------------------------------------------


def mass_bins_reference(conf: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass bin of each row: floor(B * W(confidence < c) / W), rows of equal confidence together."""
    values, inverse = np.unique(conf, return_inverse=True)
    below = np.concatenate([[0.0], np.cumsum(np.bincount(inverse, weights=w))[:-1]])
    return np.minimum(np.floor(n_bins * below[inverse] / w.sum()).astype(int), n_bins - 1)


def binned_top_label(conf, correct, w, bins, n_bins):
    weight = np.bincount(bins, weights=w, minlength=n_bins)
    return (weight, np.bincount(bins, weights=w * w, minlength=n_bins),
            np.bincount(bins, weights=w * conf, minlength=n_bins),
            np.bincount(bins, weights=w * correct, minlength=n_bins))


def ece_mce_reference(conf, correct, w, bins, n_bins):
    weight, _, c, a = binned_top_label(conf, correct, w, bins, n_bins)
    filled = weight > 0
    gaps = np.abs(a[filled] - c[filled]) / weight[filled]
    return float(np.sum(weight[filled] * gaps) / w.sum()), float(gaps.max())


def width_bins_reference(p: np.ndarray, n_bins: int) -> np.ndarray:
    """(e_b, e_b+1] with e = b / B, 0 in the first bin: Kumar et al.'s get_equal_prob_bins + searchsorted."""
    edges = np.array([i / n_bins for i in range(1, n_bins + 1)])
    return np.minimum(np.searchsorted(edges, p, side="left"), n_bins - 1)


def kumar_plugin_ce(p: np.ndarray, y: np.ndarray, bins: np.ndarray, n_bins: int, power: int) -> float:
    """calibration.utils.plugin_ce (p-lambda/verified_calibration) on one binned 1-d problem."""
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - y[inside].mean()) ** power
    return total ** (1.0 / power)


def kumar_unbiased_l2_ce(p: np.ndarray, y: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """calibration.utils.unbiased_l2_ce: each bin's squared gap less mean_label (1 - mean_label) / (n - 1),
    bins of fewer than 2 rows counting 0, then sqrt(max(0, .))."""
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        n = int(inside.sum())
        if n >= 2:
            label = y[inside].mean()
            total += n / len(p) * ((p[inside].mean() - label) ** 2 - label * (1 - label) / (n - 1))
    return max(total, 0.0) ** 0.5


def summary_of(q, y, w=None, n_bins=15, targets=None) -> Summary:
    conf = q.max(axis=1)
    correct = q.argmax(axis=1) == y
    return Summary.of_batch({"nll": np.zeros(len(y))}, q.shape[1], w, y, correct, confidence=conf, n_bins=n_bins,
                            probs=q, targets=targets)


def top_label(conf, correct, w=None, n_bins=15) -> Summary:
    """The Summary of rows known only by their top-label confidence and whether they are right."""
    return Summary.of_batch({"nll": np.zeros(len(conf))}, 2, w, np.zeros(len(conf), np.intp), correct,
                            confidence=conf, n_bins=n_bins)


# -- equal-mass bins -------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_equal_mass_bins_are_exact_at_fine_edges_with_ties(n_bins):
    """Confidences at fine-bin edges (each the top of its bin), many rows per value: the fine
    histogram's equal-mass bins are those of the exact rule, row for row."""
    rng = np.random.default_rng(n_bins)
    edges = losses.FINE_EDGES[1:]
    values = rng.choice(edges[edges >= 0.5], 40, replace=False)
    values[:3] = [0.5, edges[-1], edges[-2]]  # an edge itself, 1.0, and the one just below
    conf = rng.choice(values, 3000)  # ties: 3,000 rows on 40 values
    w = rng.choice([0.0, 1.0, 2.0, 3.0], 3000)  # integer weights: the cumulative mass is exact
    correct = rng.random(3000) < conf
    s = top_label(conf, correct, w, n_bins)
    bins = mass_bins_reference(conf, w, n_bins)
    expected = ece_mce_reference(conf, correct, w, bins, n_bins)
    assert s.calibration_errors("mass") == pytest.approx(expected, rel=1e-12, abs=1e-13)
    weight, _, confidence, hits, lower, upper = s.top_label_bins("mass")
    ref_weight, _, ref_conf, ref_hits = binned_top_label(conf, correct, w, bins, n_bins)
    kept = ref_weight > 0
    np.testing.assert_allclose(weight, ref_weight[kept], rtol=1e-12)
    np.testing.assert_allclose(confidence, ref_conf[kept], rtol=1e-12)
    np.testing.assert_allclose(hits, ref_hits[kept], rtol=1e-12)
    assert np.all(lower <= upper)
    for b, lo, hi in zip(np.flatnonzero(kept), lower, upper):  # every row of a bin lies in its range
        inside = conf[(bins == b) & (w > 0)]
        assert inside.size == 0 or (lo <= inside.min() and inside.max() <= hi)


def test_equal_mass_matches_the_textbook_split_when_rows_are_distinct():
    """Distinct confidences and B dividing n: the exact rule is np.array_split of the sorted rows;
    the fine histogram's bins are within the stated bound of it."""
    rng = np.random.default_rng(5)
    n, n_bins = 6000, 15
    conf = 1 - rng.beta(0.6, 8, n) * 0.9  # crowded near 1, like an overconfident model
    correct = rng.random(n) < conf - 0.05
    w = np.ones(n)
    order = np.argsort(conf)
    textbook = np.empty(n, int)
    for b, part in enumerate(np.array_split(order, n_bins)):
        textbook[part] = b
    np.testing.assert_array_equal(mass_bins_reference(conf, w, n_bins), textbook)
    exact = ece_mce_reference(conf, correct, w, textbook, n_bins)[0]
    s = top_label(conf, correct, None, n_bins)
    heaviest_fine_bin = s.fine_weight.max()
    bound = 2 * (n_bins - 1) * heaviest_fine_bin / n  # each cut moves at most one fine bin's rows
    assert abs(s.calibration_errors("mass")[0] - exact) <= bound
    weights = s.top_label_bins("mass")[0]
    assert len(weights) == n_bins and np.all(np.abs(weights - n / n_bins) <= heaviest_fine_bin)


def test_a_tie_heavier_than_a_bin_leaves_bins_empty():
    conf = np.r_[np.full(900, 1.0), np.linspace(0.4, 0.9, 100)]
    correct = np.arange(1000) % 3 > 0
    s = top_label(conf, correct, None, 10)
    weights = s.top_label_bins("mass")[0]
    assert weights.sum() == 1000 and weights.max() == 900 and len(weights) == 2
    assert s.calibration_errors("mass") == pytest.approx(
        ece_mce_reference(conf, correct, np.ones(1000), mass_bins_reference(conf, np.ones(1000), 10), 10), rel=1e-12)


def test_fine_bins_close_on_the_right():
    edges = losses.FINE_EDGES
    assert edges[0] == 0 and edges[-1] == 1 and np.all(np.diff(edges) > 0) and losses.FINE_BINS == 2048
    at = np.array([0.0, edges[1], np.nextafter(edges[1], 2), edges[-2], 1.0, 1.00001])
    np.testing.assert_array_equal(losses.fine_bins(at), [0, 0, 1, losses.FINE_BINS - 2, losses.FINE_BINS - 1,
                                                         losses.FINE_BINS - 1])


def test_bins_kind_mass_moves_ece_mce_and_the_table_not_the_default():
    q, y = model(1, 3000)
    df = frame(q, y)
    width, mass = nllcli.score(df), nllcli.score(df, bins_kind="mass")
    conf, correct = q.max(axis=1), q.argmax(axis=1) == y
    ones = np.ones(len(y))
    assert width.metrics["ece"] == pytest.approx(
        ece_mce_reference(conf, correct, ones, confidence_bins(conf, 15), 15)[0], rel=1e-12)
    assert mass.metrics["ece"] == mass.metrics["ece_mass"] == width.metrics["ece_mass"]
    mass_bins = mass_bins_reference(conf, ones, 15)
    fine = losses.fine_bins(conf)
    approx_bins = losses.mass_groups(np.bincount(fine, minlength=losses.FINE_BINS).astype(float), 15)[fine]
    assert mass.metrics["mce"] == pytest.approx(ece_mce_reference(conf, correct, ones, approx_bins, 15)[1], rel=1e-12)
    assert abs(mass.metrics["ece"] - ece_mce_reference(conf, correct, ones, mass_bins, 15)[0]) < 0.01
    assert mass.metrics["ece_l2"] != width.metrics["ece_l2"]
    rows = mass.to_dict()["calibration"]
    assert mass.to_dict()["bins_kind"] == "mass" and len(rows) == 15
    assert sum(r["weight"] for r in rows) == len(y)
    assert all(abs(r["weight"] - 200) < 60 for r in rows)
    assert len(width.calibration) == 15 and width.to_dict()["bins_kind"] == "width"


# -- classwise and L2 ECE -----------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_classwise_ece_against_its_definition_and_kumar_marginal(n_bins):
    q, y = model(2, 2500)
    q[:5, 0] = 0.0  # probabilities exactly 0 (the first bin) and 1 (the last)
    q[5] = [1.0, 0.0, 0.0, 0.0]
    q[:5] /= q[:5].sum(axis=1, keepdims=True)
    k = q.shape[1]
    # definition: (1 / K) sum_k sum_b |sum 1[y = k] - sum q_k| / n over equal-width bins of q_k
    expected = 0.0
    for j in range(k):
        bins = confidence_bins(q[:, j], n_bins)
        for b in range(n_bins):
            inside = bins == b
            expected += abs(np.sum(y[inside] == j) - q[inside, j].sum()) / len(y)
    expected /= k
    s = summary_of(q, y, n_bins=n_bins)
    assert s.classwise_calibration_error() == pytest.approx(expected, rel=1e-12)
    # Kumar et al.'s calibration.utils.get_ece(probs, labels, mode="marginal"): the mean of each class's ECE
    kumar = np.mean([kumar_plugin_ce(q[:, j], (y == j).astype(float), width_bins_reference(q[:, j], n_bins),
                                     n_bins, 1) for j in range(k)])
    assert s.classwise_calibration_error() == pytest.approx(kumar, rel=1e-10)


def test_classwise_ece_weighted():
    q, y = model(3, 800)
    w = np.random.default_rng(3).uniform(0, 2, len(y))
    expected = np.mean([sum(abs(np.sum(w[(b := confidence_bins(q[:, j], 15)) == c] * (y[b == c] == j))
                                - np.sum(w[b == c] * q[b == c, j])) for c in range(15)) / w.sum()
                        for j in range(4)])
    assert summary_of(q, y, w).classwise_calibration_error() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", ["width", "mass"])
def test_l2_and_debiased_against_kumar(kind):
    q, y = model(4, 3000)
    conf, correct = q.max(axis=1), (q.argmax(axis=1) == y).astype(float)
    ones = np.ones(len(y))
    bins = width_bins_reference(conf, 15) if kind == "width" else mass_bins_reference(conf, ones, 15)
    s = summary_of(q, y)
    if kind == "mass":  # the approximation of the fine histogram, as stated: compare with its own bins
        fine = losses.fine_bins(conf)
        bins = losses.mass_groups(np.bincount(fine, minlength=losses.FINE_BINS).astype(float), 15)[fine]
    assert s.l2_calibration_error(kind) == pytest.approx(kumar_plugin_ce(conf, correct, bins, 15, 2), rel=1e-10)
    assert s.l2_calibration_error(kind, debiased=True) == pytest.approx(
        kumar_unbiased_l2_ce(conf, correct, bins, 15), rel=1e-10)
    assert s.l2_calibration_error(kind, debiased=True) < s.l2_calibration_error(kind)


def test_debiased_is_zero_for_a_calibrated_model_far_more_often_than_plain():
    """Labels drawn from the model's own probabilities: the plain estimate is biased upwards."""
    rng = np.random.default_rng(8)
    plain, debiased = [], []
    for _ in range(20):
        conf = rng.uniform(0.5, 1, 400)
        correct = rng.random(400) < conf
        s = top_label(conf, correct, None, 15)
        plain.append(s.l2_calibration_error())
        debiased.append(s.l2_calibration_error(debiased=True))
    assert np.mean(debiased) < 0.5 * np.mean(plain)


def test_debiased_uses_the_effective_count_with_weights():
    conf = np.array([0.9, 0.9, 0.8, 0.8, 0.7])
    correct = np.array([1, 0, 1, 1, 0], bool)
    w = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    s = top_label(conf, correct, w, 10)
    total = 0.0
    for b in np.unique(confidence_bins(conf, 10)):
        inside = confidence_bins(conf, 10) == b
        wb = w[inside]
        acc, c = np.sum(wb * correct[inside]) / wb.sum(), np.sum(wb * conf[inside]) / wb.sum()
        n_eff = wb.sum() ** 2 / np.sum(wb ** 2)
        total += wb.sum() / w.sum() * ((acc - c) ** 2 - acc * (1 - acc) / (n_eff - 1) if n_eff >= 2 else 0.0)
    assert s.l2_calibration_error(debiased=True) == pytest.approx(math.sqrt(max(total, 0)), rel=1e-12)


# -- the Brier decomposition ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["hard", "weighted", "soft", "binary", "one bin"])
def test_brier_identity_is_exact(case):
    q, y = model(6, 4000, k=2 if case == "binary" else 4)
    w = np.random.default_rng(6).choice([0.0, 0.5, 1.0, 3.0], len(y)) if case == "weighted" else None
    t = np.random.default_rng(7).dirichlet(np.ones(4), len(y)) if case == "soft" else None
    s = summary_of(q, y, w, n_bins=1 if case == "one bin" else 15, targets=t)
    outcome = t if t is not None else np.eye(q.shape[1])[y]
    weights = np.ones(len(y)) if w is None else w
    brier = np.sum(weights * ((q - outcome) ** 2).sum(axis=1)) / weights.sum()
    rel, res, unc = s.brier_decomposition()
    assert rel - res + unc == pytest.approx(brier, rel=1e-12, abs=1e-14)
    # uncertainty: the variance of the outcomes; resolution: Murphy's term on the classwise bins
    base = np.sum(weights[:, None] * outcome, axis=0) / weights.sum()
    assert unc == pytest.approx(np.sum(np.sum(weights[:, None] * outcome ** 2, axis=0) / weights.sum() - base ** 2),
                                rel=1e-12)
    expected_res = 0.0
    for j in range(q.shape[1]):
        bins = confidence_bins(q[:, j], s.class_bins.shape[2])
        for b in np.unique(bins):
            inside = bins == b
            wb = weights[inside]
            if wb.sum() > 0:
                expected_res += wb.sum() * (np.sum(wb * outcome[inside, j]) / wb.sum() - base[j]) ** 2
    assert res == pytest.approx(expected_res / weights.sum(), rel=1e-10, abs=1e-15)
    if case == "one bin":
        assert res == pytest.approx(0, abs=1e-15)  # one bin per class: no resolution


def test_brier_decomposition_of_forecasts_constant_within_bins_is_murphys():
    """When every forecast of a bin is the same, the within-bin terms vanish: reliability is
    Murphy's sum_b (W_b / W) (qbar - ybar)^2."""
    rng = np.random.default_rng(9)
    levels = np.array([[0.05, 0.95], [0.35, 0.65], [0.72, 0.28]])
    q = levels[rng.integers(0, 3, 900)]
    y = (rng.random(900) < q[:, 1] * 0.8).astype(np.intp)
    rel = summary_of(q, y, n_bins=10).brier_decomposition()[0]
    murphy = 0.0
    for j in range(2):
        for value in np.unique(q[:, j]):
            inside = q[:, j] == value
            murphy += inside.sum() * (value - np.mean(y[inside] == j)) ** 2
    assert rel == pytest.approx(murphy / 900, rel=1e-12)


def test_report_metrics_and_identity_through_score():
    q, y = model(10, 2000)
    report = nllcli.score(frame(q, y, w=np.random.default_rng(1).uniform(0, 2, 2000)), weight="w")
    m = report.metrics
    assert set(NEW) <= set(m)
    assert m["brier_reliability"] - m["brier_resolution"] + m["brier_uncertainty"] == pytest.approx(
        m["brier"], rel=1e-12)


def test_soft_targets_without_labels_have_the_label_free_estimators():
    q, y = model(11, 500)
    t = np.random.default_rng(11).dirichlet(np.ones(4), 500)
    preds = frame(q, y).drop(columns="label").assign(id=range(500))
    targets = pd.DataFrame({f"p_{c}": t[:, j] for j, c in enumerate(CLASSES)}).assign(id=range(500))
    m = nllcli.score(preds, targets=targets).metrics
    assert "ece_mass" not in m and "ece_l2" not in m  # top-label estimators need the label
    assert m["brier_reliability"] - m["brier_resolution"] + m["brier_uncertainty"] == pytest.approx(m["brier"],
                                                                                                    rel=1e-12)
    expected = np.mean([sum(abs(t[(b := confidence_bins(q[:, j], 15)) == c, j].sum() - q[b == c, j].sum())
                            for c in range(15)) / 500 for j in range(4)])
    assert m["classwise_ece"] == pytest.approx(expected, rel=1e-12)


# -- merging ----------------------------------------------------------------------------------------


def _table(seed: int, n: int) -> pa.Table:
    q, y = model(seed, n)
    rng = np.random.default_rng(seed)
    df = frame(q, y, camera=rng.choice(["left", "right", "top"], n), w=rng.choice([0.0, 0.5, 1.0, 2.0], n))
    df.loc[rng.random(n) < 0.1, "label"] = "-100"
    return pa.Table.from_pandas(df, preserve_index=False)


@pytest.mark.parametrize("parts", [1, 2, 7])
@pytest.mark.parametrize("options", [{}, {"bins_kind": "mass"}, {"class_weight": "a=2,c=0.5"}])
def test_partitions_merge_exactly(parts, options):
    table = _table(parts, 1500)
    job = plan_score(table, weight="w", by=["camera"], ignore_label="-100", **options)
    whole = build_report(job, score_partition(job, Partition(Chunk(table.to_batches()[0], "t", 1), 0)))
    batch = table.combine_chunks().to_batches()[0]
    cuts = np.linspace(0, batch.num_rows, parts + 1).astype(int)
    total = State()
    for start, end in reversed(list(zip(cuts[:-1], cuts[1:]))):
        chunk = Chunk(batch.slice(start, end - start), "t", int(start) + 1)
        total = total + score_partition(job, Partition(chunk, int(start)))
    merged = build_report(job, total)
    assert merged.ignored == whole.ignored > 0
    for name in ["ece", "mce", *NEW]:
        assert merged.metrics[name] == pytest.approx(whole.metrics[name], rel=1e-12, abs=1e-15), name
        for a, b in zip(merged.groups, whole.groups):
            assert a["metrics"][name] == pytest.approx(b["metrics"][name], rel=1e-12, abs=1e-15), name
    assert len(merged.calibration) == len(whole.calibration)
    for a, b in zip(merged.calibration, whole.calibration):
        assert a["bin"] == b["bin"] and a["weight"] == pytest.approx(b["weight"], rel=1e-12)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_json_table_gates_and_groups(run, run_json, tmp_path):
    q, y = model(12, 600)
    path = tmp_path / "preds.csv"
    frame(q, y, camera=np.random.default_rng(0).choice(["l", "r"], 600)).to_csv(path)  # with pandas' index
    code, data, err = run_json("score", path, "--by", "camera", "--max", "ece_mass=0.001",
                               "--min", "brier_resolution=0")
    assert code == 1 and "gate failed: ece_mass" in err
    assert set(NEW) <= set(data["metrics"]) and all(set(NEW) <= set(g["metrics"]) for g in data["groups"])
    assert [g["passed"] for g in data["gates"]] == [False, True]
    report = nllcli.score(frame(q, y))
    assert data["metrics"]["classwise_ece"] == pytest.approx(report.metrics["classwise_ece"], rel=1e-12)
    result = run("score", path, "--bins-kind", "mass")
    assert result.exit_code == 0, result.stderr
    assert all(any(line.startswith(name + " ") for line in result.stdout.splitlines()) for name in NEW)
    code, data, _ = run_json("score", path, "--bins-kind", "mass")
    assert data["metrics"]["ece"] == data["metrics"]["ece_mass"] and data["bins_kind"] == "mass"


def test_gates_on_names_with_digits(run_json, tmp_path):
    path = tmp_path / "p.csv"
    frame(*model(14, 300)).to_csv(path)
    code, data, err = run_json("score", path, "--max", "ece_l2_debiased=1e-9", "--max", "ece_l2=1", "--min",
                               "brier_resolution=0")
    assert code == 1, err
    assert [(g["metric"], g["passed"]) for g in data["gates"]] == [("ece_l2_debiased", False), ("ece_l2", True),
                                                                    ("brier_resolution", True)]
    assert "gate failed: ece_l2_debiased" in err


def test_cli_bad_bins_kind(run, tmp_path):
    path = tmp_path / "p.csv"
    frame(*model(0, 20)).to_csv(path, index=False)
    result = run("score", path, "--bins-kind", "quantile")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert_input_error(run("score", path, "--max", "ece_masss=0.1"), "unknown metric")


def test_compare_reports_them_for_the_new_model():
    q, y = model(13, 400)
    base, new = frame(q, y), frame(np.sqrt(q) / np.sqrt(q).sum(axis=1, keepdims=True), y)
    report = compare(base, new, resamples=50, bins_kind="mass")
    alone = nllcli.score(new, bins_kind="mass")
    for name in NEW:
        assert report.metrics[name] == pytest.approx(alone.metrics[name], rel=1e-12)


def test_pickled_and_empty_summaries_merge():
    """A State sent to a worker and back (Dask) and an empty Summary add like any other."""
    import pickle

    table = _table(3, 400)
    job = plan_score(table, weight="w", ignore_label="-100", bins_kind="mass")
    state = score_partition(job, Partition(Chunk(table.to_batches()[0], "t", 1), 0))
    again = pickle.loads(pickle.dumps(state))
    doubled = build_report(job, state + again)
    alone = build_report(job, state)
    for name in ["ece", *NEW]:  # every row twice: the same bins, means and shares (n_b - 1 aside)
        if name != "ece_l2_debiased":
            assert doubled.metrics[name] == pytest.approx(alone.metrics[name], rel=1e-12, abs=1e-15), name
    assert doubled.metrics["ece_l2_debiased"] >= alone.metrics["ece_l2_debiased"]  # less variance to remove
    assert doubled.ignored == 2 * alone.ignored
    empty = Summary.empty(state.summary.names, state.summary.n_classes)
    assert (empty + state.summary).classwise_calibration_error() == state.summary.classwise_calibration_error()


def test_too_many_class_cells_are_left_out_with_a_warning():
    rng = np.random.default_rng(15)
    q = rng.dirichlet(np.ones(200), 300)
    df = pd.DataFrame(q, columns=[f"p_{i}" for i in range(200)]).assign(label=rng.integers(0, 200, 300).astype(str))
    data = nllcli.score(df, bins=6000).to_dict()  # 1.2M cells > 2^20
    assert data["metrics"]["classwise_ece"] is None and data["metrics"]["brier_reliability"] is None
    assert any("(class, bin) cells" in w for w in data["warnings"])
    assert data["metrics"]["ece_mass"] is not None
    assert nllcli.score(df, bins=5000).metrics["classwise_ece"] > 0  # 1.0M cells: kept


def test_plot_with_equal_mass_bins(run, tmp_path):
    pytest.importorskip("matplotlib")
    path, image = tmp_path / "p.csv", tmp_path / "r.png"
    frame(*model(16, 500)).to_csv(path)
    result = run("plot", path, "--bins-kind", "mass", "-o", image)
    assert result.exit_code == 0, result.stderr
    assert image.stat().st_size > 10_000
