"""The result of a command: metrics in the asked units, per-class rows, warnings and gates."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .summary import CLASS_CELLS_LIMIT

if TYPE_CHECKING:
    import numpy as np

    from .plan import Job, Settings
    from .summary import Replicates, State, Summary

SCHEMA_VERSION = 1
UNITS = {"e": "nats", "2": "bits", "10": "bans"}
NATS_PER_UNIT = {"nats": 1.0, "bits": math.log(2), "bans": math.log(10)}
# exp(x) overflows float64 above this: log of the largest double, 709.78.
PERPLEXITY_LIMIT = math.log(sys.float_info.max)


GATE_ON = ("value", "lower", "upper", "interval")  # what a gate tests (--gate-on)
# compare's gates on the change new - base, each with the sign of the change it bounds: 'max-increase
# nll=0.01': delta <= 0.01; 'max-decrease accuracy=0.01': delta >= -0.01; 'min-decrease nll=0.01':
# delta <= -0.01; 'min-increase accuracy=0.01': delta >= 0.01.
CHANGE_BOUNDS = ("max_increase", "max_decrease", "min_increase", "min_decrease")
_KEEPS_BELOW = ("max", "max_increase", "min_decrease")  # gates whose tested number must stay at or below a limit


@dataclass(frozen=True)
class Gate:
    """A CI threshold: ``--max nll=0.35``, ``--min accuracy=0.9``, or in compare a bound on the change
    new - base: ``--max-increase ece=0.01``, ``--max-increase nll=2%`` (relative to the base value).

    ``on`` says what is tested: the value (or change), the lower or upper bound of its interval, or
    ``interval``: the gate fails only when the value and its whole interval are past the limit.
    ``base``, ``interval`` and ``confidence`` are filled in when the report is built.
    """

    metric: str
    bound: str  # "max", "min", or one of CHANGE_BOUNDS
    threshold: float  # relative: a fraction of the base value (2% is 0.02)
    on: str = "value"
    relative: bool = False
    base: float | None = None  # change gates: the base model's value of the metric
    interval: tuple[float, float] | None = None  # of the value, or of the change for change gates
    confidence: float | None = None

    @classmethod
    def parse(cls, text: str, bound: str, on: str = "value") -> "Gate":
        changes = bound in CHANGE_BOUNDS
        option = "--" + bound.replace("_", "-")
        match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+?)\s*(%?)\s*", text)
        try:
            threshold = float(match.group(2)) if match else math.nan
        except ValueError:
            threshold = math.nan
        relative = bool(match and match.group(3))
        if not match or not math.isfinite(threshold) or (relative and not changes):
            example = "nll=0.01 or nll=2%" if changes else "nll=0.35"
            expected = "METRIC=NUMBER or METRIC=PERCENT%" if changes else "METRIC=NUMBER"
            raise UsageError(f"{option} {text!r}: expected {expected}, e.g. {option} {example}")
        return cls(match.group(1).lower(), bound, threshold / 100 if relative else threshold, on, relative)

    @property
    def option(self) -> str:
        return "--" + self.bound.replace("_", "-")

    @property
    def changes(self) -> bool:
        """A compare gate on new - base."""
        return self.bound in CHANGE_BOUNDS

    @property
    def limit(self) -> float:
        """The limit on the tested number: the threshold, or for change gates the bound on new - base."""
        if not self.changes:
            return self.threshold
        size = self.threshold * abs(self.base) if self.relative and self.base is not None else self.threshold
        if self.relative and self.base is None:
            size = math.nan
        return size if self.bound in ("max_increase", "min_increase") else -size

    def tested(self, value: float | None) -> float | None:
        """The number the gate tests: the value, or new - base for change gates."""
        if value is None or not self.changes:
            return value
        return value - self.base if self.base is not None else math.nan

    def with_result(self, base: float | None, interval, confidence: float | None) -> "Gate":
        """The gate with what the report knows: the base value and the interval it tests."""
        import dataclasses

        shown = None if interval is None else (float(interval[0]), float(interval[1]))
        return dataclasses.replace(self, base=base, interval=shown, confidence=confidence)

    def _within(self, x: float) -> bool:
        return x <= self.limit if self.bound in _KEEPS_BELOW else x >= self.limit

    def passes(self, value: float | None) -> bool:
        x = self.tested(value)
        if x is None or math.isnan(x) or math.isnan(self.limit):
            return False
        if self.on == "value":
            return self._within(x)
        if self.interval is None or any(math.isnan(v) for v in self.interval):
            return False
        low, high = self.interval
        if self.on == "upper":
            return self._within(high)
        if self.on == "lower":
            return self._within(low)
        past = low if self.bound in _KEEPS_BELOW else high  # the end of the interval nearest the limit
        return self._within(x) or self._within(past)

    @property
    def condition(self) -> str:
        """The condition a passing gate meets, e.g. 'nll <= 0.4' or 'nll change <= +2% of base (0.0082)'."""
        sign = "<=" if self.bound in _KEEPS_BELOW else ">="
        if not self.changes:
            subject = {"value": self.metric, "lower": f"lower bound of {self.metric}",
                       "upper": f"upper bound of {self.metric}",
                       "interval": f"{self.metric} (or part of its interval)"}[self.on]
            return f"{subject} {sign} {self.threshold:g}"
        subject = {"value": f"{self.metric} change", "lower": f"lower bound of the {self.metric} change",
                   "upper": f"upper bound of the {self.metric} change",
                   "interval": f"{self.metric} change (or part of its interval)"}[self.on]
        limit = f"{self.limit:+.6g}"
        if self.relative:
            limit = f"{self.threshold * 100 * (1 if self.limit >= 0 else -1):+g}% of base ({self.limit:+.6g})"
        return f"{subject} {sign} {limit}"

    def describe(self, value: float | None) -> str:
        """Why the gate failed: the value (or change), its interval, and the limit it is past."""
        x = self.tested(value)
        shown = "undefined" if x is None or math.isnan(x) else f"{x:+.6g}" if self.changes else f"{x:.6g}"
        relation = "above" if self.bound in _KEEPS_BELOW else "below"
        if self.changes:
            limit = f"{self.limit:+.6g}" + (f" ({self.threshold:.6g} x base)" if self.relative else "")
            relation = f"{relation} the limit {limit}"
        else:
            relation = f"{relation} the {'maximum' if self.bound == 'max' else 'minimum'} {self.threshold:g}"
        text = f"gate failed: {self.metric} {'change ' if self.changes else ''}= {shown}"
        if self.changes and self.base is not None and value is not None:
            text += f" (base {self.base:.6g}, new {value:.6g})"
        if self.on == "value":
            return f"{text} is {relation}"
        level = f"{self.confidence:.0%} " if self.confidence is not None else ""
        if self.interval is None or any(math.isnan(v) for v in self.interval):
            return f"{text}; its {level}interval is undefined, so its {self.on} cannot be tested against {relation}"
        text += f", {level}interval [{self.interval[0]:.6g}, {self.interval[1]:.6g}]"
        end = {"upper": "its upper bound is", "lower": "its lower bound is", "interval": "the whole interval is"}
        return f"{text}: {end[self.on]} {relation}"


def check_gate_metrics(gates: list[Gate], available: list[str]) -> None:
    """Reject a gate on a metric the command does not report, before any work is done."""
    for gate in gates:
        if gate.metric not in available:
            raise UsageError(f"{gate.option} {gate.metric}=...: unknown metric "
                             f"(this command reports {', '.join(available)})")


@dataclass
class Report:
    command: str
    inputs: dict[str, list[str]]
    rows: int
    classes: list[str]
    units: str
    metrics: dict[str, float]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    clipped: int = 0  # clipped_zero + clipped_nudged
    eps: float = 0.0
    input_kind: str = "probs"
    weighted: bool = False
    warnings: list[str] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per confidence bin
    loss_histogram: list[dict[str, Any]] = field(default_factory=list)  # per-sample loss, fixed bins
    groups: list[dict[str, Any]] = field(default_factory=list)  # --by: {"by", "rows", "metrics"}, worst first
    worst: list[dict[str, Any]] = field(default_factory=list)  # --worst: the largest losses
    comparison: list[dict[str, Any]] = field(default_factory=list)  # compare: one entry per metric
    regression: str | None = None  # compare --fail-if-worse: why the new model is clearly worse
    top_k: int | None = None  # --top-k: the K of top_k_accuracy
    clipped_zero: int = 0  # observed-class probabilities below eps raised to eps: -log(eps) each
    clipped_nudged: int = 0  # observed-class probabilities above 1 - eps lowered to 1 - eps
    clipped_zero_reverse: int = 0  # --symmetric: target probabilities below eps where q > 0
    intervals: dict[str, list[float]] | None = None  # --interval: {metric: [low, high]}, units as the metrics
    bootstrap: dict[str, Any] | None = None  # the intervals' confidence, resamples, seed and method
    fail_if_worse: float | None = None  # compare --fail-if-worse: the threshold asked (None: not asked)
    ignored: int = 0  # --ignore-label: rows dropped for their label
    ignore_label: str | None = None
    class_weights: dict[str, float] | None = None  # --class-weight, by class
    bins_kind: str = "width"  # the bins of ece, mce, ece_l2(_debiased) and `calibration`
    multilabel: bool = False  # score --multilabel: per_class rows are labels, nll is binary cross-entropy

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passes(self.metrics.get(g.metric))]

    def all_warnings(self, for_json: bool = False) -> list[str]:
        """The warnings, plus one for each metric that is infinite or undefined (overall, then per
        group, at most five groups)."""
        suffix = "; written as null" if for_json else ""
        notes = [note + suffix for note in self._nonfinite_notes(self.metrics)]
        group_notes = [f"group {_group_name(g['by'])}: {note}{suffix}"
                       for g in self.groups for note in self._nonfinite_notes(g["metrics"])]
        if len(group_notes) > 5:
            group_notes = group_notes[:5] + [f"... and {len(group_notes) - 5} more group metrics that are "
                                             f"infinite or undefined{suffix}"]
        interval_notes = [f"the interval of {name} is {'infinite' if any(map(math.isinf, pair)) else 'undefined'}"
                          f"{suffix}" for name, pair in (self.intervals or {}).items()
                          if not all(map(math.isfinite, pair)) and math.isfinite(self.metrics.get(name, math.nan))]
        return self.warnings + notes + group_notes + interval_notes

    def _nonfinite_notes(self, metrics: dict[str, float]) -> list[str]:
        """Why each metric of ``metrics`` is infinite or undefined."""
        loss = metrics.get("nll", metrics.get("cross_entropy"))
        notes = []
        for name, value in metrics.items():
            kind = _nonfinite_kind(value)
            if kind is None:
                continue
            if name == "perplexity" and kind == "infinite" and loss is not None and math.isfinite(loss):
                nats = loss * NATS_PER_UNIT[self.units]
                notes.append(f"perplexity overflows float64: mean loss {nats:.1f} nats > {PERPLEXITY_LIMIT:.2f}")
            elif kind == "infinite":
                notes.append(f"{name} is infinite (a probability of an observed class is 0; see --eps)")
            else:
                notes.append(f"{name} is undefined")
        return notes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: no NaN or infinity (they become null, with a warning)."""
        metrics = {name: _finite_or_none(value) for name, value in self.metrics.items()}
        warnings = self.all_warnings(for_json=True)
        per_class = [{k: _finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
                     for row in self.per_class]
        return {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "inputs": self.inputs,
            "rows": self.rows,
            "classes": self.classes,
            "units": self.units,
            "input": self.input_kind,
            "eps": self.eps,
            "weighted": self.weighted,
            "top_k": self.top_k,
            "metrics": metrics,
            "per_class": per_class,
            "clipped": self.clipped,
            "clipped_zero": self.clipped_zero,
            "clipped_nudged": self.clipped_nudged,
            "clipped_zero_reverse": self.clipped_zero_reverse,
            "ignored": self.ignored,
            "ignore_label": self.ignore_label,
            "class_weights": self.class_weights,
            "bins_kind": self.bins_kind,
            "multilabel": self.multilabel,
            "warnings": warnings,
            "calibration": self.calibration,
            "loss_histogram": self.loss_histogram,
            "groups": [{**g, "metrics": {k: _finite_or_none(v) for k, v in g["metrics"].items()},
                        **({"intervals": _intervals_or_none(g["intervals"])} if "intervals" in g else {})}
                       for g in self.groups],
            "comparison": [{k: _finite_or_none(v) if isinstance(v, float) else
                            [_finite_or_none(x) for x in v] if k == "ci" else v for k, v in c.items()}
                           for c in self.comparison],
            "regression": self.regression,
            "fail_if_worse": self.fail_if_worse,
            "worst": [{k: _finite_or_none(v) if isinstance(v, float) else v for k, v in w.items()}
                      for w in self.worst],
            "gates": [self._gate_entry(g) for g in self.gates],
            "intervals": _intervals_or_none(self.intervals),
            "confidence": (self.bootstrap or {}).get("confidence"),
            "resamples": (self.bootstrap or {}).get("resamples"),
            "seed": (self.bootstrap or {}).get("seed"),
            "bootstrap": (self.bootstrap or {}).get("method"),
        }

    def _gate_entry(self, g: Gate) -> dict[str, Any]:
        value = self.metrics.get(g.metric)
        entry = {"metric": g.metric, "bound": g.bound, "threshold": g.threshold, "value": _finite_or_none(value),
                 "passed": g.passes(value), "on": g.on,
                 "interval": None if g.interval is None else [_finite_or_none(v) for v in g.interval],
                 "relative": g.relative, "base": _finite_or_none(g.base)}
        if g.changes:
            entry.update(change=_finite_or_none(g.tested(value)), limit=_finite_or_none(g.limit))
        return entry


def _group_name(by: dict[str, Any]) -> str:
    return ", ".join(f"{column}={value}" for column, value in by.items())


def _intervals_or_none(intervals: dict[str, list[float]] | None) -> dict[str, list[float | None]] | None:
    return None if intervals is None else {m: [_finite_or_none(v) for v in pair] for m, pair in intervals.items()}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _nonfinite_kind(value: float | None) -> str | None:
    if value is None or math.isnan(value):
        return "undefined"
    return "infinite" if math.isinf(value) else None


# -- building a report from summaries ------------------------------------------------------


def metric_values(s: Summary, job: Job) -> dict[str, float]:
    """The report's metrics from a summary (all rows, or one group), in the asked units."""
    from . import metrics

    scale = job.settings.unit_scale
    return {m.name: metrics.in_units(m.name, m.finish(s, job), scale) for m in metrics.reported(job)}


def replicate_values(point: Summary, replicates: Replicates, job: Job) -> dict[str, np.ndarray]:
    """Each metric of the report on every bootstrap replicate, in the asked units: the replicate
    Summaries finished by the metric table, as the point values are."""
    import numpy as np

    from . import metrics

    reported = [m for m in metrics.reported(job) if m.resampled(job.settings)]
    scale = job.settings.unit_scale
    out = np.empty((replicates.resamples, len(reported)))
    with np.errstate(all="ignore"):
        for r, summary in enumerate(replicates.summaries(point)):
            out[r] = [m.finish(summary, job) for m in reported]
    return {m.name: out[:, j] / scale if m.information else out[:, j] for j, m in enumerate(reported)}


def replicate_intervals(point: Summary, replicates: Replicates, job: Job) -> dict[str, list[float]]:
    """{metric: [low, high]}: the percentile interval of each metric over the replicates."""
    from .bootstrap import percentile_interval

    confidence = job.interval.confidence if job.interval is not None else 0.95
    return {name: list(percentile_interval(values, confidence))
            for name, values in replicate_values(point, replicates, job).items()}


def build_report(job: Job, state: State, command: str | None = None) -> Report:
    """The Report of a job from its State: metrics in the asked units, per class, per group, worst."""
    s, layout, settings, soft = state.summary, job.layout, job.settings, job.soft
    command, scale = command or job.command, settings.unit_scale
    labelled = layout.label is not None

    per_class = []
    if labelled:
        class_loss = s.class_mean("cross_entropy" if soft else "nll") / scale
        class_accuracy = s.class_accuracy  # computed for every class: once, not once per class
        for j, name in enumerate(layout.class_names):
            per_class.append({"class": name, "rows": int(s.class_rows[j]), "nll": float(class_loss[j]),
                              "accuracy": float(class_accuracy[j])})
    groups: list[dict[str, Any]] = [
        {"by": dict(zip(layout.groups, key)), "rows": part.rows, "metrics": metric_values(part, job)}
        for key, part in state.groups.items()]
    main = "kl" if job.command == "kl" else "nll"
    if state.replicates is not None and job.interval is not None:
        for group, (key, part) in zip(groups, state.groups.items()):
            group["intervals"] = replicate_intervals(part, state.group_replicates[key], job)
    groups.sort(key=lambda g: (-_sort_value(g["metrics"][main]), [str(v) for v in g["by"].values()]))
    worst = []
    if state.worst is not None:
        for entry in state.worst.entries:
            row = {"row": entry["index"], **{k: v for k, v in entry.items() if k not in ("index", "loss")}}
            worst.append({**row, "loss": entry["loss"] / scale})
    metrics = metric_values(s, job)
    intervals, bootstrap, gates = None, None, job.gates
    if state.replicates is not None and job.interval is not None:
        intervals = replicate_intervals(s, state.replicates, job)
        bootstrap = {"confidence": job.interval.confidence, "resamples": job.interval.resamples,
                     "seed": job.interval.seed, "method": "poisson"}
        gates = [g.with_result(None, intervals.get(g.metric), job.interval.confidence) for g in job.gates]
    warnings = _clip_warnings(s, settings, command, soft, metrics)
    if settings.top_k is not None and labelled and settings.top_k >= len(layout.class_names):
        warnings.append(f"--top-k {settings.top_k} with {len(layout.class_names)} classes: every row counts "
                        "as a hit, top_k_accuracy is 1")
    if job.calibration and s.class_bins.size == 0 and len(s.bin_weight) * len(layout.class_names) > CLASS_CELLS_LIMIT:
        warnings.append(f"classwise_ece and the Brier decomposition need at most {CLASS_CELLS_LIMIT:,} (class, bin) "
                        f"cells, here {len(layout.class_names):,} classes x {len(s.bin_weight):,} bins: left out "
                        "(fewer --bins)")
    if intervals is not None:
        from .metrics import reported as metrics_of

        unresampled = [m.name for m in metrics_of(job) if not m.resampled(settings)]
        if unresampled:
            warnings.append(f"note: no interval for {', '.join(unresampled)}: their sums (the fine histogram of "
                            "equal-mass bins, the (class, bin) cells) are too large to copy per resample")
    if s.ignored:
        warnings.append(f"note: {s.ignored:,} {'row' if s.ignored == 1 else 'rows'} with the label "
                        f"{settings.ignore_label} dropped (--ignore-label); {s.rows:,} scored")
    class_weights = dict(zip(layout.class_names, job.class_weights)) if job.class_weights is not None else None
    return Report(command, job.inputs, s.rows, list(layout.class_names), UNITS[settings.base], metrics,
                  per_class, s.clipped, settings.eps, settings.kind, layout.weight is not None or
                  class_weights is not None, warnings, gates,
                  calibration=_calibration_rows(s, settings.bins_kind) if job.calibration and labelled else [],
                  loss_histogram=_histogram_rows(s, scale), groups=groups, worst=worst, top_k=settings.top_k,
                  clipped_zero=s.clipped_zero, clipped_nudged=s.clipped_nudged, clipped_zero_reverse=s.reverse_zero,
                  ignored=s.ignored, ignore_label=settings.ignore_label, class_weights=class_weights,
                  bins_kind=settings.bins_kind, intervals=intervals, bootstrap=bootstrap)


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


def _calibration_rows(s: Summary, kind: str = "width") -> list[dict[str, Any]]:
    """One row per confidence bin: its range, rows (weighted), mean confidence and accuracy.

    Equal-width bins: all B of them. Equal-mass bins: the non-empty ones, each with the range of
    the fine bins it holds (see Summary.top_label_bins)."""
    weights, _, confidence, correct, lower, upper = s.top_label_bins(kind)  # the edges rows are binned by
    rows = []
    for b in range(len(weights)):
        weight = float(weights[b])
        rows.append({"bin": [float(lower[b]), float(upper[b])], "weight": weight,
                     "confidence": float(confidence[b] / weight) if weight else None,
                     "accuracy": float(correct[b] / weight) if weight else None})
    return rows


def _histogram_rows(s: Summary, scale: float) -> list[dict[str, Any]]:
    """Per-sample loss histogram: each bin's range (in the report's units, null for no upper end)."""
    from .summary import LOSS_EDGES

    uppers = [*LOSS_EDGES[1:], None]
    return [{"range": [low / scale, high / scale if high is not None else None], "weight": float(w)}
            for low, high, w in zip(LOSS_EDGES, uppers, s.loss_histogram)]
