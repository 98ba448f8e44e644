"""Unit tests of the numpy kernels in nllcli.losses (no I/O, no column resolution)."""

import math
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import rel_entr, xlogy
from scipy.stats import entropy as scipy_entropy

from nllcli import losses
from nllcli.losses import EPS

NAN, INF = math.nan, math.inf
LN2 = math.log(2)


def rows(*values):
    return np.array(values, dtype=np.float64)


def dirichlet(n, k, seed=0, zeros=0.0):
    """n random distributions over k classes; a fraction ``zeros`` of the cells are exactly 0."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n)
    if zeros:
        p[rng.random((n, k)) < zeros] = 0.0
        p[p.sum(axis=1) == 0, 0] = 1.0
        p /= p.sum(axis=1, keepdims=True)
    return p


# -- find_problem ----------------------------------------------------------------------------

PROBLEMS = [
    # (id, values, kind, renormalize, words in the message, bad rows, column)
    ("probs-nan", rows([.5, .5], [NAN, .5], [.2, .8], [.1, NAN]), "probs", False, "NaN", [1, 3], 0),
    ("probs-inf", rows([.5, .5], [.2, .8], [0, INF]), "probs", False, "infinite", [2], 1),
    ("probs-minus-inf", rows([-INF, 1.0], [.5, .5]), "probs", False, "infinite", [0], 0),
    ("probs-negative", rows([.5, .5], [1.1, -.1], [.3, .7]), "probs", False, "negative", [1], 1),
    ("probs-above-1", rows([.5, .5], [.3, .7], [0, 1.2]), "probs", False, "above 1", [2], 1),
    ("probs-row-sums", rows([.5, .5], [.5, .4], [.3, .3], [.6, .4]), "probs", False, "sum to 1", [1, 2], None),
    # a value above 1 is named as such, before the row sums it also breaks, renormalising or not
    ("probs-above-1-and-sums", rows([.5, .5], [1.2, .3]), "probs", False, "above 1", [1], 0),
    ("probs-renormalize-above-1", rows([2e-1, 3e-1], [0, 1.2]), "probs", True, "above 1", [1], 1),
    ("probs-renormalize-zero-sum", rows([2e-1, 3e-1], [0, 0], [1, 1], [0, 0]), "probs", True, "sum to 0", [1, 3], None),
    ("logits-nan", rows([1e4, -1e4], [NAN, 0], [0, 1]), "logits", False, "non-finite", [1], 0),
    ("logits-inf", rows([0, 1], [3, -INF], [INF, 0]), "logits", False, "non-finite", [1, 2], 1),
    ("log-probs-nan", rows([0, -INF], [math.log(.5), NAN]), "log-probs", False, "NaN", [1], 1),
    ("log-probs-plus-inf", rows([INF, -INF]), "log-probs", False, "+inf", [0], 0),
    ("log-probs-positive", rows([0, -INF], [.1, -3], [-.5, .2]), "log-probs", False, "above 0", [1, 2], 0),
    # all -inf is a zero-sum row: no more renormalisable than [0, 0] as probabilities
    ("log-probs-renormalize-zero-sum", rows([0, -1], [-INF, -INF]), "log-probs", True, "sum to 0", [1], None),
    ("log-probs-sums", rows([math.log(.5), math.log(.5)], [math.log(.5), math.log(.4)]), "log-probs", False,
     "sum to 1", [1], None),
]


@pytest.mark.parametrize("values, kind, renormalize, words, bad_rows, column",
                         [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS])
def test_find_problem_reports_rows_and_column(values, kind, renormalize, words, bad_rows, column):
    problem = losses.find_problem(values, kind, tol=1e-4, renormalize=renormalize)
    assert problem is not None
    assert words in problem.message
    assert problem.rows.tolist() == bad_rows
    assert problem.column == column


VALID = [
    # (id, values, kind, renormalize)
    ("probs", rows([.5, .5], [0, 1], [1, 0]), "probs", False),
    ("probs-within-tol", rows([.5, .50005], [1.00005, 0]), "probs", False),
    ("probs-renormalize-any-positive-sum", rows([2e-1, 3e-1], [1, 1], [0, .7]), "probs", True),
    ("logits-huge", rows([1e4, 0, -1e4], [-3, 7, 1e300]), "logits", False),
    ("log-probs-with-minus-inf", rows([0, -INF], [math.log(.25), math.log(.75)]), "log-probs", False),
    ("log-probs-renormalize", rows([-1, -1], [-5, -0.1]), "log-probs", True),
]


@pytest.mark.parametrize("values, kind, renormalize", [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_find_problem_accepts_valid_input(values, kind, renormalize):
    assert losses.find_problem(values, kind, tol=1e-4, renormalize=renormalize) is None


@pytest.mark.parametrize("kind", losses.INPUT_KINDS)
def test_find_problem_empty_batch(kind):
    assert losses.find_problem(np.zeros((0, 3)), kind, tol=1e-4) is None


def test_find_problem_sum_tolerance_is_respected():
    values = rows([.5, .5 + 1e-3])
    assert losses.find_problem(values, "probs", tol=1e-2) is None
    assert losses.find_problem(values, "probs", tol=1e-4).rows.tolist() == [0]


def test_find_problem_nan_reported_before_other_problems():
    problem = losses.find_problem(rows([-1, 2], [NAN, 1]), "probs", tol=1e-4)
    assert "NaN" in problem.message and problem.rows.tolist() == [1]


# -- logsumexp / log_softmax -----------------------------------------------------------------

def test_log_softmax_matches_scipy():
    z = np.random.default_rng(1).normal(scale=5, size=(200, 7))
    np.testing.assert_allclose(losses.log_softmax(z), scipy_log_softmax(z, axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(losses.logsumexp(z), np.log(np.exp(z).sum(axis=1)), rtol=1e-10)


@pytest.mark.parametrize("scale", [1e4, 1e6, 1e300])
def test_log_softmax_is_stable_for_huge_logits(scale):
    z = rows([scale, 0, -scale], [0, scale, 0])
    out = losses.log_softmax(z)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], [0.0, -scale, -2 * scale], rtol=1e-15)
    np.testing.assert_allclose(out[1], [-scale, 0.0, -scale], rtol=1e-15)


def test_log_softmax_is_shift_invariant():
    z = np.random.default_rng(2).normal(size=(50, 4))
    np.testing.assert_allclose(losses.log_softmax(z + 1e5), losses.log_softmax(z), atol=1e-10)


def test_logsumexp_of_log_probs_with_minus_inf():
    with np.errstate(divide="ignore"):
        log_p = np.log(rows([1, 0, 0], [.25, .75, 0]))
    np.testing.assert_allclose(losses.logsumexp(log_p), [0.0, 0.0], atol=1e-15)


# -- clipping, renormalising, smoothing ------------------------------------------------------

def test_clip_bounds_and_what_moved():
    p = rows([0, .5, 1], [1e-20, .5, 1 - 1e-20], [.2, .3, .5])
    clipped = losses.clip(p, 1e-3)
    assert clipped.moved == 4
    assert clipped.values.min() == 1e-3 and clipped.values.max() == 1 - 1e-3
    np.testing.assert_array_equal(clipped.values[2], p[2])
    # raised: the zero and 1e-20 (they now cost -log eps); lowered: the 1 and 1 - 1e-20 (= 1.0)
    np.testing.assert_array_equal(clipped.raised, [[True, False, False], [True, False, False], [False] * 3])
    np.testing.assert_array_equal(clipped.lowered, [[False, False, True], [False, False, True], [False] * 3])


def test_clip_with_eps_zero_is_identity():
    p = rows([0, 1])
    clipped = losses.clip(p, 0.0)
    assert clipped.moved == 0 and clipped.values is p and clipped.raised is None


def test_log_clip_matches_clip_in_log_space():
    p = rows([0, .5, 1], [1e-20, .3, .7])
    with np.errstate(divide="ignore"):
        log_clipped = losses.log_clip(np.log(p), 1e-3)
    clipped = losses.clip(p, 1e-3)
    assert log_clipped.moved == clipped.moved == 3
    np.testing.assert_array_equal(log_clipped.raised, clipped.raised)
    np.testing.assert_array_equal(log_clipped.lowered, clipped.lowered)
    np.testing.assert_allclose(log_clipped.values, np.log(clipped.values), rtol=1e-12)
    assert losses.log_clip(np.log(p[1:]), 0.0).moved == 0


def test_renormalize_rows():
    p = rows([1, 3], [2, 2], [0, 5])
    np.testing.assert_allclose(losses.renormalize_rows(p), [[.25, .75], [.5, .5], [0, 1]], rtol=1e-15)


def test_label_smoothing():
    t = losses.label_smoothing(np.array([0, 2, 1]), 4, 0.2)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(t[1], [.05, .05, .85, .05], rtol=1e-15)
    np.testing.assert_array_equal(losses.label_smoothing(np.array([1]), 3, 0.0), [[0, 1, 0]])
    np.testing.assert_allclose(losses.label_smoothing(np.array([1]), 3, 1.0), [[1 / 3] * 3], rtol=1e-15)


# -- losses ----------------------------------------------------------------------------------

def entropy(t):
    return losses.soft_losses(t, np.zeros_like(t))[1]


def cross_entropy(t, log_q):
    return losses.soft_losses(t, log_q)[0]


def test_entropy_matches_scipy_with_zeros():
    t = dirichlet(100, 6, seed=3, zeros=0.3)
    assert (t == 0).any()
    np.testing.assert_allclose(entropy(t), scipy_entropy(t, axis=1), rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(entropy(rows([0, 1, 0])), [0.0])
    np.testing.assert_allclose(entropy(np.full((1, 5), .2)), [math.log(5)], rtol=1e-15)


def test_cross_entropy_matches_reference_and_skips_zero_targets():
    t = dirichlet(100, 5, seed=4, zeros=0.3)
    q = dirichlet(100, 5, seed=5)
    q[t == 0] = 0.0  # q = 0 only where t = 0: still finite
    q /= q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        out = cross_entropy(t, np.log(q))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, -xlogy(t, q).sum(axis=1), rtol=1e-10)


def test_kernels_handle_zeros_without_runtime_warnings():
    """0 * log 0 = 0 by convention: the kernels must not leave numpy warnings for the CLI to print."""
    t, q = rows([.5, .5, 0], [1, 0, 0]), rows([.5, .5, 0], [.5, 0, .5])
    with np.errstate(divide="ignore"):
        log_q = np.log(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ce = cross_entropy(t, log_q)
        h = entropy(t)
        kl_q, kl_log_q = losses.kl_divergence(t, q=q), losses.kl_divergence(t, log_q=log_q)
        js = losses.js_divergence(t, q)
    np.testing.assert_allclose(ce, [LN2, LN2], rtol=1e-15)
    np.testing.assert_allclose(h, [LN2, 0.0], rtol=1e-15)
    np.testing.assert_allclose(kl_q, [0.0, LN2], atol=1e-15)
    np.testing.assert_allclose(kl_log_q, kl_q, atol=1e-15)
    assert np.isfinite(js).all()


def test_cross_entropy_infinite_when_observed_class_has_zero_probability():
    with np.errstate(divide="ignore"):
        out = cross_entropy(rows([.5, .5, 0], [1, 0, 0]), np.log(rows([1, 0, 0], [1, 0, 0])))
    assert out[0] == INF and out[1] == 0.0


@pytest.mark.parametrize("zeros", [0.0, 0.3])
def test_kl_divergence_matches_rel_entr(zeros):
    t = dirichlet(200, 6, seed=6, zeros=zeros)
    q = dirichlet(200, 6, seed=7)
    np.testing.assert_allclose(losses.kl_divergence(t, q=q), rel_entr(t, q).sum(axis=1), rtol=1e-10, atol=1e-15)


def test_kl_divergence_with_q_and_log_q_agree():
    t = dirichlet(200, 5, seed=8, zeros=0.3)
    z = np.random.default_rng(9).normal(scale=3, size=(200, 5))
    log_q = losses.log_softmax(z)
    np.testing.assert_allclose(losses.kl_divergence(t, log_q=log_q), losses.kl_divergence(t, q=np.exp(log_q)),
                               rtol=1e-9, atol=1e-13)


def test_kl_divergence_of_a_distribution_with_itself_is_zero():
    p = dirichlet(50, 4, seed=10, zeros=0.3)
    np.testing.assert_array_equal(losses.kl_divergence(p, q=p), 0.0)


def test_kl_divergence_infinite_where_q_is_zero_and_t_positive():
    with np.errstate(divide="ignore"):
        t, q = rows([.5, .5], [1, 0]), rows([1, 0], [1, 0])
        assert losses.kl_divergence(t, q=q).tolist() == [INF, 0.0]
        assert losses.kl_divergence(t, log_q=np.log(q)).tolist() == [INF, 0.0]


def test_kl_equals_cross_entropy_minus_entropy():
    t = dirichlet(200, 5, seed=11, zeros=0.2)
    q = dirichlet(200, 5, seed=12)
    ce, h, kl = cross_entropy(t, np.log(q)), entropy(t), losses.kl_divergence(t, q=q)
    np.testing.assert_allclose(ce, h + kl, rtol=1e-9)


def test_js_divergence_symmetric_bounded_and_matches_scipy():
    p = dirichlet(200, 5, seed=13, zeros=0.3)
    q = dirichlet(200, 5, seed=14, zeros=0.3)
    js = losses.js_divergence(p, q)
    np.testing.assert_allclose(js, losses.js_divergence(q, p), rtol=1e-12, atol=1e-15)
    assert (js >= 0).all() and (js <= LN2 * (1 + 1e-12)).all()
    np.testing.assert_allclose(js, jensenshannon(p, q, axis=1) ** 2, rtol=1e-9, atol=1e-14)


def test_js_divergence_of_disjoint_supports_is_ln2():
    p, q = rows([1, 0, 0], [.5, .5, 0]), rows([0, .3, .7], [0, 0, 1])
    np.testing.assert_allclose(losses.js_divergence(p, q), [LN2, LN2], rtol=1e-15)
    np.testing.assert_array_equal(losses.js_divergence(p, p), [0.0, 0.0])


def test_safe_log_is_finite_at_zero_and_exact_elsewhere():
    x = np.array([0.0, 5e-324, 1e-300, 0.5, 1.0])
    out = losses.safe_log(x)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1:], np.log(x[1:]))
    assert out[0] == out[1]  # log of the smallest subnormal, so 0 * log 0 = 0
    assert 0.0 * out[0] == 0.0


def test_kl_accepts_precomputed_log_t():
    t = dirichlet(50, 4, seed=15, zeros=0.3)
    q = dirichlet(50, 4, seed=16)
    log_t = losses.safe_log(t)
    np.testing.assert_array_equal(losses.kl_divergence(t, q=q, log_t=log_t), losses.kl_divergence(t, q=q))


@pytest.mark.parametrize("zeros", [0.0, 0.3])
def test_soft_losses_kl_matches_the_direct_kernel(zeros):
    t = dirichlet(200, 6, seed=17, zeros=zeros)
    q = dirichlet(200, 6, seed=18)
    ce, h, kl = losses.soft_losses(t, np.log(q))
    np.testing.assert_allclose(kl, losses.kl_divergence(t, q=q), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ce, h + kl, rtol=1e-12)


@pytest.mark.parametrize("k", [2, 5, 64, 65])
@pytest.mark.parametrize("order", ["C", "F"])
def test_argmax_rows_matches_numpy_and_takes_first_on_ties(k, order):
    rng = np.random.default_rng(k)
    values = rng.integers(0, 3, size=(200, k)).astype(np.float64)  # many ties
    values[0] = -np.inf
    values[1, :] = 1.0
    values = np.asarray(values, order=order)
    out = losses.argmax_rows(values)
    np.testing.assert_array_equal(out, np.ascontiguousarray(values).argmax(axis=1))
    assert out[0] == 0 and out[1] == 0


def test_true_class():
    values = rows([.1, .9], [.7, .3], [.4, .6])
    np.testing.assert_array_equal(losses.true_class(values, np.array([1, 0, 0])), [.9, .7, .4])


def test_hard_label_nll_clips_zero_and_one():
    nll, clipped = losses.hard_label_nll(np.array([0.0, 1.0, 0.5]), EPS)
    assert clipped.raised.tolist() == [True, False, False] and clipped.lowered.tolist() == [False, True, False]
    np.testing.assert_allclose(nll, [36.04365338911715, -math.log1p(-EPS), math.log(2)], rtol=1e-15)


def test_hard_label_nll_when_nothing_moves_keeps_no_masks():
    p = np.array([0.25, 0.5, 1.0 - 2 * EPS, 2 * EPS])
    nll, clipped = losses.hard_label_nll(p, EPS)
    assert clipped.raised is None and clipped.lowered is None and clipped.values is p
    assert losses.RowClips.of(clipped, EPS) is None
    assert nll.tolist() == (-np.log(p)).tolist()
    _, empty = losses.hard_label_nll(np.zeros(0), EPS)
    assert losses.RowClips.of(empty, EPS) is None


def test_hard_label_nll_without_clipping():
    with np.errstate(divide="ignore"):
        nll, clipped = losses.hard_label_nll(np.array([0.0, 1.0, 0.25]), 0.0)
    assert clipped.moved == 0
    assert nll.tolist() == [INF, 0.0, math.log(4)]


def test_correct_rows_is_argmax_equals_label_with_ties_to_the_first_column():
    from nllcli.losses import argmax_rows, correct_rows

    rng = np.random.default_rng(3)
    for k in (4, 2, 3):
        values = np.round(rng.dirichlet(np.ones(k), 5000), 2)  # two decimals: many tied rows
        values[:10] = 1 / k  # all tied
        labels = rng.integers(0, k, 5000)
        for matrix in (np.asfortranarray(values), np.ascontiguousarray(values)):
            expected = argmax_rows(matrix) == labels
            assert (correct_rows(matrix, labels) == expected).all()
            assert (correct_rows(matrix, labels) == (matrix.argmax(axis=1) == labels)).all()
        assert correct_rows(np.asfortranarray(values[:10]), np.zeros(10, int)).all()
        assert not correct_rows(np.asfortranarray(values[:10]), np.ones(10, int)).any()


def test_confidence_bins_on_and_beside_every_edge():
    from nllcli.summary import bin_edges, confidence_bins

    for n_bins in (1, 2, 3, 10, 15, 16, 100):
        edges = bin_edges(n_bins)
        c = np.concatenate([edges, np.nextafter(edges, 2), np.nextafter(edges, -1).clip(0), [1 + 1e-5]])
        # the definition: (e_b, e_b+1], 0 in the first bin, 1 and above in the last
        expected = np.clip(np.searchsorted(edges, c, side="left") - 1, 0, n_bins - 1)
        matrix = np.asfortranarray(np.tile(c[:, None], (1, 3)))
        assert (confidence_bins(c, n_bins) == expected).all()
        assert (confidence_bins(matrix, n_bins) == expected[:, None]).all()
        assert (confidence_bins(matrix[::2], n_bins) == expected[::2, None]).all()  # not contiguous
        # offsets (the class cells' k * B + copy): added to every bin, the re-placed ones included
        offsets = np.asfortranarray(np.arange(matrix.size, dtype=np.float64).reshape(matrix.shape) * 7)
        for order in ("F", "C"):
            m, o = np.asarray(matrix, order=order), np.asarray(offsets, order=order)
            assert (confidence_bins(m, n_bins, offsets=o) == expected[:, None] + o).all()
        assert (confidence_bins(np.ascontiguousarray(matrix), n_bins, offsets=offsets)
                == expected[:, None] + offsets).all()  # offsets in the other memory order
        wider = np.asfortranarray(np.vstack([offsets, offsets]))[:len(offsets)]  # a view in neither order
        assert (confidence_bins(matrix, n_bins, offsets=wider) == expected[:, None] + offsets).all()


@pytest.mark.parametrize("share", [-1.0, 1.0])  # every batch binned whole, or only its values past the first bins
def test_class_cells_spread_over_copies_sum_as_one(monkeypatch, share):
    from nllcli import summary
    from nllcli.losses import class_bin_sums
    from nllcli.summary import _cell_offsets

    monkeypatch.setattr(summary, "SPARSE_CELLS_SHARE", share)
    rng = np.random.default_rng(3)
    n, k, n_bins = 1001, 4, 15
    q = rng.dirichlet(np.full(k, 0.3), size=n)
    q[::5, 0] = 2 / 15  # on an edge
    q[::5, 1:] = (1 - 2 / 15) / 3
    q[1::7, 0], q[1::7, 1:] = 1 / 15, (1 - 1 / 15) / 3  # on the first bin's edge: in the first bin
    q[2::7, 0], q[2::7, 1:] = 0.0, 1 / 3
    labels, weights, targets = rng.integers(0, k, n), rng.random(n), rng.dirichlet(np.ones(k), size=n)
    plain = np.searchsorted(np.linspace(0, 1, n_bins + 1), q, side="left").clip(1, n_bins) - 1 + np.arange(k) * n_bins
    assert (_cell_offsets(n, k, n_bins) == _cell_offsets(2000, k, n_bins)[:n]).all()  # one array, sliced
    assert _cell_offsets(n, k, n_bins)[9].tolist() == [k * n_bins + c * n_bins for c in range(k)]  # row 9: copy 1
    for w in (None, weights):
        for y, t in ((labels, None), (None, targets)):
            labelled = None if y is None else (plain[np.arange(n), y], q[np.arange(n), y])
            expected = class_bin_sums(np.ascontiguousarray(plain), None, k * n_bins, 1, w, np.ascontiguousarray(q), y, t,
                                      labelled)
            got = summary._class_cell_sums(np.asfortranarray(q), n_bins, w, y, t)
            assert set(got) == set(expected)
            for name, value in expected.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-13, atol=1e-13, err_msg=name)
            if w is None and t is None:  # counts are exact
                assert (got["weight"] == expected["weight"]).all() and (got["outcome"] == expected["outcome"]).all()
    with pytest.raises(ValueError, match="labelled cells and values"):
        class_bin_sums(plain, None, k * n_bins, 1, None, q, labels, None)


def test_loss_bins_are_np_histograms_bins():
    from nllcli.summary import LOSS_EDGES, loss_bins

    edges = np.array(LOSS_EDGES)
    loss = np.concatenate([edges, np.nextafter(edges, -1), np.nextafter(edges, 9), [np.inf, np.nan, -1.0, 1e300]])
    weights = np.linspace(0.5, 2, len(loss))
    for w in (None, weights):
        expected = np.histogram(loss, bins=[*LOSS_EDGES, np.inf], weights=w)[0]
        got = np.bincount(loss_bins(loss), weights=w, minlength=len(LOSS_EDGES) + 1)[1:]
        np.testing.assert_allclose(got, expected, rtol=1e-14)  # np.histogram's weighted sums: differences of a cumsum
    assert loss_bins(np.array([np.nan, -0.5, 0.0, 40.0, np.inf])).tolist() == [0, 0, 1, 12, 12]


def test_loss_histogram_is_np_histogram():
    from nllcli.summary import LOSS_EDGES, loss_histogram

    edges = np.array(LOSS_EDGES)
    loss = np.concatenate([edges, np.nextafter(edges, -1), np.nextafter(edges, 9), [np.inf, np.nan, -1.0, 1e300],
                           np.random.default_rng(3).exponential(2.0, 1000)])
    expected = np.histogram(loss, bins=[*LOSS_EDGES, np.inf])[0]
    assert loss_histogram(loss).tolist() == expected.tolist()  # counts: exact
    weights = np.linspace(0.5, 2, len(loss))
    np.testing.assert_allclose(loss_histogram(loss, weights), np.histogram(loss, bins=[*LOSS_EDGES, np.inf],
                                                                           weights=weights)[0], rtol=1e-11)  # a cumsum differenced
    assert loss_histogram(np.zeros(0)).tolist() == [0.0] * len(LOSS_EDGES)
