"""Running sums that merge: batch + batch, file + file, partition + partition.

A Summary holds, for named per-sample quantities (nll, kl, brier, ...), their weighted sums over
all rows and per true class, the calibration bins of top-label confidence, and a histogram of the
per-sample loss. Adding two summaries gives the summary of the rows of both, so the same code
serves a stream of batches and, later, partitions computed elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import losses

# Edges of the per-sample loss histogram, in nats: fixed, so that histograms merge. The last bin
# is open-ended.
LOSS_EDGES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0)
_SHAPE_FIELDS = ("names", "n_classes")  # describe the summary; must agree to merge
_NONE = np.zeros(0)  # a sum not kept (no calibration): adds to itself, never written to
# The sums over (class, equal-width bin of q_k) cells, in the order of Summary.class_bins, and the
# per-class totals of Summary.class_totals (see losses.class_bin_sums).
CLASS_BIN_SUMS = ("weight", "prob", "outcome")
CLASS_TOTALS = ("prob_sq", "cross", "outcome_sq")
BINS_KINDS = ("width", "mass")
CLASS_CELLS_LIMIT = 1 << 20  # K x B cells kept per summary at most (3 sums each): 24 MiB


@dataclass(eq=False)
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
                 targets: np.ndarray | None = None, ignored: int = 0,
                 labelled_probs: np.ndarray | None = None) -> "Summary":
        """Summarise one batch.

        ``values`` maps each quantity to its (n,) per-sample array; ``labels`` and ``correct``
        give per-class sums and accuracy; ``confidence`` (top-label probability, with labels)
        fills the calibration bins; ``loss`` (nats) the loss histogram. ``clipped`` counts the
        clipped values, ``clipped_zero`` those of them raised from below eps, and ``zero_loss`` is
        the weighted loss those carry; ``reverse_zero`` and ``reverse_zero_loss`` the same for the
        targets clipped in the reverse KL. ``probs`` (n, K), with labels or ``targets``, fills the
        (class, bin) cells of classwise ECE and the Brier decomposition (``labelled_probs``: its
        probs[i, labels[i]], when the caller has them); ``ignored`` counts rows dropped for their label.
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

        def of_rows(a: np.ndarray | None, rows: np.ndarray | None) -> np.ndarray | None:
            return a if a is None or rows is None else a[rows]

        def tally(index: np.ndarray, size: int, of: np.ndarray | None = None,
                  rows: np.ndarray | None = None) -> np.ndarray:
            """Weighted count (or weighted sum of ``of``) per value of ``index``, the values of
            ``rows`` (None: of every row)."""
            w, of = of_rows(weights, rows), of_rows(of, rows)
            if of is None and w is None:
                return np.bincount(index, minlength=size).astype(np.float64)
            # float64 also when there are no rows (bincount then counts in integers)
            return np.bincount(index, weights=of if w is None else w if of is None else w * of,
                               minlength=size).astype(np.float64, copy=False)

        def weight_and_correct(index: np.ndarray, size: int,
                               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            """(weight, weight of the correct rows) per value of ``index``, the values of ``rows``."""
            hit = of_rows(correct, rows)
            if weights is None and hit is not None and hit.dtype == np.bool_:  # one count of 2 * index + hit
                both = np.bincount(index * 2 + hit, minlength=2 * size).reshape(size, 2)
                return both.sum(axis=1, dtype=np.float64), both[:, 1].astype(np.float64)
            weight = tally(index, size, rows=rows)
            if hit is None:
                return weight, weight.copy()
            w = of_rows(weights, rows)
            return weight, np.bincount(index[hit], weights=None if w is None else w[hit],
                                       minlength=size).astype(np.float64, copy=False)

        def bin_sums(index: np.ndarray, size: int, rows: np.ndarray | None = None) -> list[np.ndarray]:
            """(weight, correct, confidence, weight_sq) per confidence bin ``index`` of ``rows``."""
            weight, hits = weight_and_correct(index, size, rows)
            # sum w^2 is the weight itself for unit weights
            squared = weight.copy() if weights is None else tally(index, size, of=weights, rows=rows)
            return [weight, hits, tally(index, size, of=confidence, rows=rows), squared]

        if labels is not None:
            out.class_weight, out.class_correct = weight_and_correct(labels, n_classes)
            # unweighted, each class's weight is its row count (exact in float64 up to 2^53 rows)
            out.class_rows = np.bincount(labels, minlength=n_classes) if weights is not None \
                else out.class_weight.astype(np.int64)
            out.correct = float(out.class_correct.sum())
            if names:
                out.class_sums = class_sums(labels, n_classes, weighted)
            if confidence is not None:
                fine_bin = losses.fine_bins(confidence)
                fine = bin_sums(fine_bin, losses.FINE_BINS)
                out.fine_weight, out.fine_correct, out.fine_confidence, out.fine_weight_sq = fine
                # The equal-width bins add up the fine bins that lie inside one of them; only the
                # rows of the few fine bins an edge cuts (1.4% of [0, 1] at 15 bins) are binned anew.
                width_bin = width_bins_of_fine(n_bins)
                inside = width_bin >= 0
                loose = np.flatnonzero((~inside)[fine_bin])
                width = bin_sums(confidence_bins(confidence[loose], n_bins), n_bins, loose)
                for total, fine_total in zip(width, fine):
                    total += np.bincount(width_bin[inside], weights=fine_total[inside], minlength=n_bins)
                out.bin_weight, out.bin_correct, out.bin_confidence, out.bin_weight_sq = width
        out.ignored = ignored
        if probs is not None and (labels is not None or targets is not None) and \
                n_classes * n_bins <= CLASS_CELLS_LIMIT:
            sums = _class_cell_sums(np.asfortranarray(probs), n_bins, weights, labels, targets,
                                    None if labels is None else out.class_weight, labelled_probs)
            out.class_bins = np.stack([sums[name] for name in CLASS_BIN_SUMS]).reshape(-1, n_classes, n_bins)
            out.class_totals = np.stack([sums[name] for name in CLASS_TOTALS])
        if loss is not None:
            out.loss_histogram = loss_histogram(loss, weights)
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


def confidence_bins(confidence: np.ndarray, n_bins: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """Bin of each confidence among (0, 1/B], (1/B, 2/B], ..., (1 - 1/B, 1], plus ``offsets``
    (whole numbers, integers or floats, in the shape and memory order of ``confidence``) when given.

    The edges are numpy.linspace(0, 1, B + 1); a confidence equal to an edge falls in the bin
    that edge closes, 0 in the first bin and 1.0 (or above, within --tol) in the last.
    """
    # floor(c * B) is the bin except within a few ulps of an interior edge, where rounding can move
    # c * B across the integer: those values, found by the fraction of c * B, are placed by the
    # edges themselves. Clipping c * B to [2e-9, B - 1/2] first puts 0 in the first bin and 1 in
    # the last without looking at them again. Nine cheap passes, no copy of a 2-d mask's indices.
    scaled = np.multiply(confidence, n_bins)
    np.clip(scaled, 2e-9, n_bins - 0.5, out=scaled)
    whole = np.floor(scaled)
    fraction = np.subtract(scaled, whole, out=scaled)
    near = fraction < 1e-9
    near |= fraction > 1.0 - 1e-9
    del scaled, fraction  # freed before the cast: two arrays of the input's size live at once, not three
    if offsets is not None:
        whole += offsets
    bins = whole.astype(np.intp)
    del whole
    inner = bin_edges(n_bins)[1:-1]
    one_order = near.flags.c_contiguous or near.flags.f_contiguous  # ravel(order="K") is then a view
    if one_order and (offsets is None or (offsets.flags.f_contiguous, offsets.flags.c_contiguous)
                      == (near.flags.f_contiguous, near.flags.c_contiguous)):
        at = np.flatnonzero(near.ravel(order="K"))
        if at.size:
            placed = np.searchsorted(inner, confidence.ravel(order="K")[at], side="left")
            bins.ravel(order="K")[at] = placed if offsets is None else placed + offsets.ravel(order="K")[at]
    elif near.any():
        placed = np.searchsorted(inner, confidence[near], side="left")
        bins[near] = placed if offsets is None else placed + offsets[near]
    return bins


@functools.lru_cache(maxsize=8)
def width_bins_of_fine(n_bins: int) -> np.ndarray:
    """(FINE_BINS,), read-only: the equal-width bin (confidence_bins) holding every value of each
    fine bin (losses.fine_bins), or -1 for a fine bin that an edge of the equal-width bins cuts.

    Fine bin i holds (FINE_EDGES[i], FINE_EDGES[i + 1]] (the first also values <= 0, the last
    values above 1), equal-width bin j holds (e_j, e_j+1] (the first and last alike): fine bin i
    lies in the bin j holding its upper edge when its lower edge is at or above e_j.
    """
    upper = confidence_bins(losses.FINE_EDGES[1:], n_bins)
    out = np.where(losses.FINE_EDGES[:-1] >= bin_edges(n_bins)[upper], upper, -1)
    out.flags.writeable = False
    return out


# Copies of the (class, bin) cells that consecutive rows take in turn. One class's values mostly
# fall in the same cell (bin 0), and bincount's additions to one cell wait on each other: spread
# over 8 copies, column-major cells count as fast as row-major ones, with no transposed copy.
CELL_COPIES = 8


def _cell_offsets(n: int, n_classes: int, n_bins: int) -> np.ndarray:
    """(n, K), read-only: (i mod CELL_COPIES) * K * B + k * B for row i, class k (the first n rows
    of an array kept for losses.kept_rows(n) rows)."""
    return _cell_offsets_for(losses.kept_rows(n), n_classes, n_bins)[:n]


def _row_copies(n: int, n_classes: int, n_bins: int) -> np.ndarray:
    """(n,), read-only: (i mod CELL_COPIES) * K * B for row (or value) i, the first column of _cell_offsets."""
    return _row_copies_for(losses.kept_rows(n), n_classes * n_bins)[:n]


@functools.lru_cache(maxsize=4)
def _cell_offsets_for(rows: int, n_classes: int, n_bins: int) -> np.ndarray:
    copy_of_row = _row_copies_for(rows, n_classes * n_bins)
    offsets = np.asfortranarray(copy_of_row[:, None] + np.arange(n_classes) * float(n_bins))
    offsets.flags.writeable = False
    return offsets


@functools.lru_cache(maxsize=4)
def _row_copies_for(rows: int, cells: int, dtype: type = float) -> np.ndarray:
    copies = (np.arange(rows) % CELL_COPIES).astype(dtype) * dtype(cells)
    copies.flags.writeable = False
    return copies


# Up to this many classes, consecutive rows mostly add to the same class, and bincount's
# additions to one sum wait on each other: the per-class sums are spread over CELL_COPIES copies
# too (2 classes, 43,902 rows: 0.05 ms a quantity instead of 0.10).
SPREAD_CLASSES = 4


def class_sums(labels: np.ndarray, n_classes: int, quantities: list[np.ndarray]) -> np.ndarray:
    """(K, m): sum of each quantity over the rows of each class."""
    if n_classes > SPREAD_CLASSES:
        return np.stack([np.bincount(labels, weights=x, minlength=n_classes) for x in quantities], axis=1)
    cells = labels + _row_copies_for(losses.kept_rows(len(labels)), n_classes, np.intp)[:len(labels)]
    size = CELL_COPIES * n_classes
    return np.stack([np.bincount(cells, weights=x, minlength=size).reshape(CELL_COPIES, n_classes).sum(axis=0)
                     for x in quantities], axis=1)


# Bin only the values past their class's first bin (0, 1/B], the first bins' sums being what the
# other bins leave of each class's totals, while at most this share of the values is past it.
# Per batch (one thread): 32,768 x 10 of the bench data, 26% past: 1.5 ms instead of 2.0;
# 32,768 x 100, 4%: 10 ms instead of 24; 4,194 x 1,000: 6.6 ms instead of 32.
SPARSE_CELLS_SHARE = 0.5


def _class_cell_sums(probs: np.ndarray, n_bins: int, weights: np.ndarray | None, labels: np.ndarray | None,
                     targets: np.ndarray | None, class_weight: np.ndarray | None = None,
                     p_true: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """losses.class_bin_sums of a column-major (n, K) batch, its cells spread over CELL_COPIES copies;
    ``class_weight`` (sum w per class) and ``p_true`` (probs[i, labels[i]]) when the caller has them."""
    n, k = probs.shape
    flat = probs.ravel(order="F")
    past_first = flat > bin_edges(n_bins)[1]
    if np.count_nonzero(past_first) > SPARSE_CELLS_SHARE * flat.size:
        cells = confidence_bins(probs, n_bins, offsets=_cell_offsets(n, k, n_bins))
        labelled = None if labels is None else \
            (losses.true_class(cells, labels), losses.true_class(probs, labels) if p_true is None else p_true)
        return losses.class_bin_sums(cells, None, k * n_bins, CELL_COPIES, weights, probs, labels, targets, labelled,
                                     class_weight)
    at = np.flatnonzero(past_first)  # sorted: each class's values in one run
    offsets = np.repeat(np.arange(k) * float(n_bins), np.diff(np.searchsorted(at, np.arange(k + 1) * n)))
    offsets += _row_copies(at.size, k, n_bins)  # the copies taken in turn along the values, a class's among them
    values = flat.take(at)
    cells = confidence_bins(values, n_bins, offsets=offsets)
    labelled = None
    if labels is not None:  # each row's labelled value, binned, in copy (i mod CELL_COPIES) of its cell
        if p_true is None:
            p_true = losses.true_class(probs, labels)
        labelled = (confidence_bins(p_true, n_bins, offsets=_row_copies(n, k, n_bins) + labels * n_bins), p_true)
    return losses.class_bin_sums(cells, (at, values), k * n_bins, CELL_COPIES, weights, probs, labels, targets,
                                 labelled, class_weight)


def loss_histogram(loss: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weight of the losses in each bin [e_i, e_i+1) of LOSS_EDGES, the last one [40, inf]; a
    negative or NaN loss is in none.

    Unweighted, the counts of losses >= each edge, differenced (exact): no bin is stored per row.
    """
    if weights is None:
        at_least = np.array([np.count_nonzero(loss >= edge) for edge in LOSS_EDGES] + [0], dtype=np.float64)
        return at_least[:-1] - at_least[1:]
    weighted = np.bincount(loss_bins(loss), weights=weights, minlength=len(LOSS_EDGES) + 1)[1:]
    return weighted.astype(np.float64, copy=False)


def loss_bins(loss: np.ndarray) -> np.ndarray:
    """1 + the loss-histogram bin of each loss, [e_i, e_i+1) among LOSS_EDGES and [40, inf] last;
    0 for a negative or NaN loss, which is in no bin.

    The count of edges at or below the loss: twelve comparisons of the batch, twice as fast as
    np.histogram's binary search on random losses (and weighted sums without its cumsum's rounding).
    """
    count = np.zeros(len(loss), dtype=np.uint8)
    for edge in LOSS_EDGES:
        count += (loss >= edge).view(np.uint8)
    return count


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


@dataclass(eq=False)
class State:
    """Everything a run keeps while streaming: the overall Summary, one Summary per ``--by`` group
    and the worst samples. ``State() + State()`` is the state of the rows of both, so a partition
    scored anywhere merges into the whole; ``State()`` is the state of no rows."""

    overall: Summary | None = None
    groups: dict[tuple, Summary] = dataclasses.field(default_factory=dict)
    worst: Worst | None = None
    replicates: Replicates | None = None  # --interval: bootstrap replicates of the overall Summary
    group_replicates: dict[tuple, Replicates] = dataclasses.field(default_factory=dict)  # and of each group

    def __add__(self, other: "State") -> "State":
        out = State(self.overall, dict(self.groups), self.worst, self.replicates, dict(self.group_replicates))
        out += other
        return out

    def __iadd__(self, other: "State") -> "State":
        """Add in place (a stream adds one batch at a time; the parts added are never changed)."""
        for key, part in other.groups.items():
            self.groups[key] = self.groups[key] + part if key in self.groups else part
        self.overall, self.worst = _merge(self.overall, other.overall), _merge(self.worst, other.worst)
        self.replicates = _merge(self.replicates, other.replicates)
        for key, replicates in other.group_replicates.items():
            self.group_replicates[key] = _merge(self.group_replicates.get(key), replicates)
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


# -- bootstrap replicates ----------------------------------------------------------------------

# Summary fields that replicates carry with a leading resample axis, computed here directly; the
# counts of clipped values stay those of the point Summary (no metric is finished from them).
_REPLICATED = ("rows", "weight", "sums", "correct", "class_rows", "class_weight", "class_sums", "class_correct",
               "bin_weight", "bin_confidence", "bin_correct", "loss_histogram")
_NOT_REPLICATED = ("clipped", "clipped_zero", "zero_loss", "reverse_zero", "reverse_zero_loss", "ignored")
# Sums too large to resample (the fine histogram of equal-mass bins: 4 x 2,048 numbers; the
# (class, bin) cells: 3 x K x B): R copies would cost R times as much (2000 x 64 KB = 128 MB per
# group). Replicates leave them empty, so ece_mass, classwise_ece and the Brier decomposition
# (and ece, mce with --bins-kind mass) have no interval: NaN replicates, a null interval.
_NOT_RESAMPLED = ("fine_weight", "fine_weight_sq", "fine_confidence", "fine_correct", "class_bins", "class_totals")


@dataclass(eq=False)
class Replicates:
    """R bootstrap replicates of a Summary: the Summary of the same rows, each weighted by its
    Poisson(1) resample weight (bootstrap.poisson_weights), for every resample r.

    ``fields`` maps a Summary field to its (R, *shape) values; a field it lacks is the point
    Summary's. ``Replicates + Replicates`` is the replicates of the rows of both, like Summary.
    Memory: R x the size of a Summary, whatever the number of rows.
    """

    fields: dict[str, np.ndarray]

    @property
    def resamples(self) -> int:
        return len(self.fields["weight"])

    @classmethod
    def of_batch(cls, poisson: np.ndarray, values: dict[str, np.ndarray], n_classes: int,
                 weights: np.ndarray | None = None, labels: np.ndarray | None = None,
                 correct: np.ndarray | None = None, confidence: np.ndarray | None = None, n_bins: int = 15,
                 loss: np.ndarray | None = None,
                 reweighted: Callable[[np.ndarray], Summary] | None = None) -> "Replicates":
        """Replicates of one batch (the arguments of Summary.of_batch) under ``poisson``, its (n, R)
        resample weights. Fields of Summary not listed in _REPLICATED come from ``reweighted(w)``,
        the batch's Summary under row weights w, called once per resample (a metric added to the
        Summary gets its replicates with no code here, only more slowly)."""
        n, r = poisson.shape
        k = n_classes
        w = np.ones(n) if weights is None else weights
        hits = losses.weighted(correct.astype(np.float64), w) if correct is not None else np.zeros(n)
        summed = np.stack([losses.weighted(values[name], w) for name in values], axis=1) if values \
            else np.zeros((n, 0))
        m = summed.shape[1]
        # Every field is sum_i P_ir x_i for some per-row x: one matrix product over the columns
        # [rows, weight, sums..., correct | per class | per confidence bin | per loss bin], the
        # per-bin ones spread over one-hot columns (or, for many classes, summed group by group).
        parts: list[tuple[str, np.ndarray, np.ndarray | None, int]] = [
            ("overall", np.column_stack([np.ones(n), w, summed, hits]), None, 1)]
        if labels is not None:
            parts.append(("class", np.column_stack([np.ones(n), w, summed, hits]), labels, k))
            if confidence is not None:
                parts.append(("bin", np.column_stack([w, losses.weighted(confidence, w), hits]),
                              confidence_bins(confidence, n_bins), n_bins))
        if loss is not None:
            index = loss_bins(loss).astype(np.intp)
            inside = index > 0
            parts.append(("loss", np.where(inside, w, 0.0)[:, None], np.where(inside, index - 1, 0), len(LOSS_EDGES)))
        sums = _sums_by_part(poisson, parts)
        overall = sums["overall"][:, 0, :]
        fields = {"rows": overall[:, 0], "weight": overall[:, 1], "sums": overall[:, 2:2 + m],
                  "correct": overall[:, 2 + m] if labels is not None else np.zeros(r),
                  "class_rows": np.zeros((r, k)), "class_weight": np.zeros((r, k)),
                  "class_sums": np.zeros((r, k, m)), "class_correct": np.zeros((r, k)),
                  "bin_weight": np.zeros((r, n_bins)), "bin_confidence": np.zeros((r, n_bins)),
                  "bin_correct": np.zeros((r, n_bins)), "loss_histogram": np.zeros((r, len(LOSS_EDGES)))}
        if "class" in sums:
            per_class = sums["class"]
            fields.update(class_rows=per_class[:, :, 0], class_weight=per_class[:, :, 1],
                          class_sums=per_class[:, :, 2:2 + m], class_correct=per_class[:, :, 2 + m])
        if "bin" in sums:
            fields.update(bin_weight=sums["bin"][:, :, 0], bin_confidence=sums["bin"][:, :, 1],
                          bin_correct=sums["bin"][:, :, 2])
        if "loss" in sums:
            fields["loss_histogram"] = sums["loss"][:, :, 0]
        if labels is not None and confidence is not None:  # sum of squared row weights, (w P)^2
            squared = _sums_by_part(poisson * poisson, [("bin", (w * w)[:, None], confidence_bins(confidence, n_bins),
                                                         n_bins)])
            fields["bin_weight_sq"] = squared["bin"][:, :, 0]
        else:
            fields["bin_weight_sq"] = np.zeros((r, n_bins))
        other = [f.name for f in dataclasses.fields(Summary)
                 if f.name not in (*_SHAPE_FIELDS, *_REPLICATED, "bin_weight_sq", *_NOT_REPLICATED, *_NOT_RESAMPLED)]
        if other and reweighted is not None:
            resampled = [reweighted(w * poisson[:, j]) for j in range(r)]
            fields.update({name: np.stack([np.asarray(getattr(p, name), dtype=np.float64) for p in resampled])
                           for name in other})
        return cls(fields)

    def __add__(self, other: "Replicates") -> "Replicates":
        if self.fields.keys() != other.fields.keys():
            raise ValueError("cannot merge replicates of different fields")
        return Replicates({name: self.fields[name] + other.fields[name] for name in self.fields})

    def summary(self, point: Summary, r: int) -> Summary:
        """Replicate r as a Summary: ``point`` (the Summary of the same rows) with the replicated fields."""
        return next(self.summaries(point, start=r, stop=r + 1))

    def summaries(self, point: Summary, start: int = 0, stop: int | None = None) -> Iterator[Summary]:
        """The replicates start..stop-1 as Summaries (counts as integers, like the point Summary's)."""
        casts = {name: _cast_like(getattr(point, name)) for name in self.fields}
        for r in range(start, self.resamples if stop is None else stop):
            out = copy.copy(point)
            out.__dict__.update({name: casts[name](stack[r]) for name, stack in self.fields.items()})
            out.__dict__.update(dict.fromkeys(_NOT_RESAMPLED, _NONE))
            yield out


def _cast_like(current) -> Callable:
    """How a replicate's value of a field is made the type of the point Summary's."""
    if isinstance(current, (int, np.integer)):
        return lambda v: int(round(float(v)))
    if isinstance(current, float):
        return float
    if isinstance(current, np.ndarray) and current.dtype.kind in "iu":
        return lambda v: np.rint(v).astype(current.dtype)
    return lambda v: v


def resampled_sums(poisson: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(R, C): sum_i poisson[i, r] * columns[i, c]. A row left out of a resample (weight 0) adds
    nothing even when its value is infinite or undefined; drawn, it adds what it holds."""
    finite = np.isfinite(columns)
    if finite.all():
        return poisson.T @ columns
    out = poisson.T @ np.where(finite, columns, 0.0)
    rows, cols = np.nonzero(~finite)
    for i, c in zip(rows, cols):
        out[:, c] += np.where(poisson[i] > 0, columns[i, c], 0.0)
    return out


ONE_HOT_COLUMNS = 512  # above this many one-hot columns, rows are summed group by group instead


def _sums_by_part(poisson: np.ndarray, parts) -> dict[str, np.ndarray]:
    """(R, size, C) per part (name, columns, index or None, size): sum over rows i with
    index[i] == j of poisson[i, r] * columns[i, c]; small parts share one matrix product."""
    n = poisson.shape[0]
    dense, blocks, out = [], [], {}
    for name, columns, index, size in parts:
        if index is None:
            dense.append((name, 1, columns.shape[1]))
            blocks.append(columns)
        elif size * columns.shape[1] <= ONE_HOT_COLUMNS:
            spread = np.zeros((n, size, columns.shape[1]))
            spread[np.arange(n), index] = columns
            dense.append((name, size, columns.shape[1]))
            blocks.append(spread.reshape(n, -1))
        else:
            out[name] = _grouped(poisson, index, size, columns)
    product = resampled_sums(poisson, np.concatenate(blocks, axis=1)) if blocks else np.zeros((poisson.shape[1], 0))
    at = 0
    for name, size, width in dense:
        out[name] = product[:, at:at + size * width].reshape(-1, size, width)
        at += size * width
    return out


def _grouped(poisson: np.ndarray, index: np.ndarray, size: int, columns: np.ndarray) -> np.ndarray:
    """(R, size, C): sum over rows i with index[i] == j of poisson[i, r] * columns[i, c]."""
    out = np.zeros((poisson.shape[1], size, columns.shape[1]))
    if len(index) == 0:
        return out
    order = np.argsort(index, kind="stable")
    ordered = index[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    resampled, values = poisson[order], columns[order]
    for start, end in zip(starts, ends):
        out[:, ordered[start], :] = resampled_sums(resampled[start:end], values[start:end])
    return out
