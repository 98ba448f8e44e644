"""Finished documents folded into sums that do not grow with the input: the totals, each --by group's,
the bootstrap replicates of both (``--interval``), the --worst candidates and the streamed --per-doc rows.

Per document d (S_d = sum -ll in nats, T_d tokens, B_d bytes, W_d words, has_d = T_d > 0) the
linear figures are

    S_d, T_d, B_d, W_d has_d, has_d, S_d / T_d, exp(S_d / T_d)      (LINEAR, 0 where T_d = 0)

and every metric of report.py's docstring is a ratio of two of their sums. The bootstrap is over
documents (the unit of independence): document d weighs w_dr ~ Poisson(1) in resample r, drawn by
bootstrap.poisson_weights from a hash of its id (bootstrap.key_ids) and r, so a replicate's sums
(sum_d w_dr x_d, an R x 7 array) do not depend on file order, batching or where the input was cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LINEAR = ("nll_sum", "tokens", "bytes", "words", "docs", "doc_nll", "doc_ppl")
COUNTS = ("documents", "masked", "placeholder", "empty", "bytes_unknown")


def linear_values(arrays: dict[str, np.ndarray], tokens_known: bool) -> np.ndarray:
    """(n, 7) per-document figures whose sums make the metrics (see the module docstring)."""
    tokens = arrays["tokens"].astype(np.float64)
    has = tokens > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        per_token = np.where(has, arrays["nll_sum"] / np.where(has, tokens, 1.0), 0.0) if tokens_known else \
            np.zeros(len(tokens))
        ppl = np.where(has, np.exp(per_token), 0.0) if tokens_known else np.zeros(len(tokens))
    nbytes = np.where(arrays["bytes_unknown"], 0, arrays["bytes"]).astype(np.float64)
    return np.column_stack([arrays["nll_sum"], tokens, nbytes, arrays["words"] * has, has, per_token, ppl])


def count_values(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([len(arrays["tokens"]), arrays["masked"].sum(), arrays["placeholder"].sum(),
                     (arrays["tokens"] == 0).sum(), arrays["bytes_unknown"].sum()], np.int64)


def replicate_sums(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, k): sum_d weights[d, r] values[d, :]; an infinite value counts only where its weight is > 0."""
    infinite = ~np.isfinite(values)
    if not infinite.any():
        return (values.T @ weights).T  # (k, n) @ (n, R): row-major weights, far faster than weights.T @ values
    out = (np.where(infinite, 0.0, values).T @ weights).T
    for column in np.flatnonzero(infinite.any(axis=0)):
        rows = infinite[:, column]
        drawn = weights[rows] > 0  # (m, R): the document is in resample r
        out[:, column] += np.where(drawn.any(axis=0), np.inf, 0.0)  # exp overflow: +inf only (no NaN values)
    return out


def metrics_of(linear: np.ndarray, scale: float, *, tokens_known: bool, text_known: bool,
               bytes_known: bool) -> dict[str, Any]:
    """The seven metrics from LINEAR sums: (7,) gives floats, (R, 7) gives arrays of R replicates."""
    s, t, b, w, docs, doc_nll, doc_ppl = (linear[..., j] for j in range(len(LINEAR)))
    nan = np.full(np.shape(s), np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        per_token = np.where(t > 0, s / np.where(t > 0, t, 1.0), np.nan) if tokens_known else nan
        per_byte = np.where(b > 0, s / np.where(b > 0, b, 1.0), np.nan) if bytes_known else nan
        per_word = np.where(w > 0, s / np.where(w > 0, w, 1.0), np.nan) if text_known else nan
        mean_nll = np.where(docs > 0, doc_nll / np.where(docs > 0, docs, 1.0), np.nan) if tokens_known else nan
        mean_ppl = np.where(docs > 0, doc_ppl / np.where(docs > 0, docs, 1.0), np.nan) if tokens_known else nan
        out = {"nll": per_token / scale, "perplexity": np.exp(per_token), "doc_nll": mean_nll / scale,
               "doc_perplexity": mean_ppl, "bits_per_byte": per_byte / math.log(2), "byte_perplexity": np.exp(per_byte),
               "word_perplexity": np.exp(per_word)}
    if np.ndim(s) == 0:
        return {k: float(v) for k, v in out.items()}
    return out


@dataclass
class Sums:
    """The LINEAR and COUNTS sums of a set of documents, and their replicates (R x 7) under --interval."""

    linear: np.ndarray = field(default_factory=lambda: np.zeros(len(LINEAR)))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(COUNTS), np.int64))
    replicates: np.ndarray | None = None

    def add(self, values: np.ndarray, counts: np.ndarray, weights: np.ndarray | None) -> None:
        self.linear = self.linear + values.sum(axis=0)
        self.counts = self.counts + counts
        if weights is not None:
            part = replicate_sums(values, weights)
            self.replicates = part if self.replicates is None else self.replicates + part

    def __add__(self, other: "Sums") -> "Sums":
        reps = [r for r in (self.replicates, other.replicates) if r is not None]
        return Sums(self.linear + other.linear, self.counts + other.counts,
                    None if not reps else reps[0] if len(reps) == 1 else reps[0] + reps[1])

    def count(self, name: str) -> int:
        return int(self.counts[COUNTS.index(name)])

    def total(self, name: str) -> float:
        return float(self.linear[LINEAR.index(name)])


@dataclass
class Bootstrap:
    """--interval: the level, resamples and seed of the Poisson bootstrap over documents."""

    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0


class SeenIds:
    """The 64-bit hashes of finished documents (8 bytes each), to tell a document id seen again after
    it ended (interleaved input) from a new one: sorted runs of doubling sizes (a log-structured set),
    so that adding n hashes costs O(n log n) in all and a lookup O(log^2 n)."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []  # sorted, sizes decreasing

    def add(self, hashes: np.ndarray) -> None:
        run = np.sort(np.asarray(hashes, np.uint64))
        while self.levels and len(self.levels[-1]) <= len(run):
            run = np.sort(np.concatenate([self.levels.pop(), run]), kind="mergesort")
        self.levels.append(run)

    def seen(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash: was it added before?"""
        hashes = np.asarray(hashes, np.uint64)
        found = np.zeros(len(hashes), bool)
        for level in self.levels:
            at = np.minimum(np.searchsorted(level, hashes), len(level) - 1)
            found |= level[at] == hashes
        return found


# ids, group keys, per-document arrays, tokens known, text known
RowsSink = Callable[[list, list, dict[str, np.ndarray], bool, bool], None]


class Accumulator:
    """Folds chunks of finished documents: totals, groups, replicates, --worst candidates, --per-doc rows."""

    def __init__(self, *, tokens_known: bool, grouped: bool, bootstrap: Bootstrap | None, worst: int,
                 worst_key: Callable[[dict[str, np.ndarray]], np.ndarray], rows: RowsSink | None = None) -> None:
        self.tokens_known = tokens_known
        self.text_known = True
        self.grouped = grouped
        self.bootstrap = bootstrap
        self.worst = worst
        self.worst_key = worst_key
        self.rows = rows
        self.total = Sums()
        self.groups: dict[Any, Sums] = {}
        self.worst_ids: list = []
        self.worst_arrays: dict[str, np.ndarray] | None = None

    def add(self, ids: list, group_of: list, arrays: dict[str, np.ndarray]) -> None:
        """Fold documents (ids, their --by keys, their DocState columns) that will not be continued."""
        n = len(ids)
        if n == 0:
            return
        values = linear_values(arrays, self.tokens_known)
        hashes = None
        if self.bootstrap is not None:  # bootstrap.py builds its lookup table on import: only when asked
            from ..bootstrap import block_size, key_ids, poisson_weights

            hashes = key_ids(ids)
        if self.grouped:
            index: dict = {}
            codes = np.array([index.setdefault(k, len(index)) for k in group_of], np.int64)
        else:
            index, codes = {None: 0}, np.zeros(n, np.int64)
        for key, code in index.items():
            members = np.flatnonzero(codes == code) if len(index) > 1 else np.arange(n)
            part = {name: column[members] for name, column in arrays.items()}
            sums = Sums()
            step = block_size(self.bootstrap.resamples) if self.bootstrap is not None else len(members)
            for start in range(0, len(members), step):
                block = members[start:start + step]
                weights = None
                if self.bootstrap is not None and hashes is not None:
                    weights = poisson_weights(hashes[block], self.bootstrap.resamples, self.bootstrap.seed)
                sums.add(values[block], np.zeros(len(COUNTS), np.int64), weights)
            sums.counts = count_values(part)
            self.total = self.total + sums
            if self.grouped:
                self.groups[key] = self.groups[key] + sums if key in self.groups else sums
        if self.worst:
            self._keep_worst(ids, arrays)
        if self.rows is not None:
            self.rows(ids, group_of, arrays, self.tokens_known, self.text_known)

    def _keep_worst(self, ids: list, arrays: dict[str, np.ndarray]) -> None:
        if self.worst_arrays is None:
            merged, merged_ids = arrays, list(ids)
        else:
            merged = {k: np.concatenate([self.worst_arrays[k], arrays[k]]) for k in arrays}
            merged_ids = self.worst_ids + list(ids)
        key = self.worst_key(merged)
        order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:self.worst]  # ties: first seen first
        order.sort()  # keep file order among the candidates, so that later ties stay behind
        self.worst_arrays = {k: v[order] for k, v in merged.items()}
        self.worst_ids = [merged_ids[i] for i in order]
