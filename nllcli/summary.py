"""Running sums that merge: batch + batch, file + file, partition + partition.

A Summary holds, for named per-sample quantities (nll, kl, brier, ...), their weighted sums over
all rows and per true class, the calibration bins of top-label confidence, and a histogram of the
per-sample loss. Adding two summaries gives the summary of the rows of both, so the same code
serves a stream of batches and, later, partitions computed elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from . import losses

# Edges of the per-sample loss histogram, in nats: fixed, so that histograms merge. The last bin
# is open-ended.
LOSS_EDGES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0)
_HISTOGRAM_EDGES = np.array([*LOSS_EDGES, np.inf])
_SHAPE_FIELDS = ("names", "n_classes")  # describe the summary; must agree to merge
_NONE = np.zeros(0)  # a sum not kept (no calibration): adds to itself, never written to
# The sums over (class, equal-width bin of q_k) cells, in the order of Summary.class_bins, and the
# per-class totals of Summary.class_totals (see losses.class_bin_sums).
CLASS_BIN_SUMS = ("weight", "prob", "outcome")
CLASS_TOTALS = ("prob_sq", "cross", "outcome_sq")
BINS_KINDS = ("width", "mass")
CLASS_CELLS_LIMIT = 1 << 20  # K x B cells kept per summary at most (3 sums each): 24 MiB


@dataclass
class Summary:
    names: tuple[str, ...]
    n_classes: int
    rows: int
    weight: float
    sums: np.ndarray  # (M,) weighted sum of each quantity
    correct: float  # weighted count of rows whose argmax is the label
    class_rows: np.ndarray  # (K,) rows per true class
    class_weight: np.ndarray  # (K,)
    class_sums: np.ndarray  # (K, M)
    class_correct: np.ndarray  # (K,)
    clipped: int  # observed-class probabilities the clip moved: clipped_zero + clipped_nudged
    clipped_zero: int  # of them, those raised from below eps (zeros), each costing -log(eps)
    zero_loss: float  # weighted sum of the loss (nats) those raised values carry
    reverse_zero: int  # --symmetric: target values below eps raised to eps where q > 0
    reverse_zero_loss: float  # their weighted part of the reverse KL (nats)
    bin_weight: np.ndarray  # (B,) calibration bins of top-label confidence
    bin_confidence: np.ndarray  # (B,) weighted sum of confidence
    bin_correct: np.ndarray  # (B,) weighted count correct
    loss_histogram: np.ndarray  # (len(LOSS_EDGES),) weighted rows per loss bin
    # The calibration estimators' sums (filled with the calibration bins; empty arrays otherwise):
    ignored: int = 0  # --ignore-label: rows dropped for their label
    bin_weight_sq: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (B,) sum of w^2
    fine_weight: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (F,) fine confidence bins
    fine_weight_sq: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (F,)
    fine_confidence: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (F,)
    fine_correct: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (F,)
    class_bins: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (3, K, B): CLASS_BIN_SUMS
    class_totals: np.ndarray = dataclasses.field(default_factory=lambda: _NONE)  # (3, K): CLASS_TOTALS

    @classmethod
    def empty(cls, names: tuple[str, ...], n_classes: int, n_bins: int = 15) -> "Summary":
        m, k = len(names), n_classes
        return cls(names, k, 0, 0.0, np.zeros(m), 0.0, np.zeros(k, np.int64), np.zeros(k),
                   np.zeros((k, m)), np.zeros(k), 0, 0, 0.0, 0, 0.0,
                   np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins),
                   np.zeros(len(LOSS_EDGES)))

    @classmethod
    def of_batch(cls, values: dict[str, np.ndarray], n_classes: int, weights: np.ndarray | None = None,
                 labels: np.ndarray | None = None, correct: np.ndarray | None = None,
                 clipped: int = 0, confidence: np.ndarray | None = None, n_bins: int = 15,
                 loss: np.ndarray | None = None, clipped_zero: int = 0, zero_loss: float = 0.0,
                 reverse_zero: int = 0, reverse_zero_loss: float = 0.0, probs: np.ndarray | None = None,
                 targets: np.ndarray | None = None, ignored: int = 0) -> "Summary":
        """Summarise one batch.

        ``values`` maps each quantity to its (n,) per-sample array; ``labels`` and ``correct``
        give per-class sums and accuracy; ``confidence`` (top-label probability, with labels)
        fills the calibration bins; ``loss`` (nats) the loss histogram. ``clipped`` counts the
        clipped values, ``clipped_zero`` those of them raised from below eps, and ``zero_loss`` is
        the weighted loss those carry; ``reverse_zero`` and ``reverse_zero_loss`` the same for the
        targets clipped in the reverse KL. ``probs`` (n, K), with labels or ``targets``, fills the
        (class, bin) cells of classwise ECE and the Brier decomposition; ``ignored`` counts rows
        dropped for their label.
        """
        names = tuple(values)
        n = len(next(iter(values.values()))) if values else 0
        out = cls.empty(names, n_classes, n_bins)
        out.rows, out.clipped, out.clipped_zero, out.zero_loss = n, clipped, clipped_zero, zero_loss
        out.reverse_zero, out.reverse_zero_loss = reverse_zero, reverse_zero_loss
        if weights is None:  # the common case: counts instead of sums of ones
            weighted = [values[name] for name in names]
            out.weight = float(n)
        else:  # a zero weight drops a row even when its loss is infinite
            weighted = [losses.weighted(values[name], weights) for name in names]
            out.weight = float(weights.sum())
        out.sums = np.array([x.sum() for x in weighted]) if names else out.sums

        def tally(index: np.ndarray, size: int, of: np.ndarray | None = None,
                  rows: np.ndarray | None = None) -> np.ndarray:
            """Weighted count (or weighted sum of ``of``) per value of ``index``, over ``rows``."""
            w = weights
            if rows is not None:
                index, of, w = index[rows], None if of is None else of[rows], None if w is None else w[rows]
            if of is None and w is None:
                return np.bincount(index, minlength=size).astype(np.float64)
            return np.bincount(index, weights=of if w is None else w if of is None else w * of, minlength=size)

        if labels is not None:
            out.class_rows = np.bincount(labels, minlength=n_classes)
            out.class_weight = tally(labels, n_classes)
            out.class_correct = tally(labels, n_classes, rows=correct)
            out.correct = float(out.class_correct.sum())
            if names:
                out.class_sums = np.stack([np.bincount(labels, weights=x, minlength=n_classes)
                                           for x in weighted], axis=1)
            if confidence is not None:
                bins = confidence_bins(confidence, n_bins)
                out.bin_weight = tally(bins, n_bins)
                out.bin_confidence = tally(bins, n_bins, of=confidence)
                out.bin_correct = tally(bins, n_bins, rows=correct)
                out.bin_weight_sq = tally(bins, n_bins, of=weights)
                fine = losses.fine_bins(confidence)
                out.fine_weight = tally(fine, losses.FINE_BINS)
                out.fine_weight_sq = tally(fine, losses.FINE_BINS, of=weights)
                out.fine_confidence = tally(fine, losses.FINE_BINS, of=confidence)
                out.fine_correct = tally(fine, losses.FINE_BINS, rows=correct)
        out.ignored = ignored
        if probs is not None and (labels is not None or targets is not None) and \
                n_classes * n_bins <= CLASS_CELLS_LIMIT:
            cells = confidence_bins(probs, n_bins)
            cells += np.arange(n_classes) * n_bins  # k * B + bin of q_k: one index for all K x B cells
            sums = losses.class_bin_sums(cells, n_classes * n_bins, weights, probs, labels, targets)
            out.class_bins = np.stack([sums[name] for name in CLASS_BIN_SUMS]).reshape(-1, n_classes, n_bins)
            out.class_totals = np.stack([sums[name] for name in CLASS_TOTALS])
        if loss is not None:  # bins [e_i, e_i+1), the last one [40, inf]
            out.loss_histogram = np.histogram(loss, bins=_HISTOGRAM_EDGES, weights=weights)[0].astype(np.float64)
        return out

    def __add__(self, other: "Summary") -> "Summary":
        if any(getattr(self, f) != getattr(other, f) for f in _SHAPE_FIELDS) or \
                len(self.bin_weight) != len(other.bin_weight):
            raise ValueError("cannot merge summaries of different quantities, classes or bins")
        return Summary(**{f.name: getattr(self, f.name) if f.name in _SHAPE_FIELDS
                          else _plus(getattr(self, f.name), getattr(other, f.name))
                          for f in dataclasses.fields(self)})

    @property
    def clipped_nudged(self) -> int:
        """Clipped values lowered from above 1 - eps: each moves the loss by at most about eps."""
        return self.clipped - self.clipped_zero

    def mean(self, name: str) -> float:
        """Weighted mean of one quantity: sum(w * x) / sum(w) (scikit-learn's rule)."""
        return float(self.sums[self.names.index(name)] / self.weight) if self.weight > 0 else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.weight if self.weight > 0 else float("nan")

    def class_mean(self, name: str) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_sums[:, self.names.index(name)] / self.class_weight

    @property
    def class_accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_correct / self.class_weight

    def calibration_errors(self, kind: str = "width") -> tuple[float, float]:
        """(ECE, MCE): sum_b (W_b / W) |acc_b - conf_b|, and the largest gap over non-empty bins,
        of equal-width (``kind`` "width") or equal-mass ("mass") bins of top-label confidence."""
        weight, _, confidence, correct = self.top_label_bins(kind)[:4]
        filled = weight > 0
        if not filled.any():
            return float("nan"), float("nan")
        gaps = np.abs(correct[filled] - confidence[filled]) / weight[filled]
        ece = float(np.sum(weight[filled] * gaps) / weight[filled].sum())
        return ece, float(gaps.max())

    def top_label_bins(self, kind: str = "width") -> tuple[np.ndarray, ...]:
        """(weight, weight_sq, confidence, correct, lower, upper) per bin of top-label confidence.

        "width": the B equal-width bins. "mass": B bins of about equal weight read from the fine
        histogram (losses.mass_groups states the rule and its approximation); empty ones (ties heavier
        than W / B) are left out, and a bin's range is that of the fine bins it holds.
        """
        if kind == "width":
            edges = bin_edges(len(self.bin_weight))
            return (self.bin_weight, self.bin_weight_sq, self.bin_confidence, self.bin_correct,
                    edges[:-1], edges[1:])
        if kind != "mass":
            raise ValueError(f"unknown bins kind {kind!r}")
        n_bins = len(self.bin_weight)
        if len(self.fine_weight) == 0:
            empty = np.zeros(0)
            return empty, empty, empty, empty, empty, empty
        groups = losses.mass_groups(self.fine_weight, n_bins)
        sums = [np.bincount(groups, weights=x, minlength=n_bins)
                for x in (self.fine_weight, self.fine_weight_sq, self.fine_confidence, self.fine_correct)]
        filled = np.flatnonzero(self.fine_weight > 0)
        lower, upper = np.full(n_bins, np.inf), np.full(n_bins, -np.inf)
        np.minimum.at(lower, groups[filled], losses.FINE_EDGES[filled])
        np.maximum.at(upper, groups[filled], losses.FINE_EDGES[filled + 1])
        kept = sums[0] > 0
        return (*(x[kept] for x in sums), lower[kept], upper[kept])

    def l2_calibration_error(self, kind: str = "width", debiased: bool = False) -> float:
        """L2 ECE over the bins of ``kind``, plain or debiased (see losses.l2_calibration_error)."""
        weight, weight_sq, confidence, correct = self.top_label_bins(kind)[:4]
        return losses.l2_calibration_error(weight, weight_sq, confidence, correct, debiased)

    def class_bin(self, name: str) -> np.ndarray:
        """(K, B) sums of one of CLASS_BIN_SUMS over (class, equal-width bin of q_k) cells."""
        if self.class_bins.size == 0:
            return np.zeros((self.n_classes, len(self.bin_weight)))
        return self.class_bins[CLASS_BIN_SUMS.index(name)]

    def classwise_calibration_error(self) -> float:
        return losses.classwise_calibration_error(self.weight if self.class_bins.size else 0.0,
                                                  self.class_bin("prob"), self.class_bin("outcome"))

    def brier_decomposition(self) -> tuple[float, float, float]:
        """(reliability, resolution, uncertainty) with reliability - resolution + uncertainty = Brier."""
        if self.class_bins.size == 0:
            return float("nan"), float("nan"), float("nan")
        return losses.brier_decomposition(self.weight, *self.class_bins, *self.class_totals)


def _plus(a, b):
    """a + b, where an estimator's sums not kept (an empty array, as in Summary.empty) add as zeros."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and (a.size == 0) != (b.size == 0):
        return b if a.size == 0 else a  # by size, not identity: a pickled Summary (Dask) has its own copies
    return a + b


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence among (0, 1/B], (1/B, 2/B], ..., (1 - 1/B, 1].

    The edges are numpy.linspace(0, 1, B + 1); a confidence equal to an edge falls in the bin
    that edge closes, 0 in the first bin and 1.0 in the last.
    """
    edges = bin_edges(n_bins)
    # ceil(c * B) - 1 is the bin up to rounding, which can only move it by one across an edge, and
    # only for a value within a few ulps of one: those few are checked against the edges themselves.
    scaled = confidence * n_bins
    bins = np.ceil(scaled).astype(np.intp)
    bins -= 1
    np.clip(bins, 0, n_bins - 1, out=bins)
    scaled -= np.rint(scaled)
    near = np.nonzero(np.abs(scaled) <= 1e-9)  # any shape and memory order
    if near[0].size:
        b, c = bins[near], confidence[near]
        b += (c > edges[b + 1]) & (b < n_bins - 1)  # above 1 (within --tol): the last bin
        b -= (c <= edges[b]) & (b > 0)
        bins[near] = b
    return bins


@functools.lru_cache(maxsize=8)
def bin_edges(n_bins: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_bins + 1)


class Worst:
    """The ``n`` samples with the largest loss seen so far, kept while streaming.

    Ties keep the earliest row. Each batch contributes at most ``n`` candidates, so memory stays
    at n entries whatever the input size; two Worst merge with ``+``.
    """

    def __init__(self, n: int, entries: list[dict] | None = None):
        self.n = n
        self.entries: list[dict] = entries or []  # each with "index" (0-based row) and "loss"

    @staticmethod
    def candidates(loss: np.ndarray, n: int) -> np.ndarray:
        """Row positions of at most n largest losses of a batch (the rest cannot make the list)."""
        if len(loss) <= n:
            return np.arange(len(loss))
        threshold = np.partition(loss, len(loss) - n)[len(loss) - n]  # the n-th largest
        rows = np.flatnonzero(loss >= threshold)  # more than n when there are ties at the threshold
        return rows[np.lexsort((rows, -loss[rows]))][:n]

    def add_entries(self, entries: list[dict]) -> None:
        merged = self.entries + entries
        merged.sort(key=lambda e: (-e["loss"], e["index"]))
        self.entries = merged[: self.n]

    def __add__(self, other: "Worst") -> "Worst":
        out = Worst(self.n, list(self.entries))
        out.add_entries(other.entries)
        return out


@dataclass
class State:
    """Everything a run keeps while streaming: the overall Summary, one Summary per ``--by`` group
    and the worst samples. ``State() + State()`` is the state of the rows of both, so a partition
    scored anywhere merges into the whole; ``State()`` is the state of no rows."""

    overall: Summary | None = None
    groups: dict[tuple, Summary] = dataclasses.field(default_factory=dict)
    worst: Worst | None = None

    def __add__(self, other: "State") -> "State":
        out = State(self.overall, dict(self.groups), self.worst)
        out += other
        return out

    def __iadd__(self, other: "State") -> "State":
        """Add in place (a stream adds one batch at a time; the parts added are never changed)."""
        for key, part in other.groups.items():
            self.groups[key] = self.groups[key] + part if key in self.groups else part
        self.overall, self.worst = _merge(self.overall, other.overall), _merge(self.worst, other.worst)
        return self

    @property
    def rows(self) -> int:
        return self.overall.rows if self.overall is not None else 0

    @property
    def summary(self) -> Summary:
        """The overall Summary (there is none before a row was added)."""
        if self.overall is None:
            raise ValueError("no rows in this state")
        return self.overall


def _merge(a, b):
    """a + b, where None is the empty side."""
    if a is None:
        return b
    return a if b is None else a + b
