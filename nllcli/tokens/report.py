"""Metrics of token log-probabilities, and the TokensReport (its own to_dict: the score Report's
rows, classes and calibration do not fit documents and tokens).

With, over the tokens that count (scored by the mask, not placeholders), S = sum -ll in nats,
T tokens, B bytes and W words, and per document d the same S_d, T_d:

    nll             = S / T                      (in the asked units: / ln 2 bits, / ln 10 bans)
    perplexity      = exp(S / T)                 token-weighted, unit-free
    doc_nll         = mean_d S_d / T_d           documents with at least one token
    doc_perplexity  = mean_d exp(S_d / T_d)
    bits_per_byte   = S / (B ln 2)               lm-evaluation-harness, lm_eval/api/metrics.py:
    byte_perplexity = exp(S / B)                 bits_per_byte(items) = -weighted_mean(items) / log(2),
    word_perplexity = exp(S / W)                 weighted_perplexity(items) = exp(-weighted_mean(items)),
                                                 weighted_mean = sum(ll) / sum(count) over (ll, count)

with B = len(text.encode("utf-8")) and W = len(re.split(r"\\s+", text)) per document
(lm_eval/api/task.py, count_bytes and count_words) unless the file gives byte lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..report import GATE_ON, NATS_PER_UNIT, SCHEMA_VERSION, UNITS, Gate, check_gate_metrics
from .accumulate import Accumulator, Bootstrap, RowsSink, Sums, metrics_of
from .engine import Run

METRICS = ("nll", "perplexity", "doc_nll", "doc_perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")
INFORMATION = ("nll", "doc_nll")  # in the asked units; the others are unit-free or always bits
LOWER_IS_BETTER = METRICS


def parse_gates(max_, min_, gate_on: str = "value") -> list[Gate]:
    """--max / --min gates, each tested on ``gate_on``: the value, a bound of its interval, or the whole interval."""
    if gate_on not in GATE_ON:
        raise UsageError(f"--gate-on {gate_on!r}: choose one of {', '.join(GATE_ON)}")
    gates = [Gate.parse(t, "max", gate_on) for t in max_] + [Gate.parse(t, "min", gate_on) for t in min_]
    check_gate_metrics(gates, list(METRICS))
    return gates


def _exp(x: np.ndarray | float):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(x)


def doc_figures(arrays: dict[str, np.ndarray], scale: float, tokens_known: bool) -> dict[str, np.ndarray]:
    """Per document: nll (asked units), perplexity and bits per byte (NaN where undefined)."""
    tokens = arrays["tokens"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_token = np.where(tokens > 0, arrays["nll_sum"] / tokens, np.nan) if tokens_known else \
            np.full(len(tokens), np.nan)
        nbytes = np.where(arrays["bytes_unknown"] | (arrays["bytes"] == 0), np.nan, arrays["bytes"])
        bpb = arrays["nll_sum"] / (nbytes * math.log(2))
    return {"nll": per_token / scale, "perplexity": _exp(per_token), "bits_per_byte": bpb}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class TokensReport:
    """The result of `nll tokens`: totals, the metrics, groups, worst documents, warnings, gates."""

    inputs: list[str]
    layout: str
    units: str
    tokens: int | None
    documents: int
    masked: int
    placeholder: int
    empty_documents: int
    bytes: int | None
    words: int | None
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    regression: str | None = None
    base: "TokensReport | None" = None
    command: str = "tokens"
    fail_if_worse: float | None = None  # --compare --fail-if-worse: the threshold asked (None: not asked)
    fail_if_worse_metric: str = "nll"  # the delta it was tested on: bits_per_byte when nll has no interval
    intervals: dict[str, list[float]] | None = None  # --interval: {metric: [low, high]}, units as the metrics
    bootstrap: dict[str, Any] | None = None  # the intervals' confidence, resamples, seed, method and unit

    def unit(self, name: str) -> str:
        """The unit a metric is shown in: the asked one for nll and doc_nll, bits for bits_per_byte."""
        return self.units if name in INFORMATION else "bits" if name == "bits_per_byte" else ""

    def input_roles(self) -> dict[str, list[str]]:
        """The inputs by role, as a score Report's `inputs`: the files, or BASE and NEW's (--compare)."""
        return {"base": self.base.inputs, "new": self.inputs} if self.base is not None else {"files": self.inputs}

    def counts(self) -> list[tuple[str, int | None]]:
        """What was scored, for the titles and the CI formats: documents and tokens (None: unknown)."""
        return [("documents", self.documents), ("tokens", self.tokens)]

    def title(self) -> str:
        """The first line of every format (data: not escaped here)."""
        files = ", ".join(self.inputs)
        if self.base is not None:
            files = f"{', '.join(self.base.inputs)} -> {files}"
        count = "n/a" if self.tokens is None else f"{self.tokens:,}"
        return (f"nll {self.command}: {files} ({self.layout}; {count} tokens, {self.documents:,} documents, "
                f"{self.masked:,} masked, {self.placeholder:,} placeholders)")

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passes(self.metrics.get(g.metric))]

    def all_warnings(self, for_json: bool = False) -> list[str]:
        suffix = "; written as null" if for_json else ""
        notes = []
        for name, value in self.metrics.items():
            if value is None or math.isnan(value):
                explained = any(name in w.split(":")[0].split(", ") for w in self.warnings)
                if not explained:
                    notes.append(f"{name} is undefined{suffix}")
            elif math.isinf(value):
                notes.append(f"{name} overflows float64{suffix}")
        for name, pair in (self.intervals or {}).items():  # an undefined metric's interval is said with it above
            point = self.metrics.get(name)
            if point is not None and not math.isnan(point) and not all(map(math.isfinite, pair)):
                kind = "infinite" if any(map(math.isinf, pair)) else "undefined"
                notes.append(f"the interval of {name} is {kind}{suffix}")
        return self.warnings + notes

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON: NaN and infinity become null, with a warning."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "inputs": self.inputs,
            "format_in": self.layout,
            "units": self.units,
            "tokens": self.tokens,
            "documents": self.documents,
            "masked": self.masked,
            "placeholder": self.placeholder,
            "empty_documents": self.empty_documents,
            "bytes": self.bytes,
            "words": self.words,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "warnings": self.all_warnings(for_json=True),
            "groups": [{**g, "metrics": {k: _finite(v) for k, v in g["metrics"].items()}} for g in self.groups],
            "worst": [{k: _finite(v) for k, v in w.items()} for w in self.worst],
            "gates": [{"metric": g.metric, "bound": g.bound, "threshold": g.threshold,
                       "value": _finite(self.metrics.get(g.metric)), "passed": g.passes(self.metrics.get(g.metric)),
                       "on": g.on, "interval": None if g.interval is None else [_finite(v) for v in g.interval]}
                      for g in self.gates],
            "intervals": None if self.intervals is None else {k: [_finite(v) for v in pair]
                                                                  for k, pair in self.intervals.items()},
            "confidence": (self.bootstrap or {}).get("confidence"),
            "resamples": (self.bootstrap or {}).get("resamples"),
            "seed": (self.bootstrap or {}).get("seed"),
            "bootstrap": (self.bootstrap or {}).get("method"),
        }
        for group in out["groups"]:
            if "intervals" in group:
                group["intervals"] = {k: [_finite(v) for v in pair] for k, pair in group["intervals"].items()}
        if self.base is not None:
            out["comparison"] = [{k: ([_finite(x) for x in v] if isinstance(v, list) else _finite(v))
                                  for k, v in row.items()} for row in self.comparison]
            out["regression"] = self.regression
            out["fail_if_worse"] = self.fail_if_worse
            out["fail_if_worse_metric"] = self.fail_if_worse_metric
            out["base"] = self.base.to_dict()
        return out


def _warnings(run: Run, total: Sums, placeholder: int, empty: int, scale_name: str) -> list[str]:
    out = []
    if run.interleaved:
        out.append(f"{run.interleaved}: the documents are interleaved, so the input was read twice keeping every "
                   "document in memory (sort the tokens by document to stream them in bounded memory)")
    if placeholder:
        out.append(f"{placeholder:,} placeholder log-probabilities (null, NaN, -inf or <= -9999) were not "
                   "scored: they are left out of every metric and of the documents' bytes and words")
    if empty:
        out.append(f"{empty:,} documents have no scored token: they are left out of doc_nll and doc_perplexity")
    if not run.tokens_known:
        out.append("nll, perplexity, doc_nll, doc_perplexity: lm-evaluation-harness samples hold one "
                   "log-likelihood per document, not its token count")
    unknown = total.count("bytes_unknown")
    if unknown:
        out.append(f"bits_per_byte, byte_perplexity: the byte length of {unknown:,} documents is unknown "
                   "(give a byte or token text column: --bytes, --text)")
    if not run.text_known:
        out.append("word_perplexity: no token text to count words in (give --text)")
    return out


def accumulator(*, base: str = "e", grouped: bool = False, bootstrap: Bootstrap | None = None, worst: int = 0,
                rows: RowsSink | None = None) -> Accumulator:
    """An empty Accumulator for a run's finished documents (engine.run folds them in as it reads)."""
    scale = NATS_PER_UNIT[UNITS[base]]
    def worst_key(arrays: dict[str, np.ndarray]) -> np.ndarray:
        figures = doc_figures(arrays, scale, acc.tokens_known)
        return figures["nll"] if acc.tokens_known else figures["bits_per_byte"]

    acc = Accumulator(tokens_known=True, grouped=grouped, bootstrap=bootstrap, worst=worst, worst_key=worst_key,
                      rows=rows)
    return acc


def build(run: Run, *, base: str = "e", gates: list[Gate] = (), worst: int = 0,  # type: ignore[assignment]
          bootstrap: Bootstrap | None = None) -> TokensReport:
    """The report of a run: totals, metrics, --by groups (worst first), the --worst documents, and
    under --interval the bootstrap interval of every metric, overall and per group."""
    units = UNITS[base]
    scale = NATS_PER_UNIT[units]
    acc = run.accumulator
    if acc is None:  # every document is in the state (compare_tokens): fold them all now
        acc = accumulator(base=base, grouped=bool(run.groups), bootstrap=bootstrap, worst=worst)
        acc.tokens_known = run.tokens_known
        state = run.state
        acc.add(state.ids[:state.n], state.group_of[:state.n], state.arrays())
    total = acc.total
    bytes_known = total.count("bytes_unknown") == 0

    def metrics(sums: Sums) -> dict:
        return metrics_of(sums.linear, scale, tokens_known=run.tokens_known, text_known=run.text_known,
                          bytes_known=sums.count("bytes_unknown") == 0)

    placeholder, empty = total.count("placeholder"), total.count("empty")
    report = TokensReport(
        inputs=run.inputs, layout=run.layouts[0] if run.layouts else "table", units=units,
        tokens=int(total.total("tokens")) if run.tokens_known else None, documents=total.count("documents"),
        masked=total.count("masked"), placeholder=placeholder, empty_documents=empty,
        bytes=int(total.total("bytes")) if bytes_known else None,
        words=int(total.total("words")) if run.text_known else None,
        metrics=metrics(total), warnings=_warnings(run, total, placeholder, empty, units), gates=list(gates))
    if acc.bootstrap is not None:
        report.intervals = _intervals(total, metrics, run, scale, acc.bootstrap.confidence)
        report.bootstrap = {"confidence": acc.bootstrap.confidence, "resamples": acc.bootstrap.resamples,
                            "seed": acc.bootstrap.seed, "method": "poisson", "unit": "documents"}
        report.gates = [g.with_result(None, report.intervals.get(g.metric), acc.bootstrap.confidence)
                        for g in report.gates]
    if run.groups:
        report.groups = _groups(run, acc, metrics, scale)
    if worst and acc.worst_arrays is not None:
        report.worst = worst_documents(run, acc.worst_ids, acc.worst_arrays, scale, worst)
    return report


def _intervals(sums: Sums, metrics, run: Run, scale: float, confidence: float) -> dict[str, list[float]]:
    """{metric: [low, high]}: the percentile interval of each metric over the replicate sums."""
    from ..bootstrap import percentile_interval

    assert sums.replicates is not None
    replicated = metrics_of(sums.replicates, scale, tokens_known=run.tokens_known, text_known=run.text_known,
                            bytes_known=sums.count("bytes_unknown") == 0)
    point = metrics(sums)
    return {name: (list(percentile_interval(replicated[name], confidence)) if point[name] == point[name]
                   else [math.nan, math.nan]) for name in METRICS}


def _groups(run: Run, acc: Accumulator, metrics, scale: float) -> list[dict]:
    main = "nll" if run.tokens_known else "bits_per_byte"
    groups: list[dict] = []
    for key, sums in acc.groups.items():
        tokens = int(sums.total("tokens")) if run.tokens_known else None
        group = {"by": dict(zip(run.groups, key or ())), "tokens": tokens, "documents": sums.count("documents"),
                 "metrics": metrics(sums)}
        if acc.bootstrap is not None:
            group["intervals"] = _intervals(sums, metrics, run, scale, acc.bootstrap.confidence)
        groups.append(group)

    def worst_first(group: dict) -> tuple:
        value = group["metrics"][main]
        return (-value if value == value else math.inf, [str(v) for v in group["by"].values()])

    groups.sort(key=worst_first)
    return groups


def per_document(ids: list, group_of: list, arrays: dict, scale: float, *, groups: list[str], tokens_known: bool,
                 text_known: bool) -> dict[str, np.ndarray | list]:
    """The per-document columns (the --per-doc file): id, tokens, bytes, words, nll, perplexity, bits per byte."""
    n = len(ids)
    figures = doc_figures(arrays, scale, tokens_known)
    columns: dict[str, Any] = {"doc": ids}
    for i, name in enumerate(groups):
        columns[name] = [k[i] for k in group_of]
    columns["tokens"] = arrays["tokens"] if tokens_known else [None] * n
    columns["masked"] = arrays["masked"]
    columns["placeholder"] = arrays["placeholder"]
    columns["bytes"] = [None if unknown else int(b) for unknown, b in zip(arrays["bytes_unknown"], arrays["bytes"])]
    columns["words"] = arrays["words"] if text_known else [None] * n
    columns["nll"] = figures["nll"]
    columns["perplexity"] = figures["perplexity"]
    columns["bits_per_byte"] = figures["bits_per_byte"]
    return columns


def worst_documents(run: Run, ids: list, arrays: dict, scale: float, n: int) -> list[dict]:
    """The n documents with the largest per-token NLL (bits per byte without token counts)."""
    figures = doc_figures(arrays, scale, run.tokens_known)
    key = figures["nll"] if run.tokens_known else figures["bits_per_byte"]
    order = np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")[:n]
    return [{"doc": ids[i], "tokens": int(arrays["tokens"][i]) if run.tokens_known else None,
             "bytes": None if arrays["bytes_unknown"][i] else int(arrays["bytes"][i]),
             "nll": float(figures["nll"][i]), "perplexity": float(figures["perplexity"][i]),
             "bits_per_byte": float(figures["bits_per_byte"][i])} for i in order]
