"""Parity of the library API (nllcli.score / nllcli.kl) with scikit-learn and SciPy references."""

import math
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, rel_entr, xlogy
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, log_loss

import nllcli

EPS = float(np.finfo(np.float64).eps)
RTOL = 1e-10
ZERO_ROW_LOSS = 36.04365338911715  # -log(float64 eps): sklearn >= 1.5 clips an exact 0 to eps
CLASSES = ["owl", "cat", "eel", "ant", "dog"]  # deliberately not in sorted order
SORTED = sorted(CLASSES)


def close(actual, expected, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def dirichlet(rng, n, k, alpha=1.0):
    return rng.dirichlet(np.full(k, alpha), size=n)


def zero_true_class(probs, labels, rows):
    """Put an exact 0 on the true class of the given rows (the rest renormalised)."""
    probs = probs.copy()
    probs[rows, labels[rows]] = 0.0
    return probs / probs.sum(axis=1, keepdims=True)


def frame(classes, probs, labels=None, order=None, prefix="p_", **extra):
    """A wide prediction frame: label column first, then one column per class in ``order``."""
    order = range(len(classes)) if order is None else order
    data = {} if labels is None else {"label": labels}
    data.update({prefix + classes[j]: probs[:, j] for j in order})
    data.update(extra)
    return pd.DataFrame(data)


def sklearn_columns(classes, probs):
    """The columns of probs reordered to sorted(classes), the order scikit-learn uses."""
    return probs[:, [classes.index(c) for c in sorted(classes)]]


@pytest.fixture
def multiclass():
    """300 rows over CLASSES (labels as class indices); rows 0, 7 and 42 have an exact 0 on the true class."""
    rng = np.random.default_rng(20240601)
    n, k = 300, len(CLASSES)
    labels = rng.integers(0, k, size=n)
    probs = zero_true_class(dirichlet(rng, n, k), labels, [0, 7, 42])
    return probs, labels, rng


# -- hard labels vs sklearn.metrics.log_loss -------------------------------------------------

def test_string_labels_shuffled_columns_match_log_loss(multiclass):
    probs, labels, rng = multiclass
    y = np.array(CLASSES)[labels]
    df = frame(CLASSES, probs, y, order=rng.permutation(len(CLASSES)))
    report = nllcli.score(df)
    expected = log_loss(y, sklearn_columns(CLASSES, probs), labels=SORTED)
    close(report.metrics["nll"], expected)
    close(report.metrics["cross_entropy"], expected)
    close(report.metrics["perplexity"], math.exp(expected))
    assert report.metrics["entropy"] == 0.0
    close(report.metrics["accuracy"], accuracy_score(labels, probs.argmax(axis=1)))
    assert report.rows == 300
    assert report.clipped == 3
    assert sorted(report.classes) == SORTED


def test_per_class_nll_matches_log_loss_on_each_class(multiclass):
    probs, labels, rng = multiclass
    y = np.array(CLASSES)[labels]
    report = nllcli.score(frame(CLASSES, probs, y, order=rng.permutation(len(CLASSES))))
    by_class = {row["class"]: row for row in report.per_class}
    for j, name in enumerate(CLASSES):
        mask = labels == j
        assert by_class[name]["rows"] == mask.sum()
        close(by_class[name]["nll"], log_loss(y[mask], sklearn_columns(CLASSES, probs[mask]), labels=SORTED))
        close(by_class[name]["accuracy"], accuracy_score(labels[mask], probs[mask].argmax(axis=1)))


def test_rows_with_zero_on_true_class_cost_minus_log_eps():
    df = pd.DataFrame({"label": ["a", "b", "a"], "p_a": [0.0, 0.0, 0.5], "p_b": [1.0, 1.0, 0.5]})
    report = nllcli.score(df)
    # row 0: p_a = 0 clipped to eps; row 1: p_b = 1 clipped to 1 - eps; row 2: ln 2.
    expected = (ZERO_ROW_LOSS - math.log1p(-EPS) + math.log(2)) / 3
    close(report.metrics["nll"], expected)
    close(report.metrics["nll"], log_loss(["a", "b", "a"], [[0, 1], [0, 1], [.5, .5]]))
    single = nllcli.score(df.iloc[:1])
    close(single.metrics["nll"], ZERO_ROW_LOSS, rtol=1e-15)
    assert report.clipped == 2


def test_zero_on_true_class_with_eps_zero_is_infinite():
    df = pd.DataFrame({"label": ["a", "b"], "p_a": [0.0, 0.5], "p_b": [1.0, 0.5]})
    report = nllcli.score(df, eps=0)
    assert report.metrics["nll"] == math.inf
    assert report.clipped == 0
    out = report.to_dict()
    assert out["metrics"]["nll"] is None
    assert any(w.startswith("nll is infinite") for w in out["warnings"])


def test_sample_weights_match_log_loss(multiclass):
    probs, labels, rng = multiclass
    y = np.array(CLASSES)[labels]
    w = rng.uniform(0, 5, size=len(y))
    w[[3, 4]] = 0.0
    df = frame(CLASSES, probs, y, order=rng.permutation(len(CLASSES)), w=w)
    report = nllcli.score(df, weight="w")
    close(report.metrics["nll"], log_loss(y, sklearn_columns(CLASSES, probs), labels=SORTED, sample_weight=w))
    close(report.metrics["accuracy"], accuracy_score(labels, probs.argmax(axis=1), sample_weight=w))
    assert report.to_dict()["weighted"] is True


@pytest.fixture
def binary():
    """250 labels 0/1 and P(class 1), with exact 0s and 1s on the true and on the wrong class."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=250)
    p1 = rng.uniform(size=250)
    p1[:4] = [0.0, 1.0, 0.0, 1.0]
    y[:4] = [1, 0, 0, 1]
    return y, p1


def test_binary_single_column_matches_log_loss(binary):
    y, p1 = binary
    report = nllcli.score(pd.DataFrame({"label": y, "p_1": p1}))
    close(report.metrics["nll"], log_loss(y, p1))
    close(report.metrics["accuracy"], accuracy_score(y, (p1 > 0.5).astype(int)))
    assert report.classes == ["0", "1"]
    assert report.clipped == 4


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # see test_valid_edge_cases_emit_no_...
def test_binary_log_probs_clip_like_probs(binary):
    y, p1 = binary
    with np.errstate(divide="ignore"):
        df = pd.DataFrame({"label": y, "p_1": np.log(p1)})
    close(nllcli.score(df, input="log-probs").metrics["nll"], log_loss(y, p1), rtol=1e-9)


def test_binary_logits_match_log_loss():
    rng = np.random.default_rng(17)
    y, z = rng.integers(0, 2, size=250), rng.normal(scale=3, size=250)
    report = nllcli.score(pd.DataFrame({"label": y, "p_1": z}), input="logits")
    close(report.metrics["nll"], log_loss(y, 1 / (1 + np.exp(-z))), rtol=1e-9)


def test_binary_positive_label(binary):
    y, p1 = binary
    df = pd.DataFrame({"label": np.where(y == 1, "spam", "ham"), "p_spam": p1})
    report = nllcli.score(df, positive="spam")
    close(report.metrics["nll"], log_loss(y, p1))
    assert report.classes == ["not spam", "spam"]


def test_renormalize_matches_log_loss_of_normalised_rows(multiclass):
    probs, labels, rng = multiclass
    y = np.array(CLASSES)[labels]
    scaled = probs * rng.uniform(0.2, 1.0, size=(len(y), 1))  # cells stay <= 1, rows no longer sum to 1
    expected = log_loss(y, sklearn_columns(CLASSES, probs), labels=SORTED)
    close(nllcli.score(frame(CLASSES, scaled, y), renormalize=True).metrics["nll"], expected)
    with np.errstate(divide="ignore"):
        log_scaled = np.log(scaled)
    report = nllcli.score(frame(CLASSES, log_scaled, y), input="log-probs", renormalize=True)
    close(report.metrics["nll"], expected, rtol=1e-9)


def test_integer_labels_index_classes_by_position(multiclass):
    probs, labels, _ = multiclass
    names = ["x", "y", "z", "w", "v"]  # not integers, so 0..4 are positions
    report = nllcli.score(frame(names, probs, labels))
    close(report.metrics["nll"], log_loss(labels, probs, labels=list(range(len(names)))))


def test_sklearn_documented_example():
    y = ["spam", "ham", "ham", "spam"]
    p = [[.1, .9], [.9, .1], [.8, .2], [.35, .65]]
    df = pd.DataFrame({"label": y, "p_ham": [r[0] for r in p], "p_spam": [r[1] for r in p]})
    nll = nllcli.score(df).metrics["nll"]
    assert round(nll, 5) == 0.21616
    close(nll, log_loss(y, p))


def as_input(df, form, tmp_path):
    """The same frame as a DataFrame, a pyarrow Table, or a CSV / Parquet path."""
    if form == "table":
        return pa.Table.from_pandas(df, preserve_index=False)
    if form == "csv":
        df.to_csv(tmp_path / "p.csv", index=False)
        return tmp_path / "p.csv"
    if form == "parquet":
        df.to_parquet(tmp_path / "p.parquet", index=False)
        return str(tmp_path / "p.parquet")
    return df


@pytest.mark.parametrize("form", ["dataframe", "table", "csv", "parquet"])
def test_every_input_form_gives_the_same_result(multiclass, form, tmp_path):
    probs, labels, _ = multiclass
    y = np.array(CLASSES)[labels]
    report = nllcli.score(as_input(frame(CLASSES, probs, y), form, tmp_path))
    close(report.metrics["nll"], log_loss(y, sklearn_columns(CLASSES, probs), labels=SORTED))


def test_integer_class_names_are_matched_by_name_not_position(multiclass):
    probs, labels, rng = multiclass
    names = [str(j) for j in range(len(CLASSES))]
    df = frame(names, probs, labels, order=rng.permutation(len(names)))
    close(nllcli.score(df).metrics["nll"], log_loss(labels, probs, labels=list(range(len(names)))))


@pytest.mark.parametrize("kind, half, zero", [("probs", 0.5, 0.0), ("log-probs", math.log(0.5), -math.inf)],
                         ids=["probs", "log-probs"])
def test_renormalize_rejects_rows_that_sum_to_zero(kind, half, zero):
    """[0, 0] as probabilities, or [-inf, -inf] as log-probabilities, has nothing to renormalise."""
    df = pd.DataFrame({"label": ["a", "b"], "p_a": [half, zero], "p_b": [half, zero]})
    with pytest.raises(nllcli.InputError, match="sum to 0"):
        nllcli.score(df, input=kind, renormalize=True)


# -- logits and log-probabilities ------------------------------------------------------------

@pytest.fixture
def logits():
    rng = np.random.default_rng(11)
    n, k = 300, 4
    return rng.normal(scale=4, size=(n, k)), rng.integers(0, k, size=n)


def test_logits_match_log_softmax_reference(logits):
    z, labels = logits
    names = list("abcd")
    report = nllcli.score(frame(names, z, np.array(names)[labels]), input="logits")
    expected = -log_softmax(z, axis=1)[np.arange(len(labels)), labels]
    close(report.metrics["nll"], expected.mean())
    close(report.metrics["accuracy"], np.mean(z.argmax(axis=1) == labels))
    assert report.clipped == 0


def test_logits_per_sample_and_p_true(logits, tmp_path):
    z, labels = logits
    names = list("abcd")
    out = tmp_path / "rows.parquet"
    nllcli.score(frame(names, z, np.array(names)[labels]), input="logits", per_sample=out)
    rows = pq.read_table(out).to_pandas()
    log_q = log_softmax(z, axis=1)[np.arange(len(labels)), labels]
    close(rows["nll"], -log_q)
    close(rows["p_true"], np.exp(log_q))


def test_log_probs_match_reference(logits):
    z, labels = logits
    names = list("abcd")
    log_p = log_softmax(z, axis=1)
    report = nllcli.score(frame(names, log_p, np.array(names)[labels]), input="log-probs")
    expected = -np.clip(log_p[np.arange(len(labels)), labels], math.log(EPS), math.log1p(-EPS))
    close(report.metrics["nll"], expected.mean())
    # the same numbers as probabilities, up to exp/log rounding
    probs_report = nllcli.score(frame(names, np.exp(log_p), np.array(names)[labels]))
    close(report.metrics["nll"], probs_report.metrics["nll"], rtol=1e-9)


def test_log_probs_minus_inf_on_true_class_is_clipped_like_probs():
    df = pd.DataFrame({"label": ["a", "b"], "p_a": [-math.inf, math.log(.5)], "p_b": [0.0, math.log(.5)]})
    close(nllcli.score(df, input="log-probs").metrics["nll"], (ZERO_ROW_LOSS + math.log(2)) / 2)
    assert nllcli.score(df, input="log-probs", eps=0).metrics["nll"] == math.inf


@pytest.mark.parametrize("label, expected", [("a", 0.0), ("b", 1e4), ("c", 2e4)])
def test_huge_logits_give_finite_exact_losses(label, expected):
    df = pd.DataFrame({"label": [label], "p_a": [1e4], "p_b": [0.0], "p_c": [-1e4]})
    report = nllcli.score(df, input="logits")
    assert math.isfinite(report.metrics["nll"])
    close(report.metrics["nll"], expected, rtol=1e-15, atol=1e-300)


# -- soft targets ----------------------------------------------------------------------------

def with_zeros(rng, n, k, fraction=0.3):
    """Normalised Dirichlet rows with some exact zeros."""
    p = dirichlet(rng, n, k)
    p[rng.random((n, k)) < fraction] = 0.0
    p[p.sum(axis=1) == 0, 0] = 1.0
    return p / p.sum(axis=1, keepdims=True)


def soft_reference(t, q, eps):
    """Per-row (cross_entropy, entropy, kl) with q clipped to [eps, 1 - eps] (never renormalised)."""
    if eps > 0:
        q = np.clip(q, eps, 1 - eps)
    return -xlogy(t, q).sum(axis=1), scipy_entropy(t, axis=1), rel_entr(t, q).sum(axis=1)


@pytest.fixture
def soft():
    """Targets t and predictions q over 4 classes, both with exact zeros; q > 0 wherever t > 0."""
    rng = np.random.default_rng(5)
    n, k = 300, 4
    t = with_zeros(rng, n, k)
    q = with_zeros(rng, n, k)
    q = np.where(t > 0, np.maximum(q, 0.05), q)
    q /= q.sum(axis=1, keepdims=True)
    assert (t == 0).any() and (q == 0).any()
    return t, q, rng


@pytest.mark.parametrize("eps", [0.0, EPS, 1e-3])
@pytest.mark.parametrize("how", ["targets-frame", "target-prefix"])
def test_soft_targets_match_scipy(soft, eps, how, tmp_path):
    t, q, rng = soft
    names = list("abcd")
    out = tmp_path / "rows.parquet"
    if how == "targets-frame":
        # the targets frame lists its class columns in another order: they are matched by name
        report = nllcli.score(frame(names, q), targets=frame(names, t, order=rng.permutation(4)),
                              eps=eps, per_sample=out)
    else:
        df = frame(names, q, **{"t_" + c: t[:, j] for j, c in enumerate(names)})
        report = nllcli.score(df, target_prefix="t_", eps=eps, per_sample=out)
    ce, h, kl = soft_reference(t, q, eps)
    rows = pq.read_table(out).to_pandas()
    close(rows["cross_entropy"], ce)
    close(rows["entropy"], h, atol=1e-15)
    close(rows["kl"], kl, atol=1e-15)
    close(report.metrics["cross_entropy"], ce.mean())
    close(report.metrics["nll"], ce.mean())
    close(report.metrics["entropy"], h.mean())
    close(report.metrics["kl"], kl.mean())
    close(report.metrics["perplexity"], math.exp(ce.mean()))
    close(report.metrics["cross_entropy"], report.metrics["entropy"] + report.metrics["kl"], rtol=1e-9)


def test_weighted_soft_targets_match_weighted_average(soft):
    t, q, rng = soft
    names = list("abcd")
    w = rng.uniform(0, 2, size=len(t))
    report = nllcli.score(frame(names, q, w=w), targets=frame(names, t), weight="w", eps=0)
    ce, h, kl = soft_reference(t, q, 0.0)
    close(report.metrics["cross_entropy"], np.average(ce, weights=w))
    close(report.metrics["entropy"], np.average(h, weights=w))
    close(report.metrics["kl"], np.average(kl, weights=w))


def test_targets_paired_by_id_in_any_order(soft):
    t, q, rng = soft
    names = list("abcd")
    ids = np.arange(len(t)).astype(str)
    perm = rng.permutation(len(t))
    shuffled_targets = frame(names, t[perm], id=ids[perm])
    report = nllcli.kl(shuffled_targets, frame(names, q, id=ids), eps=0)
    close(report.metrics["kl"], soft_reference(t, q, 0.0)[2].mean())


def test_kl_command_matches_scipy(soft):
    t, q, rng = soft
    names = list("abcd")
    report = nllcli.kl(frame(names, t, order=rng.permutation(4)), frame(names, q), eps=0)
    ce, h, kl = soft_reference(t, q, 0.0)
    close(report.metrics["kl"], kl.mean())
    close(report.metrics["cross_entropy"], ce.mean())
    close(report.metrics["entropy"], h.mean())
    assert "nll" not in report.metrics


def test_kl_symmetric_metrics_match_scipy():
    rng = np.random.default_rng(8)
    p, q = dirichlet(rng, 200, 4), dirichlet(rng, 200, 4)
    names = list("abcd")
    report = nllcli.kl(frame(names, p), frame(names, q), eps=0, symmetric=True)
    close(report.metrics["kl"], rel_entr(p, q).sum(axis=1).mean())
    close(report.metrics["kl_reverse"], rel_entr(q, p).sum(axis=1).mean())
    close(report.metrics["js"], (jensenshannon(p, q, axis=1) ** 2).mean(), rtol=1e-9)


def test_kl_of_logits_matches_softmax_reference():
    rng = np.random.default_rng(9)
    zp, zq = rng.normal(scale=3, size=(200, 3)), rng.normal(scale=3, size=(200, 3))
    names = list("abc")
    report = nllcli.kl(frame(names, zp), frame(names, zq), input="logits")
    lp, lq = log_softmax(zp, axis=1), log_softmax(zq, axis=1)
    close(report.metrics["kl"], (np.exp(lp) * (lp - lq)).sum(axis=1).mean(), rtol=1e-9)
    close(report.metrics["entropy"], scipy_entropy(np.exp(lp), axis=1).mean(), rtol=1e-9)


def test_kl_torchmetrics_documented_value():
    p = pd.DataFrame({"a": [.36], "b": [.48], "c": [.16]})
    q = pd.DataFrame({"a": [1 / 3], "b": [1 / 3], "c": [1 / 3]})
    value = nllcli.kl(p, q).metrics["kl"]
    assert round(value, 4) == 0.0853
    close(value, rel_entr([.36, .48, .16], [1 / 3] * 3).sum())


def test_kl_infinite_when_q_is_zero_where_p_is_positive():
    p = pd.DataFrame({"a": [.5, .2], "b": [.5, .8]})
    q = pd.DataFrame({"a": [1.0, .5], "b": [0.0, .5]})
    report = nllcli.kl(p, q, eps=0)
    assert report.metrics["kl"] == math.inf
    out = report.to_dict()
    assert out["metrics"]["kl"] is None
    assert any(w.startswith("kl is infinite") for w in out["warnings"])
    assert math.isfinite(nllcli.kl(p, q).metrics["kl"])  # the default eps clips q


@pytest.mark.parametrize("eps", [0.0, EPS])
def test_one_hot_targets_equal_hard_labels(multiclass, eps):
    probs, labels, _ = multiclass
    if eps == 0:
        probs = np.clip(probs, 1e-3, None)  # keep the loss finite
        probs /= probs.sum(axis=1, keepdims=True)
    y = np.array(CLASSES)[labels]
    one_hot = np.eye(len(CLASSES))[labels]
    hard = nllcli.score(frame(CLASSES, probs, y), eps=eps)
    soft_ = nllcli.score(frame(CLASSES, probs, y), targets=frame(CLASSES, one_hot), eps=eps)
    for name in ("nll", "cross_entropy", "kl", "perplexity", "accuracy"):
        close(soft_.metrics[name], hard.metrics[name])
    assert soft_.metrics["entropy"] == 0.0
    assert soft_.clipped == hard.clipped
    close([r["nll"] for r in soft_.per_class], [r["nll"] for r in hard.per_class])


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_equals_explicit_targets(multiclass, alpha):
    probs, labels, _ = multiclass
    k = len(CLASSES)
    y = np.array(CLASSES)[labels]
    targets = (1 - alpha) * np.eye(k)[labels] + alpha / k
    smoothed = nllcli.score(frame(CLASSES, probs, y), label_smoothing=alpha)
    explicit = nllcli.score(frame(CLASSES, probs, y), targets=frame(CLASSES, targets))
    for name in ("cross_entropy", "entropy", "kl", "perplexity", "accuracy"):
        close(smoothed.metrics[name], explicit.metrics[name])
    ce, h, kl = soft_reference(targets, probs, EPS)
    close(smoothed.metrics["cross_entropy"], ce.mean())
    close(smoothed.metrics["entropy"], h.mean())
    close(smoothed.metrics["kl"], kl.mean())


# -- no stray numpy warnings ----------------------------------------------------------------

ZEROS = pd.DataFrame({"label": ["a", "b"], "p_a": [0.0, 0.5], "p_b": [1.0, 0.5]})
NO_WARNING_CASES = {
    # log P(class 1) = 0 means P(class 0) = 0: valid input
    "binary-log-probs-certainty": lambda: nllcli.score(pd.DataFrame({"label": [0, 1], "p_1": [0.0, -0.5]}),
                                                       input="log-probs"),
    "hard-eps-0-zero-on-true-class": lambda: nllcli.score(ZEROS, eps=0),
    "soft-eps-0-zero-target-meets-zero-prediction": lambda: nllcli.score(
        ZEROS, targets=pd.DataFrame({"p_a": [0.0, 0.5], "p_b": [1.0, 0.5]}), eps=0),
    "kl-eps-0-infinite": lambda: nllcli.kl(pd.DataFrame({"a": [0.5], "b": [0.5]}),
                                           pd.DataFrame({"a": [1.0], "b": [0.0]}), eps=0),
    "log-probs-minus-inf": lambda: nllcli.score(ZEROS.assign(p_a=[-math.inf, math.log(.5)],
                                                             p_b=[0.0, math.log(.5)]), input="log-probs", eps=0),
}


@pytest.mark.parametrize("case", NO_WARNING_CASES)
def test_valid_edge_cases_emit_no_runtime_warning(case):
    """Zeros and infinities are handled on purpose; numpy must not print warnings to stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = NO_WARNING_CASES[case]()
    assert report.rows > 0


# -- units -----------------------------------------------------------------------------------

@pytest.mark.parametrize("base, unit, scale", [("2", "bits", math.log(2)), ("10", "bans", math.log(10))])
def test_base_converts_information_metrics_only(multiclass, base, unit, scale, tmp_path):
    probs, labels, _ = multiclass
    y = np.array(CLASSES)[labels]
    nats = nllcli.score(frame(CLASSES, probs, y), per_sample=tmp_path / "nats.csv")
    other = nllcli.score(frame(CLASSES, probs, y), base=base, per_sample=tmp_path / "other.csv")
    assert nats.units == "nats" and other.units == unit
    for name in ("nll", "cross_entropy", "kl"):
        close(other.metrics[name], nats.metrics[name] / scale)
    close(other.metrics["perplexity"], nats.metrics["perplexity"])
    close(other.metrics["perplexity"], math.exp(nats.metrics["nll"]))
    assert other.metrics["accuracy"] == nats.metrics["accuracy"]
    close([r["nll"] for r in other.per_class], [r["nll"] / scale for r in nats.per_class])
    rows_nats, rows_other = pd.read_csv(tmp_path / "nats.csv"), pd.read_csv(tmp_path / "other.csv")
    close(rows_other["nll"], rows_nats["nll"] / scale)
    close(rows_other["p_true"], rows_nats["p_true"])  # a probability: never converted


def test_base_2_for_soft_targets_and_kl(soft):
    t, q, _ = soft
    names = list("abcd")
    nats = nllcli.kl(frame(names, t), frame(names, q))
    bits = nllcli.kl(frame(names, t), frame(names, q), base=2)
    for name in ("kl", "cross_entropy", "entropy"):
        close(bits.metrics[name], nats.metrics[name] / math.log(2))
    close(bits.metrics["perplexity"], math.exp(nats.metrics["cross_entropy"]))
