"""`nll compare BASE NEW`: did the new model get worse than the base one, on the same samples?

Both files are scored as by `nll score`. Rows pair by key (``--key``, default ``id`` when both
files have it) or by position, and their labels must agree. For each compared metric m, with
per-sample values m_i (loss, 0/1 correctness, Brier) and weights w_i:

    delta = mean_w(m_new) - mean_w(m_base) = sum_i w_i (m_new,i - m_base,i) / sum_i w_i

Its confidence interval is a paired percentile bootstrap: resample rows with replacement (the
same rows for both models), recompute delta, take the (1 - c)/2 and (1 + c)/2 quantiles. Above
EXACT_ROWS rows, rows are resampled in EXACT_ROWS strided blocks (row i in block i mod B), which
keeps the cost bounded and the pairs intact. ``--bootstrap poisson`` weights row i of resample r
by a Poisson(1) draw seeded by (seed, i, r), i its position in the base file (bootstrap.py): the
same weights whatever the split of the rows, and the same as `score --interval` gives that row.

Gates on the change of any metric (``--max-increase nll=2%``, ...) test the delta, a bound of its
interval or the whole interval (``--gate-on``); for a metric compare does not pair (ECE, MCE,
perplexity) the interval is that of the difference of Poisson replicates of both runs, whose rows
carry the same weights (seeded by the key when rows pair by key, else by position).

Memory: the base file's per-sample values (8 bytes per compared metric per row, plus keys when
pairing by key) and the paired differences; nothing else grows with the number of rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import losses, metrics
from .bootstrap import block_size, percentile_interval, poisson_weights, position_ids
from .engine import Progress, Scored, group_rows, run
from .errors import InputError, UsageError
from .pairing import ByPosition, KeyIndex
from .plan import (
    Interval,
    Job,
    check_bootstrap_settings,
    check_stdin_once,
    default_key,
    input_names,
    parse_gates,
    plan_score,
    say_notes,
)
from .report import Report, build_report, metric_values, replicate_values
from .summary import Worst, resampled_sums

BOOTSTRAPS = ("rows", "poisson")

EXACT_ROWS = 20_000


@dataclass
class Sides:
    """Per-sample values of the compared metrics for the rows of one model, in file order."""

    values: dict[str, list[np.ndarray]]
    labels: list[np.ndarray]
    weights: list[np.ndarray]
    keys: list

    @classmethod
    def empty(cls, names) -> "Sides":
        return cls({n: [] for n in names}, [], [], [])

    def add(self, scored: Scored, names, key: str | None, class_map: np.ndarray | None) -> None:
        for name, array in per_sample_metrics(scored, names).items():
            self.values[name].append(array)
        if scored.labels is not None:
            self.labels.append(scored.labels if class_map is None else class_map[scored.labels])
        self.weights.append(scored.weights if scored.weights is not None else np.ones(scored.rows))
        if key:
            self.keys.append(scored.chunk.batch.column(key))

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray]:
        values = {n: np.concatenate(v) if v else np.zeros(0) for n, v in self.values.items()}
        labels = np.concatenate(self.labels) if self.labels else None
        return values, labels, np.concatenate(self.weights) if self.weights else np.zeros(0)


def compared_metrics(job: Job) -> list[str]:
    """The metrics of the job's report that have per-sample values to pair (see metrics.py)."""
    return [m.name for m in metrics.reported(job) if m.paired is not None and m.compared(job)]


def per_sample_metrics(scored: Scored, names) -> dict[str, np.ndarray]:
    return {name: _paired(metrics.find(name))(scored) for name in names}


def _paired(metric: metrics.Metric) -> Callable[[Scored], np.ndarray]:
    if metric.paired is None:
        raise ValueError(f"{metric.name} has no per-sample values to pair")
    return metric.paired


def compare(base_preds, new_preds, *, key: str | None = None, confidence: float = 0.95, resamples: int = 2000,
            seed: int = 0, fail_if_worse: float | None = None, max: Sequence[str] = (), min: Sequence[str] = (),
            by: Sequence[str] = (), worst: int = 0, targets=None, label: str | None = None,
            classes: str | list[str] | None = None, probs: str | None = None, weight: str | None = None,
            ignore: Sequence[str] = (), positive: str | None = None, input: str = "probs",
            eps: float = losses.EPS, tol: float = 1e-4,
            renormalize: bool = False, base: str = "e", target_prefix: str | None = None,
            target_probs: str | None = None, label_smoothing: float | None = None, bins: int = 15,
            top_k: int | None = None, per_sample: None = None, progress: Progress | None = None,
            bins_kind: str = "width", ignore_label: str | int | None = None, class_weight=None,
            class_weight_file=None,
            storage_options: dict | None = None,
            max_increase: Sequence[str] = (), max_decrease: Sequence[str] = (), min_increase: Sequence[str] = (),
            min_decrease: Sequence[str] = (), gate_on: str = "value", bootstrap: str = "rows") -> Report:

    """Compare two prediction files for the same samples (`nll compare`); a Report with `comparison`.

    Both files are read with the options of score() (targets, label, ..., top_k). Rows pair by
    ``key`` (default id, when both have it), else by position. confidence, resamples, seed: the
    paired bootstrap. Gates (max/min) apply to the new model; ``fail_if_worse`` marks a clear nll
    regression (see Report.regression). ``by`` compares per group (groups from the new file), each
    with its own interval; ``worst`` lists the samples whose loss rose most. ``per_sample`` is not
    available here (a UsageError): run score() on each file. storage_options: see score().

    max_increase, max_decrease, min_increase, min_decrease: gates on the change new - base of any
    metric, "METRIC=X" in the metric's units or "METRIC=X%" of the base value. gate_on: what every
    gate tests, "value", "lower" / "upper" (a bound of its interval) or "interval" (fail only when
    the value and its whole interval are past the limit, the rule of fail_if_worse). bootstrap:
    "rows" (resample rows) or "poisson" (Poisson(1) weights seeded by each row's position in BASE).
    """
    check_bootstrap_settings(confidence, resamples)
    if bootstrap not in BOOTSTRAPS:
        raise UsageError(f"--bootstrap {bootstrap!r}: choose one of {', '.join(BOOTSTRAPS)}")
    if worst < 0:
        raise UsageError(f"--worst {worst}: must be >= 0")
    if per_sample:
        raise UsageError("--per-sample is not available in compare (run score on each file)")
    check_stdin_once(base_preds, new_preds, targets)
    options = dict(targets=targets, label=label, classes=classes, probs=probs, key=key, weight=weight,
                   ignore=ignore, positive=positive, input=input, eps=eps, tol=tol, renormalize=renormalize, base=base,
                   target_prefix=target_prefix, target_probs=target_probs, label_smoothing=label_smoothing,
                   bins=bins, top_k=top_k, bins_kind=bins_kind, ignore_label=ignore_label,
                   class_weight=class_weight, class_weight_file=class_weight_file,
                   storage_options=storage_options)
    base_job = plan_score(base_preds, **options)
    new_job = plan_score(new_preds, max=max, min=min, by=by, gate_on=gate_on, confidence=confidence,
                         resamples=resamples, seed=seed, **options)
    change_gates = parse_gates((), (), "score", new_job.settings, gate_on,
                               {"max_increase": max_increase, "max_decrease": max_decrease,
                                "min_increase": min_increase, "min_decrease": min_decrease})
    for gate in change_gates:
        if not new_job.labelled and metrics.find(gate.metric).needs_label:
            raise UsageError(f"{gate.option} {gate.metric}=...: {gate.metric} needs a label column (--label)")
    pair = default_key(key, (base_job.sources[0].schema, base_job.sources[0].name),
                        (new_job.sources[0].schema, new_job.sources[0].name))
    base_key = new_key = None
    if pair:
        base_key, new_key = base_job.layout.key or pair, new_job.layout.key or pair
        base_job.layout.key, new_job.layout.key = base_key, new_key
    if set(base_job.layout.class_names) != set(new_job.layout.class_names):
        raise InputError(new_job.sources[0].name, f"classes {new_job.layout.class_names} differ from "
                                                  f"{base_job.layout.class_names} in {base_job.sources[0].name}")
    names = compared_metrics(new_job)
    # A change gate on a bound of the interval of a metric compare does not pair (ece, mce, ...):
    # both runs keep Poisson replicates seeded by the same row ids, and the interval is that of the
    # replicate differences.
    replicated = sorted({g.metric for g in change_gates if g.on != "value" and g.metric not in names})
    if replicated:
        interval = Interval(confidence, resamples, seed, key=None)
        base_job.interval, new_job.interval = (dataclasses.replace(interval, key=base_key),
                                               dataclasses.replace(interval, key=new_key))
    new_index = {c: j for j, c in enumerate(new_job.layout.class_names)}
    class_map = np.array([new_index[c] for c in base_job.layout.class_names])

    base_side = Sides.empty(names)
    base_state = run(base_job, lambda s: base_side.add(s, names, base_key, class_map), progress)
    pairing = Pairing(base_side, names, base_job.sources[0].name, new_job.sources[0].name, base_key,
                      new_job.layout.groups)
    new_state = run(new_job, lambda s: pairing.add(s, new_key), progress)
    deltas, weights = pairing.finish()

    new_report = build_report(new_job, new_state, "compare")
    say_notes(base_job)
    say_notes(new_job)
    settings = (confidence, resamples, seed, new_job.settings.unit_scale, bootstrap)
    base_values = metric_values(base_state.summary, base_job)
    groups = []
    for group in new_report.groups:
        rows = pairing.group_rows[tuple(group["by"].values())]
        group_base = {n: _weighted_mean(pairing.values[n][rows], weights[rows], new_job.settings, n)
                      for n in names}
        groups.append({**group, "comparison": comparison(names, group_base, group["metrics"],
                                                         {n: d[rows] for n, d in deltas.items()}, weights[rows],
                                                         *settings, rows)})
    groups.sort(key=lambda g: -g["comparison"][0]["delta"])  # the largest nll increase first
    compared = comparison(names, base_values, new_report.metrics, deltas, weights, *settings)
    intervals = {row["metric"]: row["ci"] for row in compared}
    if replicated:
        assert new_state.replicates is not None and base_state.replicates is not None
        new_values = replicate_values(new_state.summary, new_state.replicates, new_job)
        base_replicates = replicate_values(base_state.summary, base_state.replicates, base_job)
        intervals.update({m: list(percentile_interval(new_values[m] - base_replicates[m], confidence))
                          for m in replicated})
    gates = [*new_report.gates,
             *(g.with_result(base_values.get(g.metric), intervals.get(g.metric) if g.on != "value" else None,
                             confidence) for g in change_gates)]
    report = dataclasses.replace(
        new_report, inputs={"base": input_names(base_job.sources), "new": input_names(new_job.sources)},
        comparison=compared, groups=groups, gates=gates,
        bootstrap={**(new_report.bootstrap or {}), "confidence": confidence, "resamples": resamples, "seed": seed,
                   "method": bootstrap},
        worst=pairing.most_worsened(worst, deltas["nll"], new_job.layout.class_names,
                                    new_job.settings.unit_scale) if worst else [])
    return dataclasses.replace(report, regression=regression(report, fail_if_worse), fail_if_worse=fail_if_worse)


def _weighted_mean(values: np.ndarray, weights: np.ndarray, settings, name: str) -> float:
    """A group's base value of a metric, in the report's units (zero weights drop their rows)."""
    total = losses.weighted(values, weights).sum()
    mean = float(total / weights.sum()) if weights.sum() > 0 else float("nan")
    return metrics.in_units(name, mean, settings.unit_scale)


def comparison(names, base: dict, new: dict, deltas: dict[str, np.ndarray], weights: np.ndarray,
               confidence: float, resamples: int, seed: int, scale: float, method: str = "rows",
               row_ids: np.ndarray | None = None) -> list[dict]:
    """One entry per metric: base, new, delta, its bootstrap interval, the share where new is better.

    method "poisson" weights the rows by bootstrap.poisson_weights of ``row_ids`` (their positions
    in the base file; default 0..n-1)."""
    if method == "poisson":
        ids = position_ids(0, len(weights)) if row_ids is None else np.asarray(row_ids, dtype=np.uint64)
        intervals = poisson_bootstrap(deltas, weights, resamples, confidence, seed, ids)
    else:
        intervals = bootstrap(deltas, weights, resamples, confidence, seed)
    entries = []
    for name in names:
        low, high = (metrics.in_units(name, v, scale) for v in intervals[name])
        better = deltas[name] < 0 if metrics.find(name).lower_is_better else deltas[name] > 0
        entries.append({
            "metric": name, "base": base[name], "new": new[name], "delta": new[name] - base[name],
            "ci": [low, high], "confidence": confidence, "resamples": resamples, "seed": seed, "bootstrap": method,
            "new_better_share": float(np.sum(weights * better) / np.sum(weights)),
        })
    return entries


class Pairing:
    """Pairs each batch of the new model with the base rows and keeps the differences."""

    def __init__(self, base: Sides, names, base_name: str, new_name: str, key: str | None,
                 groups: Sequence[str] = ()):
        self.values, self.labels, self.weights = base.arrays()
        self.groups = groups
        self._group_parts: dict[tuple, list[np.ndarray]] = {}  # base row positions, batch by batch
        self.names, self.base_name, self.new_name = names, base_name, new_name
        # Differences in the base file's row order, so that the bootstrap does not depend on the
        # order of the new file's rows.
        total = len(self.weights)
        self.deltas = {n: np.zeros(total) for n in names}
        self.keys = None
        self.index: KeyIndex | ByPosition = ByPosition(total, base_name)
        if key:
            import pyarrow as pa

            self.keys = pa.concat_arrays(base.keys) if base.keys else pa.array([], pa.string())
            self.index = KeyIndex(self.keys, base_name, key)

    def add(self, scored: Scored, key: str | None) -> None:
        n = scored.rows
        rows = self.index.rows(scored.chunk.batch.column(key) if key else n)
        if rows is None:
            return  # rows without a partner: reported by finish(), once every row is seen
        if self.labels is not None and scored.labels is not None:
            disagree = np.flatnonzero(self.labels[rows] != scored.labels)
            if disagree.size:
                raise InputError(self.new_name, f"labels disagree with {self.base_name}",
                                 rows=(scored.chunk.first_row + disagree).tolist(), total=disagree.size)
        weights = scored.weights if scored.weights is not None else np.ones(n)
        if not np.array_equal(self.weights[rows], weights):
            raise InputError(self.new_name, f"weights differ from {self.base_name}")
        with np.errstate(invalid="ignore"):  # inf - inf: a zero-probability row in both models
            for name, array in per_sample_metrics(scored, self.names).items():
                self.deltas[name][rows] = array - self.values[name][rows]
        for group, members in group_rows(scored.chunk.batch, self.groups) if self.groups else ():
            self._group_parts.setdefault(group, []).append(rows[members])

    @functools.cached_property
    def group_rows(self) -> dict[tuple, np.ndarray]:
        """Base row positions of each --by group (read once every batch has been added)."""
        return {group: np.concatenate(parts) for group, parts in self._group_parts.items()}

    def most_worsened(self, n: int, nll_delta: np.ndarray, class_names, scale: float) -> list[dict]:
        """The n samples whose loss rose most from base to new (ties: the earliest base row)."""
        rows = Worst.candidates(nll_delta, n)
        rows = rows[np.lexsort((rows, -nll_delta[rows]))]
        keys = self.keys.take(rows).to_pylist() if self.keys is not None else None
        entries = []
        for i, r in enumerate(rows):
            base_loss = self.values["nll"][r]
            entry = {"row": int(r), **({"key": keys[i]} if keys else {})}
            if self.labels is not None:
                entry["label"] = class_names[self.labels[r]]
            entries.append({**entry, "base_loss": float(base_loss / scale),
                            "new_loss": float((base_loss + nll_delta[r]) / scale),
                            "delta": float(nll_delta[r] / scale)})
        return entries

    def finish(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        self.index.finish(self.new_name)
        return self.deltas, self.weights


def bootstrap(deltas: dict[str, np.ndarray], weights: np.ndarray, resamples: int, confidence: float,
              seed: int) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the weighted mean of each paired difference (see the module doc).

    Every metric is resampled with the same rows. Up to EXACT_ROWS rows, replicate r uses the
    r-th draw of numpy.random.default_rng(seed).integers(0, n, n).
    """
    names = list(deltas)
    n = len(weights)
    # A zero weight drops a row even when its difference is infinite or undefined.
    sums = {m: losses.weighted(deltas[m], weights) for m in names}
    if n > EXACT_ROWS:  # strided blocks: block b holds rows b, b + B, b + 2B, ...
        blocks = np.arange(n) % EXACT_ROWS
        sums = {m: np.bincount(blocks, weights=sums[m], minlength=EXACT_ROWS) for m in names}
        weights = np.bincount(blocks, weights=weights, minlength=EXACT_ROWS)
        n = EXACT_ROWS
    rng = np.random.default_rng(seed)
    means = {m: np.empty(resamples) for m in names}
    step = max(1, 4_000_000 // n)  # replicates per draw, to bound memory
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        rows = rng.integers(0, n, size=(count, n))
        total = weights[rows].sum(axis=1)
        for m in names:
            means[m][start:start + count] = sums[m][rows].sum(axis=1) / total
    tail = (1.0 - confidence) / 2.0
    bounds = {m: np.quantile(means[m], [tail, 1.0 - tail]) for m in names}
    return {m: (float(low), float(high)) for m, (low, high) in bounds.items()}


def poisson_bootstrap(deltas: dict[str, np.ndarray], weights: np.ndarray, resamples: int, confidence: float,
                      seed: int, row_ids: np.ndarray) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the weighted mean of each paired difference under Poisson(1) row
    weights: replicate r is sum_i P_ir w_i d_i / sum_i P_ir w_i with P = poisson_weights(row_ids, R, seed),
    the same P for every metric. Rows are taken in blocks: memory R x metrics, never R x rows."""
    names = list(deltas)
    columns = np.column_stack([weights, *(losses.weighted(deltas[m], weights) for m in names)])
    sums = np.zeros((resamples, columns.shape[1]))
    step = block_size(resamples)
    for start in range(0, len(weights), step):
        sums += resampled_sums(poisson_weights(row_ids[start:start + step], resamples, seed),
                               columns[start:start + step])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[:, 1:] / sums[:, :1]
    return {m: percentile_interval(means[:, j], confidence) for j, m in enumerate(names)}


def regression(report, threshold: float | None) -> str | None:
    """The message of a clear nll regression: delta above the threshold and so is the whole interval."""
    if threshold is None:
        return None
    row = next(r for r in report.comparison if r["metric"] == "nll")
    low, high = row["ci"]
    if row["delta"] > threshold and low > threshold:
        return (f"nll got worse: delta {row['delta']:+.6g} {report.units}, {row['confidence']:.0%} interval "
                f"[{low:.6g}, {high:.6g}] entirely above {threshold:g}")
    return None
