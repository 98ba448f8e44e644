"""score() and kl(): read batches, resolve columns, run the kernels, fold summaries, build a Report."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import losses
from .columns import (Layout, column_not_found, find_column, floats, index_key, integers, parse_classes,
                      resolve_layout, target_layout)
from .errors import InputError, UsageError
from .report import INFORMATION_METRICS, UNITS, Gate, Report, check_gate_metrics, perplexity
from .summary import Summary, Worst

SYMMETRIC = ("kl_reverse", "js")
LABEL_METRICS = ("accuracy", "ece", "mce")  # need a true class per row
Progress = Callable[[int, int], None]  # (rows so far, bytes so far)


@dataclass(frozen=True)
class Settings:
    """How values are read and scored; shared by every command."""

    kind: str = "probs"
    eps: float = losses.EPS
    tol: float = 1e-4
    renormalize: bool = False
    base: str = "e"
    label_smoothing: float | None = None
    symmetric: bool = False
    bins: int = 15

    def __post_init__(self):
        if self.kind not in losses.INPUT_KINDS:
            raise UsageError(f"--input {self.kind!r}: choose one of {', '.join(losses.INPUT_KINDS)}")
        if self.base not in UNITS:
            raise UsageError(f"--base {self.base!r}: choose e, 2 or 10")
        if not (0 <= self.eps < 0.5):
            raise UsageError(f"--eps {self.eps:g}: must be in [0, 0.5)")
        if not (self.tol >= 0):
            raise UsageError(f"--tol {self.tol:g}: must be >= 0")
        if self.label_smoothing is not None and not (0 <= self.label_smoothing <= 1):
            raise UsageError(f"--label-smoothing {self.label_smoothing:g}: must be in [0, 1]")
        if not (1 <= self.bins <= 10_000):
            raise UsageError(f"--bins {self.bins}: must be between 1 and 10000")

    @property
    def unit_scale(self) -> float:
        return {"e": 1.0, "2": math.log(2), "10": math.log(10)}[self.base]


@dataclass
class Prepared:
    """One batch of predictions made ready for the kernels."""

    values: np.ndarray  # as given, (n, K)
    q: np.ndarray | None  # probabilities, when the input is probabilities
    log_q: np.ndarray | None  # log-probabilities, for logits and log-probs

    def model_side(self, kind: str, eps: float) -> tuple[np.ndarray | None, np.ndarray, losses.Clipped | None]:
        """(clipped probabilities or None, log-probabilities, what the clip moved or None).

        Probabilities and log-probabilities are clipped to [eps, 1 - eps]; logits are exact.
        """
        if self.q is not None:
            if eps <= 0 or (self.q.min() >= eps and self.q.max() <= 1.0 - eps):
                return self.q, _log(self.q), None  # nothing to clip: the usual case, two cheap passes
            clipped = losses.clip(self.q, eps)
            return clipped.values, _log(clipped.values), clipped
        if kind == "log-probs":
            clipped = losses.log_clip(self.log_q, eps)
            return None, clipped.values, clipped
        return None, self.log_q, None

    def probs(self) -> np.ndarray:
        return self.q if self.q is not None else np.exp(self.log_q)


# -- per batch -------------------------------------------------------------------------------


def _raise_problem(problem: losses.Problem | None, chunk, layout: Layout) -> None:
    """An InputError naming the file, the column (or the range of class columns) and the rows."""
    if problem is None:
        return
    columns = layout.class_columns or [layout.list_column]
    if problem.column is not None:
        column = columns[min(problem.column, len(columns) - 1)]  # a binary file has one column for two
    else:
        column = [columns[0], columns[-1]] if len(columns) > 1 else columns[0]
    rows = (chunk.first_row + problem.rows).tolist()
    raise InputError(chunk.source, problem.message, column=column, rows=rows, total=len(rows), hint=problem.hint)


def prepare(chunk, layout: Layout, settings: Settings, kind: str | None = None) -> Prepared:
    """Read, validate and normalise the class values of one batch."""
    kind = kind or settings.kind
    values = layout.values(chunk.batch, chunk.first_row)
    if layout.binary:
        values = _binary_matrix(values[:, 0], kind)
    _raise_problem(losses.find_problem(values, kind, settings.tol, settings.renormalize), chunk, layout)
    if kind == "probs":
        return Prepared(values, losses.renormalize_rows(values) if settings.renormalize else values, None)
    if kind == "logits" or settings.renormalize:
        return Prepared(values, None, losses.log_softmax(values))
    return Prepared(values, None, values)


def _binary_matrix(p: np.ndarray, kind: str) -> np.ndarray:
    """Two columns [class 0, class 1] from one column of P(class 1) (or its logit/log)."""
    if kind == "probs":
        return np.column_stack([1.0 - p, p])
    if kind == "logits":
        return np.column_stack([np.zeros_like(p), p])
    with np.errstate(invalid="ignore", divide="ignore"):  # log(1 - 1) = -inf is valid
        return np.column_stack([np.log1p(-np.exp(p)), p])


def _weights(chunk, layout: Layout) -> np.ndarray | None:
    if layout.weight is None:
        return None
    w = floats(chunk.batch.column(layout.weight))
    bad = np.flatnonzero(~(w >= 0) | np.isinf(w))
    if bad.size:
        raise InputError(chunk.source, "weights must be finite and >= 0 (found missing, NaN, inf or negative)",
                         column=layout.weight, rows=(chunk.first_row + bad).tolist(), total=bad.size)
    return w


@dataclass
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
    def of(cls, clipped: losses.Clipped | None, eps: float, targets: np.ndarray | None = None) -> "RowClips | None":
        """From a clip of the true-class values (n,), or of all values (n, K) against targets."""
        if clipped is None or clipped.raised is None:
            return None
        if targets is None:
            return cls(clipped.raised, clipped.lowered, clipped.raised * -math.log(eps))
        observed = targets > 0
        zero = clipped.raised & observed
        return cls(zero.sum(axis=1), (clipped.lowered & observed).sum(axis=1),
                   np.where(zero, targets, 0.0).sum(axis=1) * -math.log(eps))

    @classmethod
    def with_reverse(cls, clips: "RowClips | None", clipped_targets: losses.Clipped, q: np.ndarray) -> "RowClips":
        """``clips`` (None: nothing clipped on q) with the target zeros the reverse KL met."""
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


@dataclass
class Scored:
    """Everything computed for one batch, row by row (arrays of length n)."""

    chunk: Any
    first_index: int  # 0-based position of the batch's first row in the whole input
    values: dict[str, np.ndarray]  # per-sample losses, in nats
    summed: dict[str, np.ndarray]  # the quantities summed in the Summary (values, plus brier)
    loss: np.ndarray  # the main loss: nll, or cross_entropy against soft targets
    weights: np.ndarray | None
    labels: np.ndarray | None
    predicted: np.ndarray | None
    correct: np.ndarray | None
    confidence: np.ndarray | None
    p_true: np.ndarray | None
    clips: RowClips | None  # None: nothing clipped

    @property
    def rows(self) -> int:
        return len(self.loss)

    def summary(self, n_classes: int, n_bins: int, rows: np.ndarray | None = None) -> Summary:
        """The batch's Summary, or that of a subset of its rows."""
        def pick(a):
            return a if a is None or rows is None else a[rows]

        clips = self.clips.counts(self.weights, rows) if self.clips is not None else {}
        return Summary.of_batch({k: pick(v) for k, v in self.summed.items()}, n_classes, pick(self.weights),
                                pick(self.labels), pick(self.correct), confidence=pick(self.confidence),
                                n_bins=n_bins, loss=pick(self.loss), **clips)


class Evaluator:
    """Scores batches against hard labels or target distributions and keeps the running summaries:
    overall, per group (``--by``) and the worst samples (``--worst``)."""

    def __init__(self, layout: Layout, settings: Settings, soft: bool, target_kind: str = "probs",
                 calibration: bool = True, worst: int = 0):
        self.layout, self.settings, self.soft, self.target_kind = layout, settings, soft, target_kind
        self.calibration = calibration  # Brier score and confidence bins (score, not kl)
        self.summary: Summary | None = None
        self.groups: dict[tuple, Summary] = {}
        self.worst = Worst(worst) if worst else None
        self.row = 0

    def targets_of(self, chunk, target_layout_: Layout) -> np.ndarray:
        """Validated target distributions of a batch (never clipped)."""
        return prepare(chunk, target_layout_, self.settings, self.target_kind).probs()

    def add(self, chunk, targets: np.ndarray | None = None) -> Scored:
        scored = self.score_batch(chunk, targets)
        k, bins = len(self.layout.class_names), self.settings.bins
        summary = scored.summary(k, bins)
        self.summary = summary if self.summary is None else self.summary + summary
        if self.layout.groups:
            for key, rows in group_rows(chunk.batch, self.layout.groups):
                part = scored.summary(k, bins, rows)
                self.groups[key] = self.groups[key] + part if key in self.groups else part
        if self.worst is not None:
            self.worst.add_entries(self.worst_candidates(scored))
        self.row += scored.rows
        return scored

    def score_batch(self, chunk, targets: np.ndarray | None = None) -> Scored:
        """Validate and score one batch; no running state changes."""
        layout, settings = self.layout, self.settings
        pred = prepare(chunk, layout, settings)
        n, k = pred.values.shape
        labels = layout.label_indices(chunk.batch, chunk.first_row) if layout.label else None
        if self.soft and targets is None:
            if labels is None:
                raise UsageError("soft targets need --targets, --target-prefix or --label-smoothing with a label")
            targets = losses.label_smoothing(labels, k, settings.label_smoothing or 0.0)
        predicted = losses.argmax_rows(pred.values) if labels is not None else None
        values, clips, p_true = self._losses(pred, labels, targets)
        summed, confidence = values, None
        if self.calibration:  # in the summary only: per-sample rows keep their documented columns
            summed = {**values, "brier": losses.brier(pred.probs(), labels, targets)}
            confidence = losses.top_confidence(pred.q, pred.log_q) if labels is not None else None
        return Scored(chunk, self.row, values, summed, values["cross_entropy" if self.soft else "nll"],
                      _weights(chunk, layout), labels, predicted,
                      (predicted == labels) if labels is not None else None, confidence, p_true, clips)

    def _losses(self, pred: Prepared, labels, targets) -> tuple[dict[str, np.ndarray], RowClips | None,
                                                                  np.ndarray | None]:
        """Per-sample losses (nats), what the clip moved, and p_true (with labels)."""
        eps = self.settings.eps
        if not self.soft:
            if pred.q is not None:
                p_true = losses.true_class(pred.q, labels)
                nll, clipped = losses.hard_label_nll(p_true, eps)
            else:
                log_true = losses.true_class(pred.log_q, labels)
                clipped = losses.log_clip(log_true, eps) if self.settings.kind == "log-probs" else None
                if clipped is not None:
                    log_true = clipped.values
                nll, p_true = -log_true, np.exp(log_true)
            return {"nll": nll}, RowClips.of(clipped, eps), p_true
        q, log_q, clipped = pred.model_side(self.settings.kind, eps)
        ce, h, kl = losses.soft_losses(targets, log_q, q)
        out = {"cross_entropy": ce, "entropy": h, "kl": kl}
        clips = RowClips.of(clipped, eps, targets)
        if self.settings.symmetric:
            q = pred.probs()
            clipped_targets = losses.clip(targets, eps)
            out["kl_reverse"] = losses.kl_divergence(q, q=clipped_targets.values)
            out["js"] = losses.js_divergence(targets, q)
            if clipped_targets.raised is not None and clipped_targets.raised.any():
                clips = RowClips.with_reverse(clips, clipped_targets, q)
        p_true = np.exp(losses.true_class(log_q, labels)) if labels is not None else None
        return out, clips, p_true

    def worst_candidates(self, scored: Scored) -> list[dict]:
        """The rows of a batch that may belong among the worst: id, label, predicted, p_true, loss."""
        rows = Worst.candidates(scored.loss, self.worst.n)
        entries = [{"index": scored.first_index + int(r), "loss": float(scored.loss[r])} for r in rows]
        if self.layout.key:
            keys = scored.chunk.batch.column(self.layout.key).take(rows).to_pylist()
            for entry, key in zip(entries, keys):
                entry["key"] = key
        if scored.labels is not None:
            names = self.layout.class_names
            for entry, r in zip(entries, rows):
                entry.update(label=names[scored.labels[r]], predicted=names[scored.predicted[r]],
                             p_true=float(scored.p_true[r]))
        return entries

    def per_sample_columns(self, scored: Scored) -> dict[str, Any]:
        """Columns of the --per-sample output for one batch: key (or 0-based row), label, predicted,
        p_true and the losses in the report's units."""
        columns: dict[str, Any] = sample_ids(scored, self.layout)
        if scored.labels is not None:
            names = self.layout.class_array
            columns["label"] = names.take(scored.labels)
            columns["predicted"] = names.take(scored.predicted)
            columns["p_true"] = scored.p_true
        for name, array in scored.values.items():
            columns[name] = array / self.settings.unit_scale
        return columns


def sample_ids(scored: Scored, layout: Layout) -> dict[str, Any]:
    """The key column of a batch's rows, or their 0-based positions as `row`."""
    if layout.key:
        return {layout.key: scored.chunk.batch.column(layout.key)}
    return {"row": np.arange(scored.first_index, scored.first_index + scored.rows)}


def group_rows(batch, columns: list[str]):
    """(group key, row indices) for each distinct combination of the group columns in a batch."""
    import pyarrow as pa

    codes = np.zeros(batch.num_rows, dtype=np.int64)
    decoders = []
    for name in columns:
        column = batch.column(name)
        if not pa.types.is_dictionary(column.type):  # a group column that is also the key or weight
            column = column.cast(pa.string()).dictionary_encode()
        index = integers(column.indices, fill=-1) + 1  # 0 for a missing value
        codes = codes * (len(column.dictionary) + 1) + index
        # An empty CSV cell is a missing value, like a null (several codes may decode to None).
        names = [None if v == "" else v for v in column.dictionary.cast(pa.string()).to_pylist()]
        decoders.append((index, [None, *names]))
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    for start, end in zip(starts, np.r_[starts[1:], len(order)]):
        rows = order[start:end]
        yield tuple(values[index[rows[0]]] for index, values in decoders), rows


def _log(q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(q)


# -- pairing ---------------------------------------------------------------------------------


def align_by_position(left: Iterator, right: Iterator, left_name: str, right_name: str) -> Iterator:
    """Pairs of equal-length slices of two chunk streams, row i with row i."""
    from .readers import Chunk

    right = iter(right)
    current, offset = None, 0
    left_rows = 0
    for chunk in left:
        pos, n_rows = 0, chunk.batch.num_rows
        while pos < n_rows:
            if current is None or offset == current.batch.num_rows:
                current, offset = next(right, None), 0
                if current is None:
                    total_left = left_rows + n_rows + sum(c.batch.num_rows for c in left)
                    raise _count_mismatch(left_name, total_left, right_name, left_rows + pos)
            take = min(n_rows - pos, current.batch.num_rows - offset)
            yield (Chunk(chunk.batch.slice(pos, take), chunk.source, chunk.first_row + pos),
                   Chunk(current.batch.slice(offset, take), current.source, current.first_row + offset))
            pos += take
            offset += take
        left_rows += n_rows
    leftover = (current.batch.num_rows - offset if current is not None else 0) + sum(c.batch.num_rows for c in right)
    if leftover:
        raise _count_mismatch(left_name, left_rows, right_name, left_rows + leftover)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _count_mismatch(left_name, left_rows, right_name, right_rows) -> InputError:
    return InputError(left_name, f"row counts differ: {left_rows} rows here, {right_rows} rows in {right_name} "
                                 "(pairing by position; use --key to pair by an id column)")


class KeyIndex:
    """The rows of one file by key, to pair the rows of another file with them in any order.

    Keys missing on either side or repeated are collected while streaming and reported by
    finish(), once every row has been seen (with the count and the first examples).
    """

    def __init__(self, keys, name: str, column: str):
        import pyarrow.compute as pc

        counts = pc.value_counts(keys)
        duplicated = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
        if duplicated:
            raise InputError(name, f"duplicate keys: {duplicated[:5]}", column=column)
        self.keys, self.name, self.column = keys, name, column
        self.used = np.zeros(len(keys), dtype=np.int64)
        self.missing = 0
        self.missing_examples: list = []

    def rows(self, keys) -> np.ndarray | None:
        """Positions of ``keys`` in this file, or None when some are not there (then recorded)."""
        import pyarrow.compute as pc

        rows = integers(pc.index_in(keys, value_set=self.keys), fill=-1)
        absent = np.flatnonzero(rows < 0)
        if absent.size:
            self.missing += absent.size
            self.missing_examples += keys.take(absent[:5]).to_pylist()
            return None
        self.used += np.bincount(rows, minlength=len(self.used))
        return rows

    def finish(self, other_name: str) -> None:
        if self.missing:
            raise InputError(other_name, f"{_count(self.missing, 'key')} with no row in {self.name}: "
                                         f"{self.missing_examples[:5]}", column=self.column)
        repeated = np.flatnonzero(self.used > 1)
        if repeated.size:
            raise InputError(other_name, f"duplicate keys: {self.keys.take(repeated[:5]).to_pylist()}",
                             column=self.column)
        unused = np.flatnonzero(self.used == 0)
        if unused.size:
            raise InputError(self.name, f"{_count(unused.size, 'key')} with no row in {other_name}: "
                                        f"{self.keys.take(unused[:5]).to_pylist()}", column=self.column)


# -- commands --------------------------------------------------------------------------------


def _check_stdin_once(*inputs) -> None:
    """Standard input can feed one input only."""
    paths = [str(i) for x in inputs for i in (x if isinstance(x, (list, tuple)) else [x]) if isinstance(i, (str, Path))]
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")


def _check_per_sample_target(per_sample, *inputs) -> None:
    """--per-sample must never replace one of the inputs (same device and inode, directories
    expanded, standard input included)."""
    if per_sample is None or str(per_sample) == "-":
        return
    from .render import refuse_input_as_output

    refuse_input_as_output(str(per_sample), "--per-sample", inputs)


def _sources(inputs) -> list:
    from . import readers

    if isinstance(inputs, (str, Path)):
        return readers.open_sources([str(inputs)])
    if isinstance(inputs, Sequence) and inputs and all(isinstance(i, (str, Path)) for i in inputs):
        return readers.open_sources([str(i) for i in inputs])
    return [readers.Source.from_table(inputs)]


def _input_names(sources) -> list[str]:
    return [s.name for s in sources]


def _default_key(explicit: str | None, *schemas) -> str | None:
    """The pairing key as named in the first file: --key, else 'id' when every file has it, else
    an integer pandas index column of the same name in every file.

    Names match regardless of case, as for --label.
    """
    wanted = explicit or "id"
    found = []
    for schema, name in schemas:
        match = find_column(schema.names, wanted)
        if match is None and explicit:
            raise column_not_found(schema.names, explicit, name, "key")
        found.append(match)
    if all(found):
        return found[0]
    index = [index_key(schema) for schema, _ in schemas]
    return index[0] if not explicit and index[0] is not None and len(set(index)) == 1 else None


@dataclass
class ScoreJob:
    """A resolved `score`: inputs opened, columns decided, settings checked; nothing read yet."""

    settings: Settings
    soft: bool
    gates: list[Gate]
    sources: list
    target_sources: list
    pair_key: str | None
    layout: Layout
    same_file_targets: Layout | None
    target_probs: str | None
    explicit_classes: bool
    worst: int

    def evaluator(self) -> Evaluator:
        return Evaluator(self.layout, self.settings, self.soft, worst=self.worst)

    def run(self, evaluator: Evaluator, writer=None, progress=None, on_batch=None) -> None:
        _run(evaluator, self.sources, self.layout, self.target_sources, self.pair_key, self.same_file_targets,
             bool(self.target_sources), probs=self.target_probs, writer=writer, progress=progress,
             explicit_classes=self.explicit_classes, on_batch=on_batch)

    def report(self, evaluator: Evaluator, command: str = "score", inputs: dict | None = None) -> Report:
        notes, self.layout.notes = self.layout.notes, []  # said once, after the run succeeded
        for note in notes:  # what was guessed about the columns
            sys.stderr.write(f"nll: {note}\n")
        inputs = inputs or {"preds": _input_names(self.sources)}
        if self.target_sources:
            inputs["targets"] = _input_names(self.target_sources)
        return _report(command, evaluator, self.settings, inputs, self.gates, self.soft)


SCORE_METRICS = ["nll", "cross_entropy", "entropy", "kl", "perplexity", "accuracy", "brier", "ece", "mce"]


def plan_score(preds, *, targets=None, label: str | None = None, classes: str | list[str] | None = None,
               probs: str | None = None, key: str | None = None, weight: str | None = None,
               positive: str | None = None, input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4,
               renormalize: bool = False, base: str = "e", target_prefix: str | None = None,
               target_probs: str | None = None, label_smoothing: float | None = None,
               bins: int = 15, by: Sequence[str] = (), worst: int = 0, max: Sequence[str] = (),
               min: Sequence[str] = (), ignore: Sequence[str] = ()) -> ScoreJob:
    """Check the options and open the inputs of a `score` (see score())."""
    settings = Settings(input, eps, tol, renormalize, str(base), label_smoothing, bins=bins)
    soft = targets is not None or target_prefix is not None or label_smoothing is not None
    if label_smoothing is not None and (targets is not None or target_prefix is not None):
        raise UsageError("--label-smoothing softens hard labels; it does not combine with --targets or --target-prefix")
    if worst < 0:
        raise UsageError(f"--worst {worst}: must be >= 0")
    _check_stdin_once(preds, targets)
    if isinstance(preds, (list, tuple)) and len(preds) == 1:
        preds = preds[0]
    gates = _gates(max, min, SCORE_METRICS)
    sources = _sources(preds)
    schema, name = sources[0].schema, sources[0].name
    target_sources = _sources(targets) if targets is not None else []
    pair_key = _default_key(key, (schema, name), *((s.schema, s.name) for s in target_sources[:1]))
    reserved = [n for n in schema.names if n.lower().startswith(target_prefix.lower())] if target_prefix else []
    layout = resolve_layout(schema, name, classes=parse_classes(classes) if isinstance(classes, str) else classes,
                            label=label, probs=probs, key=pair_key or key, weight=weight, positive=positive,
                            reserved=reserved, label_required=not soft or label_smoothing is not None,
                            groups=list(by), ignore=list(ignore or ()), sample=sources[0].head)
    if layout.list_column and not layout.class_names:
        layout.class_names = _list_width_names(sources, layout)
    if soft and layout.binary:
        raise UsageError("soft targets need one probability column per class (this file has one)")
    if layout.label is None:
        for gate in gates:
            if gate.metric in LABEL_METRICS:
                raise UsageError(f"--{gate.bound} {gate.metric}=...: {gate.metric} needs a label column (--label)")
    same_file_targets = (target_layout(schema, name, layout.class_names, name, prefix=target_prefix)
                         if target_prefix else None)
    return ScoreJob(settings, soft, gates, sources, target_sources, pair_key, layout, same_file_targets,
                    target_probs, classes is not None, worst)


def score(preds, *, per_sample=None, progress: Progress | None = None, **options) -> Report:
    """Score predictions against hard labels or soft targets.

    ``preds`` and ``targets`` are paths (or lists of paths, '-' for stdin), pandas DataFrames or
    pyarrow Tables. Options: targets, label, classes, probs, key, weight, positive, input, eps,
    tol, renormalize, base, target_prefix, target_probs, label_smoothing, bins, by, worst, max,
    min (gates such as ``max=["nll=0.4"]``, evaluated into the report, not raised).
    """
    _check_per_sample_target(per_sample, preds, options.get("targets"))
    job = plan_score(preds, **options)
    evaluator = job.evaluator()
    with _atomic(_writer(per_sample)) as writer:
        job.run(evaluator, writer, progress)
        return job.report(evaluator)


@contextlib.contextmanager
def _atomic(writer):
    """Commit the per-sample writer on success, remove its file on any failure."""
    try:
        yield writer
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.commit()


def kl(p, q, *, classes: str | list[str] | None = None, probs: str | None = None, key: str | None = None,
       input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False,
       base: str = "e", symmetric: bool = False, max: Sequence[str] = (), min: Sequence[str] = (),
       per_sample=None, progress: Progress | None = None, ignore: Sequence[str] = ()) -> Report:
    """KL(P || Q) per row pair: P the reference distribution, Q the model (clipped by ``eps``)."""
    settings = Settings(input, eps, tol, renormalize, str(base), symmetric=symmetric)
    _check_stdin_once(p, q)
    _check_per_sample_target(per_sample, p, q)
    names = ["kl", "cross_entropy", "entropy", "perplexity"] + (list(SYMMETRIC) if symmetric else [])
    gates = _gates(max, min, names)
    p_sources, q_sources = _sources(p), _sources(q)
    p_schema, q_schema = p_sources[0].schema, q_sources[0].schema
    pair_key = _default_key(key, (q_schema, q_sources[0].name), (p_schema, p_sources[0].name))
    class_list = parse_classes(classes) if isinstance(classes, str) else classes
    layout = resolve_layout(q_schema, q_sources[0].name, classes=class_list, probs=probs, key=pair_key,
                            label_required=False, ignore=list(ignore or ()))
    layout.label = None  # a label column is never a class here, and is not needed
    if layout.list_column and not layout.class_names:
        layout.class_names = _list_width_names(q_sources, layout)
    if layout.binary:
        raise InputError(q_sources[0].name, "needs one probability column per class, found one")
    evaluator = Evaluator(layout, settings, soft=True, target_kind=settings.kind, calibration=False)
    with _atomic(_writer(per_sample)) as writer:
        _run(evaluator, q_sources, layout, p_sources, pair_key, None, True, probs=probs, writer=writer,
             progress=progress, explicit_classes=class_list is not None)
        return _report("kl", evaluator, settings, {"p": _input_names(p_sources), "q": _input_names(q_sources)},
                       gates, True)


def _gates(max_: Sequence[str], min_: Sequence[str], available: list[str]) -> list[Gate]:
    gates = [Gate.parse(t, "max") for t in max_] + [Gate.parse(t, "min") for t in min_]
    check_gate_metrics(gates, available)
    return gates


def _list_width_names(sources, layout: Layout) -> list[str]:
    """Class names 0..K-1 for a list column, K from the first row."""
    first = next(sources[0].batches([layout.list_column], layout.types(sources[0].schema)), None)
    if first is None:
        return ["0"]
    import pyarrow.compute as pc

    width = pc.list_value_length(first.batch.column(0))[0].as_py() or 0
    return [str(i) for i in range(width)]


def _writer(per_sample):
    if per_sample is None:
        return None
    from .render import PerSampleWriter

    return PerSampleWriter.open(per_sample)


def _run(evaluator: Evaluator, sources, layout: Layout, target_sources, pair_key, same_file_targets,
         separate_targets: bool, probs=None, writer=None, progress=None, explicit_classes=False,
         on_batch=None) -> None:
    """Stream the predictions (with their targets, if any) through the evaluator and the writer.

    The reader threads are stopped and joined on every way out, errors included.
    """
    from .readers import chunks

    name = sources[0].name
    with contextlib.ExitStack() as readers:
        stream = readers.enter_context(chunks(sources, layout.columns, layout.types(sources[0].schema)))
        index = None
        if same_file_targets is not None:
            pairs = ((c, evaluator.targets_of(c, same_file_targets)) for c in stream)
        elif separate_targets:
            tname = target_sources[0].name
            t_layout = target_layout(target_sources[0].schema, tname, layout.class_names, name, probs=probs,
                                     key=pair_key, explicit=explicit_classes)
            t_stream = readers.enter_context(chunks(target_sources, t_layout.columns,
                                                    t_layout.types(target_sources[0].schema)))
            if pair_key:
                import pyarrow as pa

                t_chunks = list(t_stream)  # the targets are held in memory to pair by key
                index = KeyIndex(pa.concat_arrays([c.batch.column(t_layout.key) for c in t_chunks])
                                 if t_chunks else pa.array([], pa.string()), tname, t_layout.key)
                t_all = (np.concatenate([evaluator.targets_of(c, t_layout) for c in t_chunks])
                         if t_chunks else np.zeros((0, len(layout.class_names))))

                def lookup(chunk):
                    rows = index.rows(chunk.batch.column(pair_key))
                    return None if rows is None else t_all[rows]

                pairs = ((c, lookup(c)) for c in stream)
            else:
                pairs = ((c, evaluator.targets_of(t, t_layout))
                         for c, t in align_by_position(stream, t_stream, name, tname))
        else:
            pairs = ((c, None) for c in stream)
        rows = 0
        for chunk, targets in pairs:
            if index is not None and targets is None:
                continue  # keys without a target row: reported once every row has been seen
            scored = evaluator.add(chunk, targets)
            rows += chunk.batch.num_rows
            if writer is not None:
                writer.write(evaluator.per_sample_columns(scored))
            if on_batch is not None:
                on_batch(scored)
            if progress is not None:
                progress(rows, chunk.bytes_read)
        if index is not None:
            index.finish(name)
    if evaluator.summary is None or evaluator.summary.rows == 0:
        raise InputError(", ".join(s.name for s in sources), "no data rows")
    if evaluator.summary.weight <= 0:
        raise InputError(name, "weights sum to 0: nothing to average", column=layout.weight)


def _metrics(s: Summary, command: str, settings: Settings, soft: bool, labelled: bool,
             calibration: bool) -> dict[str, float]:
    """The report's metrics from a summary (all rows, or one group), in the asked units."""
    nats = s.mean("cross_entropy" if soft else "nll")
    if soft:
        metrics = {"nll": nats, "cross_entropy": nats, "entropy": s.mean("entropy"), "kl": s.mean("kl")}
        for name in SYMMETRIC if settings.symmetric else ():
            metrics[name] = s.mean(name)
    else:
        metrics = {"nll": nats, "cross_entropy": nats, "entropy": 0.0, "kl": nats}
    if command == "kl":
        metrics.pop("nll")
    metrics = {k: (v / settings.unit_scale if k in INFORMATION_METRICS else v) for k, v in metrics.items()}
    # Perplexity is exp of the mean loss in nats, whatever the unit asked for.
    metrics["perplexity"] = perplexity(nats)
    if labelled:
        metrics["accuracy"] = s.accuracy
    if calibration:
        metrics["brier"] = s.mean("brier")
        if labelled:
            metrics["ece"], metrics["mce"] = s.calibration_errors()
    return metrics


def _report(command: str, evaluator: Evaluator, settings: Settings, inputs, gates, soft: bool) -> Report:
    s, layout, scale = evaluator.summary, evaluator.layout, settings.unit_scale
    labelled = layout.label is not None

    def metrics_of(summary: Summary) -> dict[str, float]:
        return _metrics(summary, command, settings, soft, labelled, evaluator.calibration)

    per_class = []
    if labelled:
        class_loss = s.class_mean("cross_entropy" if soft else "nll") / scale
        class_accuracy = s.class_accuracy  # computed for every class: once, not once per class
        for j, name in enumerate(layout.class_names):
            per_class.append({"class": name, "rows": int(s.class_rows[j]), "nll": float(class_loss[j]),
                              "accuracy": float(class_accuracy[j])})
    groups = [{"by": dict(zip(layout.groups, key)), "rows": part.rows, "metrics": metrics_of(part)}
              for key, part in evaluator.groups.items()]
    main = "kl" if command == "kl" else "nll"
    groups.sort(key=lambda g: (-_sort_value(g["metrics"][main]), [str(v) for v in g["by"].values()]))
    worst = []
    if evaluator.worst is not None:
        for entry in evaluator.worst.entries:
            row = {"row": entry["index"], **{k: v for k, v in entry.items() if k not in ("index", "loss")}}
            worst.append({**row, "loss": entry["loss"] / scale})
    metrics = metrics_of(s)
    warnings = _clip_warnings(s, settings, command, soft, metrics)
    return Report(command, inputs, s.rows, list(layout.class_names), UNITS[settings.base], metrics, per_class,
                  s.clipped, settings.eps, settings.kind, layout.weight is not None, warnings, gates,
                  calibration=_calibration_rows(s) if evaluator.calibration and labelled else [],
                  loss_histogram=_histogram_rows(s, scale), groups=groups, worst=worst,
                  clipped_zero=s.clipped_zero, clipped_nudged=s.clipped_nudged,
                  clipped_zero_reverse=s.reverse_zero)


def _clip_warnings(s: Summary, settings: Settings, command: str, soft: bool, metrics: dict[str, float]) -> list[str]:
    """Zeros raised to eps, loudly with what they cost; values lowered from 1 as a short note."""
    def values(n: int) -> str:
        noun = "probability" if n == 1 else "probabilities"
        what = (f"{noun} of Q where P > 0" if command == "kl" else
                f"predicted {noun} where the target is > 0" if soft else f"true-class {noun}")
        return f"{n:,} {what} {'was' if n == 1 else 'were'}"

    main = "nll" if "nll" in metrics else "cross_entropy"
    units, scale, eps = UNITS[settings.base], settings.unit_scale, settings.eps
    out = []
    if s.clipped_zero:
        each = -math.log(eps) / scale
        share = s.zero_loss / s.weight / scale if s.weight > 0 else math.nan
        out.append(f"{values(s.clipped_zero)} 0 or below eps = {eps:.3g}, clipped to eps: each costs "
                   f"{each:.4g} {units} (-log eps), together {share:.6g} of the mean {main} {metrics[main]:.6g}")
    if s.clipped_nudged:
        out.append(f"note: {values(s.clipped_nudged)} 1, clipped to 1 - eps "
                   f"(a loss change of about {eps / scale:.2g} {units} each)")
    if s.reverse_zero:
        noun = "probability of P was" if s.reverse_zero == 1 else "probabilities of P were"
        share = s.reverse_zero_loss / s.weight / scale if s.weight > 0 else math.nan
        out.append(f"kl_reverse: {s.reverse_zero:,} {noun} 0 or below eps = {eps:.3g} where Q > 0, clipped to eps: "
                   f"together {share:.6g} of the mean kl_reverse {metrics['kl_reverse']:.6g}")
    return out


def _sort_value(value: float) -> float:
    """NaN (an empty or undefined group) sorts last among worst-first groups."""
    return -math.inf if value != value else value


def _calibration_rows(s: Summary) -> list[dict[str, Any]]:
    """One row per confidence bin: its range, rows (weighted), mean confidence and accuracy."""
    edges = np.linspace(0.0, 1.0, len(s.bin_weight) + 1)  # the edges rows are binned by
    rows = []
    for b in range(len(s.bin_weight)):
        weight = float(s.bin_weight[b])
        rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "weight": weight,
                     "confidence": float(s.bin_confidence[b] / weight) if weight else None,
                     "accuracy": float(s.bin_correct[b] / weight) if weight else None})
    return rows


def _histogram_rows(s: Summary, scale: float) -> list[dict[str, Any]]:
    """Per-sample loss histogram: each bin's range (in the report's units, null for no upper end)."""
    from .summary import LOSS_EDGES

    uppers = [*LOSS_EDGES[1:], None]
    return [{"range": [low / scale, high / scale if high is not None else None], "weight": float(w)}
            for low, high, w in zip(LOSS_EDGES, uppers, s.loss_histogram)]
