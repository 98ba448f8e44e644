"""Precision against exact references: KL, reverse KL and JS of nearly equal rows (mpmath), what the
clip moved and what it cost (a real GaussianNB), and perplexity when exp overflows."""

import math

import mpmath
import numpy as np
import pandas as pd
import pytest
from scipy.special import kl_div, rel_entr
from sklearn.datasets import load_digits
from sklearn.metrics import log_loss
from sklearn.naive_bayes import GaussianNB

import nllcli
from nllcli import losses
from nllcli.summary import Summary

from helpers import write_csv

EPS = float(np.finfo(np.float64).eps)
mpmath.mp.dps = 60
CLASSES = ["a", "b", "c", "d", "e"]


def frame(rows: np.ndarray, prefix: str = "p_", **extra) -> pd.DataFrame:
    return pd.DataFrame({**{prefix + c: rows[:, j] for j, c in enumerate(CLASSES)}, **extra})


def near_equal_rows(seed: int = 0, n: int = 80):
    """Rows t of exact mass 1 (multiples of 2^-30) and q = t with +d on one entry and -d on another,
    d = 2^-e exactly representable and both changes exact, so t and q have the same exact mass."""
    rng = np.random.default_rng(seed)
    ts, qs = [], []
    while len(ts) < n:
        counts = rng.integers(1, 2**28, size=len(CLASSES) - 1)
        counts = np.append(counts, 2**30 - counts.sum())
        t = counts / 2.0**30
        q = t.copy()
        i, j = rng.choice(len(CLASSES), 2, replace=False)
        d = 2.0 ** -int(rng.integers(31, 75))
        q[i] += d
        q[j] -= d
        if q[i] - t[i] == d and t[j] - q[j] == d:  # both subtractions exact (Sterbenz): the changes were exact
            ts.append(t)
            qs.append(q)
    return np.array(ts), np.array(qs)


def exact_kl(t_row, q_row) -> mpmath.mpf:
    return mpmath.fsum(mpmath.mpf(a) * mpmath.log(mpmath.mpf(a) / mpmath.mpf(b)) for a, b in zip(t_row, q_row) if a)


def exact_js(p_row, q_row) -> mpmath.mpf:
    m = [(mpmath.mpf(a) + mpmath.mpf(b)) / 2 for a, b in zip(p_row, q_row)]
    return (exact_kl(p_row, m) + exact_kl(q_row, m)) / 2


def naive_kl(t, q):
    """sum t (log t - log q): the form that cancels to rounding noise on nearly equal rows."""
    return (t * (np.log(t) - np.log(q))).sum(axis=1)


@pytest.fixture(scope="module")
def near():
    t, q = near_equal_rows()
    reference = np.array([float(exact_kl(a, b)) for a, b in zip(t, q)])
    return t, q, reference


# -- KL of nearly equal rows -----------------------------------------------------------------

def test_kl_of_nearly_equal_rows_keeps_its_digits(near):
    t, q, reference = near
    assert reference.min() < 1e-30 and reference.max() > 1e-20  # d from 2^-31 to 2^-74
    kl = losses.kl_divergence(t, q=q)
    assert (kl > 0).all()
    np.testing.assert_allclose(kl, reference, rtol=1e-14, atol=0)
    # the per-element form scipy.special.rel_entr shares loses everything on these rows
    naive = naive_kl(t, q)
    assert (naive < 0).any() and np.max(np.abs(naive - reference) / reference) > 1.0


def test_the_commands_use_the_exact_kernel(near):
    """nll kl (and its reverse and JS) and score --targets agree with the exact references."""
    t, q, reference = near
    report = nllcli.kl(frame(t), frame(q), symmetric=True)
    assert report.metrics["kl"] == pytest.approx(float(mpmath.fsum(map(mpmath.mpf, reference)) / len(t)), rel=1e-13)
    reverse = [exact_kl(b, a) for a, b in zip(t, q)]
    assert report.metrics["kl_reverse"] == pytest.approx(float(mpmath.fsum(reverse) / len(t)), rel=1e-13)
    js = [exact_js(a, b) for a, b in zip(t, q)]
    assert report.metrics["js"] == pytest.approx(float(mpmath.fsum(js) / len(t)), rel=1e-12)
    scored = nllcli.score(frame(q), targets=frame(t))
    assert scored.metrics["kl"] == report.metrics["kl"]
    for metrics in (report.metrics, scored.metrics):
        assert abs(metrics["cross_entropy"] - metrics["entropy"] - metrics["kl"]) <= 1e-9


def test_js_and_reverse_kl_of_nearly_equal_rows_per_row(near):
    t, q, _ = near
    js = losses.js_divergence(t, q)
    np.testing.assert_allclose(js, [float(exact_js(a, b)) for a, b in zip(t, q)], rtol=1e-13, atol=0)
    np.testing.assert_allclose(losses.kl_divergence(q, q=t), [float(exact_kl(b, a)) for a, b in zip(t, q)],
                               rtol=1e-14, atol=0)


def test_kl_is_never_negative_on_rounded_rows():
    """Rows normalised by a float division (sums 1 only to rounding), nearly equal or equal."""
    rng = np.random.default_rng(3)
    t = rng.dirichlet(np.ones(5), size=2000)
    q = t * (1 + rng.normal(scale=1e-9, size=t.shape)) * rng.integers(0, 2, size=(len(t), 1))
    q[q.sum(axis=1) == 0] = t[q.sum(axis=1) == 0]
    q /= q.sum(axis=1, keepdims=True)
    assert (losses.kl_divergence(t, q=q) >= 0).all()
    assert (losses.kl_divergence(q, q=t) >= 0).all()
    assert (losses.js_divergence(t, q) >= 0).all()
    _, _, kl = losses.soft_losses(t, np.log(q), q)
    assert (kl >= 0).all()


def test_terms_match_scipy_kl_div_and_rows_match_rel_entr():
    rng = np.random.default_rng(5)
    t, q = rng.dirichlet(np.ones(5), size=500), rng.dirichlet(np.ones(5), size=500)
    t[::7, 2] = 0.0
    t /= t.sum(axis=1, keepdims=True)
    terms = losses.relative_entropy_terms(t, q, np.log(q))
    assert (terms >= 0).all()
    np.testing.assert_allclose(terms, kl_div(t, q), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(losses.kl_divergence(t, q=q), rel_entr(t, q).sum(axis=1), rtol=1e-10)


def test_rows_of_different_mass_keep_ce_equal_h_plus_kl():
    """q clipped to [0.001, 0.999] has more mass than t: KL stays sum t log(t/q), as CE - H."""
    t = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    q = np.clip(np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.25, 0.25, 0.5]]), 1e-3, 1 - 1e-3)
    ce, h, kl = losses.soft_losses(t, np.log(q), q)
    np.testing.assert_allclose(kl, rel_entr(t, q).sum(axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ce - h, kl, rtol=0, atol=1e-15)


def test_logits_far_below_keep_a_finite_kl():
    """exp(log q) underflows to 0 for a logit 800 below the top; the KL comes from log q."""
    log_q = losses.log_softmax(np.array([[0.0, -800.0]]))
    kl = losses.kl_divergence(np.array([[0.5, 0.5]]), log_q=log_q)
    assert kl[0] == pytest.approx(0.5 * math.log(0.5) + 0.5 * (math.log(0.5) + 800.0), rel=1e-12)


# -- clip accounting ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian_nb():
    """GaussianNB on the digits: it writes exact 0s and 1s, on the true class too."""
    x, y = load_digits(return_X_y=True)
    probs = GaussianNB().fit(x[::2], y[::2]).predict_proba(x[1::2])
    return probs, y[1::2]


def test_gaussian_nb_zeros_are_told_apart_from_nudged_ones(gaussian_nb):
    probs, y = gaussian_nb
    p_true = probs[np.arange(len(y)), y]
    zeros, ones = int((p_true < EPS).sum()), int((p_true > 1 - EPS).sum())
    assert zeros >= 1 and ones > 5 * zeros  # the case of the issue: the ones drown the zeros
    report = nllcli.score(pd.DataFrame({"label": y, **{f"p_{k}": probs[:, k] for k in range(10)}}))
    assert report.metrics["nll"] == pytest.approx(log_loss(y, probs, labels=range(10)), rel=1e-10)
    out = report.to_dict()
    assert (out["clipped_zero"], out["clipped_nudged"], out["clipped"]) == (zeros, ones, zeros + ones)
    loud, quiet = out["warnings"][:2]
    share = zeros * -math.log(EPS) / len(y)
    assert loud == (f"{zeros} true-class probabilities were 0 or below eps = 2.22e-16, clipped to eps: "
                    f"each costs 36.04 nats (-log eps), together {share:.6g} of the mean nll "
                    f"{report.metrics['nll']:.6g}")
    assert quiet == (f"note: {ones} true-class probabilities were 1, clipped to 1 - eps "
                     "(a loss change of about 2.2e-16 nats each)")


def test_tiny_but_positive_true_class_counts_as_a_zero():
    df = pd.DataFrame({"label": ["a", "a", "b"], "p_a": [1e-300, 0.5, 0.0], "p_b": [1 - 1e-300, 0.5, 1.0]})
    report = nllcli.score(df)
    assert (report.clipped_zero, report.clipped_nudged) == (1, 1)


def test_weights_give_the_share_of_the_weighted_mean():
    df = pd.DataFrame({"label": ["a", "a"], "p_a": [0.0, 0.5], "p_b": [1.0, 0.5], "w": [3.0, 1.0]})
    report = nllcli.score(df, weight="w", base="2")
    share = 3 * -math.log2(EPS) / 4
    assert report.metrics["nll"] == pytest.approx(share + 1 / 4, rel=1e-12)
    assert report.clipped_zero == 1 and report.clipped_nudged == 0
    assert f"each costs 52 bits (-log eps), together {share:.6g} of the mean nll" in report.warnings[0]
    assert not any(w.startswith("note:") for w in report.warnings)


def test_soft_targets_count_zeros_only_where_the_target_is_positive():
    # q_b = 0 under t_b = 0.5: a zero (costs 0.5 * -log eps); q_a = 1 under t_a = 0.5: nudged;
    # q_c = 0 under t_c = 0: moved by the clip but costs nothing, not counted.
    q = pd.DataFrame({"p_a": [1.0, 0.3], "p_b": [0.0, 0.3], "p_c": [0.0, 0.4]})
    t = pd.DataFrame({"p_a": [0.5, 0.3], "p_b": [0.5, 0.3], "p_c": [0.0, 0.4]})
    report = nllcli.kl(t, q)
    assert (report.clipped_zero, report.clipped_nudged, report.clipped) == (1, 1, 2)
    share = 0.5 * -math.log(EPS) / 2
    assert f"together {share:.6g} of the mean cross_entropy" in report.warnings[0]
    assert report.warnings[0].startswith("1 probability of Q where P > 0 was 0 or below eps")
    scored = nllcli.score(q, targets=t)
    assert (scored.clipped_zero, scored.clipped_nudged) == (1, 1)
    assert scored.warnings[0].startswith("1 predicted probability where the target is > 0 was 0 or below eps")


def test_log_probs_minus_inf_is_a_zero_and_zero_is_nudged():
    df = pd.DataFrame({"label": ["a", "b", "a"], "p_a": [-np.inf, -np.inf, math.log(0.5)],
                       "p_b": [0.0, 0.0, math.log(0.5)]})
    report = nllcli.score(df, input="log-probs")
    assert (report.clipped_zero, report.clipped_nudged) == (1, 1)


def test_clip_counts_merge_across_batches_and_groups():
    rng = np.random.default_rng(1)
    n = 3000
    p_a = rng.choice([0.0, 1.0, 0.3], size=n)
    df = pd.DataFrame({"label": rng.choice(["a", "b"], size=n), "p_a": p_a, "p_b": 1 - p_a,
                       "g": rng.choice(["x", "y"], size=n)})
    whole = nllcli.score(df, by=["g"])
    p_true = np.where(df["label"] == "a", df["p_a"], df["p_b"])
    assert whole.clipped_zero == (p_true == 0).sum() and whole.clipped_nudged == (p_true == 1).sum()
    left, right = (Summary.of_batch({"nll": np.ones(2)}, 2, clipped=c, clipped_zero=z, zero_loss=loss)
                   for c, z, loss in ((3, 1, 36.0), (5, 2, 72.0)))
    merged = left + right
    assert (merged.clipped, merged.clipped_zero, merged.clipped_nudged, merged.zero_loss) == (8, 3, 5, 108.0)


def test_cli_json_and_table_say_what_the_clip_did(run, run_json, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["label", "p_a", "p_b"], [("a", 0.0, 1.0), ("b", 0.0, 1.0), ("a", 0.5, 0.5)])
    code, data, err = run_json("score", path)
    assert code == 0, err
    assert (data["clipped"], data["clipped_zero"], data["clipped_nudged"]) == (2, 1, 1)
    table = run("score", path)
    assert table.exit_code == 0
    text = " ".join(table.stdout.split())  # the table may wrap long lines
    assert "1 true-class probability was 0 or below eps = 2.22e-16, clipped to eps" in text
    assert "note: 1 true-class probability was 1, clipped to 1 - eps" in text


# -- perplexity --------------------------------------------------------------------------------

def logit_rows(gaps, **extra) -> pd.DataFrame:
    """Logits whose true class (a) sits ``gap`` below the other: nll ~ gap nats, never clipped."""
    gaps = np.asarray(gaps, dtype=float)
    return pd.DataFrame({"label": ["a"] * len(gaps), "p_a": -gaps, "p_b": np.zeros(len(gaps)), **extra})


def test_perplexity_overflow_is_named_as_such():
    report = nllcli.score(logit_rows([1000.0]), input="logits", base="2")
    assert report.metrics["nll"] == pytest.approx(1000 / math.log(2), rel=1e-12)
    out = report.to_dict()
    assert out["metrics"]["perplexity"] is None
    assert "perplexity overflows float64: mean loss 1000.0 nats > 709.78; written as null" in out["warnings"]
    assert not any("probability of an observed class is 0" in w for w in out["warnings"])


def test_perplexity_just_below_the_limit_is_finite():
    report = nllcli.score(logit_rows([709.5]), input="logits")
    assert report.metrics["perplexity"] == pytest.approx(math.exp(709.5), rel=1e-12)
    assert report.to_dict()["warnings"] == []


def test_infinite_loss_keeps_the_zero_probability_message():
    df = pd.DataFrame({"label": ["a"], "p_a": [0.0], "p_b": [1.0]})
    warnings = nllcli.score(df, eps=0).to_dict()["warnings"]
    assert "perplexity is infinite (a probability of an observed class is 0; see --eps); written as null" in warnings


def test_kl_command_overflow_of_a_finite_cross_entropy():
    p = pd.DataFrame({"p_a": [0.0], "p_b": [-1000.0]})  # logits: P = (1, e^-1000)
    q = pd.DataFrame({"p_a": [-710.0], "p_b": [0.0]})
    report = nllcli.kl(p, q, input="logits")
    assert math.isfinite(report.metrics["kl"]) and report.metrics["kl"] == pytest.approx(710.0, rel=1e-12)
    assert "perplexity overflows float64: mean loss 710.0 nats > 709.78" in report.all_warnings()


def test_groups_name_their_own_overflow():
    report = nllcli.score(logit_rows([800.0, 1.0], g=["far", "near"]), input="logits", by=["g"])
    far = next(g for g in report.groups if g["by"] == {"g": "far"})
    assert far["metrics"]["perplexity"] == math.inf
    assert report.metrics["perplexity"] == pytest.approx(math.exp(report.metrics["nll"]), rel=1e-12)
    assert report.all_warnings() == ["group g=far: perplexity overflows float64: mean loss 800.0 nats > 709.78"]


def test_cli_writes_the_overflow_warning(run_json, tmp_path):
    path = write_csv(tmp_path / "logits.csv", ["label", "a", "b"], [("a", -900, 0)])
    code, data, err = run_json("score", path, "--input", "logits")
    assert code == 0, err
    assert data["metrics"]["perplexity"] is None
    assert any(w.startswith("perplexity overflows float64: mean loss 900.0 nats") for w in data["warnings"])


def test_reverse_kl_names_the_target_zeros_it_clipped():
    """KL(Q || P) meets P = 0 under Q > 0: P is clipped to eps there, and that is most of it."""
    p = pd.DataFrame({"p_a": [1.0, 0.5, 0.2], "p_b": [0.0, 0.5, 0.8]})
    q = pd.DataFrame({"p_a": [0.9, 0.5, 0.2], "p_b": [0.1, 0.5, 0.8]})
    report = nllcli.kl(p, q, symmetric=True)
    assert report.to_dict()["clipped_zero_reverse"] == 1
    # Q is not clipped; P's 1.0 lowered to 1 - eps for the reverse KL moves nothing visible: not counted
    assert report.clipped_zero == report.clipped_nudged == 0
    part = (0.1 * math.log(0.1 / EPS) - 0.1 + EPS) / 3  # that entry's term of the reverse KL
    expected = (0.1 * math.log(0.1 / EPS) + 0.9 * math.log(0.9 / (1 - EPS))) / 3
    assert report.metrics["kl_reverse"] == pytest.approx(expected, rel=1e-12)
    assert report.warnings[-1] == ("kl_reverse: 1 probability of P was 0 or below eps = 2.22e-16 where Q > 0, "
                                   f"clipped to eps: together {part:.6g} of the mean kl_reverse "
                                   f"{report.metrics['kl_reverse']:.6g}")
    assert nllcli.kl(p, q).to_dict()["clipped_zero_reverse"] == 0  # without --symmetric nothing is reversed
