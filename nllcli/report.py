"""The result of a command: metrics in the asked units, per-class rows, warnings and gates."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

SCHEMA_VERSION = 1
UNITS = {"e": "nats", "2": "bits", "10": "bans"}
# Quantities measured in information units (converted by --base); the rest are unitless.
INFORMATION_METRICS = ("nll", "cross_entropy", "entropy", "kl", "kl_reverse", "js")
NATS_PER_UNIT = {"nats": 1.0, "bits": math.log(2), "bans": math.log(10)}
# exp(x) overflows float64 above this: log of the largest double, 709.78.
PERPLEXITY_LIMIT = math.log(sys.float_info.max)


def perplexity(mean_nats: float) -> float:
    """exp of the mean loss in nats; +inf when that overflows float64 (mean above 709.78)."""
    try:
        return math.exp(mean_nats)  # NaN stays NaN, +inf stays +inf
    except OverflowError:
        return math.inf


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
    clipped_zero: int = 0  # observed-class probabilities below eps raised to eps: -log(eps) each
    clipped_nudged: int = 0  # observed-class probabilities above 1 - eps lowered to 1 - eps
    clipped_zero_reverse: int = 0  # --symmetric: target probabilities below eps where q > 0

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
            "metrics": metrics,
            "per_class": per_class,
            "clipped": self.clipped,
            "clipped_zero": self.clipped_zero,
            "clipped_nudged": self.clipped_nudged,
            "clipped_zero_reverse": self.clipped_zero_reverse,
            "warnings": warnings,
            "calibration": self.calibration,
            "loss_histogram": self.loss_histogram,
            "groups": [{**g, "metrics": {k: _finite_or_none(v) for k, v in g["metrics"].items()}}
                       for g in self.groups],
            "comparison": [{k: _finite_or_none(v) if isinstance(v, float) else
                            [_finite_or_none(x) for x in v] if k == "ci" else v for k, v in c.items()}
                           for c in self.comparison],
            "regression": self.regression,
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
