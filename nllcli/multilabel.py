"""nll score --multilabel: each class column is an independent P(y_k = 1) (sigmoid outputs).

Labels are 0/1 columns (``--target-prefix PREFIX``: columns PREFIX<class>, values in [0, 1]) or
one column listing each row's positive classes, split on ``--label-delimiter`` (default: any of
, ; | that is in no class name), an empty cell meaning none. Per label k and row i, with p = P(y_k = 1):

    binary cross-entropy  BCE = -[y log p + (1 - y) log(1 - p)]   (p clipped to [eps, 1 - eps],
                                scikit-learn's log_loss); from logits z, softplus(z) - y z exactly;
                                from log-probabilities l, -[y l + (1 - y) log(1 - e^l)]
    Brier                 (p - y)^2
    ECE per label         over --bins equal-width bins of p: sum_b (n_b / N) |mean y_b - mean p_b|

Overall: the mean over labels of each label's mean (every label counts the same; for BCE this is
the mean over all cells), the ECE of all cells pooled, hamming accuracy (cells right at 0.5) and
subset accuracy (rows with every label right). Sums merge with +, batch by batch, so memory does
not grow with the rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import losses
from .errors import InputError, UsageError

DELIMITERS = ",;|"


# -- kernels ---------------------------------------------------------------------------------


def probabilities(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, log p, log(1 - p)) per cell from probabilities, logits (log sigmoid, exact for any z) or
    log-probabilities."""
    with np.errstate(divide="ignore"):
        if kind == "logits":
            log_p, log_not = -np.logaddexp(0.0, -values), -np.logaddexp(0.0, values)
            return np.exp(log_p), log_p, log_not
        if kind == "log-probs":
            return np.exp(values), values, np.log1p(-np.exp(values))
        return values, np.log(values), np.log1p(-values)


def binary_cross_entropy(values: np.ndarray, y: np.ndarray, kind: str, eps: float) -> tuple[np.ndarray, int]:
    """BCE per cell (formulas in the module docstring) and how many probabilities the clip moved
    (probabilities and log-probabilities only; logits are exact)."""
    p, log_p, log_not = probabilities(values, kind)
    moved = 0
    if kind != "logits" and eps > 0:
        clipped = losses.clip(p, eps)
        moved = clipped.moved
        if moved:
            p = clipped.values
            log_p, log_not = np.log(p), np.log1p(-p)
    with np.errstate(invalid="ignore"):  # 0 * -inf where y is 0 or 1 exactly: that term is 0
        terms = -(np.where(y > 0, y * log_p, 0.0) + np.where(y < 1, (1.0 - y) * log_not, 0.0))
    return terms, moved


def check_values(values: np.ndarray, kind: str) -> losses.Problem | None:
    """Cells that are not a probability (or its logit or log) of one label."""
    if kind == "logits":
        return losses.find_problem(values, "logits", 0.0)
    if kind == "log-probs":
        bad = np.isnan(values) | (values > 0)
        message = "log-probability that is NaN or above 0"
    else:
        bad = ~((values >= 0) & (values <= 1))
        message = "probability missing, NaN or outside [0, 1]"
    if not bad.any():
        return None
    rows = np.flatnonzero(bad.any(axis=1))
    return losses.Problem(message, rows, int(np.argmax(bad[rows[0]])))


def label_matrix(cells: Sequence[str | None], names: list[str], delimiter: str | None) -> tuple[np.ndarray, list]:
    """0/1 matrix (n, K) from cells listing positive classes; returns also the rows (0-based) with
    an unknown class, with that class."""
    index = {name.strip(): k for k, name in enumerate(names)}
    # by default any of , ; | that is in no class name ('wide, shot' keeps its comma)
    chars = delimiter or "".join(c for c in DELIMITERS if not any(c in name for name in names)) or DELIMITERS
    split = re.compile("[" + re.escape(chars) + "]")
    out = np.zeros((len(cells), len(names)))
    unknown = []
    for i, cell in enumerate(cells):
        for part in split.split(cell or ""):
            part = part.strip()
            if not part:
                continue
            k = index.get(part)
            if k is None:
                unknown.append((i, part))
            else:
                out[i, k] = 1.0
    return out, unknown


# -- mergeable sums ------------------------------------------------------------------------------


@dataclass
class MultilabelSums:
    """Weighted sums per label (and per label and confidence bin) that add with +."""

    n_labels: int
    n_bins: int
    rows: int
    weight: float
    clipped: int
    bce: np.ndarray  # (K,)
    brier: np.ndarray
    right: np.ndarray  # cells right at 0.5
    positives: np.ndarray
    subset_right: float  # rows with every label right
    bin_weight: np.ndarray  # (K, bins)
    bin_p: np.ndarray
    bin_y: np.ndarray

    @classmethod
    def empty(cls, n_labels: int, n_bins: int) -> "MultilabelSums":
        k, b = np.zeros(n_labels), np.zeros((n_labels, n_bins))
        return cls(n_labels, n_bins, 0, 0.0, 0, k, k, k, k, 0.0, b, b, b)

    @classmethod
    def of_batch(cls, values: np.ndarray, y: np.ndarray, w: np.ndarray, kind: str, eps: float,
                 n_bins: int) -> "MultilabelSums":
        n, k = values.shape
        bce, clipped = binary_cross_entropy(values, y, kind, eps)
        p = probabilities(values, kind)[0]
        wc = w[:, None]
        right = (p >= 0.5) == (y >= 0.5)
        bins = np.minimum(np.maximum(np.ceil(p * n_bins).astype(np.int64) - 1, 0), n_bins - 1)  # (lo, hi]
        flat = (np.arange(k)[None, :] * n_bins + bins).ravel()
        size = k * n_bins
        weights = np.broadcast_to(wc, (n, k)).ravel()
        return cls(k, n_bins, n, float(w.sum()), clipped,
                   (wc * bce).sum(axis=0), (wc * (p - y) ** 2).sum(axis=0),
                   (wc * right).sum(axis=0), (wc * y).sum(axis=0), float(w @ right.all(axis=1)),
                   np.bincount(flat, weights, size).reshape(k, n_bins),
                   np.bincount(flat, (wc * p).ravel(), size).reshape(k, n_bins),
                   np.bincount(flat, (wc * y).ravel(), size).reshape(k, n_bins))

    def __add__(self, other: "MultilabelSums") -> "MultilabelSums":
        return MultilabelSums(self.n_labels, self.n_bins, self.rows + other.rows, self.weight + other.weight,
                              self.clipped + other.clipped, self.bce + other.bce, self.brier + other.brier,
                              self.right + other.right, self.positives + other.positives,
                              self.subset_right + other.subset_right, self.bin_weight + other.bin_weight,
                              self.bin_p + other.bin_p, self.bin_y + other.bin_y)

    def ece(self, label: int | None = None) -> float:
        """ECE of one label, or of every cell pooled (label None)."""
        weight, p, y = ((self.bin_weight[label], self.bin_p[label], self.bin_y[label]) if label is not None else
                        (self.bin_weight.sum(0), self.bin_p.sum(0), self.bin_y.sum(0)))
        total = weight.sum()
        return float(np.abs(y - p).sum() / total) if total > 0 else math.nan


# -- the command -------------------------------------------------------------------------------------


def score(preds, *, label: str | None = None, classes: str | list[str] | None = None, key: str | None = None,
          weight: str | None = None, ignore: Sequence[str] = (), input: str = "probs", eps: float = losses.EPS,
          base: str = "e", target_prefix: str | None = None, label_delimiter: str | None = None,
          bins: int = 15, max: Sequence[str] = (), min: Sequence[str] = (), progress=None):
    """`nll score --multilabel` (see the module docstring): a Report whose per_class rows are labels."""
    from .columns import parse_classes, resolve_layout, target_layout
    from .engine import _raise_problem, _weights
    from .plan import Settings, check_stdin_once, open_inputs
    from .readers import chunks
    from .report import UNITS, Gate, Report, check_gate_metrics

    settings = Settings(kind=input, eps=eps, base=str(base), bins=bins)
    if label_delimiter is not None and len(label_delimiter) != 1:
        raise UsageError(f"--label-delimiter {label_delimiter!r}: give one character")
    check_stdin_once(preds)
    gates = [Gate.parse(t, "max") for t in max] + [Gate.parse(t, "min") for t in min]
    check_gate_metrics(gates, list(METRICS))
    sources = open_inputs(preds[0] if isinstance(preds, (list, tuple)) and len(preds) == 1 else preds)
    schema, name = sources[0].schema, sources[0].name
    reserved = [n for n in schema.names if n.lower().startswith(target_prefix.lower())] if target_prefix else []
    class_list = parse_classes(classes) if isinstance(classes, str) else classes
    layout = resolve_layout(schema, name, classes=class_list, label=label, key=key, weight=weight,
                            reserved=reserved, label_required=False, use_default_label=not target_prefix,
                            ignore=list(ignore or ()))
    if layout.list_column or layout.binary:
        raise UsageError("--multilabel needs one probability column per label (two or more)")
    names = layout.class_names
    targets = target_layout(schema, name, names, name, prefix=target_prefix) if target_prefix else None
    if targets is None and layout.label is None:
        raise InputError(name, "--multilabel needs the labels: a column listing each row's classes (--label) "
                         "or 0/1 columns (--target-prefix PREFIX)")
    import pyarrow as pa

    types = dict(layout.types(schema))
    if layout.label:
        types[layout.label] = pa.string()  # a list of classes, not one of them
    columns = list(dict.fromkeys([*layout.columns, *(targets.class_columns if targets else [])]))
    if targets:
        types.update({c: pa.float64() for c in targets.class_columns})
    total = MultilabelSums.empty(len(names), bins)
    with chunks(sources, columns, types) as stream:
        for chunk in stream:
            values = layout.values(chunk.batch, chunk.first_row)
            _raise_problem(check_values(values, input), chunk, layout)
            if targets is not None:
                y = targets.values(chunk.batch, chunk.first_row)
                bad = np.flatnonzero(~((y >= 0) & (y <= 1)).all(axis=1))
                if bad.size:
                    column = targets.class_columns[int(np.argmax(~((y[bad[0]] >= 0) & (y[bad[0]] <= 1))))]
                    raise InputError(chunk.source, "labels must be 0/1 (or in [0, 1])", column=column,
                                     rows=(chunk.first_row + bad).tolist(), total=bad.size)
            else:
                cells = chunk.batch.column(layout.label).to_pylist()
                y, unknown = label_matrix(cells, names, label_delimiter)
                if unknown:
                    rows = list(dict.fromkeys(chunk.first_row + i for i, _ in unknown))
                    raise InputError(chunk.source, f"unknown class {unknown[0][1]!r} (classes: {', '.join(names)})",
                                     column=layout.label, rows=rows, total=len(rows))
            w = _weights(chunk, layout)
            total = total + MultilabelSums.of_batch(values, y, np.ones(len(y)) if w is None else w, input, eps, bins)
            if progress is not None:
                progress(chunk.first_row + chunk.batch.num_rows - 1, chunk.bytes_read)
    if total.rows == 0:
        raise InputError(name, "no data rows")
    if total.weight <= 0:
        raise InputError(name, "weights sum to 0: nothing to average", column=layout.weight)
    scale = settings.unit_scale
    per_label = []
    for k, label_name in enumerate(names):
        per_label.append({"class": label_name, "rows": int(total.rows), "nll": float(total.bce[k] / total.weight
                                                                                      / scale),
                          "accuracy": float(total.right[k] / total.weight), "positives": float(total.positives[k]),
                          "prevalence": float(total.positives[k] / total.weight),
                          "brier": float(total.brier[k] / total.weight), "ece": total.ece(k)})
    metrics = {"nll": float(total.bce.sum() / total.weight / len(names) / scale),
               "brier": float(total.brier.sum() / total.weight / len(names)),
               "ece": total.ece(),
               "accuracy": float(total.right.sum() / total.weight / len(names)),
               "subset_accuracy": float(total.subset_right / total.weight)}
    warnings = []
    if total.clipped:
        warnings.append(f"{total.clipped:,} probabilities were 0 or 1 (within eps = {eps:.3g}), clipped into "
                        "[eps, 1 - eps]")
    inputs = {"preds": [s.name for s in sources]}
    return Report("score", inputs, total.rows, list(names), UNITS[settings.base], metrics, per_label,
                  total.clipped, eps, input, layout.weight is not None, warnings, gates, multilabel=True)


METRICS = {"nll": "mean binary cross-entropy over labels", "brier": "mean (p - y)^2 over labels",
           "ece": "ECE of every (row, label) cell", "accuracy": "hamming accuracy at 0.5",
           "subset_accuracy": "rows with every label right at 0.5"}
