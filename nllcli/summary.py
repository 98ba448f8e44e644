"""Running sums that merge: batch + batch, file + file, partition + partition.

A Summary holds, for named per-sample quantities (nll, kl, brier, ...), their weighted sums over
all rows and per true class, the calibration bins of top-label confidence, and a histogram of the
per-sample loss. Adding two summaries gives the summary of the rows of both, so the same code
serves a stream of batches and, later, partitions computed elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

# Edges of the per-sample loss histogram, in nats: fixed, so that histograms merge. The last bin
# is open-ended.
LOSS_EDGES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0)
_HISTOGRAM_EDGES = np.array([*LOSS_EDGES, np.inf])
_SHAPE_FIELDS = ("names", "n_classes")  # describe the summary; must agree to merge


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
    clipped: int
    bin_weight: np.ndarray  # (B,) calibration bins of top-label confidence
    bin_confidence: np.ndarray  # (B,) weighted sum of confidence
    bin_correct: np.ndarray  # (B,) weighted count correct
    loss_histogram: np.ndarray  # (len(LOSS_EDGES),) weighted rows per loss bin

    @classmethod
    def empty(cls, names: tuple[str, ...], n_classes: int, n_bins: int = 15) -> "Summary":
        m, k = len(names), n_classes
        return cls(names, k, 0, 0.0, np.zeros(m), 0.0, np.zeros(k, np.int64), np.zeros(k),
                   np.zeros((k, m)), np.zeros(k), 0, np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins),
                   np.zeros(len(LOSS_EDGES)))

    @classmethod
    def of_batch(cls, values: dict[str, np.ndarray], n_classes: int, weights: np.ndarray | None = None,
                 labels: np.ndarray | None = None, correct: np.ndarray | None = None,
                 clipped: int = 0, confidence: np.ndarray | None = None, n_bins: int = 15,
                 loss: np.ndarray | None = None) -> "Summary":
        """Summarise one batch.

        ``values`` maps each quantity to its (n,) per-sample array; ``labels`` and ``correct``
        give per-class sums and accuracy; ``confidence`` (top-label probability, with labels)
        fills the calibration bins; ``loss`` (nats) the loss histogram.
        """
        names = tuple(values)
        n = len(next(iter(values.values()))) if values else 0
        w = np.ones(n) if weights is None else weights
        stacked = np.stack([values[name] for name in names]) if names else np.zeros((0, n))
        if weights is not None:  # a zero weight drops a row even when its loss is infinite
            stacked = np.multiply(stacked, w, out=np.zeros_like(stacked), where=w > 0)
        out = cls.empty(names, n_classes, n_bins)
        out.rows, out.weight, out.sums, out.clipped = n, float(w.sum()), stacked.sum(axis=1), clipped
        if labels is not None:
            hit = w * correct
            out.correct = float(hit.sum())
            out.class_rows = np.bincount(labels, minlength=n_classes)
            out.class_weight = np.bincount(labels, weights=w, minlength=n_classes)
            out.class_correct = np.bincount(labels, weights=hit, minlength=n_classes)
            if names:
                out.class_sums = np.stack([np.bincount(labels, weights=row, minlength=n_classes)
                                           for row in stacked], axis=1)
            if confidence is not None:
                bins = confidence_bins(confidence, n_bins)
                out.bin_weight = np.bincount(bins, weights=w, minlength=n_bins)
                out.bin_confidence = np.bincount(bins, weights=w * confidence, minlength=n_bins)
                out.bin_correct = np.bincount(bins, weights=hit, minlength=n_bins)
        if loss is not None:  # bins [e_i, e_i+1), the last one [40, inf]
            out.loss_histogram = np.histogram(loss, bins=_HISTOGRAM_EDGES, weights=w)[0]
        return out

    def __add__(self, other: "Summary") -> "Summary":
        if any(getattr(self, f) != getattr(other, f) for f in _SHAPE_FIELDS) or \
                len(self.bin_weight) != len(other.bin_weight):
            raise ValueError("cannot merge summaries of different quantities, classes or bins")
        return Summary(**{f.name: getattr(self, f.name) if f.name in _SHAPE_FIELDS
                          else getattr(self, f.name) + getattr(other, f.name)
                          for f in dataclasses.fields(self)})

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

    def calibration_errors(self) -> tuple[float, float]:
        """(ECE, MCE): sum_b (W_b / W) |acc_b - conf_b|, and the largest gap over non-empty bins."""
        filled = self.bin_weight > 0
        if not filled.any():
            return float("nan"), float("nan")
        gaps = np.abs(self.bin_correct[filled] - self.bin_confidence[filled]) / self.bin_weight[filled]
        ece = float(np.sum(self.bin_weight[filled] * gaps) / self.bin_weight[filled].sum())
        return ece, float(gaps.max())


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence among (0, 1/B], (1/B, 2/B], ..., (1 - 1/B, 1].

    The edges are numpy.linspace(0, 1, B + 1); a confidence equal to an edge falls in the bin
    that edge closes, 0 in the first bin and 1.0 in the last.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence, side="left")


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
