"""Summary: running weighted sums that merge (batch + batch, file + file)."""

import math

import numpy as np
import pytest

from nllcli.summary import Summary

K = 4
NAMES = ("nll", "kl")


def batch(seed, n=60, weighted=True, labelled=True):
    """Arguments for Summary.of_batch on n random rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=n)
    return dict(values={"nll": rng.exponential(size=n), "kl": rng.exponential(size=n)}, n_classes=K,
                weights=rng.uniform(0, 3, size=n) if weighted else None,
                labels=labels if labelled else None,
                correct=(rng.random(n) < 0.6) if labelled else None, clipped=int(rng.integers(0, 5)))


def part(args, rows, clipped=0):
    """The arguments of of_batch restricted to some rows (with a clipped count of its own)."""
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return dict(values={k: v[rows] for k, v in args["values"].items()}, n_classes=args["n_classes"],
                weights=pick(args["weights"]), labels=pick(args["labels"]), correct=pick(args["correct"]),
                clipped=clipped)


def assert_same(a: Summary, b: Summary, rtol=1e-12):
    assert a.names == b.names and a.n_classes == b.n_classes
    assert a.rows == b.rows and a.clipped == b.clipped
    np.testing.assert_array_equal(a.class_rows, b.class_rows)
    for field in ("weight", "sums", "correct", "class_weight", "class_sums", "class_correct"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, err_msg=field)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("cuts", [[30], [1, 2, 59], [10, 20, 30, 40, 50], [0, 60]])
def test_split_batches_merge_to_the_whole(weighted, labelled, cuts):
    whole_args = batch(1, weighted=weighted, labelled=labelled)
    whole = Summary.of_batch(**whole_args)
    bounds = [0, *cuts, 60]
    pieces = [Summary.of_batch(**part(whole_args, slice(lo, hi), clipped=i))
              for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
    whole.clipped = sum(range(len(pieces)))  # clipped counts are given per batch and add up
    merged = pieces[0]
    for piece in pieces[1:]:
        merged = merged + piece
    assert_same(merged, whole)
    for name in NAMES:
        assert math.isclose(merged.mean(name), whole.mean(name), rel_tol=1e-12)


def test_merging_is_associative_and_commutative():
    a, b, c = (Summary.of_batch(**batch(seed)) for seed in (2, 3, 4))
    assert_same((a + b) + c, a + (b + c))
    assert_same(a + b, b + a)
    assert (a + b + c).clipped == a.clipped + b.clipped + c.clipped
    assert (a + b + c).rows == 180


def test_empty_is_the_identity():
    a = Summary.of_batch(**batch(5))
    assert_same(Summary.empty(NAMES, K) + a, a)
    assert_same(a + Summary.empty(NAMES, K), a)


@pytest.mark.parametrize("other", [Summary.empty(("nll",), K), Summary.empty(("kl", "nll"), K),
                                   Summary.empty(NAMES, K + 1)], ids=["fewer-names", "name-order", "classes"])
def test_merging_mismatched_summaries_raises(other):
    with pytest.raises(ValueError):
        Summary.empty(NAMES, K) + other
    with pytest.raises(ValueError):
        other + Summary.empty(NAMES, K)


def test_means_are_weighted():
    s = Summary.of_batch({"nll": np.array([1.0, 2.0, 4.0])}, 2, weights=np.array([1.0, 1.0, 2.0]),
                         labels=np.array([0, 1, 1]), correct=np.array([True, False, True]))
    assert s.mean("nll") == pytest.approx(11 / 4, rel=1e-15)
    assert s.accuracy == pytest.approx(3 / 4, rel=1e-15)
    np.testing.assert_allclose(s.class_mean("nll"), [1.0, 10 / 3], rtol=1e-15)
    np.testing.assert_allclose(s.class_accuracy, [1.0, 2 / 3], rtol=1e-15)
    assert s.class_rows.tolist() == [1, 2]


def test_equal_weights_give_the_unweighted_mean():
    args = batch(6, weighted=False)
    plain = Summary.of_batch(**args)
    weighted = Summary.of_batch(**{**args, "weights": np.full(60, 2.5)})
    for name in NAMES:
        assert math.isclose(weighted.mean(name), plain.mean(name), rel_tol=1e-12)
    assert math.isclose(weighted.accuracy, plain.accuracy, rel_tol=1e-12)
    np.testing.assert_allclose(weighted.class_mean("nll"), plain.class_mean("nll"), rtol=1e-12)


def test_zero_weight_drops_an_infinite_loss():
    s = Summary.of_batch({"nll": np.array([math.inf, 1.0])}, 2, weights=np.array([0.0, 1.0]),
                         labels=np.array([0, 1]), correct=np.array([False, True]))
    assert s.mean("nll") == 1.0
    assert s.class_sums[0, 0] == 0.0
    assert s.rows == 2


def test_infinite_loss_with_positive_weight_makes_the_mean_infinite():
    s = Summary.of_batch({"nll": np.array([math.inf, 1.0])}, 2)
    assert s.mean("nll") == math.inf


def test_empty_summary_means_are_nan():
    s = Summary.empty(NAMES, K)
    assert math.isnan(s.mean("nll")) and math.isnan(s.accuracy)
    assert np.isnan(s.class_mean("kl")).all() and np.isnan(s.class_accuracy).all()


def test_class_without_rows_has_nan_mean():
    s = Summary.of_batch({"nll": np.array([1.0, 3.0])}, 3, labels=np.array([0, 0]), correct=np.array([1, 0]))
    means = s.class_mean("nll")
    assert means[0] == 2.0 and np.isnan(means[1:]).all()
    assert s.class_rows.tolist() == [2, 0, 0]
