"""The metric table: every metric a report can hold, in the order reports list them.

One row says all the rest of the program needs to know about a metric: which commands report it,
whether it is in information units (nats, converted by ``--base``), whether it needs a label and
whether lower is better; the per-sample quantity the engine sums into the Summary (if it is a
mean of one), how the value is finished from a Summary, which per-sample values `compare` pairs,
and whether the groups table shows it. Adding a metric = a kernel in losses.py + a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .engine import Prepared, Scored
    from .plan import Job, Settings
    from .summary import Summary

Quantity = Callable[["Prepared", "np.ndarray | None", "np.ndarray | None", "Settings"], "np.ndarray"]


@dataclass(frozen=True)
class Metric:
    name: str
    commands: tuple[str, ...]  # the reports that have it ("score" also serves compare)
    finish: Callable[[Summary, Job], float]  # its value from a Summary (in nats if information)
    information: bool = False  # in nats / bits / bans; else unitless
    lower_is_better: bool = True
    needs_label: bool = False
    applies: Callable[[Settings], bool] = lambda settings: True  # asked for by the options
    option: str | None = None  # the option that asks for it, when it is not always there
    quantity: Quantity | None = None  # per-sample (predictions, labels, targets, settings) summed under its name
    paired: Callable[[Scored], np.ndarray] | None = None  # per-sample values `compare` pairs
    compared: Callable[[Job], bool] = lambda job: True  # whether `compare` pairs it for this job
    in_groups: bool = False  # a column of the --by table
    # Whether --interval resamples it: not those finished from sums too large to copy per resample
    # (summary._NOT_RESAMPLED: the fine histogram of equal-mass bins, the (class, bin) cells).
    resampled: Callable[[Settings], bool] = lambda settings: True


def _loss(s: Summary, job: Job) -> float:
    """The mean of the main loss in nats: NLL, or cross-entropy against soft targets."""
    return s.mean("cross_entropy" if job.soft else "nll")


def _perplexity(s: Summary, job: Job) -> float:
    from . import losses

    return losses.perplexity(_loss(s, job))  # exp of the mean loss in nats, whatever the unit asked for


def _brier(pred: Prepared, labels, targets, settings: Settings):
    from . import losses

    q_true = pred.labelled_probability(labels) if labels is not None and targets is None else None
    return losses.brier(pred.probs(), labels, targets, q_true)


def _top_k_hits(pred: Prepared, labels, targets, settings: Settings):
    from . import losses

    return losses.top_k_hits(pred.values, labels, settings.top_k or 1)


def _hits(correct: np.ndarray | None) -> np.ndarray:
    """0/1 per row as floats (a metric that needs a label has one)."""
    if correct is None:
        raise ValueError("accuracy needs labels")
    return correct.astype(float)


def _never(settings: Settings) -> bool:
    return False


def _width_bins(settings: Settings) -> bool:
    """Equal-width bins resample; equal-mass ones need the fine histogram (see Metric.resampled)."""
    return settings.bins_kind != "mass"


SCORE, KL = "score", "kl"

METRICS: tuple[Metric, ...] = (
    Metric("nll", (SCORE,), _loss, information=True, paired=lambda s: s.loss, in_groups=True),
    Metric("cross_entropy", (SCORE, KL), _loss, information=True),
    Metric("entropy", (SCORE, KL), lambda s, job: s.mean("entropy") if job.soft else 0.0, information=True),
    Metric("kl", (SCORE, KL), lambda s, job: s.mean("kl") if job.soft else s.mean("nll"), information=True,
           paired=lambda s: s.values["kl"], compared=lambda job: job.soft, in_groups=True),
    Metric("kl_reverse", (KL,), lambda s, job: s.mean("kl_reverse"), information=True,
           applies=lambda settings: settings.symmetric, option="--symmetric"),
    Metric("js", (KL,), lambda s, job: s.mean("js"), information=True, applies=lambda settings: settings.symmetric,
           option="--symmetric"),
    Metric("perplexity", (SCORE, KL), _perplexity),
    Metric("accuracy", (SCORE,), lambda s, job: s.accuracy, lower_is_better=False, needs_label=True,
           paired=lambda s: _hits(s.correct), in_groups=True),
    Metric("top_k_accuracy", (SCORE,), lambda s, job: s.mean("top_k_accuracy"), lower_is_better=False,
           needs_label=True, applies=lambda settings: settings.top_k is not None, option="--top-k K",
           quantity=_top_k_hits,
           paired=lambda s: s.summed["top_k_accuracy"], in_groups=True),
    Metric("brier", (SCORE,), lambda s, job: s.mean("brier"), quantity=_brier, paired=lambda s: s.summed["brier"],
           in_groups=True),
    Metric("ece", (SCORE,), lambda s, job: s.calibration_errors(job.settings.bins_kind)[0], needs_label=True,
           in_groups=True, resampled=_width_bins),
    Metric("mce", (SCORE,), lambda s, job: s.calibration_errors(job.settings.bins_kind)[1], needs_label=True,
           resampled=_width_bins),
    # Calibration estimators (summary.py and losses.py state each one). ece_mass always uses
    # equal-mass bins; --bins-kind picks the bins of ece, mce, ece_l2 and ece_l2_debiased.
    Metric("ece_mass", (SCORE,), lambda s, job: s.calibration_errors("mass")[0], needs_label=True,
           resampled=_never),
    Metric("classwise_ece", (SCORE,), lambda s, job: s.classwise_calibration_error(), resampled=_never),
    Metric("ece_l2", (SCORE,), lambda s, job: s.l2_calibration_error(job.settings.bins_kind), needs_label=True,
           resampled=_width_bins),
    Metric("ece_l2_debiased", (SCORE,), lambda s, job: s.l2_calibration_error(job.settings.bins_kind, True),
           needs_label=True, resampled=_width_bins),
    Metric("brier_reliability", (SCORE,), lambda s, job: s.brier_decomposition()[0], resampled=_never),
    Metric("brier_resolution", (SCORE,), lambda s, job: s.brier_decomposition()[1], lower_is_better=False,
           resampled=_never),
    Metric("brier_uncertainty", (SCORE,), lambda s, job: s.brier_decomposition()[2], resampled=_never),
)


def get(name: str) -> Metric | None:
    return next((m for m in METRICS if m.name == name), None)


def find(name: str) -> Metric:
    """The metric of that name (a KeyError for a name not in the table)."""
    metric = get(name)
    if metric is None:
        raise KeyError(name)
    return metric


def offered(command: str, settings: Settings) -> list[Metric]:
    """The metrics a command reports with these options (those needing a label, if it has one)."""
    command = SCORE if command == "compare" else command
    return [m for m in METRICS if command in m.commands and m.applies(settings)]


def reported(job: Job) -> list[Metric]:
    """The metrics of a job's report."""
    return [m for m in offered(job.command, job.settings) if job.labelled or not m.needs_label]


def is_information(name: str) -> bool:
    """Whether a metric is in information units (nats, bits, bans)."""
    metric = get(name)
    return metric is not None and metric.information


def in_units(name: str, value: float, scale: float) -> float:
    """A value in nats (information metrics) converted to the report's units; others as they are."""
    return value / scale if is_information(name) else value
