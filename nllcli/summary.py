"""Running sums that merge: batch + batch, file + file, partition + partition.

A Summary holds, for named per-sample quantities (nll, kl, ...), their weighted sums over all
rows and per true class. Adding two summaries gives the summary of the rows of both, so the same
code serves a stream of batches and, later, partitions computed elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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

    @classmethod
    def empty(cls, names: tuple[str, ...], n_classes: int) -> "Summary":
        m, k = len(names), n_classes
        return cls(names, k, 0, 0.0, np.zeros(m), 0.0, np.zeros(k, np.int64), np.zeros(k),
                   np.zeros((k, m)), np.zeros(k), 0)

    @classmethod
    def of_batch(cls, values: dict[str, np.ndarray], n_classes: int, weights: np.ndarray | None = None,
                 labels: np.ndarray | None = None, correct: np.ndarray | None = None,
                 clipped: int = 0) -> "Summary":
        """Summarise one batch: ``values`` maps each quantity to its (n,) per-sample array."""
        names = tuple(values)
        n = len(next(iter(values.values()))) if values else 0
        w = np.ones(n) if weights is None else weights
        # A zero weight drops a row even when its loss is infinite (0 * inf would be NaN).
        stacked = np.stack([values[name] for name in names]) if names else np.zeros((0, n))
        weighted = np.multiply(stacked, w, out=np.zeros_like(stacked), where=w > 0)
        out = cls.empty(names, n_classes)
        out.rows, out.weight, out.sums, out.clipped = n, float(w.sum()), weighted.sum(axis=1), clipped
        if labels is not None:
            hit = w * correct
            out.correct = float(hit.sum())
            out.class_rows = np.bincount(labels, minlength=n_classes)
            out.class_weight = np.bincount(labels, weights=w, minlength=n_classes)
            out.class_correct = np.bincount(labels, weights=hit, minlength=n_classes)
            out.class_sums = np.stack([np.bincount(labels, weights=row, minlength=n_classes)
                                       for row in weighted], axis=1) if names else out.class_sums
        return out

    def __add__(self, other: "Summary") -> "Summary":
        if self.names != other.names or self.n_classes != other.n_classes:
            raise ValueError("cannot merge summaries of different quantities or classes")
        return Summary(self.names, self.n_classes, self.rows + other.rows, self.weight + other.weight,
                       self.sums + other.sums, self.correct + other.correct,
                       self.class_rows + other.class_rows, self.class_weight + other.class_weight,
                       self.class_sums + other.class_sums, self.class_correct + other.class_correct,
                       self.clipped + other.clipped)

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
