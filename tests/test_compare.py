"""`nll compare BASE NEW`: paired deltas, the paired bootstrap, pairing rules, gates.

The bootstrap is checked against a plain reference loop (same seed, same draws), on the exact
path and on the strided-block path (EXACT_ROWS monkeypatched small), weighted and unweighted;
its coverage is checked by simulation. End to end, compare agrees with two separate `score`
runs, with the reference bootstrap on per-sample differences computed here, and with itself
when BASE and NEW are swapped or NEW's rows are shuffled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nllcli
from nllcli import comparison as C
from nllcli.errors import InputError, UsageError

from helpers import loads_strict

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
BASE = SAMPLES / "robot_tools.csv"
NEW = SAMPLES / "robot_tools_model_b.csv"
TARGETS = SAMPLES / "robot_tools_annotators.csv"
CLASSES = ["a", "b", "c"]
METRICS = ["nll", "accuracy", "brier"]


# -- references ------------------------------------------------------------------------------


def reference_bootstrap(deltas: dict, weights, resamples: int, confidence: float, seed: int) -> dict:
    """The documented procedure, one replicate at a time: replicate r resamples rows with the r-th
    draw of default_rng(seed).integers(0, n, n) and takes the weighted mean of the differences."""
    weights = np.asarray(weights, dtype=float)
    n = len(weights)
    rng = np.random.default_rng(seed)
    replicates = {m: [] for m in deltas}
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        w = weights[rows]
        for m, d in deltas.items():
            replicates[m].append(float(np.sum(w * np.asarray(d)[rows]) / np.sum(w)))
    tail = (1 - confidence) / 2
    return {m: tuple(float(x) for x in np.quantile(np.array(r), [tail, 1 - tail])) for m, r in replicates.items()}


def reference_block_bootstrap(deltas: dict, weights, resamples: int, confidence: float, seed: int,
                              blocks: int) -> dict:
    """Strided blocks: row i belongs to block i % blocks; a replicate resamples whole blocks with the
    r-th draw of default_rng(seed).integers(0, blocks, blocks)."""
    weights = [float(w) for w in weights]
    block_weight = [0.0] * blocks
    block_sum = {m: [0.0] * blocks for m in deltas}
    for i, w in enumerate(weights):  # a plain loop, on purpose
        block_weight[i % blocks] += w
        for m, d in deltas.items():
            block_sum[m][i % blocks] += w * float(d[i])
    rng = np.random.default_rng(seed)
    replicates = {m: [] for m in deltas}
    for _ in range(resamples):
        picked = rng.integers(0, blocks, blocks)
        total = sum(block_weight[b] for b in picked)
        for m in deltas:
            replicates[m].append(sum(block_sum[m][b] for b in picked) / total)
    tail = (1 - confidence) / 2
    return {m: tuple(float(x) for x in np.quantile(np.array(r), [tail, 1 - tail])) for m, r in replicates.items()}


def assert_intervals_equal(got: dict, expected: dict, rel=1e-12):
    assert set(got) == set(expected)
    for m in expected:
        assert got[m] == pytest.approx(expected[m], rel=rel, abs=1e-14), m


def synthetic_deltas(n: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    loss = rng.normal(0.05, 1.0, n)
    correct = rng.integers(-1, 2, n).astype(float)  # -1, 0, 1 like a difference of 0/1 correctness
    return {"nll": loss, "accuracy": correct, "brier": rng.exponential(0.3, n) - 0.25}, rng.uniform(0.1, 3.0, n)


# -- synthetic prediction files ----------------------------------------------------------------


def predictions(n: int, seed: int, sharpness: float, labels=None, weights=None, ids=True) -> pd.DataFrame:
    """Three-class predictions; a larger sharpness puts more mass on the true class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n) if labels is None else np.asarray(labels)
    logits = rng.normal(0.0, 1.0, (n, 3))
    logits[np.arange(n), labels] += sharpness
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"label": [CLASSES[i] for i in labels]})
    if ids:
        frame.insert(0, "id", [f"s{i:04d}" for i in range(n)])
    for j, c in enumerate(CLASSES):
        frame[f"p_{c}"] = p[:, j]
    if weights is not None:
        frame["w"] = weights
    return frame


def per_sample(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """nll, 0/1 correctness and Brier per row, computed here (no clipping happens in these files)."""
    p = frame[[f"p_{c}" for c in CLASSES]].to_numpy()
    y = np.array([CLASSES.index(v) for v in frame["label"]])
    onehot = np.eye(3)[y]
    with np.errstate(divide="ignore"):
        nll = -np.log(p[np.arange(len(y)), y])
    return {"nll": nll, "accuracy": (p.argmax(axis=1) == y).astype(float),
            "brier": ((p - onehot) ** 2).sum(axis=1)}


@pytest.fixture
def pair(tmp_path):
    """A base model and a slightly different new one on the same 400 samples (ids s0000..)."""
    n = 400
    labels = np.random.default_rng(7).integers(0, 3, n)
    base = predictions(n, 1, 1.5, labels)
    new = predictions(n, 2, 1.7, labels)
    base_path, new_path = tmp_path / "base.csv", tmp_path / "new.csv"
    base.to_csv(base_path, index=False)
    new.to_csv(new_path, index=False)
    return base, new, base_path, new_path


def assert_rows_equal(got: list, expected: list, rel=1e-12):
    """Two `comparison` lists equal: text and counts exactly, numbers within rel."""
    assert [r["metric"] for r in got] == [r["metric"] for r in expected]
    for a, b in zip(got, expected):
        assert set(a) == set(b)
        for field, value in b.items():
            if isinstance(value, float) or field == "ci":
                assert a[field] == pytest.approx(value, rel=rel, abs=1e-15), (b["metric"], field)
            else:
                assert a[field] == value, (b["metric"], field)


def rows_by(report, metric):
    return next(r for r in report.comparison if r["metric"] == metric)


# -- bootstrap against the reference -------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_bootstrap_exact_path_matches_reference(weighted):
    deltas, w = synthetic_deltas(257, seed=3)
    w = w if weighted else np.ones(257)
    got = C.bootstrap(deltas, w, 300, 0.9, 11)
    assert_intervals_equal(got, reference_bootstrap(deltas, w, 300, 0.9, 11))


def test_bootstrap_exact_path_with_several_draws_matches_reference():
    """At EXACT_ROWS rows the replicates are drawn in several batches; the draws must still be the
    r-th draws of integers(0, n, n)."""
    n = C.EXACT_ROWS
    deltas, w = synthetic_deltas(n, seed=4)
    deltas = {"nll": deltas["nll"]}
    resamples = 4_000_000 // n * 2 + 37  # more than two batches, the last one partial
    got = C.bootstrap(deltas, w, resamples, 0.95, 5)
    assert_intervals_equal(got, reference_bootstrap(deltas, w, resamples, 0.95, 5))


@pytest.mark.parametrize("weighted", [False, True])
def test_bootstrap_block_path_matches_reference(monkeypatch, weighted):
    monkeypatch.setattr(C, "EXACT_ROWS", 40)
    deltas, w = synthetic_deltas(1003, seed=5)
    w = w if weighted else np.ones(1003)
    got = C.bootstrap(deltas, w, 250, 0.95, 17)
    assert_intervals_equal(got, reference_block_bootstrap(deltas, w, 250, 0.95, 17, blocks=40))
    # and it is not the row-level bootstrap
    assert got["nll"] != pytest.approx(reference_bootstrap(deltas, w, 250, 0.95, 17)["nll"], rel=1e-9)


def test_bootstrap_switches_to_blocks_above_exact_rows(monkeypatch):
    monkeypatch.setattr(C, "EXACT_ROWS", 50)
    deltas, w = synthetic_deltas(50, seed=6)
    assert_intervals_equal(C.bootstrap(deltas, w, 200, 0.95, 1), reference_bootstrap(deltas, w, 200, 0.95, 1))
    deltas, w = synthetic_deltas(51, seed=6)
    assert_intervals_equal(C.bootstrap(deltas, w, 200, 0.95, 1),
                           reference_block_bootstrap(deltas, w, 200, 0.95, 1, blocks=50))


def test_bootstrap_resamples_the_same_rows_for_every_metric():
    rng = np.random.default_rng(8)
    d = rng.normal(size=300)
    got = C.bootstrap({"x": d, "twice": 2 * d, "shifted": d + 1.0}, np.ones(300), 400, 0.95, 3)
    assert got["twice"] == pytest.approx((2 * got["x"][0], 2 * got["x"][1]), rel=1e-12)
    assert got["shifted"] == pytest.approx((got["x"][0] + 1, got["x"][1] + 1), rel=1e-12)


def test_bootstrap_same_seed_same_interval_other_seed_other_interval():
    deltas, w = synthetic_deltas(300, seed=9)
    first = C.bootstrap(deltas, w, 500, 0.95, 42)
    assert C.bootstrap(deltas, w, 500, 0.95, 42) == first  # bit for bit
    other = C.bootstrap(deltas, w, 500, 0.95, 43)
    assert other["nll"] != first["nll"]
    assert other["brier"] != first["brier"]


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_confidence():
    deltas, w = synthetic_deltas(300, seed=10)
    mean = float(np.sum(w * deltas["nll"]) / np.sum(w))
    wide = C.bootstrap(deltas, w, 800, 0.99, 0)["nll"]
    narrow = C.bootstrap(deltas, w, 800, 0.5, 0)["nll"]
    assert wide[0] < narrow[0] < mean < narrow[1] < wide[1]


@pytest.mark.parametrize("weighted", [False, True])
def test_bootstrap_coverage_simulation(weighted):
    """The 95 % interval covers the true mean difference in about 95 % of 300 synthetic trials."""
    rng = np.random.default_rng(20240601)
    true_delta, n, trials = 0.3, 200, 300
    covered = 0
    for trial in range(trials):
        d = rng.normal(true_delta, 1.0, n)
        w = rng.uniform(0.5, 2.0, n) if weighted else np.ones(n)
        low, high = C.bootstrap({"nll": d}, w, 400, 0.95, trial)["nll"]
        covered += low <= true_delta <= high
    assert abs(covered / trials - 0.95) <= 0.03, covered / trials


# -- compare end to end ----------------------------------------------------------------------------


def test_cli_json_matches_library_and_two_score_runs(run_json):
    code, data, err = run_json("compare", BASE, NEW)
    assert code == 0, err
    base, new = nllcli.score(str(BASE)), nllcli.score(str(NEW))
    assert [r["metric"] for r in data["comparison"]] == METRICS
    for row in data["comparison"]:
        m = row["metric"]
        assert row["base"] == pytest.approx(base.metrics[m], rel=1e-12)
        assert row["new"] == pytest.approx(new.metrics[m], rel=1e-12)
        assert row["delta"] == pytest.approx(new.metrics[m] - base.metrics[m], rel=1e-9, abs=1e-15)
        assert row["ci"][0] <= row["ci"][1]
        assert (row["confidence"], row["resamples"], row["seed"]) == (0.95, 2000, 0)
        assert 0 <= row["new_better_share"] <= 1
    assert data["regression"] is None
    assert data["command"] == "compare"
    assert data["inputs"] == {"base": [str(BASE)], "new": [str(NEW)]}
    assert data["metrics"]["nll"] == pytest.approx(new.metrics["nll"], rel=1e-12)  # the new model's report
    library = C.compare(str(BASE), str(NEW)).to_dict()
    assert library["comparison"] == data["comparison"]


def test_compare_accepts_dataframes(pair):
    base, new, base_path, new_path = pair
    from_frames = C.compare(base, new, resamples=300)
    from_paths = C.compare(str(base_path), str(new_path), resamples=300)
    assert_rows_equal(from_frames.comparison, from_paths.comparison)


@pytest.mark.parametrize("weighted", [False, True])
def test_values_and_interval_match_per_sample_reference(tmp_path, weighted):
    n = 300
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 3, n)
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    base, new = predictions(n, 3, 1.2, labels, w), predictions(n, 4, 1.4, labels, w)
    options = {"weight": "w"} if weighted else {}
    report = C.compare(base, new, resamples=500, seed=123, confidence=0.9, **options)
    weights = w if weighted else np.ones(n)
    b, nw = per_sample(base), per_sample(new)
    deltas = {m: nw[m] - b[m] for m in METRICS}
    expected = reference_bootstrap(deltas, weights, 500, 0.9, 123)
    for m in METRICS:
        row = rows_by(report, m)
        mean = lambda x: float(np.sum(weights * x) / np.sum(weights))  # noqa: E731
        assert row["base"] == pytest.approx(mean(b[m]), rel=1e-12)
        assert row["new"] == pytest.approx(mean(nw[m]), rel=1e-12)
        assert row["delta"] == pytest.approx(mean(deltas[m]), rel=1e-9, abs=1e-15)
        assert row["ci"] == pytest.approx(list(expected[m]), rel=1e-9, abs=1e-15)
        better = deltas[m] > 0 if m == "accuracy" else deltas[m] < 0
        assert row["new_better_share"] == pytest.approx(mean(better.astype(float)), rel=1e-12)
        assert (row["confidence"], row["resamples"], row["seed"]) == (0.9, 500, 123)


def test_block_path_end_to_end(monkeypatch):
    monkeypatch.setattr(C, "EXACT_ROWS", 64)
    n = 500
    labels = np.random.default_rng(13).integers(0, 3, n)
    w = np.random.default_rng(14).uniform(0.5, 2.0, n)
    base, new = predictions(n, 5, 1.0, labels, w), predictions(n, 6, 1.3, labels, w)
    report = C.compare(base, new, weight="w", resamples=300, seed=9)
    b, nw = per_sample(base), per_sample(new)
    expected = reference_block_bootstrap({m: nw[m] - b[m] for m in METRICS}, w, 300, 0.95, 9, blocks=64)
    for m in METRICS:
        assert rows_by(report, m)["ci"] == pytest.approx(list(expected[m]), rel=1e-9, abs=1e-15)


def test_default_seed_repeats_exactly_and_seed_changes_interval(run):
    first = run("compare", BASE, NEW, "-f", "json")
    second = run("compare", BASE, NEW, "-f", "json")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout
    other = json.loads(run("compare", BASE, NEW, "-f", "json", "--seed", "5").stdout)
    first = json.loads(first.stdout)
    assert other["comparison"][0]["seed"] == 5
    assert other["comparison"][0]["delta"] == first["comparison"][0]["delta"]
    assert other["comparison"][0]["ci"] != first["comparison"][0]["ci"]


def test_resamples_and_confidence_options(run_json):
    code, data, err = run_json("compare", BASE, NEW, "--resamples", "300", "--confidence", "0.8", "--seed", "4")
    assert code == 0, err
    wide = C.compare(str(BASE), str(NEW), resamples=300, confidence=0.99, seed=4)
    for row in data["comparison"]:
        assert (row["confidence"], row["resamples"], row["seed"]) == (0.8, 300, 4)
        low, high = rows_by(wide, row["metric"])["ci"]
        assert low <= row["ci"][0] <= row["ci"][1] <= high


def test_swapping_base_and_new_negates_delta_and_mirrors_interval(pair):
    base, new, *_ = pair
    forward = C.compare(base, new, resamples=400, seed=2)
    backward = C.compare(new, base, resamples=400, seed=2)
    b, nw = per_sample(base), per_sample(new)
    for m in METRICS:
        f, r = rows_by(forward, m), rows_by(backward, m)
        assert r["base"] == f["new"] and r["new"] == f["base"]
        assert r["delta"] == pytest.approx(-f["delta"], rel=1e-12, abs=1e-15)
        assert r["ci"] == pytest.approx([-f["ci"][1], -f["ci"][0]], rel=1e-9, abs=1e-15)
        # new better when swapped = base strictly better in the forward direction
        d = nw[m] - b[m]
        base_better = d < 0 if m == "accuracy" else d > 0
        assert r["new_better_share"] == pytest.approx(base_better.mean(), rel=1e-12)


def test_key_pairing_of_aligned_rows_equals_position_pairing(pair):
    base, new, *_ = pair
    by_key = C.compare(base, new, resamples=400)
    by_position = C.compare(base.drop(columns="id"), new.drop(columns="id"), resamples=400)
    assert_rows_equal(by_key.comparison, by_position.comparison)


def test_key_pairing_with_shuffled_new_gives_the_same_metrics_and_deltas(pair):
    base, new, *_ = pair
    shuffled = new.sample(frac=1.0, random_state=3)
    aligned = C.compare(base.drop(columns="id"), new.drop(columns="id"), resamples=400)
    by_key = C.compare(base, shuffled, resamples=400)
    for a, b in zip(aligned.comparison, by_key.comparison):
        assert a["metric"] == b["metric"]
        for field in ("base", "new", "delta", "new_better_share"):
            assert b[field] == pytest.approx(a[field], rel=1e-9, abs=1e-15), (a["metric"], field)


def test_key_pairing_with_shuffled_new_gives_the_same_interval(pair):
    """The result must not depend on the row order of NEW: the paired differences are resampled
    in BASE's order, whatever order NEW's rows come in."""
    base, new, *_ = pair
    shuffled = new.sample(frac=1.0, random_state=3)
    aligned = C.compare(base.drop(columns="id"), new.drop(columns="id"), resamples=400)
    by_key = C.compare(base, shuffled, resamples=400)
    for a, b in zip(aligned.comparison, by_key.comparison):
        assert b["ci"] == pytest.approx(a["ci"], rel=1e-9, abs=1e-15), a["metric"]


def test_key_pairing_with_shuffled_sample_file_cli(run_json, tmp_path):
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(NEW).sample(frac=1.0, random_state=0).to_csv(shuffled, index=False)
    code, aligned, err = run_json("compare", BASE, NEW)
    assert code == 0, err
    code, by_key, err = run_json("compare", BASE, shuffled)
    assert code == 0, err
    for a, b in zip(aligned["comparison"], by_key["comparison"]):
        for field in ("base", "new", "delta", "new_better_share", "ci"):
            assert b[field] == pytest.approx(a[field], rel=1e-9, abs=1e-15), (a["metric"], field)


def test_class_columns_in_another_order(pair):
    base, new, *_ = pair
    reordered = new[["id", "label", "p_c", "p_a", "p_b"]]
    a = C.compare(base, new, resamples=300)
    b = C.compare(base, reordered, resamples=300)
    assert_rows_equal(b.comparison, a.comparison)


def test_base_units_convert_delta_and_interval(pair):
    base, new, *_ = pair
    nats = rows_by(C.compare(base, new, resamples=300), "nll")
    bits = rows_by(C.compare(base, new, resamples=300, base="2"), "nll")
    ln2 = math.log(2)
    assert bits["delta"] == pytest.approx(nats["delta"] / ln2, rel=1e-12)
    assert bits["ci"] == pytest.approx([nats["ci"][0] / ln2, nats["ci"][1] / ln2], rel=1e-12)
    assert bits["base"] == pytest.approx(nats["base"] / ln2, rel=1e-12)


def test_soft_targets_compare_kl_too(run_json):
    code, data, err = run_json("compare", BASE, NEW, "--targets", TARGETS)
    assert code == 0, err
    assert [r["metric"] for r in data["comparison"]] == ["nll", "kl", "accuracy", "brier"]
    base = nllcli.score(str(BASE), targets=str(TARGETS))
    new = nllcli.score(str(NEW), targets=str(TARGETS))
    rows = {r["metric"]: r for r in data["comparison"]}
    for m in ("nll", "kl", "accuracy", "brier"):
        assert rows[m]["base"] == pytest.approx(base.metrics[m], rel=1e-12)
        assert rows[m]["new"] == pytest.approx(new.metrics[m], rel=1e-12)
        assert rows[m]["delta"] == pytest.approx(new.metrics[m] - base.metrics[m], rel=1e-9)
    # same targets on both sides: the entropy cancels, so the kl and cross-entropy differences agree
    assert rows["kl"]["delta"] == pytest.approx(rows["nll"]["delta"], rel=1e-9)
    assert rows["kl"]["ci"] == pytest.approx(rows["nll"]["ci"], rel=1e-6)


# -- pairing errors --------------------------------------------------------------------------------


def test_label_disagreement_exits_2_naming_rows(run, tmp_path, pair):
    _, new, base_path, _ = pair
    changed = new.copy()
    for i in (4, 9):
        changed.loc[i, "label"] = CLASSES[(CLASSES.index(changed.loc[i, "label"]) + 1) % 3]
    path = tmp_path / "changed.csv"
    changed.to_csv(path, index=False)
    result = run("compare", base_path, path)
    assert result.exit_code == 2
    assert "labels disagree" in result.stderr
    assert "rows 5, 10" in result.stderr  # 1-based data rows
    assert "changed.csv" in result.stderr
    assert result.stdout == ""


def test_label_disagreement_by_position(run, tmp_path, pair):
    base, new, *_ = pair
    changed = new.drop(columns="id")
    changed.loc[0, "label"] = CLASSES[(CLASSES.index(changed.loc[0, "label"]) + 1) % 3]
    base.drop(columns="id").to_csv(tmp_path / "b.csv", index=False)
    changed.to_csv(tmp_path / "n.csv", index=False)
    result = run("compare", tmp_path / "b.csv", tmp_path / "n.csv")
    assert result.exit_code == 2
    assert "labels disagree" in result.stderr and "row 1" in result.stderr


@pytest.mark.parametrize("shorter", ["new", "base"])
def test_row_count_mismatch_by_position_exits_2(run, tmp_path, pair, shorter):
    base, new, *_ = pair
    base, new = base.drop(columns="id"), new.drop(columns="id")
    if shorter == "new":
        new = new.iloc[:-3]
    else:
        base = base.iloc[:-3]
    base.to_csv(tmp_path / "b.csv", index=False)
    new.to_csv(tmp_path / "n.csv", index=False)
    result = run("compare", tmp_path / "b.csv", tmp_path / "n.csv")
    assert result.exit_code == 2, result.stderr
    assert "row counts differ" in result.stderr


def test_key_only_in_one_file_pairs_by_position(pair):
    base, new, *_ = pair
    mixed = C.compare(base, new.drop(columns="id"), resamples=200)
    aligned = C.compare(base, new, resamples=200)
    assert_rows_equal(mixed.comparison, aligned.comparison)


def test_keys_missing_in_new_exit_2(run, tmp_path, pair):
    _, new, base_path, _ = pair
    new.drop(index=[10, 20]).to_csv(tmp_path / "n.csv", index=False)
    result = run("compare", base_path, tmp_path / "n.csv")
    assert result.exit_code == 2
    assert "with no row in" in result.stderr and "s0010" in result.stderr


def test_keys_missing_in_base_exit_2(run, tmp_path, pair):
    base, _, _, new_path = pair
    base.drop(index=[7]).to_csv(tmp_path / "b.csv", index=False)
    result = run("compare", tmp_path / "b.csv", new_path)
    assert result.exit_code == 2
    assert "with no row in" in result.stderr and "s0007" in result.stderr


def test_unknown_key_in_new_exit_2(run, tmp_path, pair):
    _, new, base_path, _ = pair
    changed = new.copy()
    changed.loc[3, "id"] = "zzz"
    changed.to_csv(tmp_path / "n.csv", index=False)
    result = run("compare", base_path, tmp_path / "n.csv")
    assert result.exit_code == 2
    assert "zzz" in result.stderr


def test_duplicate_keys_in_new_exit_2(run, tmp_path, pair):
    _, new, base_path, _ = pair
    changed = new.copy()
    same_label = changed.index[(changed["label"] == changed.loc[0, "label"])][1]
    changed.loc[same_label, "id"] = changed.loc[0, "id"]  # s0000 twice, labels agree
    changed.to_csv(tmp_path / "n.csv", index=False)
    result = run("compare", base_path, tmp_path / "n.csv")
    assert result.exit_code == 2
    assert "duplicate keys" in result.stderr and "s0000" in result.stderr


def test_duplicate_keys_in_base_exit_2(run, tmp_path, pair):
    base, _, _, new_path = pair
    changed = base.copy()
    changed.loc[5, "id"] = changed.loc[6, "id"]
    changed.to_csv(tmp_path / "b.csv", index=False)
    result = run("compare", tmp_path / "b.csv", new_path)
    assert result.exit_code == 2
    assert "duplicate keys" in result.stderr


def test_explicit_key_missing_in_one_file_exit_2(run, tmp_path, pair):
    base, _, _, new_path = pair
    base.rename(columns={"id": "ident"}).to_csv(tmp_path / "b.csv", index=False)
    result = run("compare", tmp_path / "b.csv", new_path, "--key", "id")
    assert result.exit_code == 2
    assert "'id'" in result.stderr


def test_weights_must_agree(pair):
    base, new, *_ = pair
    with pytest.raises(InputError, match="weights differ"):
        C.compare(base.assign(w=1.0), new.assign(w=2.0), weight="w", resamples=50)


# -- gates ---------------------------------------------------------------------------------------------


@pytest.fixture
def good_and_bad(tmp_path):
    n = 300
    labels = np.random.default_rng(21).integers(0, 3, n)
    good, bad = predictions(n, 22, 3.0, labels), predictions(n, 23, 0.5, labels)
    good.to_csv(tmp_path / "good.csv", index=False)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    return tmp_path / "good.csv", tmp_path / "bad.csv"


def test_fail_if_worse_with_a_clearly_worse_model_exits_1(run, run_json, good_and_bad):
    good, bad = good_and_bad
    result = run("compare", good, bad, "--fail-if-worse", "0")
    assert result.exit_code == 1
    assert "nll got worse" in result.stderr and "entirely above 0" in result.stderr
    assert "REGRESSION" in result.stdout
    code, data, err = run_json("compare", good, bad, "--fail-if-worse", "0.05")
    assert code == 1
    nll = data["comparison"][0]
    assert nll["delta"] > 0.05 and nll["ci"][0] > 0.05
    assert data["regression"] and "nll got worse" in data["regression"]
    assert data["regression"] in err


def test_fail_if_worse_with_a_better_model_exits_0(run_json, good_and_bad):
    good, bad = good_and_bad
    code, data, err = run_json("compare", bad, good, "--fail-if-worse", "0")
    assert code == 0, err
    assert data["regression"] is None
    assert data["comparison"][0]["delta"] < 0


def test_fail_if_worse_threshold_above_the_delta_exits_0(run_json, good_and_bad):
    good, bad = good_and_bad
    code, data, _ = run_json("compare", good, bad)
    delta = data["comparison"][0]["delta"]
    code, data, err = run_json("compare", good, bad, "--fail-if-worse", f"{delta + 0.01}")
    assert code == 0, err
    assert data["regression"] is None


def test_without_fail_if_worse_a_worse_model_exits_0(run_json, good_and_bad):
    good, bad = good_and_bad
    code, data, err = run_json("compare", good, bad)
    assert code == 0, err
    assert data["regression"] is None


def test_regression_needs_the_whole_interval_above_the_threshold():
    class FakeReport:
        units = "nats"

        def __init__(self, delta, low, high):
            self.comparison = [{"metric": "nll", "delta": delta, "ci": [low, high], "confidence": 0.95}]

    assert C.regression(FakeReport(0.2, 0.1, 0.3), None) is None
    assert C.regression(FakeReport(0.2, -0.01, 0.3), 0.0) is None  # interval straddles the threshold
    assert C.regression(FakeReport(0.2, 0.0, 0.3), 0.0) is None  # touches it
    assert C.regression(FakeReport(0.05, 0.01, 0.3), 0.1) is None  # delta below
    message = C.regression(FakeReport(0.2, 0.1, 0.3), 0.05)
    assert message and "nll got worse" in message and "0.05" in message


def test_max_gate_applies_to_the_new_model(run):
    # base nll 0.405, new nll 0.365
    passing = run("compare", BASE, NEW, "--max", "nll=0.38")
    assert passing.exit_code == 0, passing.stderr
    failing = run("compare", BASE, NEW, "--max", "nll=0.3")
    assert failing.exit_code == 1
    assert "gate failed: nll" in failing.stderr and "above the maximum 0.3" in failing.stderr


def test_min_gate_applies_to_the_new_model(run):
    # base accuracy 0.899, new 0.908
    assert run("compare", BASE, NEW, "--min", "accuracy=0.905").exit_code == 0
    failing = run("compare", NEW, BASE, "--min", "accuracy=0.905")
    assert failing.exit_code == 1
    assert "gate failed: accuracy" in failing.stderr


# -- usage errors --------------------------------------------------------------------------------------


def test_per_sample_is_not_available(run):
    result = run("compare", BASE, NEW, "--per-sample", "x.csv")
    assert result.exit_code == 2
    with pytest.raises(UsageError, match="not available in compare"):
        C.compare(str(BASE), str(NEW), per_sample="x.csv")


# -- breakdowns ----------------------------------------------------------------------------------


def test_by_group_equals_compare_on_the_filtered_files(run, tmp_path):
    """Each group's comparison (interval included) is that of compare on the group's rows alone:
    the same rows in the same order give the same bootstrap draws."""
    report = C.compare(str(BASE), str(NEW), by=["camera"], resamples=400, seed=5)
    base, new = pd.read_csv(BASE), pd.read_csv(NEW)
    assert sum(g["rows"] for g in report.groups) == len(base)
    deltas = [g["comparison"][0]["delta"] for g in report.groups]
    assert deltas == sorted(deltas, reverse=True)  # the largest nll increase first
    for group in report.groups:
        camera = group["by"]["camera"]
        base[base.camera == camera].to_csv(tmp_path / "b.csv", index=False)
        new[new.camera == camera].to_csv(tmp_path / "n.csv", index=False)
        alone = C.compare(str(tmp_path / "b.csv"), str(tmp_path / "n.csv"), resamples=400, seed=5)
        assert_rows_equal(group["comparison"], alone.comparison)
        assert group["metrics"]["nll"] == pytest.approx(alone.metrics["nll"], rel=1e-12)


def test_by_group_in_the_cli_table_and_json(run):
    result = run("compare", BASE, NEW, "--by", "camera", "--format", "json")
    assert result.exit_code == 0, result.stderr
    groups = loads_strict(result.stdout)["groups"]
    assert {g["by"]["camera"] for g in groups} == {"left", "right", "top"}
    assert all(g["comparison"][0]["metric"] == "nll" for g in groups)
    table = run("compare", BASE, NEW, "--by", "camera").stdout
    assert "base nll" in table and "top" in table


@pytest.mark.parametrize("n", [1, 5, 2000])
def test_worst_lists_the_largest_increases(run, tmp_path, n):
    """--worst N equals a stable sort of the per-sample nll differences (two score runs)."""
    for name, path in (("base", BASE), ("new", NEW)):
        assert run("score", path, "--per-sample", tmp_path / f"{name}.csv").exit_code == 0
    base, new = pd.read_csv(tmp_path / "base.csv"), pd.read_csv(tmp_path / "new.csv")
    delta = (new["nll"] - base["nll"]).to_numpy()
    order = sorted(range(len(delta)), key=lambda i: (-delta[i], i))[:n]
    result = run("compare", BASE, NEW, "--worst", n, "--format", "json")
    assert result.exit_code == 0, result.stderr
    worst = loads_strict(result.stdout)["worst"]
    assert [w["row"] for w in worst] == order
    assert [w["key"] for w in worst] == base["id"][order].tolist()
    for w, i in zip(worst, order):
        assert w["delta"] == pytest.approx(delta[i], rel=1e-9, abs=1e-12)
        assert w["new_loss"] - w["base_loss"] == pytest.approx(w["delta"], rel=1e-9, abs=1e-12)
        assert w["label"] == base["label"][i]


@pytest.mark.parametrize("value", ["1.5", "0", "1", "-0.5"])
def test_confidence_out_of_range_exits_2(run, value):
    result = run("compare", BASE, NEW, "--confidence", value)
    assert result.exit_code == 2
    assert "--confidence" in result.stderr


def test_resamples_below_one_exits_2(run):
    result = run("compare", BASE, NEW, "--resamples", "0")
    assert result.exit_code == 2
    assert "--resamples" in result.stderr


def test_different_classes_exit_2(run, tmp_path, pair):
    base, new, *_ = pair
    new.rename(columns={"p_c": "p_d"}).to_csv(tmp_path / "n.csv", index=False)
    base.to_csv(tmp_path / "b.csv", index=False)
    assert run("compare", tmp_path / "b.csv", tmp_path / "n.csv").exit_code == 2


# -- table output --------------------------------------------------------------------------------------


def test_table_output(run):
    result = run("compare", BASE, NEW, "--confidence", "0.9", "--resamples", "200")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("nll compare:")
    assert "90% interval" in out and "new better" in out
    for metric in METRICS:
        assert any(line.startswith(metric) for line in out.splitlines())
    assert "new model:" in out
    assert "REGRESSION" not in out


# -- streaming and edge cases ----------------------------------------------------------------------


def test_small_batches_give_the_same_comparison(monkeypatch, pair):
    import pyarrow as pa

    from nllcli import readers

    base, new, *_ = pair
    shuffled = new.sample(frac=1.0, random_state=5)
    whole = C.compare(pa.Table.from_pandas(base), pa.Table.from_pandas(shuffled), resamples=300)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 7)
    small = C.compare(pa.Table.from_pandas(base), pa.Table.from_pandas(shuffled), resamples=300)
    assert_rows_equal(small.comparison, whole.comparison, rel=1e-9)


def test_label_disagreement_rows_in_a_later_batch(monkeypatch, pair):
    import pyarrow as pa

    from nllcli import readers

    base, new, *_ = pair
    changed = new.copy()
    changed.loc[23, "label"] = CLASSES[(CLASSES.index(changed.loc[23, "label"]) + 1) % 3]
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 10)
    with pytest.raises(InputError, match="labels disagree") as info:
        C.compare(pa.Table.from_pandas(base), pa.Table.from_pandas(changed), resamples=50)
    assert info.value.rows == [24]  # 1-based data row of NEW


def test_zero_weight_row_with_infinite_loss_is_dropped_from_the_interval():
    """score drops a zero-weight row even when its loss is infinite (eps 0); so must the bootstrap:
    the row adds nothing to any replicate."""
    n = 200
    rng = np.random.default_rng(31)
    labels = rng.integers(0, 3, n)
    w = rng.uniform(0.5, 2.0, n)
    w[17] = 0.0
    base, new = predictions(n, 32, 1.0, labels, w), predictions(n, 33, 1.2, labels, w)
    true = f"p_{CLASSES[labels[17]]}"
    base.loc[17, [f"p_{c}" for c in CLASSES]] = 0.5
    base.loc[17, true] = 0.0  # infinite loss for the base model, on a row of weight 0
    report = C.compare(base, new, weight="w", eps=0.0, resamples=300, seed=1)
    b, nw = per_sample(base), per_sample(new)
    deltas = {}
    for m in METRICS:
        d = nw[m] - b[m]
        d[17] = 0.0  # weight 0: contributes nothing
        deltas[m] = d
    expected = reference_bootstrap(deltas, w, 300, 0.95, 1)
    for m in METRICS:
        row = rows_by(report, m)
        assert math.isfinite(row["delta"]), m
        assert row["ci"] == pytest.approx(list(expected[m]), rel=1e-9, abs=1e-15), m


def test_standard_input_feeds_one_side_only(run):
    text = "id,label,p_a,p_b\n1,a,0.6,0.4\n"
    result = run("compare", "-", "-", input=text)
    assert result.exit_code == 2 and "standard input (-) can be read only once" in result.stderr
