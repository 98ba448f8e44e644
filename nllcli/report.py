"""The result of a command: metrics in the asked units, per-class rows, warnings and gates."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .summary import bin_edges

if TYPE_CHECKING:
    from .plan import Job, Settings
    from .summary import State, Summary

SCHEMA_VERSION = 1
UNITS = {"e": "nats", "2": "bits", "10": "bans"}
NATS_PER_UNIT = {"nats": 1.0, "bits": math.log(2), "bans": math.log(10)}
# exp(x) overflows float64 above this: log of the largest double, 709.78.
PERPLEXITY_LIMIT = math.log(sys.float_info.max)


@dataclass(frozen=True)
class Gate:
    """A CI threshold: ``--max nll=0.35`` or ``--min accuracy=0.9``."""

    metric: str
    bound: str  # "max" or "min"
    threshold: float

    @classmethod
    def parse(cls, text: str, bound: str) -> "Gate":
        match = re.fullmatch(r"\s*([A-Za-z_]+)\s*=\s*(\S+)\s*", text)
        try:
            threshold = float(match.group(2)) if match else math.nan
        except ValueError:
            threshold = math.nan
        if not match or math.isnan(threshold):
            raise UsageError(f"--{bound} {text!r}: expected METRIC=NUMBER, e.g. --{bound} nll=0.35")
        return cls(match.group(1).lower(), bound, threshold)

    def passes(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value <= self.threshold if self.bound == "max" else value >= self.threshold

    def describe(self, value: float | None) -> str:
        shown = "undefined" if value is None or math.isnan(value) else f"{value:.6g}"
        relation = "above the maximum" if self.bound == "max" else "below the minimum"
        return f"gate failed: {self.metric} = {shown} is {relation} {self.threshold:g}"


def check_gate_metrics(gates: list[Gate], available: list[str]) -> None:
    """Reject a gate on a metric the command does not report, before any work is done."""
    for gate in gates:
        if gate.metric not in available:
            raise UsageError(f"--{gate.bound} {gate.metric}=...: unknown metric "
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
    fail_if_worse: float | None = None  # compare --fail-if-worse: the threshold asked (None: not asked)
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
        return self.warnings + notes + group_notes

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
            "multilabel": self.multilabel,
            "warnings": warnings,
            "calibration": self.calibration,
            "loss_histogram": self.loss_histogram,
            "groups": [{**g, "metrics": {k: _finite_or_none(v) for k, v in g["metrics"].items()}}
                       for g in self.groups],
            "comparison": [{k: _finite_or_none(v) if isinstance(v, float) else
                            [_finite_or_none(x) for x in v] if k == "ci" else v for k, v in c.items()}
                           for c in self.comparison],
            "regression": self.regression,
            "fail_if_worse": self.fail_if_worse,
            "worst": [{k: _finite_or_none(v) if isinstance(v, float) else v for k, v in w.items()}
                      for w in self.worst],
            "gates": [{"metric": g.metric, "bound": g.bound, "threshold": g.threshold,
                       "value": _finite_or_none(self.metrics.get(g.metric)),
                       "passed": g.passes(self.metrics.get(g.metric))} for g in self.gates],
        }


def _group_name(by: dict[str, Any]) -> str:
    return ", ".join(f"{column}={value}" for column, value in by.items())


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
    groups.sort(key=lambda g: (-_sort_value(g["metrics"][main]), [str(v) for v in g["by"].values()]))
    worst = []
    if state.worst is not None:
        for entry in state.worst.entries:
            row = {"row": entry["index"], **{k: v for k, v in entry.items() if k not in ("index", "loss")}}
            worst.append({**row, "loss": entry["loss"] / scale})
    metrics = metric_values(s, job)
    warnings = _clip_warnings(s, settings, command, soft, metrics)
    if settings.top_k is not None and labelled and settings.top_k >= len(layout.class_names):
        warnings.append(f"--top-k {settings.top_k} with {len(layout.class_names)} classes: every row counts "
                        "as a hit, top_k_accuracy is 1")
    return Report(command, job.inputs, s.rows, list(layout.class_names), UNITS[settings.base], metrics,
                  per_class, s.clipped, settings.eps, settings.kind, layout.weight is not None, warnings,
                  job.gates, calibration=_calibration_rows(s) if job.calibration and labelled else [],
                  loss_histogram=_histogram_rows(s, scale), groups=groups, worst=worst, top_k=settings.top_k,
                  clipped_zero=s.clipped_zero, clipped_nudged=s.clipped_nudged, clipped_zero_reverse=s.reverse_zero)


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
    edges = bin_edges(len(s.bin_weight))  # the edges rows are binned by
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
