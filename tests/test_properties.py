"""Hypothesis property tests of nllcli.score / nllcli.kl and the kernels behind them."""

import math
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nllcli
from nllcli import losses, readers
from nllcli.summary import Summary

FAST = settings(max_examples=40, deadline=None)
LN2 = math.log(2)


@st.composite
def distributions(draw, n=None, k=None, max_n=30, max_k=6):
    """An (n, K) array of normalised rows, some with exact zeros."""
    k = k or draw(st.integers(2, max_k))
    n = n or draw(st.integers(1, max_n))
    cell = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))
    raw = draw(hnp.arrays(np.float64, (n, k), elements=cell))
    raw[raw.sum(axis=1) == 0, 0] = 1.0
    return raw / raw.sum(axis=1, keepdims=True)


@st.composite
def labelled(draw, max_n=30, max_k=6):
    """(probs, labels) with labels indices into the classes."""
    probs = draw(distributions(max_n=max_n, max_k=max_k))
    n, k = probs.shape
    labels = draw(hnp.arrays(np.intp, n, elements=st.integers(0, k - 1)))
    return probs, labels


def names(k):
    return [f"c{j}" for j in range(k)]


def frame(probs, labels=None, order=None, **extra):
    classes = names(probs.shape[1])
    order = range(len(classes)) if order is None else order
    data = {} if labels is None else {"label": np.array(classes)[labels]}
    data.update({"p_" + classes[j]: probs[:, j] for j in order})
    data.update(extra)
    return pd.DataFrame(data)


def assert_reports_equal(a, b, rtol=1e-12):
    assert a.metrics.keys() == b.metrics.keys() and a.rows == b.rows and a.clipped == b.clipped
    for name in a.metrics:
        # ECE and MCE are differences of sums: where they vanish, only an absolute bound makes sense.
        # So are the calibration estimators; the debiased L2 ECE is the square root of one (an error
        # of 1e-16 in a radicand near 0 is 1e-8 in the root).
        atol = 1e-15 if name in ("ece", "mce", "ece_mass", "classwise_ece", "ece_l2", "brier_reliability",
                                 "brier_resolution", "brier_uncertainty") else 0.0
        atol = 1e-7 if name == "ece_l2_debiased" else atol
        np.testing.assert_allclose(a.metrics[name], b.metrics[name], rtol=rtol, atol=atol, err_msg=name)
    assert [r["class"] for r in a.per_class] == [r["class"] for r in b.per_class]
    for ra, rb in zip(a.per_class, b.per_class):
        assert ra["rows"] == rb["rows"]
        np.testing.assert_allclose([ra["nll"], ra["accuracy"]], [rb["nll"], rb["accuracy"]], rtol=rtol)


# -- invariances -----------------------------------------------------------------------------

@FAST
@given(data=labelled(), seed=st.integers(0, 2**32 - 1))
def test_row_order_does_not_matter(data, seed):
    probs, labels = data
    perm = np.random.default_rng(seed).permutation(len(labels))
    assert_reports_equal(nllcli.score(frame(probs, labels)), nllcli.score(frame(probs[perm], labels[perm])))


@FAST
@given(data=labelled(), seed=st.integers(0, 2**32 - 1))
def test_class_column_order_does_not_matter(data, seed):
    probs, labels = data
    order = np.random.default_rng(seed).permutation(probs.shape[1])
    a, b = nllcli.score(frame(probs, labels)), nllcli.score(frame(probs, labels, order=order))
    for name in ("nll", "perplexity"):
        np.testing.assert_allclose(a.metrics[name], b.metrics[name], rtol=1e-12)
    assert a.clipped == b.clipped
    by_name = {r["class"]: r for r in b.per_class}
    for row in a.per_class:
        np.testing.assert_allclose(row["nll"], by_name[row["class"]]["nll"], rtol=1e-12)


@FAST
@given(data=labelled(), batch=st.integers(1, 8))
def test_batch_size_does_not_change_results(data, batch):
    probs, labels = data
    table = pa.Table.from_pandas(frame(probs, labels), preserve_index=False)
    whole = nllcli.score(table)
    with mock.patch.object(readers, "PARQUET_BATCH_ROWS", batch):
        batched = nllcli.score(table)
    assert_reports_equal(batched, whole)


@FAST
@given(data=labelled(max_n=60), groups=st.lists(st.integers(1, 25), min_size=1, max_size=6),
       batch=st.integers(1, 12), group_bytes=st.integers(0, 2000))
def test_parquet_row_groups_read_whole_or_streamed_give_every_row_once(tmp_path_factory, data, groups, batch,
                                                                        group_bytes):
    """Runs of row groups read whole and groups streamed, in any order and sizes: every row once,
    in order, in batches of at most PARQUET_BATCH_ROWS rows, and the numbers of the rows in one batch."""
    import pyarrow.parquet as pq

    probs, labels = data
    table = pa.Table.from_pandas(frame(probs, labels), preserve_index=False)
    path = tmp_path_factory.mktemp("groups") / "preds.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        at = 0
        for size in groups:
            if at < table.num_rows:
                writer.write_table(table.slice(at, size), row_group_size=size)
                at += size
        if at < table.num_rows:
            writer.write_table(table.slice(at), row_group_size=table.num_rows)
    whole = nllcli.score(table)
    with mock.patch.multiple(readers, PARQUET_BATCH_ROWS=batch, PARQUET_GROUP_BYTES=group_bytes):
        source = readers.open_source(str(path))
        batches = list(readers.parquet_row_groups(source, None, table.column_names, {}))
        read = nllcli.score(str(path))
    assert all(0 < b.num_rows <= batch for b in batches)
    assert pa.Table.from_batches(batches).equals(table)
    assert_reports_equal(read, whole)


@FAST
@given(pair=st.integers(2, 5).flatmap(lambda k: st.tuples(distributions(n=12, k=k), distributions(n=12, k=k))),
       batch=st.integers(1, 5))
def test_batch_size_does_not_change_soft_results(pair, batch):
    t, q = pair
    targets = pa.Table.from_pandas(frame(t), preserve_index=False)
    preds = pa.Table.from_pandas(frame(q), preserve_index=False)
    whole = nllcli.kl(targets, preds)
    with mock.patch.object(readers, "PARQUET_BATCH_ROWS", batch):
        batched = nllcli.kl(targets, preds)
    assert_reports_equal(batched, whole)


@FAST
@given(data=labelled(max_n=40), cuts=st.lists(st.integers(0, 40), max_size=5))
def test_summary_of_split_batches_equals_whole(data, cuts):
    probs, labels = data
    n = len(labels)
    nll, clipped = losses.hard_label_nll(losses.true_class(probs, labels), losses.EPS)
    correct = probs.argmax(axis=1) == labels
    k = probs.shape[1]
    whole = Summary.of_batch({"nll": nll}, k, None, labels, correct)
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    merged = Summary.empty(("nll",), k)
    for lo, hi in zip(bounds, bounds[1:]):
        merged = merged + Summary.of_batch({"nll": nll[lo:hi]}, k, None, labels[lo:hi], correct[lo:hi])
    assert merged.rows == whole.rows
    np.testing.assert_array_equal(merged.class_rows, whole.class_rows)
    np.testing.assert_allclose(merged.mean("nll"), whole.mean("nll"), rtol=1e-12)
    np.testing.assert_allclose(merged.class_sums, whole.class_sums, rtol=1e-12)
    assert merged.accuracy == whole.accuracy


@FAST
@given(data=labelled(), w=st.floats(1e-3, 1e3))
def test_equal_weights_equal_unweighted(data, w):
    probs, labels = data
    plain = nllcli.score(frame(probs, labels))
    weighted = nllcli.score(frame(probs, labels, w=np.full(len(labels), w)), weight="w")
    assert_reports_equal(weighted, plain)


# -- values ----------------------------------------------------------------------------------

@FAST
@given(data=labelled())
def test_nll_is_non_negative(data):
    probs, labels = data
    report = nllcli.score(frame(probs, labels))
    assert report.metrics["nll"] >= 0 and report.metrics["perplexity"] >= 1
    assert all(r["nll"] >= 0 or math.isnan(r["nll"]) for r in report.per_class)


@FAST
@given(z=st.integers(2, 6).flatmap(lambda k: hnp.arrays(np.float64, (10, k), elements=st.floats(-1e4, 1e4))),
       label=st.integers(0, 1))
def test_nll_of_logits_is_finite_and_non_negative(z, label):
    labels = np.full(len(z), label)
    report = nllcli.score(frame(z, labels), input="logits")
    assert 0 <= report.metrics["nll"] < math.inf


@FAST
@given(k=st.integers(2, 50), n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_uniform_prediction_gives_ln_k(k, n, seed):
    labels = np.random.default_rng(seed).integers(0, k, size=n)
    report = nllcli.score(frame(np.full((n, k), 1 / k), labels))
    np.testing.assert_allclose(report.metrics["nll"], math.log(k), rtol=1e-12)
    np.testing.assert_allclose(report.metrics["perplexity"], k, rtol=1e-12)


@FAST
@given(data=labelled())
def test_bits_are_nats_over_ln2(data):
    probs, labels = data
    nats, bits = nllcli.score(frame(probs, labels)), nllcli.score(frame(probs, labels), base="2")
    np.testing.assert_allclose(bits.metrics["nll"], nats.metrics["nll"] / LN2, rtol=1e-12)
    np.testing.assert_allclose(bits.metrics["perplexity"], nats.metrics["perplexity"], rtol=1e-12)


@FAST
@given(pair=st.integers(2, 6).flatmap(lambda k: st.tuples(distributions(k=k), distributions(k=k))))
def test_kl_is_non_negative_kernel(pair):
    t, q = pair
    n = min(len(t), len(q))
    t, q = t[:n], q[:n]
    with np.errstate(divide="ignore"):
        kl = losses.kl_divergence(t, q=q)
    assert (kl >= -1e-15).all()  # +inf where q = 0 and t > 0


@FAST
@given(pair=st.integers(2, 6).flatmap(lambda k: st.tuples(distributions(n=15, k=k), distributions(n=15, k=k))))
def test_kl_is_non_negative_and_ce_is_h_plus_kl(pair):
    t, q = pair
    report = nllcli.kl(frame(t), frame(q))  # default eps: q is clipped, everything finite
    m = report.metrics
    assert m["kl"] >= 0
    np.testing.assert_allclose(m["cross_entropy"], m["entropy"] + m["kl"], rtol=1e-9, atol=1e-12)


@FAST
@given(p=distributions())
def test_kl_of_p_with_itself_is_zero(p):
    assert nllcli.kl(frame(p), frame(p), eps=0).metrics["kl"] == 0.0
    # with the default eps, a probability of exactly 1 is clipped to 1 - eps
    assert 0 <= nllcli.kl(frame(p), frame(p)).metrics["kl"] <= 1e-15


@FAST
@given(p=distributions(max_k=8))
def test_cross_entropy_against_uniform_is_ln_k(p):
    k = p.shape[1]
    report = nllcli.kl(frame(p), frame(np.full(p.shape, 1 / k)))
    np.testing.assert_allclose(report.metrics["cross_entropy"], math.log(k), rtol=1e-12)
    np.testing.assert_allclose(report.metrics["kl"], math.log(k) - report.metrics["entropy"], rtol=1e-9,
                               atol=1e-12)


@FAST
@given(pair=st.integers(2, 6).flatmap(lambda k: st.tuples(distributions(n=10, k=k), distributions(n=10, k=k))))
def test_js_is_symmetric_and_at_most_ln2(pair):
    p, q = pair
    js = losses.js_divergence(p, q)
    np.testing.assert_allclose(js, losses.js_divergence(q, p), rtol=1e-12, atol=1e-15)
    assert (js >= -1e-15).all() and (js <= LN2 * (1 + 1e-12)).all()


# -- file splitting --------------------------------------------------------------------------


def _random_predictions(n: int, k: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.7), n)
    frame = pd.DataFrame({f"p_{c}": p[:, j] for j, c in enumerate("abcdefg"[:k])})
    frame.insert(0, "label", [("abcdefg"[j]) for j in rng.integers(0, k, n)])
    frame.insert(0, "camera", rng.choice(["left", "right", "top"], n))
    frame.insert(0, "id", [f"s{i:05d}" for i in range(n)])
    return frame


@pytest.mark.parametrize("cuts", [[1], [2500], [1, 2, 3, 4999], [137, 1000, 1001, 3333]])
def test_splitting_into_files_does_not_change_any_number(tmp_path, cuts):
    """The same rows as one file or as several (CSV, TSV and Parquet parts): equal to 1e-12."""
    frame = _random_predictions(5000, 4, seed=len(cuts))
    frame.to_csv(tmp_path / "whole.csv", index=False, float_format="%.17g")
    bounds = [0, *cuts, len(frame)]
    parts = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        part = frame.iloc[lo:hi]
        path = tmp_path / f"part{i}.{('csv', 'tsv', 'parquet')[i % 3]}"
        if path.suffix == ".parquet":
            part.to_parquet(path, index=False)
        else:
            part.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",", float_format="%.17g")
        parts.append(str(path))
    whole = nllcli.score(str(tmp_path / "whole.csv"), by=["camera"], worst=5)
    split = nllcli.score(parts, by=["camera"], worst=5)
    for name, value in whole.metrics.items():
        assert split.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    for a, b in zip(whole.groups, split.groups):
        assert a["by"] == b["by"] and a["rows"] == b["rows"]
        for name, value in a["metrics"].items():
            assert b["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-15), (a["by"], name)
    assert [w["key"] for w in whole.worst] == [w["key"] for w in split.worst]
    assert [c["weight"] for c in whole.calibration] == [c["weight"] for c in split.calibration]


@FAST
@given(k=st.integers(1, 12), n=st.integers(1, 60), n_bins=st.integers(1, 30), seed=st.integers(0, 2**32 - 1),
       weighted=st.booleans(), soft=st.booleans())
def test_class_cells_of_the_values_past_the_first_bin_equal_all_binned(k, n, n_bins, seed, weighted, soft):
    """The cells summed from the values past each class's first bin (its sums the class totals less
    the other bins') are those of every value binned, edges, zeros and ones included."""
    from nllcli import summary

    rng = np.random.default_rng(seed)
    q = rng.choice([rng.random(), 0.0, 1.0, *(np.arange(n_bins + 1) / n_bins)], size=(n, k))
    q = np.where(rng.random((n, k)) < 0.5, rng.random((n, k)), q)  # and values anywhere
    q = np.asfortranarray(q)
    weights = rng.random(n) if weighted else None
    labels, targets = (None, rng.dirichlet(np.ones(k), n)) if soft else (rng.integers(0, k, n), None)
    with mock.patch.object(summary, "SPARSE_CELLS_SHARE", -1.0):  # binned whole, even with none past
        every = summary._class_cell_sums(q, n_bins, weights, labels, targets)
    with mock.patch.object(summary, "SPARSE_CELLS_SHARE", 1.0):
        past = summary._class_cell_sums(q, n_bins, weights, labels, targets)
    assert set(past) == set(every)
    for name in every:
        np.testing.assert_allclose(past[name], every[name], rtol=1e-12, atol=1e-12 * n, err_msg=name)
