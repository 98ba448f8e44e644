"""Numpy kernels on one batch of rows. No I/O, no printing.

Notation: each row is a sample; ``q`` is the model's distribution over K classes, ``t`` a target
distribution (one-hot for a hard label y). All logarithms are natural; callers convert units.

    cross-entropy  CE(t, q) = -sum_k t_k log q_k        (= -log q_y for a hard label)
    entropy        H(t)     = -sum_k t_k log t_k        (0 for a hard label)
    KL divergence  KL(t||q) =  sum_k t_k log(t_k / q_k)  (= CE - H, but computed directly, as
                               sum_k [t_k log(t_k / q_k) - t_k + q_k] + sum_k (t_k - q_k): terms
                               that are never negative, and 0 for rows of equal mass)

with the convention 0 * log 0 = 0, so classes with t_k = 0 contribute nothing to CE and H.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

EPS = float(np.finfo(np.float64).eps)

INPUT_KINDS = ("probs", "logits", "log-probs")


@dataclass(frozen=True, eq=False)
class Problem:
    """Why some rows of a batch are not valid input. Rows and columns are 0-based in the batch."""

    message: str
    rows: np.ndarray
    column: int | None = None
    hint: str | None = None


# -- validation ------------------------------------------------------------------------------


def find_problem(values: np.ndarray, kind: str, tol: float, renormalize: bool = False) -> Problem | None:
    """First reason the rows of ``values`` (n, K) are not distributions of the given kind, or None.

    probs: finite, 0 <= v <= 1 + tol, rows summing to 1 within ``tol`` (unless renormalizing, then
    any positive sum). log-probs: finite or -inf, <= tol, logsumexp within ``tol`` of 0.
    logits: finite.
    """
    if values.shape[0] == 0:
        return None
    if kind == "logits":
        return _bad_cells(values, ~np.isfinite(values), "non-finite logit")
    if kind == "log-probs":
        problem = _bad_cells(values, np.isnan(values) | (values == np.inf), "NaN or +inf log-probability")
        problem = problem or _bad_cells(values, values > tol, "log-probability above 0",
                                        hint="use --input logits for unnormalised scores")
        if problem:
            return problem
        if renormalize:
            return _bad_rows(np.isneginf(logsumexp(values)), "probabilities sum to 0, cannot renormalise")
        off = np.abs(logsumexp(values)) > tol
        return _bad_rows(off, f"probabilities do not sum to 1 within tol={tol:g}",
                         hint="use --renormalize, or --input logits for unnormalised scores")
    # probs. Valid input, the common case, takes two passes: the least value and the row sums. No
    # value >= 0 exceeds its row's computed sum (adding a value >= 0 never rounds below), so rows
    # summing to 1 within tol hold no value above 1 + tol; else the largest value is looked at too.
    low = values.min()
    sums = off = None
    if low >= 0.0:
        sums = values.sum(axis=1)
        if not renormalize:
            gap = sums - 1.0  # |gap| <= tol on every row: two reductions, no mask unless one is off
            if -tol <= gap.min() and gap.max() <= tol:
                return None
            off = np.abs(gap) > tol
    high = values.max()
    if not (low >= 0.0 and high <= 1.0 + tol):  # also true for NaN
        if np.isnan(low) or np.isnan(high):
            return _bad_cells(values, np.isnan(values), "missing or NaN probability")
        problem = _bad_cells(values, np.isinf(values), "infinite probability",
                             hint="use --input logits if these are scores")
        problem = problem or _bad_cells(values, values < 0, "negative probability",
                                        hint="use --input logits if these are scores")
        return problem or _bad_cells(values, values > 1.0 + tol, "probability above 1",
                                     hint="use --input logits if these are scores")
    assert sums is not None  # low >= 0 here
    if off is None:
        return _bad_rows(sums <= 0, "probabilities sum to 0, cannot renormalise")
    return _bad_rows(off, f"probabilities do not sum to 1 within tol={tol:g}",
                     hint="use --renormalize, or --input logits if these are scores")


def _bad_cells(values: np.ndarray, mask: np.ndarray, message: str, hint: str | None = None) -> Problem | None:
    if not mask.any():
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    column = int(np.argmax(mask[rows[0]]))
    return Problem(message, rows, column, hint)


def _bad_rows(mask: np.ndarray, message: str, hint: str | None = None) -> Problem | None:
    return Problem(message, np.flatnonzero(mask), None, hint) if mask.any() else None


# -- transforms ------------------------------------------------------------------------------


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log(sum_k exp(z_k)) per row, shifted by the row maximum so nothing overflows."""
    top = z.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", over="ignore"):  # z - top may overflow to -inf: exp gives 0
        return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log q_k = z_k - logsumexp(z): exact for logits of any magnitude (never log(softmax(z)))."""
    with np.errstate(over="ignore", invalid="ignore"):  # |z| near 1e308: an infinite loss, reported
        return z - logsumexp(z)[:, None]


def tempered_log_softmax(values: np.ndarray, kind: str, temperature: float) -> np.ndarray:
    """Temperature scaling: log q_k = z_k / T - logsumexp(z / T), with z the logits, the
    log-probabilities, or log p for probabilities (log 0 = -inf: a zero stays a zero, as p^(1/T)).

    Never log(softmax(z / T)); any shift of a row's z leaves the result unchanged. T > 0.
    """
    z = _log(values) if kind == "probs" else values
    return log_softmax(z / temperature)


def vector_scaled_log_softmax(values: np.ndarray, kind: str, scale: np.ndarray, bias: np.ndarray,
                              eps: float) -> np.ndarray:
    """Vector scaling: log q = log_softmax(a * x + b), one scale a_k and bias b_k per class, x the
    log-probabilities of the values (log_softmax of the logits, log-probabilities, log p) raised to
    at least log(eps) (log of the smallest double for eps = 0), so that a zero stays finite."""
    x = feature_log_probs(values, kind, eps)
    return log_softmax(x * scale + bias)


def feature_log_probs(values: np.ndarray, kind: str, eps: float) -> np.ndarray:
    """The log-probabilities vector scaling works on: log_softmax of z (or of log p), >= log(eps)."""
    floor = math.log(eps) if eps > 0 else math.log(_TINY)
    return np.maximum(log_softmax(_log(values) if kind == "probs" else values), floor)


def renormalize_rows(p: np.ndarray) -> np.ndarray:
    """Divide each row by its sum (rows must have a positive sum)."""
    return p / p.sum(axis=1, keepdims=True)


class Clipped(NamedTuple):
    """Values clipped to [eps, 1 - eps] and which of them moved, split by what it costs.

    ``raised``: values below eps (zeros, mostly) raised to eps; each now costs -log(eps) nats
    (36.04 with the default eps) instead of more, or infinity. ``lowered``: values above 1 - eps
    (an exact 1.0) lowered to 1 - eps; the loss changes by at most -log(1 - eps), about eps nats.
    Both masks are None when nothing can move (eps <= 0).
    """

    values: np.ndarray
    raised: np.ndarray | None = None
    lowered: np.ndarray | None = None

    @property
    def moved(self) -> int:
        if self.raised is None or self.lowered is None:
            return 0
        return int(np.count_nonzero(self.raised) + np.count_nonzero(self.lowered))


def nothing_to_clip(p: np.ndarray, eps: float) -> bool:
    """No value below eps or above 1 - eps (or eps <= 0): two reductions, where the clip and its
    masks would take three passes that write. The usual case."""
    return eps <= 0 or p.size == 0 or (p.min() >= eps and p.max() <= 1.0 - eps)


def clip(p: np.ndarray, eps: float) -> Clipped:
    """Clip probabilities to [eps, 1 - eps] (scikit-learn's rule), noting which moved and how."""
    if eps <= 0:
        return Clipped(p)
    return Clipped(np.clip(p, eps, 1.0 - eps), p < eps, p > 1.0 - eps)


def log_clip(log_p: np.ndarray, eps: float) -> Clipped:
    """The same clip for log-probabilities: to [log eps, log(1 - eps)] (-inf is a zero)."""
    if eps <= 0:
        return Clipped(log_p)
    low, high = np.log(eps), np.log1p(-eps)
    return Clipped(np.clip(log_p, low, high), log_p < low, log_p > high)


def binary_matrix(p: np.ndarray, kind: str) -> np.ndarray:
    """Two columns [class 0, class 1] from one column of P(class 1) (or its logit/log)."""
    if kind == "probs":
        return np.column_stack([1.0 - p, p])
    if kind == "logits":
        return np.column_stack([np.zeros_like(p), p])
    with np.errstate(invalid="ignore", divide="ignore"):  # log(1 - 1) = -inf is valid
        return np.column_stack([np.log1p(-np.exp(p)), p])


def clipped_model(q: np.ndarray | None, log_q: np.ndarray | None, kind: str,
                  eps: float) -> tuple[np.ndarray | None, np.ndarray, Clipped | None]:
    """The model's side of a loss: (clipped probabilities or None, log-probabilities, what the clip
    moved or None). Probabilities and log-probabilities are clipped to [eps, 1 - eps]; logits
    (``log_q`` from log_softmax) are exact. Pass ``q`` for probabilities, else ``log_q``.
    """
    if q is not None:
        if nothing_to_clip(q, eps):
            return q, _log(q), None
        clipped = clip(q, eps)
        return clipped.values, _log(clipped.values), clipped
    if log_q is None:
        raise ValueError("pass q or log_q")
    if kind == "log-probs":
        clipped = log_clip(log_q, eps)
        return None, clipped.values, clipped
    return None, log_q, None


def _log(q: np.ndarray) -> np.ndarray:
    """log q, with log 0 = -inf and no warning."""
    with np.errstate(divide="ignore"):
        return np.log(q)


def bad_weights(w: np.ndarray) -> np.ndarray:
    """Rows whose weight is not finite and >= 0 (missing, NaN, infinite or negative)."""
    return np.flatnonzero(~(w >= 0) | np.isinf(w))


def perplexity(mean_nats: float) -> float:
    """exp of the mean loss in nats; +inf when that overflows float64 (mean above 709.78)."""
    try:
        return math.exp(mean_nats)  # NaN stays NaN, +inf stays +inf
    except OverflowError:
        return math.inf


def label_smoothing(labels: np.ndarray, n_classes: int, alpha: float) -> np.ndarray:
    """Targets (1 - alpha) * one_hot(y) + alpha / K (the PyTorch and Keras rule)."""
    t = np.full((labels.shape[0], n_classes), alpha / n_classes)
    t[np.arange(labels.shape[0]), labels] += 1.0 - alpha
    return t


# -- losses ----------------------------------------------------------------------------------


def safe_log(x: np.ndarray) -> np.ndarray:
    """log x, finite even at x = 0 (log of the smallest subnormal), so that 0 * log 0 = 0."""
    out = np.maximum(x, _TINY)
    return np.log(out, out=out)


_TINY = float(np.nextafter(0.0, 1.0))


def soft_losses(t: np.ndarray, log_q: np.ndarray, q: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CE, H, KL) per row against targets t, sharing the products t log t and t log q. Pass ``q``
    when it is at hand (otherwise it is exp(log_q), which loses digits for nearly equal rows).

    CE and H are the row sums of -t log q and -t log t; KL is kl_divergence's, from
    non-negative terms, so it never subtracts CE and H (two large sums that cancel).
    """
    t_log_t = t * (np.log(t) if t.min(initial=1.0) > 0 else safe_log(t))
    with np.errstate(invalid="ignore"):
        t_log_q = t * log_q  # NaN where t = 0 meets log q = -inf (--eps 0), fixed below
    entropy_rows = 0.0 - t_log_t.sum(axis=1)  # 0 - (-0) is +0
    ce_rows = -_sum_rows(t_log_q, t)
    if q is None:
        with np.errstate(under="ignore"):
            q = np.exp(log_q)
    with np.errstate(invalid="ignore"):  # inf - inf: t > 0 = q
        t_log_ratio = np.subtract(t_log_t, t_log_q, out=t_log_t)
    return ce_rows, entropy_rows, _kl_rows(t, q, q - t, t_log_ratio)


def _sum_rows(product: np.ndarray, t: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Row sums of terms with a factor t, taking the NaN of 0 * log 0 as 0 (or as ``fill``)."""
    sums = product.sum(axis=1)
    broken = np.flatnonzero(np.isnan(sums))
    if broken.size:
        rows = product[broken]
        zero = t[broken] == 0
        rows[zero] = 0.0 if fill is None else fill[broken][zero]
        sums[broken] = rows.sum(axis=1)
    return sums


# Where |u| < NEAR for u = (t - q) / (t + q), t log(t/q) - t + q is summed as the series below;
# its first omitted term is below 1e-19 of the value.
NEAR = 0.1
_ATANH_SERIES = np.array([1.0 / (2 * k + 1) for k in range(1, 10)])  # 1/3, 1/5, ..., 1/19


def relative_entropy_terms(t: np.ndarray, q: np.ndarray, log_q: np.ndarray,
                           log_t: np.ndarray | None = None, gap: np.ndarray | None = None) -> np.ndarray:
    """Per-element t log(t / q) - t + q (scipy.special.kl_div): >= 0 for every t, q >= 0.

    With u = (t - q) / (t + q), log(t / q) = 2 atanh(u), so the term is exactly
    u (t - q) + 2 t (u^3/3 + u^5/5 + ...), a sum of a non-negative part and a much smaller one.
    Where |u| < NEAR (t within about 20% of q; t - q is exact there) it is evaluated so, and
    nearly equal values keep their digits instead of cancelling to rounding noise. Elsewhere
    t (log t - log q) + (q - t), from ``log_q`` (finite even where q underflows to 0, for logits).
    t = 0 gives q; t > 0 with q = 0 gives +inf. ``gap`` is q - t when the caller knows it more exactly
    than the subtraction of the rounded q (Jensen-Shannon's mixture).
    """
    log_t = safe_log(t) if log_t is None else log_t
    gap = q - t if gap is None else gap
    with np.errstate(invalid="ignore"):  # inf - inf where t = 0 meets q = 0
        terms = np.subtract(log_t, log_q)
        terms *= t
    terms = _terms(t, q, gap, terms)
    np.copyto(terms, q, where=np.isnan(terms) & (t == 0))
    return terms


def _terms(t: np.ndarray, q: np.ndarray, gap: np.ndarray, t_log_ratio: np.ndarray) -> np.ndarray:
    """relative_entropy_terms from t log(t/q) and q - t, in place in ``t_log_ratio``."""
    terms = t_log_ratio
    terms += gap
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 where t = q = 0: NaN, not near
        v = np.add(t, q)
        np.divide(gap, v, out=v)  # v = -u = (q - t) / (t + q): the series is odd in u
        size = np.abs(v)
        near = size < NEAR
    count = np.count_nonzero(near)
    if not count:
        return terms
    if count * 2 > near.size:  # mostly near: the series on everything, then the far ones put back
        series = _near_series(v, t, gap, top=float(size.max(where=near, initial=0.0)))
        np.copyto(terms, series, where=near)
        return terms
    order = _common_order(t, gap, v, near, terms)
    if order is None:
        terms[near] = _near_series(v[near], t[near], gap[near])
        return terms
    index = np.flatnonzero(near.ravel(order))  # flat views of arrays laid out alike: cheap take/put
    series = _near_series(v.ravel(order).take(index), t.ravel(order).take(index), gap.ravel(order).take(index))
    terms.ravel(order)[index] = series
    return terms


def _common_order(*arrays: np.ndarray) -> Literal["C", "F"] | None:
    """'C' or 'F' when every array is contiguous in that order (then ravel gives views)."""
    if all(a.flags.c_contiguous for a in arrays):
        return "C"
    if all(a.flags.f_contiguous for a in arrays):
        return "F"
    return None


def _near_series(v: np.ndarray, t: np.ndarray, gap: np.ndarray, top: float | None = None) -> np.ndarray:
    """u (t - q) + 2 t (u^3/3 + u^5/5 + ...) with u = -v, for |u| < NEAR, with as many terms as
    the largest |u| (``top``, else the largest |v|) needs: top^(2m) below 2^-60, all nine at
    |u| = NEAR, two for |u| <= 1e-5."""
    top = float(np.abs(v).max()) if top is None else top
    m = len(_ATANH_SERIES)
    if 0 < top <= 0.05:
        m = min(m, max(1, math.ceil(-30 * math.log(2) / math.log(top))))
    coefficients = _ATANH_SERIES[:m]
    w = v * v
    series = np.full_like(v, coefficients[-1])
    for c in coefficients[-2::-1]:
        series *= w
        series += c
    series *= w
    series *= v
    series *= t
    series *= -2.0  # 2 t (u^3/3 + ...) with u = -v
    w = np.multiply(v, gap, out=w)
    series += w  # u (t - q) = v (q - t)
    return series


def _kl_rows(t: np.ndarray, q: np.ndarray, gap: np.ndarray, t_log_ratio: np.ndarray) -> np.ndarray:
    """KL per row from t log(t/q) and q - t: the terms, plus the mass correction, at least 0."""
    kl = _sum_rows(_terms(t, q, gap, t_log_ratio), t, fill=q)
    kl -= gap.sum(axis=1)
    return np.maximum(kl, 0.0, out=kl)


def kl_divergence(t: np.ndarray, q: np.ndarray | None = None, log_q: np.ndarray | None = None,
                  log_t: np.ndarray | None = None, gap: np.ndarray | None = None) -> np.ndarray:
    """KL(t || q) = sum_k t_k log(t_k / q_k) per row (scipy.special.rel_entr summed), never negative.

    Formed as sum_k [t_k log(t_k / q_k) - t_k + q_k] + sum_k (t_k - q_k): the first sum has
    terms >= 0 that keep their digits when t and q nearly agree (relative_entropy_terms); the
    second is 0 for rows of equal mass and otherwise the exact correction (rows clipped by eps,
    or summing to 1 only within --tol), so CE = H + KL holds. A result below 0, possible only
    when q has more mass than t, is the rounding of rows that are not distributions: it is 0.
    Pass ``q`` or ``log_q`` (or both); ``log_t`` saves recomputing the logarithms of t, ``gap``
    gives q - t (see relative_entropy_terms).
    """
    with np.errstate(divide="ignore", under="ignore"):
        if log_q is None:
            if q is None:
                raise ValueError("pass q or log_q")
            log_q = np.log(q)
        if q is None:
            q = np.exp(log_q)
    log_t = safe_log(t) if log_t is None else log_t
    with np.errstate(invalid="ignore"):  # inf - inf where t = 0 meets q = 0
        t_log_ratio = np.subtract(log_t, log_q)
        t_log_ratio *= t
    return _kl_rows(t, q, q - t if gap is None else gap, t_log_ratio)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence: (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2; at most log 2.

    m - p = (q - p) / 2 is passed as formed from p and q (exact where they nearly agree), not
    from the rounded m, so nearly equal rows keep their digits.
    """
    m = 0.5 * (p + q)
    half_gap = np.subtract(q, p)
    half_gap *= 0.5
    return 0.5 * (kl_divergence(p, m, gap=half_gap) + kl_divergence(q, m, gap=-half_gap))


def brier(q: np.ndarray, labels: np.ndarray | None = None, t: np.ndarray | None = None,
          q_true: np.ndarray | None = None) -> np.ndarray:
    """Brier score per row, sum_k (q_k - y_k)^2 with y one-hot of ``labels`` or the targets ``t``.

    From 0 (certain and right) to 2 (certain and wrong); scikit-learn's brier_score_loss with
    scale_by_half=False. ``q_true``: true_class(q, labels), when the caller has it.
    """
    if t is not None:
        diff = q - t
        return np.einsum("ij,ij->i", diff, diff)
    if labels is None:
        raise ValueError("brier needs labels or targets")
    return np.einsum("ij,ij->i", q, q) - 2.0 * (true_class(q, labels) if q_true is None else q_true) + 1.0


def top_confidence(q: np.ndarray | None, log_q: np.ndarray | None) -> np.ndarray:
    """The probability of each row's most likely class."""
    if q is not None:
        return q.max(axis=1)
    if log_q is None:
        raise ValueError("pass q or log_q")
    return np.exp(log_q.max(axis=1))


def argmax_rows(values: np.ndarray) -> np.ndarray:
    """Index of each row's largest value, the first one on ties.

    For a column-major matrix with few classes, a pass per class beats numpy's argmax, which
    would first copy the matrix to make each row contiguous.
    """
    n, k = values.shape
    if not values.flags.f_contiguous or k > 64:
        return values.argmax(axis=1)
    top = values.max(axis=1)
    out = np.zeros(n, dtype=np.intp)
    for j in range(k - 1, -1, -1):  # the last write wins: the first maximal column
        np.copyto(out, j, where=values[:, j] == top)
    return out


def weighted(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """values * weights, and 0 where the weight is 0: a zero weight drops a row even when its value
    is infinite or undefined (0 * inf would be NaN)."""
    return np.multiply(values, weights, out=np.zeros(len(values)), where=weights > 0)


def top_k_hits(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the true class is among the k highest values of its row, else 0.0.

    The rank of the true class y is #{j : v_j > v_y} + #{j < y : v_j = v_y}: ties go to the first
    column, as for argmax_rows, so k = 1 is the accuracy. Ranks are the same for probabilities,
    logits and log-probabilities (the transforms are monotone).
    """
    true = true_class(values, labels)[:, None]
    above = np.count_nonzero(values > true, axis=1)
    tied_before = np.count_nonzero((values == true) & (np.arange(values.shape[1]) < labels[:, None]), axis=1)
    return ((above + tied_before) < k).astype(np.float64)


def kept_rows(n: int) -> int:
    """The power of two of rows, at least n, for which arrays of row positions are kept: batches
    (of CSV ranges) differ in length by a few rows each, and take the first n of one array."""
    return 1 << max(n - 1, 0).bit_length()


def positions(n: int) -> np.ndarray:
    """np.arange(n), read-only."""
    return _positions_for(kept_rows(n))[:n]


@functools.lru_cache(maxsize=4)
def _positions_for(rows: int) -> np.ndarray:
    out = np.arange(rows)
    out.flags.writeable = False
    return out


def true_class(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """values[i, labels[i]] for each row."""
    n, k = values.shape
    if values.flags.f_contiguous:  # one gather from the flat matrix, faster than a pair of indices
        flat = labels * n
        flat += positions(n)
        return values.ravel(order="F").take(flat)
    if values.flags.c_contiguous:
        flat = np.arange(0, n * k, k)
        flat += labels
        return values.ravel().take(flat)
    return values[np.arange(n), labels]


def correct_rows(values: np.ndarray, labels: np.ndarray, top: np.ndarray | None = None,
                 true: np.ndarray | None = None) -> np.ndarray:
    """argmax_rows(values) == labels, without the argmax: the label's value is its row's largest,
    and no earlier column holds that value too (ties go to the first column, as in argmax_rows).

    The few rows where another column ties the label's value are settled by argmax_rows. ``top``
    (each row's largest value) and ``true`` (true_class(values, labels)), when the caller has them.
    """
    n, k = values.shape
    if not values.flags.f_contiguous or k > 64:
        return argmax_rows(values) == labels
    if k == 2:  # class 1 is predicted where its value is the larger (a tie: class 0); three passes
        return (values[:, 1] > values[:, 0]) == (labels == 1)
    top = values.max(axis=1) if top is None else top
    correct = (true_class(values, labels) if true is None else true) == top
    at_top = values == top[:, None]
    if np.count_nonzero(at_top) == n:  # no row holds its largest value twice: the usual case
        return correct
    tied = np.flatnonzero(correct & (at_top.sum(axis=1, dtype=np.uint8) > 1))  # at most 64 columns
    if tied.size:
        correct[tied] = argmax_rows(values[tied]) == labels[tied]
    return correct


def hard_label_nll(p_true: np.ndarray, eps: float) -> tuple[np.ndarray, Clipped]:
    """-log(clip(p_y)) from the probabilities of the true classes; also what the clip moved (no
    masks when nothing moved, and so nothing to count per batch)."""
    clipped = Clipped(p_true) if nothing_to_clip(p_true, eps) else clip(p_true, eps)
    with np.errstate(divide="ignore"):
        return -np.log(clipped.values), clipped


@dataclass(eq=False)
class RowClips:
    """Per row, what the clip did to the probabilities of observed classes (true class, or t_k > 0).

    ``zero``: values below eps raised to eps (an exact 0 would cost an infinite loss; each now
    costs -log eps, 36.04 nats with the default eps); ``nudged``: values above 1 - eps lowered to
    1 - eps (the loss moves by at most -log(1 - eps), about eps); ``zero_loss``: the loss (nats)
    the raised values carry, t_k * -log(eps) each. With --symmetric, ``reverse_zero`` counts the
    target values below eps where q_k > 0, raised to eps for KL(q || t), and ``reverse_loss`` is
    their part of that KL, q_k log(q_k / eps) - q_k + eps each.
    """

    zero: np.ndarray
    nudged: np.ndarray
    zero_loss: np.ndarray
    reverse_zero: np.ndarray | None = None
    reverse_loss: np.ndarray | None = None

    @classmethod
    def of(cls, clipped: Clipped | None, eps: float, targets: np.ndarray | None = None) -> "RowClips | None":
        """From a clip of the true-class values (n,), or of all values (n, K) against targets."""
        if clipped is None or clipped.raised is None or clipped.lowered is None:
            return None
        if targets is None:
            return cls(clipped.raised, clipped.lowered, clipped.raised * -math.log(eps))
        observed = targets > 0
        zero = clipped.raised & observed
        return cls(zero.sum(axis=1), (clipped.lowered & observed).sum(axis=1),
                   np.where(zero, targets, 0.0).sum(axis=1) * -math.log(eps))

    @classmethod
    def with_reverse(cls, clips: "RowClips | None", clipped_targets: Clipped, q: np.ndarray) -> "RowClips":
        """``clips`` (None: nothing clipped on q) with the target zeros the reverse KL met."""
        if clipped_targets.raised is None:
            raise ValueError("the targets were not clipped (eps = 0)")
        zero = clipped_targets.raised & (q > 0)
        with np.errstate(divide="ignore"):
            eps_q = clipped_targets.values
            cost = np.where(zero, q * (np.log(np.where(zero, q, 1.0)) - np.log(eps_q)) - q + eps_q, 0.0)
        if clips is None:
            none = np.zeros(len(q), dtype=np.int64)
            clips = cls(none, none, np.zeros(len(q)))
        return dataclasses.replace(clips, reverse_zero=zero.sum(axis=1), reverse_loss=cost.sum(axis=1))

    def counts(self, weights: np.ndarray | None, rows: np.ndarray | None = None) -> dict[str, Any]:
        """The Summary.of_batch arguments for these rows (all when ``rows`` is None)."""
        def count(a):
            a = a if rows is None else a[rows]
            return int(np.count_nonzero(a) if a.dtype == bool else a.sum())

        def weighted(a):
            a = a if rows is None else a[rows]
            return float((a if weights is None else a * (weights if rows is None else weights[rows])).sum())

        out = {"clipped": count(self.zero) + count(self.nudged), "clipped_zero": count(self.zero),
               "zero_loss": weighted(self.zero_loss)}
        if self.reverse_zero is not None:
            out.update(reverse_zero=count(self.reverse_zero), reverse_zero_loss=weighted(self.reverse_loss))
        return out


# -- calibration estimators, finished from binned sums ----------------------------------------
# Each reads sums over bins (weights, confidences, outcomes), never rows, so that batches, groups
# and partitions merge by adding the sums.


def _fine_edges() -> np.ndarray:
    """Edges of the fine histogram of top-label confidence that equal-mass bins are read from.

    2,048 bins (e_i, e_i+1]: 1,023 of width 1/1024 up to 1 - 1/1024, then 1,024 equal in
    log(1 - c) from 1 - 1/1024 to 1 - 1e-9/1024 (each 2.0% narrower in 1 - c than the last), and
    the last one up to 1. Confidences of overconfident models, crowded near 1, stay apart.
    """
    uniform = np.arange(1024) / 1024
    tail = 1.0 - 2.0 ** -10 * 10.0 ** (-np.arange(1, 1025) * 9 / 1024)
    return np.concatenate([uniform, tail, [1.0]])


FINE_EDGES = _fine_edges()
FINE_BINS = len(FINE_EDGES) - 1


def fine_bins(confidence: np.ndarray) -> np.ndarray:
    """Fine bin i of each confidence, FINE_EDGES[i] < c <= FINE_EDGES[i + 1]; 0 in the first bin and
    a value above 1 (within --tol) in the last.

    Up to 1 - 1/1024, ceil(1024 c) - 1 is exact (a power of two scales exactly). Above, bin
    1023 + m with m = ceil(-log10(1024 (1 - c)) * 1024 / 9) - 1, then moved by one where rounding
    put it across an edge (1 - c is exact there, and the bins are 2% apart in it).
    """
    bins = np.ceil(confidence * 1024.0).astype(np.intp)
    bins -= 1
    np.maximum(bins, 0, out=bins)
    high = np.flatnonzero(confidence > FINE_EDGES[1023])
    if high.size:
        c = confidence[high]
        with np.errstate(divide="ignore"):
            m = np.ceil(-np.log10(np.maximum(1.0 - c, 0.0) * 1024.0) * (1024 / 9)) - 1  # inf at c >= 1
        tail = (np.clip(m, 0, FINE_BINS - 1024) + 1023).astype(np.intp)
        tail += (c > FINE_EDGES[tail + 1]) & (tail < FINE_BINS - 1)
        tail -= (c <= FINE_EDGES[tail]) & (tail > 1023)
        bins[high] = tail
    return bins


def mass_groups(weight: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-mass bin of each fine bin: b = min(B - 1, floor(B * W_below / W)), W_below being
    the weight of the fine bins before it.

    Read on rows, this is the bin of a row whose confidence c has W(< c) below it: B bins of mass
    W / B, rows of equal confidence kept together. On the fine histogram, the bins can only cut at
    fine edges, so a bin's mass is off from the exact rule by at most the mass of one fine bin; when
    each fine bin holds one distinct confidence (any number of ties), the two rules agree exactly.
    A fine bin heavier than W / B leaves the bins it covers empty.
    """
    total = weight.sum()
    if total <= 0:
        return np.zeros(len(weight), dtype=np.intp)
    below = np.cumsum(weight) - weight
    # 1e-9 of a bin of slack: a cut that falls exactly on a fine edge (12 rows of weight 1.9 out of
    # 20, B = 15) stays there whatever the rounding of the sums, and of the order they were added in.
    return np.minimum(np.floor(n_bins * below / total + 1e-9).astype(np.intp), n_bins - 1)


def l2_calibration_error(weight: np.ndarray, weight_sq: np.ndarray, confidence: np.ndarray,
                         correct: np.ndarray, debiased: bool = False) -> float:
    """The L2 calibration error, sqrt(sum_b (W_b / W) (acc_b - conf_b)^2), over non-empty bins.

    debiased (Kumar, Liang & Ma 2019, "Verified uncertainty calibration"): each bin's squared gap
    less the variance of its accuracy, acc_b (1 - acc_b) / (n_b - 1), bins with n_b < 2 counting 0,
    and sqrt(max(0, sum)); n_b is the effective row count W_b^2 / sum_b w^2 (the row count when
    unweighted), as in their calibration.utils.unbiased_square_ce.
    """
    filled = weight > 0
    if not filled.any():
        return float("nan")
    w, acc = weight[filled], correct[filled] / weight[filled]
    squared = (acc - confidence[filled] / w) ** 2
    if debiased:
        rows = w * w / weight_sq[filled]
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = acc * (1.0 - acc) / (rows - 1.0)
        squared = np.where(rows >= 2.0, squared - variance, 0.0)
    return math.sqrt(max(float(np.sum(w * squared) / w.sum()), 0.0))


def class_bin_sums(cells: np.ndarray, past: tuple[np.ndarray, np.ndarray] | None, size: int, copies: int,
                   weights: np.ndarray | None, probs: np.ndarray, labels: np.ndarray | None, targets: np.ndarray | None,
                   labelled: tuple[np.ndarray, np.ndarray] | None = None,
                   class_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Sums over the (class, bin) cells of each row's probability of each class, and per class.

    A value's cell is c * K * B + k * B + the equal-width bin of q_ik, c one of ``copies`` copies of
    the K * B = ``size`` cells (summed at the end). ``cells`` holds the cells of every value, (n, K)
    in the memory order of ``probs``, when ``past`` is None; else ``past`` is (positions in the
    column-major flattening of ``probs``, values) of the values ``cells`` holds, every other value
    being in its class's first bin, whose sums are then the class's totals less those of its other
    bins. ``labelled``: (cell, value) of each row's labelled probability, needed with hard labels;
    ``class_weight``: sum w per class, when the caller has it (outcome_sq with hard labels).

    Per cell (flattened, K * B): weight = sum w, prob = sum w q, outcome = sum w y; per class (K,):
    prob_sq = sum w q^2, cross = sum w q y, outcome_sq = sum w y^2; y_ik is the one-hot label or
    the target t_ik. One bincount per cell sum; with hard labels the outcomes only visit each row's
    labelled cell.
    """
    n, k = probs.shape
    at: np.ndarray | None = None
    if past is None:
        order: Literal["F", "C"] = "F" if probs.flags.f_contiguous else "C"
        cells, q = cells.ravel(order=order), probs.ravel(order=order)
        w = None if weights is None else np.tile(weights, k) if order == "F" else np.repeat(weights, k)
        t = None if targets is None else targets.ravel(order=order)
    else:
        at, q = past
        w = None if weights is None else weights[at % n]
        t = None if targets is None else targets.ravel(order="F")[at]

    def column_sums(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:  # sum_i w_i a_ik (b_ik), no BLAS threads
        if b is None:
            return np.einsum("ij->j", a) if weights is None else np.einsum("i,ij->j", weights, a)
        return np.einsum("ij,ij->j", a, b) if weights is None else np.einsum("i,ij,ij->j", weights, a, b)

    def cell_sums(of: np.ndarray | None, totals: Callable[[], np.ndarray] | None = None,
                  where: np.ndarray = cells) -> np.ndarray:
        counted = np.bincount(where, weights=of, minlength=copies * size).reshape(copies, size)
        out = counted.sum(axis=0, dtype=np.float64)
        if at is not None and totals is not None:  # the first bins: what the other bins leave of each class
            by_class = out.reshape(k, -1)
            by_class[:, 0] = totals() - by_class[:, 1:].sum(axis=1)
        return out

    def rows_weight() -> np.ndarray:
        return np.full(k, float(n) if weights is None else float(weights.sum()))

    out = {"weight": cell_sums(w, rows_weight),
           "prob": cell_sums(q if w is None else w * q, lambda: column_sums(probs)),
           "prob_sq": column_sums(probs, probs)}
    if targets is not None:
        assert t is not None
        out["outcome"] = cell_sums(t if w is None else w * t, lambda: column_sums(targets))
        out["cross"] = column_sums(probs, targets)
        out["outcome_sq"] = column_sums(targets, targets)
    elif labels is not None:
        if labelled is None:
            raise ValueError("hard labels need the labelled cells and values")
        labelled_cells, p_true = labelled
        out["outcome"] = cell_sums(weights, where=labelled_cells)
        out["cross"] = np.bincount(labels, weights=p_true if weights is None else weights * p_true, minlength=k)
        out["outcome_sq"] = class_weight if class_weight is not None else \
            np.bincount(labels, weights=weights, minlength=k).astype(np.float64, copy=False)
    else:
        raise ValueError("class bins need labels or targets")
    return out


def classwise_calibration_error(weight: float, prob: np.ndarray, outcome: np.ndarray) -> float:
    """Classwise ECE (Kull et al. 2019; the static calibration error of Nixon et al. 2019):
    (1 / K) sum_k sum_b |sum_b,k w y - sum_b,k w q| / W over (K, B) cells of equal-width bins of q_k,
    the mean over classes of each class's own ECE."""
    if weight <= 0:
        return float("nan")
    return float(np.abs(outcome - prob).sum(axis=1).mean() / weight)


def brier_decomposition(total: float, weight: np.ndarray, prob: np.ndarray, outcome: np.ndarray,
                        prob_sq: np.ndarray, cross: np.ndarray, outcome_sq: np.ndarray) -> tuple[float, float, float]:
    """(reliability, resolution, uncertainty) of the Brier score sum_k (q_k - y_k)^2, from the (K, B)
    cells of equal-width bins of q_k, so that reliability - resolution + uncertainty = Brier exactly.

    Per class k, with bin means qbar = prob / W_b, ybar = outcome / W_b and ybar_k = sum_b outcome / W:
      uncertainty = sum_k (sum w y_k^2 / W - ybar_k^2)          (ybar_k (1 - ybar_k) for hard labels)
      resolution  = sum_k sum_b (W_b / W) (ybar - ybar_k)^2                       (Murphy 1973)
      reliability = sum_k sum_b [W_b (qbar - ybar)^2 + sum w (q - qbar)^2 - 2 sum w (q - qbar)(y - ybar)] / W
                  = [sum w |q|^2 - 2 sum w q.y + sum_k sum_b outcome^2 / W_b] / W
    Reliability is Murphy's term plus the within-bin variance and (minus twice) the within-bin
    covariance of Stephenson et al. 2008, which make the identity exact for any binning (without them
    it holds only when every row of a bin has the same forecast). Those two can make it slightly
    negative when forecasts within a bin track the outcomes. ``prob_sq``, ``cross`` and
    ``outcome_sq`` are the per-class totals sum w q^2, sum w q y and sum w y^2.
    """
    if total <= 0:
        return float("nan"), float("nan"), float("nan")
    filled = weight > 0
    w = np.where(filled, weight, 1.0)
    base = outcome.sum(axis=1) / total
    uncertainty = float(np.sum(np.maximum(outcome_sq / total - base ** 2, 0.0)))  # a variance: rounding kept >= 0
    ybar = np.where(filled, outcome / w, 0.0)
    resolution = float(np.sum(weight * (ybar - base[:, None]) ** 2) / total)
    between = float(np.sum(np.where(filled, outcome * ybar, 0.0)))
    reliability = (float(np.sum(prob_sq) - 2.0 * np.sum(cross)) + between) / total
    return reliability, resolution, uncertainty
