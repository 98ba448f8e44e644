"""Batch -> Scored -> State: validate and score one partition of rows, fold it into a State.

score_partition(job, partition) is the unit of work, with no state kept between partitions;
run(job, sink, progress) streams a job's batches through it and adds up their States.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import losses, metrics
from .columns import Layout, floats, integers, target_layout
from .errors import InputError, UsageError
from .pairing import KeyIndex, align_by_position
from .plan import Job, Settings
from .summary import Replicates, State, Summary, Worst

Progress = Callable[[int, int], None]  # (rows so far, bytes so far)


@dataclass(eq=False)
class Prepared:
    """One batch of predictions made ready for the kernels."""

    values: np.ndarray  # as given, (n, K)
    q: np.ndarray | None  # probabilities, when the input is probabilities
    log_q: np.ndarray | None  # log-probabilities, for logits and log-probs

    def model_side(self, kind: str, eps: float) -> tuple[np.ndarray | None, np.ndarray, losses.Clipped | None]:
        """(clipped probabilities or None, log-probabilities, what the clip moved or None)."""
        return losses.clipped_model(self.q, self.log_q, kind, eps)

    def probs(self) -> np.ndarray:
        """The probabilities: q, or exp of the log-probabilities (computed once per batch)."""
        if self.q is not None:
            return self.q
        if "_exp" not in self.__dict__:
            self.__dict__["_exp"] = np.exp(self.logs())
        return self.__dict__["_exp"]

    def logs(self) -> np.ndarray:
        """The log-probabilities of logits or log-probs (probabilities have q instead)."""
        if self.log_q is None:
            raise ValueError("probabilities have no log_q")
        return self.log_q

    # Accuracy, the losses and the calibration sums all look at each row's largest value and its
    # labelled one: each is computed once per batch (the labels passed are always the batch's).
    def top(self) -> np.ndarray:
        """Each row's largest value."""
        if "_top" not in self.__dict__:
            self.__dict__["_top"] = self.values.max(axis=1)
        return self.__dict__["_top"]

    def labelled(self, labels: np.ndarray) -> np.ndarray:
        """values[i, labels[i]] for each row."""
        cached = self.__dict__.get("_labelled")
        if cached is None or cached[0] is not labels:
            cached = self.__dict__["_labelled"] = (labels, losses.true_class(self.values, labels))
        return cached[1]

    def top_probability(self) -> np.ndarray:
        """Each row's largest probability."""
        return self.top() if self.q is self.values else losses.top_confidence(self.q, self.log_q)

    def labelled_probability(self, labels: np.ndarray) -> np.ndarray:
        """probs()[i, labels[i]] for each row."""
        return self.labelled(labels) if self.q is self.values else losses.true_class(self.probs(), labels)


# -- per batch -------------------------------------------------------------------------------


def _raise_problem(problem: losses.Problem | None, chunk, layout: Layout) -> None:
    """An InputError naming the file, the column (or the range of class columns) and the rows."""
    if problem is None:
        return
    columns = layout.class_columns or [layout.list_column or ""]
    column: str | list[str] = columns[0]
    if problem.column is not None:
        column = columns[min(problem.column, len(columns) - 1)]  # a binary file has one column for two
    elif len(columns) > 1:
        column = [columns[0], columns[-1]]
    rows = (chunk.first_row + problem.rows).tolist()
    raise InputError(chunk.source, problem.message, column=column, rows=rows, total=len(rows), hint=problem.hint)


def prepare(chunk, layout: Layout, settings: Settings, kind: str | None = None) -> Prepared:
    """Read, validate and normalise the class values of one batch."""
    model_side = kind is None  # targets are never scaled by a temperature
    kind = kind or settings.kind
    values = layout.values(chunk.batch, chunk.first_row)
    if layout.binary:
        values = losses.binary_matrix(values[:, 0], kind)
    _raise_problem(losses.find_problem(values, kind, settings.tol, settings.renormalize), chunk, layout)
    if settings.temperature is not None and model_side:
        return Prepared(values, None, losses.tempered_log_softmax(values, kind, settings.temperature))
    if settings.vector_scaling is not None and model_side:
        scale, bias = (np.asarray(v) for v in settings.vector_scaling)
        log_q = losses.vector_scaled_log_softmax(values, kind, scale, bias, settings.eps)
        return Prepared(log_q, None, log_q)  # its own values: vector scaling may change the predicted class
    if kind == "probs":
        return Prepared(values, losses.renormalize_rows(values) if settings.renormalize else values, None)
    if kind == "logits" or settings.renormalize:
        return Prepared(values, None, losses.log_softmax(values))
    return Prepared(values, None, values)


def _weights(chunk, layout: Layout) -> np.ndarray | None:
    if layout.weight is None:
        return None
    w = floats(chunk.batch.column(layout.weight))
    bad = losses.bad_weights(w)
    if bad.size:
        raise InputError(chunk.source, "weights must be finite and >= 0 (found missing, NaN, inf or negative)",
                         column=layout.weight, rows=(chunk.first_row + bad).tolist(), total=bad.size)
    return w


@dataclass(eq=False)
class Scored:
    """Everything computed for one batch, row by row (arrays of length n)."""

    chunk: Any
    first_index: int  # 0-based position of the batch's first row in the whole input
    values: dict[str, np.ndarray]  # per-sample losses, in nats
    summed: dict[str, np.ndarray]  # summed in the Summary: values, plus the metric table's quantities
    loss: np.ndarray  # the main loss: nll, or cross_entropy against soft targets
    weights: np.ndarray | None
    labels: np.ndarray | None
    scores: np.ndarray | None  # (n, K) class values the predicted class is the argmax of, with labels
    correct: np.ndarray | None
    confidence: np.ndarray | None
    p_true: np.ndarray | None
    clips: losses.RowClips | None  # None: nothing clipped
    probs: np.ndarray | None = None  # (n, K) probabilities for the (class, bin) cells, with labels or targets
    targets: np.ndarray | None = None  # (n, K) target distributions (soft), else None
    kept: np.ndarray | None = None  # --ignore-label: positions in the batch of the rows kept (None: all)
    ignored: int = 0  # rows of the batch dropped for their label
    labelled_probs: np.ndarray | None = None  # probs[i, labels[i]], when scoring computed it already

    @property
    def rows(self) -> int:
        return len(self.loss)

    def predicted(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The predicted class (the first largest value) of each row, or of ``rows``."""
        if self.scores is None:
            raise ValueError("no predicted class without labels")
        return losses.argmax_rows(self.scores if rows is None else self.scores[rows])

    def summary(self, n_classes: int, n_bins: int, rows: np.ndarray | None = None) -> Summary:
        """The batch's Summary, or that of a subset of its rows."""
        def pick(a):
            return a if a is None or rows is None else a[rows]

        clips = self.clips.counts(self.weights, rows) if self.clips is not None else {}
        return Summary.of_batch({k: pick(v) for k, v in self.summed.items()}, n_classes, pick(self.weights),
                                pick(self.labels), pick(self.correct), confidence=pick(self.confidence),
                                n_bins=n_bins, loss=pick(self.loss), probs=pick(self.probs),
                                targets=pick(self.targets), ignored=self.ignored if rows is None else 0,
                                labelled_probs=pick(self.labelled_probs), **clips)

    def index_of(self, rows: np.ndarray) -> np.ndarray:
        """0-based positions in the whole input of some of the batch's scored rows."""
        return self.first_index + (rows if self.kept is None else self.kept[rows])


@dataclass(eq=False)
class Partition:
    """Rows to score: one batch, the 0-based position of its first row in the whole input, and
    the target distributions of its rows (None: hard labels, or targets from its own columns
    (--target-prefix) or its labels (--label-smoothing))."""

    chunk: Any
    first_index: int = 0
    targets: np.ndarray | None = None


class Scorer:
    """Scores the partitions of a job: no state is kept between partitions."""

    def __init__(self, job: Job):
        self.job = job
        self.layout, self.settings, self.soft = job.layout, job.settings, job.soft
        self.target_kind, self.calibration = job.target_kind, job.calibration
        self.quantities = [(m.name, m.quantity) for m in metrics.reported(job) if m.quantity is not None]

    def targets_of(self, chunk, target_layout_: Layout) -> np.ndarray:
        """Validated target distributions of a batch (never clipped)."""
        return prepare(chunk, target_layout_, self.settings, self.target_kind).probs()

    def state_of(self, scored: Scored) -> State:
        """The State of one scored partition: its Summary, its groups' and its worst rows."""
        k, bins = len(self.layout.class_names), self.settings.bins
        grouped = list(group_rows(scored.chunk.batch, self.layout.groups)) if self.layout.groups else []
        groups = {key: scored.summary(k, bins, rows) for key, rows in grouped}
        worst = None
        if self.job.worst:
            worst = Worst(self.job.worst)
            worst.add_entries(self.worst_candidates(scored))
        state = State(scored.summary(k, bins), groups, worst)
        if self.job.interval is not None:
            state.replicates, state.group_replicates = self.replicates_of(scored, grouped)
        return state

    def row_ids(self, scored: Scored) -> np.ndarray:
        """The bootstrap row ids of a batch: its rows' global positions, or their hashed keys."""
        from .bootstrap import key_ids, position_ids

        key = self.job.interval.key if self.job.interval is not None else None
        return key_ids(scored.chunk.batch.column(key)) if key else position_ids(scored.first_index, scored.rows)

    def replicates_of(self, scored: Scored, grouped: list[tuple[tuple, np.ndarray]]
                      ) -> tuple[Replicates, dict[tuple, Replicates]]:
        """Bootstrap replicates of a batch's Summary and of its groups', rows taken in blocks so
        that the (rows, resamples) weights stay bounded."""
        from .bootstrap import block_size, poisson_weights

        interval = self.job.interval
        assert interval is not None
        ids, n = self.row_ids(scored), scored.rows
        step = block_size(interval.resamples)
        total: Replicates | None = None
        groups: dict[tuple, Replicates] = {}
        for start in range(0, max(n, 1), step):
            end = min(n, start + step)
            poisson = poisson_weights(ids[start:end], interval.resamples, interval.seed)
            total = _merge_replicates(total, self._replicates(scored, np.arange(start, end), poisson))
            for key, rows in grouped:
                inside = rows[(rows >= start) & (rows < end)]
                if inside.size:
                    groups[key] = _merge_replicates(groups.get(key),
                                                    self._replicates(scored, inside, poisson[inside - start]))
        assert total is not None
        return total, groups

    def _replicates(self, scored: Scored, rows: np.ndarray, poisson: np.ndarray) -> Replicates:
        k, bins = len(self.layout.class_names), self.settings.bins

        def pick(a):
            return None if a is None else a[rows]

        def reweighted(w: np.ndarray) -> Summary:
            full = np.zeros(scored.rows)
            full[rows] = w
            return dataclasses.replace(scored, weights=full).summary(k, bins, rows)

        return Replicates.of_batch(poisson, {name: v[rows] for name, v in scored.summed.items()}, k,
                                   pick(scored.weights), pick(scored.labels), pick(scored.correct),
                                   pick(scored.confidence), bins, scored.loss[rows], reweighted)

    def score(self, part: Partition) -> Scored:
        """Validate and score one partition."""
        chunk, targets, kept = part.chunk, part.targets, None
        if self.settings.ignore_label is not None:
            chunk, kept = drop_ignored(chunk, self.layout, self.settings.ignore_label)
            if kept is not None and targets is not None:
                targets = targets[kept]
        if targets is None and self.job.same_file_targets is not None:
            targets = self.targets_of(chunk, self.job.same_file_targets)
        layout, settings = self.layout, self.settings
        pred = prepare(chunk, layout, settings)
        n, k = pred.values.shape
        labels = layout.label_indices(chunk.batch, chunk.first_row) if layout.label else None
        if self.soft and targets is None:
            if labels is None:
                raise UsageError("soft targets need --targets, --target-prefix or --label-smoothing with a label")
            targets = losses.label_smoothing(labels, k, settings.label_smoothing or 0.0)
        values, clips, p_true = self._losses(pred, labels, targets)
        # The metrics' own quantities are in the summary only: per-sample rows keep their documented columns.
        summed = {**values, **{name: quantity(pred, labels, targets, settings) for name, quantity in self.quantities}}
        confidence = None
        if self.calibration and labels is not None:
            confidence = pred.top_probability()
        correct = losses.correct_rows(pred.values, labels, pred.top(), pred.labelled(labels)) \
            if labels is not None else None
        weights = _weights(chunk, layout)
        if self.job.class_weights is not None and labels is not None:  # torch's weight[y_i], times --weight
            row_weights = np.asarray(self.job.class_weights)[labels]
            weights = row_weights if weights is None else weights * row_weights
        probs = pred.probs() if self.calibration and (labels is not None or targets is not None) else None
        scores = pred.values if labels is not None else None
        labelled_probs = pred.labelled(labels) if probs is pred.values and labels is not None else None
        return Scored(chunk, part.first_index, values, summed, values["cross_entropy" if self.soft else "nll"],
                      weights, labels, scores, correct, confidence, p_true, clips, probs,
                      targets if self.soft else None, kept, part.chunk.batch.num_rows - chunk.batch.num_rows,
                      labelled_probs)

    def _losses(self, pred: Prepared, labels, targets) -> tuple[dict[str, np.ndarray], losses.RowClips | None,
                                                                  np.ndarray | None]:
        """Per-sample losses (nats), what the clip moved, and p_true (with labels)."""
        eps = self.settings.eps
        if not self.soft:
            if pred.q is not None:
                p_true = pred.labelled_probability(labels)
                nll, hard_clipped = losses.hard_label_nll(p_true, eps)
            else:
                log_true = losses.true_class(pred.logs(), labels)
                log_clipped = losses.log_clip(log_true, eps) if self.settings.scored_kind == "log-probs" else None
                if log_clipped is not None:
                    log_true = log_clipped.values
                nll, p_true = -log_true, np.exp(log_true)
                return {"nll": nll}, losses.RowClips.of(log_clipped, eps), p_true
            return {"nll": nll}, losses.RowClips.of(hard_clipped, eps), p_true
        q, log_q, clipped = pred.model_side(self.settings.scored_kind, eps)
        ce, h, kl = losses.soft_losses(targets, log_q, q)
        out = {"cross_entropy": ce, "entropy": h, "kl": kl}
        clips = losses.RowClips.of(clipped, eps, targets)
        if self.settings.symmetric:
            q = pred.probs()
            clipped_targets = losses.clip(targets, eps)
            out["kl_reverse"] = losses.kl_divergence(q, q=clipped_targets.values)
            out["js"] = losses.js_divergence(targets, q)
            if clipped_targets.raised is not None and clipped_targets.raised.any():
                clips = losses.RowClips.with_reverse(clips, clipped_targets, q)
        soft_p_true = np.exp(losses.true_class(log_q, labels)) if labels is not None else None
        return out, clips, soft_p_true

    def worst_candidates(self, scored: Scored) -> list[dict]:
        """The rows of a batch that may belong among the worst: id, label, predicted, p_true, loss."""
        rows = Worst.candidates(scored.loss, self.job.worst)
        entries: list[dict[str, Any]] = [{"index": int(i), "loss": float(scored.loss[r])}
                                         for i, r in zip(scored.index_of(rows), rows)]
        if self.layout.key:
            keys = scored.chunk.batch.column(self.layout.key).take(rows).to_pylist()
            for entry, key in zip(entries, keys):
                entry["key"] = key
        if scored.labels is not None and scored.scores is not None and scored.p_true is not None:
            names = self.layout.class_names
            for entry, r, predicted in zip(entries, rows, scored.predicted(rows)):
                entry.update(label=names[scored.labels[r]], predicted=names[predicted], p_true=float(scored.p_true[r]))
        return entries


class KeptRows:
    """The 1-based row numbers of the rows a batch kept after --ignore-label, standing in for the
    batch's ``first_row``: ``first_row + positions`` is the row numbers of those kept rows, as it is
    for a whole batch, so messages name the rows of the file."""

    def __init__(self, numbers: np.ndarray):
        self.numbers = numbers

    def __add__(self, positions):
        return self.numbers[positions]

    __radd__ = __add__
    __array_ufunc__ = None  # positions + first_row: numpy leaves it to __radd__


def drop_ignored(chunk, layout: Layout, value: str):
    """(the batch without the rows whose label is ``value``, positions of the rows kept or None)."""
    ignored = layout.rows_labelled(chunk.batch, value)
    if not ignored.any():
        return chunk, None
    kept = np.flatnonzero(~ignored)
    numbers = chunk.first_row + np.arange(chunk.batch.num_rows)
    return dataclasses.replace(chunk, batch=chunk.batch.take(kept), first_row=KeptRows(numbers[kept])), kept


def group_rows(batch, columns: Sequence[str]) -> Iterator[tuple[tuple, np.ndarray]]:
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


def _merge_replicates(a: Replicates | None, b: Replicates) -> Replicates:
    return b if a is None else a + b


def score_partition(job: Job, part: Partition) -> State:
    """The State of one partition of a job's rows; the States of all partitions add up to the
    State of the whole input, wherever and in whatever order they were scored."""
    scorer = Scorer(job)
    return scorer.state_of(scorer.score(part))


Sink = Callable[[Scored], None]  # receives each scored batch: per-sample writers, compare's pairing


def run(job: Job, sink: Sink | None = None, progress: Progress | None = None) -> State:
    """Stream a job's rows (with their targets, if any) through the scorer; each scored batch also
    goes to ``sink``. The reader threads are stopped and joined on every way out, errors included.

    Batches are scored by scoring_threads(job) threads at once (none: in this thread), and their
    States added, handed to the sink and reported, in input order: the sums are those of one
    thread, and the first bad batch raises its error first. With scoring threads, one batch more
    than the threads is in flight, so that a thread done before the oldest batch starts another
    (10M Parquet rows: 5% sooner, 2 MB more).
    """
    from concurrent.futures import ThreadPoolExecutor

    state = State()
    scorer = Scorer(job)
    skip = _unused_key(job, sink)

    def score(part: Partition) -> tuple[Scored, State]:
        scored = scorer.score(part)
        return scored, scorer.state_of(scored)

    def fold(part: Partition, future) -> None:
        nonlocal state
        scored, part_state = future.result() if future is not None else score(part)
        state += part_state
        if sink is not None:
            sink(scored)
        if progress is not None:
            progress(part.first_index + part.chunk.batch.num_rows, part.chunk.bytes_read)

    workers = scoring_threads(job)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nll-score") if workers else None
    in_flight = workers + 1
    pending: collections.deque = collections.deque()  # (partition, its future), in input order
    try:
        with contextlib.closing(partitions(job, scorer, skip)) as parts:  # closing joins the reader threads
            for part in parts:
                pending.append((part, pool.submit(score, part) if pool is not None else None))
                if len(pending) >= in_flight:
                    fold(*pending.popleft())
            while pending:
                fold(*pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return check_state(job, state)


# A reader that keeps every core busy (CSV byte ranges, Parquet): its batches are scored in the
# thread that runs the job up to this many classes, on one scoring thread beyond. Medians of
# interleaved runs against two scoring threads: CSV 2M x 2 and 10M x 10 3-5% sooner, Parquet 2M
# and 10M x 10 1-2% sooner with 13-18% less CPU, and 15-40 MB less peak memory (a pandas-written
# Parquet file of 2M x 10, its 1M-row groups streamed: 169-179 MB, was 204-215); CSV 400k x 100
# and 200k x 1000 2-5% sooner on one scoring thread than in the job's thread, whose own work
# between batches (adding the States) then waits for the scoring.
INLINE_SCORING_CLASSES = 32


def scoring_threads(job: Job) -> int:
    """Threads that score a job's batches beside the reading (0: in the thread that runs the job).

    readers.parse_threads() of them while a core is left by the reading (a CSV file read in one
    stream: gzip, standard input, quoted fields); fewer when the reader keeps every core busy,
    for scoring threads wait on each other for the GIL (np.bincount holds it, and the Python
    between numpy calls): the same 10-class batches scored in memory took 5.5 ms each on one
    thread and on two.
    """
    from .readers import parse_threads

    threads = parse_threads()
    if threads == 1:
        return 0
    types = job.layout.types(job.sources[0].schema)
    if all(source.reads_on_every_core(types) for source in job.sources):
        return 0 if len(job.layout.class_names) <= INLINE_SCORING_CLASSES else 1
    return threads


def check_state(job: Job, state: State) -> State:
    """The State of a whole run, refused when it holds nothing to average."""
    if state.rows == 0 and state.overall is not None and state.overall.ignored:
        raise InputError(", ".join(s.name for s in job.sources), f"every row has the label "
                         f"{job.settings.ignore_label!r} of --ignore-label: nothing to score", column=job.layout.label)
    if state.rows == 0:
        raise InputError(", ".join(s.name for s in job.sources), "no data rows")
    if state.summary.weight <= 0:
        raise InputError(job.sources[0].name, "weights sum to 0: nothing to average", column=job.layout.weight)
    return state


def _unused_key(job: Job, sink: Sink | None) -> tuple[str, ...]:
    """The key column when nothing reads it (no sink, no worst rows, no pairing, no bootstrap by
    key, not also a label, weight, class or group column): it is then not parsed at all."""
    layout = job.layout
    key = layout.key
    if key is None or sink is not None or job.worst or job.target_sources:
        return ()
    if job.interval is not None and job.interval.key == key:
        return ()
    others = [layout.label, layout.weight, layout.list_column, *layout.class_columns, *layout.extra, *layout.groups]
    return () if key in others else (key,)


def partitions(job: Job, scorer: Scorer, skip: Sequence[str] = ()) -> Generator[Partition, None, None]:
    """The batches of the predictions, each with its position in the input and its targets;
    the columns in ``skip`` are not read."""
    from .readers import chunks

    layout, sources, pair_key = job.layout, job.sources, job.pair_key
    name = sources[0].name
    columns = [c for c in layout.columns if c not in skip]
    with contextlib.ExitStack() as readers:
        stream = readers.enter_context(chunks(sources, columns, layout.types(sources[0].schema)))
        index = None
        if job.target_sources:
            target_sources = job.target_sources
            tname = target_sources[0].name
            t_layout = target_layout(target_sources[0].schema, tname, layout.class_names, name,
                                     probs=job.target_probs, key=pair_key, explicit=job.explicit_classes)
            t_stream = readers.enter_context(chunks(target_sources, t_layout.columns,
                                                    t_layout.types(target_sources[0].schema)))
            if pair_key:
                import pyarrow as pa

                t_chunks = list(t_stream)  # the targets are held in memory to pair by key
                index = KeyIndex(pa.concat_arrays([c.batch.column(t_layout.key) for c in t_chunks])
                                 if t_chunks else pa.array([], pa.string()), tname, t_layout.key or pair_key)
                t_all = (np.concatenate([scorer.targets_of(c, t_layout) for c in t_chunks])
                         if t_chunks else np.zeros((0, len(layout.class_names))))

                def lookup(chunk):
                    rows = index.rows(chunk.batch.column(pair_key))
                    return None if rows is None else t_all[rows]

                pairs = ((c, lookup(c)) for c in stream)
            else:
                pairs = ((c, scorer.targets_of(t, t_layout))
                         for c, t in align_by_position(stream, t_stream, name, tname))
        else:
            pairs = ((c, None) for c in stream)
        position = 0  # where the next batch starts in the whole input
        for chunk, targets in pairs:
            if index is not None and targets is None:
                continue  # keys without a target row: reported once every row has been seen
            yield Partition(chunk, position, targets)
            position += chunk.batch.num_rows
        if index is not None:
            index.finish(name)


def model_rows(job: Job) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(log-probabilities, label indices or None, weights or None) of each batch of a job's
    predictions, validated as scoring does; no temperature applied (log p for probabilities, -inf
    for a zero). What a calibration map is fitted on."""
    import dataclasses

    settings = dataclasses.replace(job.settings, temperature=1.0)
    scorer = Scorer(job)
    with contextlib.closing(partitions(job, scorer)) as parts:
        for part in parts:
            chunk = part.chunk
            labels = job.layout.label_indices(chunk.batch, chunk.first_row) if job.layout.label else None
            yield prepare(chunk, job.layout, settings).logs(), labels, _weights(chunk, job.layout)
