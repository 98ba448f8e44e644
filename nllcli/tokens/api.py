"""The Python API of `nll tokens`: tokens() for one set of files, compare_tokens() for two checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, UsageError
from ..plan import check_stdin_once
from ..report import NATS_PER_UNIT, UNITS
from . import engine
from .accumulate import Accumulator, Bootstrap
from .report import TokensReport, accumulator, build, parse_gates, per_document

if TYPE_CHECKING:
    from ..sinks import PerSampleWriter

Progress = Callable[[int, int], None]


def _paths(files) -> list:
    """Paths as strings; an in-memory table (pandas DataFrame, pyarrow Table) as it is."""
    if isinstance(files, (str, Path)):
        return [str(files)]
    if hasattr(files, "columns") or hasattr(files, "schema"):
        return [files]
    paths = [str(f) for f in files]
    if not paths:
        raise UsageError("name at least one token file")
    return paths


def _check_options(base: str, worst: int) -> None:
    if base not in UNITS:
        raise UsageError(f"--base {base!r}: choose e, 2 or 10")
    if worst < 0:
        raise UsageError(f"--worst {worst}: must be >= 0")


def _check_per_doc(per_doc, inputs: list[str]) -> None:
    from ..sinks import check_destination, refuse_input_as_output

    if per_doc is None:
        return
    target = str(per_doc)
    if target != "-" and not target.lower().endswith((".csv", ".parquet", ".pq")):
        raise UsageError(f"--per-doc {target}: name a .csv or .parquet file, or - for stdout")
    if target != "-":
        check_destination(target, "--per-doc")
        refuse_input_as_output(target, "--per-doc", inputs)


class _PerDocRows:
    """The --per-doc rows, streamed as documents finish to a file renamed into place at the end."""

    def __init__(self, target: str, base: str, groups: Sequence[str]) -> None:
        self.target, self.scale, self.groups = target, NATS_PER_UNIT[UNITS[base]], list(groups)
        self.writer: PerSampleWriter | None = None
        self.schema: Any = None

    def restart(self) -> None:
        """A fresh file (the input is read again after interleaving): drop what was written."""
        from ..sinks import PerSampleWriter

        if self.writer is not None:
            self.writer.abort()
        self.writer, self.schema = PerSampleWriter(self.target), None

    def __call__(self, ids: list, group_of: list, arrays: dict, tokens_known: bool, text_known: bool) -> None:
        import pyarrow as pa

        assert self.writer is not None
        columns = per_document(ids, group_of, arrays, self.scale, groups=self.groups, tokens_known=tokens_known,
                               text_known=text_known)
        typed = {"tokens": pa.int64(), "masked": pa.int64(), "placeholder": pa.int64(), "bytes": pa.int64(),
                 "words": pa.int64(), "nll": pa.float64(), "perplexity": pa.float64(), "bits_per_byte": pa.float64()}
        out = {}
        for name, values in columns.items():
            array = pa.array(values, typed.get(name))
            known = self.schema.field(name).type if self.schema is not None else None
            if known is not None and array.type != known:  # a chunk of nulls, or ints after strings: the file's type
                array = array.cast(known) if pa.types.is_null(array.type) else array.cast(pa.string()).cast(known)
            out[name] = array
        if self.schema is None:
            self.schema = pa.schema([(name, array.type) for name, array in out.items()])
        self.writer.write(out)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _check_interval(confidence: float, resamples: int) -> None:
    if not (0 < confidence < 1):
        raise UsageError(f"--confidence {confidence:g}: must be between 0 and 1")
    if resamples < 1:
        raise UsageError(f"--resamples {resamples}: must be at least 1")


def tokens(files, *, format_in: str | None = None, doc: str | None = None, logprob: str | None = None,
           bytes: str | None = None, mask: str | None = None, text: str | None = None, by: Sequence[str] = (),
           base: str = "e", worst: int = 0, max: Sequence[str] = (), min: Sequence[str] = (),
           per_doc: str | Path | None = None, progress: Progress | None = None, interval: bool = False,
           confidence: float = 0.95, resamples: int = 2000, seed: int = 0, gate_on: str = "value") -> TokensReport:
    """Perplexity, bits per byte and per-document NLL of saved token log-probabilities (`nll tokens`).

    files: paths of one layout (format_in: table, chat, completions, vllm or lm-eval; detected when
    None), or a pandas DataFrame / pyarrow Table of tokens. doc, logprob, bytes, mask, text: the
    long table's columns (found by name when None); by: group columns; base: e, 2 or 10 (nll and
    doc_nll in nats, bits or bans); worst: list the N documents of largest NLL; max / min: gates
    such as "perplexity=12.5", evaluated into the report (``failed_gates``); per_doc: a .csv or
    .parquet file (or '-') of one row per document, written atomically. interval: a Poisson
    bootstrap over documents (confidence, resamples, seed) of every metric, overall and per group;
    gate_on: what the gates test (value, lower, upper or interval; a bound implies interval).

    Documents whose tokens are contiguous (always so in the JSON Lines layouts) are streamed: memory
    does not grow with the input (but for 8 bytes a document); interleaved files are read twice.
    """
    _check_options(base, worst)
    _check_interval(confidence, resamples)
    paths = _paths(files)
    check_stdin_once([p for p in paths if isinstance(p, str)])
    gates = parse_gates(max, min, gate_on)
    _check_per_doc(per_doc, paths)
    wants_interval = interval or any(g.on != "value" for g in gates)
    bootstrap = Bootstrap(confidence, resamples, seed) if wants_interval else None
    rows = _PerDocRows(str(per_doc), base, by) if per_doc is not None else None

    def fresh() -> Accumulator:
        if rows is not None:
            rows.restart()
        return accumulator(base=base, grouped=bool(by), bootstrap=bootstrap, worst=worst, rows=rows)

    try:
        run = engine.run(paths, layout=format_in, doc=doc, logprob=logprob, bytes=bytes, mask=mask, text=text,
                         by=by, progress=progress, accumulator=fresh, stream=str(per_doc) != "-")
        if run.accumulator is None or run.accumulator.total.count("documents") == 0:
            raise InputError(", ".join(run.inputs), "no tokens in the input")
        report = build(run, base=base, gates=gates, worst=worst)
        if rows is not None and rows.writer is not None:
            rows.writer.commit()
    except BaseException:
        if rows is not None:
            rows.abort()
        raise
    return report


def _pair(base_run: engine.Run, new_run: engine.Run) -> np.ndarray:
    """For each base document, the position of the same document id in the new run."""
    new_index = new_run.state.index
    missing = [d for d in base_run.state.ids if d not in new_index]
    extra = [d for d in new_run.state.ids if d not in base_run.state.index]
    for side, ids, run in (("NEW", missing, new_run), ("BASE", extra, base_run)):
        if ids:
            shown = ", ".join(repr(i) for i in ids[:5]) + (f" (and {len(ids) - 5:,} more)" if len(ids) > 5 else "")
            raise InputError(", ".join(run.inputs), f"{len(ids):,} documents of the other file are missing "
                             f"from {side}: {shown} (documents pair by id)")
    return np.array([new_index[d] for d in base_run.state.ids], np.int64)


def _delta_row(name: str, base_value: float, new_value: float, deltas: np.ndarray | None,
               weights: np.ndarray | None, scale: float, confidence: float, resamples: int, seed: int) -> dict:
    from ..comparison import bootstrap

    row = {"metric": name, "base": base_value, "new": new_value, "delta": new_value - base_value,
           "ci": [math.nan, math.nan], "confidence": confidence, "new_better_share": math.nan}
    if deltas is not None and weights is not None and weights.sum() > 0:
        low, high = bootstrap({name: deltas}, weights, resamples, confidence, seed)[name]
        row["ci"] = [low / scale, high / scale]
        counted = weights > 0
        row["new_better_share"] = float(np.mean(deltas[counted] < 0))
    return row


def compare_tokens(base_files, new_files, *, format_in: str | None = None, doc: str | None = None,
                   logprob: str | None = None, bytes: str | None = None, mask: str | None = None,
                   text: str | None = None, base: str = "e", confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0, fail_if_worse: float | None = None, max: Sequence[str] = (),
                   min: Sequence[str] = (), worst: int = 0, progress: Progress | None = None) -> TokensReport:
    """Did NEW's token NLL get worse than BASE's on the same documents (`nll tokens --compare`)?

    Documents pair by id. Deltas (new - base) of token-weighted nll (in the asked units) and of
    bits_per_byte, each with a percentile bootstrap interval over documents (comparison.bootstrap:
    per-document differences S_new - S_base over T (or B ln 2) tokens, weighted by T (or B), which is
    exactly the difference of the two ratios). The nll delta needs the same token count per document
    (one tokenizer), bits_per_byte the same byte count. fail_if_worse: a regression when the nll delta
    and its whole interval are above it (bits_per_byte when the tokenizers differ). max / min gate NEW.
    """
    _check_options(base, worst)
    _check_interval(confidence, resamples)
    gates = parse_gates(max, min)
    check_stdin_once(*[p for files in (base_files, new_files) for p in _paths(files) if isinstance(p, str)])
    options = dict(layout=format_in, doc=doc, logprob=logprob, bytes=bytes, mask=mask, text=text,
                   progress=progress)
    base_run = engine.run(_paths(base_files), **options)  # type: ignore[arg-type]
    new_run = engine.run(_paths(new_files), **options)  # type: ignore[arg-type]
    order = _pair(base_run, new_run)
    scale = NATS_PER_UNIT[UNITS[base]]
    report = build(new_run, base=base, gates=gates, worst=0)
    report.command = "tokens compare"
    report.base = build(base_run, base=base)
    b, n = base_run.state.arrays(), new_run.state.arrays()
    n = {k: v[order] for k, v in n.items()}
    rows, warnings = [], []
    same_tokens = base_run.tokens_known and new_run.tokens_known and bool(np.all(b["tokens"] == n["tokens"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        token_deltas = np.where(b["tokens"] > 0, (n["nll_sum"] - b["nll_sum"]) / b["tokens"], 0.0)
        byte_deltas = np.where(b["bytes"] > 0, (n["nll_sum"] - b["nll_sum"]) / (b["bytes"] * math.log(2)), 0.0)
    if not same_tokens and base_run.tokens_known and new_run.tokens_known:
        differ = int(np.sum(b["tokens"] != n["tokens"]))
        warnings.append(f"nll: {differ:,} documents have different token counts (different tokenizers, masks or "
                        "placeholders?): the nll delta has no interval; compare bits_per_byte")
    rows.append(_delta_row("nll", report.base.metrics["nll"], report.metrics["nll"],
                           token_deltas if same_tokens else None, b["tokens"].astype(np.float64), scale,
                           confidence, resamples, seed))
    bytes_known = not (b["bytes_unknown"].any() or n["bytes_unknown"].any())
    same_bytes = bytes_known and bool(np.all(b["bytes"] == n["bytes"]))
    if bytes_known and not same_bytes:
        warnings.append(f"bits_per_byte: {int(np.sum(b['bytes'] != n['bytes'])):,} documents have different byte "
                        "counts in BASE and NEW (not the same texts?): no interval")
    rows.append(_delta_row("bits_per_byte", report.base.metrics["bits_per_byte"], report.metrics["bits_per_byte"],
                           byte_deltas if same_bytes else None, b["bytes"].astype(np.float64), 1.0, confidence,
                           resamples, seed))
    report.comparison = rows
    report.warnings = warnings + report.warnings
    if worst:
        report.worst = _most_worsened(base_run, token_deltas if same_tokens else byte_deltas,
                                      "nll" if same_tokens else "bits_per_byte", scale if same_tokens else 1.0, worst)
    report.regression = _regression(rows, fail_if_worse, UNITS[base])
    report.fail_if_worse = fail_if_worse
    report.fail_if_worse_metric = _tested_row(rows)["metric"]
    return report


def _most_worsened(run: engine.Run, deltas: np.ndarray, name: str, scale: float, n: int) -> list[dict]:
    order = np.argsort(-deltas, kind="stable")[:n]
    return [{"doc": run.state.ids[i], f"{name}_delta": float(deltas[i] / scale)} for i in order]


def _tested_row(rows: list[dict]) -> dict:
    """The delta --fail-if-worse tests: nll's, else bits_per_byte's when nll has no interval."""
    return rows[0] if not math.isnan(rows[0]["ci"][0]) else rows[1]


def _regression(rows: list[dict], threshold: float | None, units: str) -> str | None:
    """A clear regression: the delta and its whole interval above the threshold (nll, else bits_per_byte)."""
    if threshold is None:
        return None
    row = _tested_row(rows)
    low, high = row["ci"]
    unit = units if row["metric"] == "nll" else "bits per byte"
    if math.isnan(low):
        return "--fail-if-worse: neither nll nor bits_per_byte can be compared with an interval"
    if row["delta"] > threshold and low > threshold:
        return (f"{row['metric']} got worse: delta {row['delta']:+.6g} {unit}, {row['confidence']:.0%} interval "
                f"[{low:.6g}, {high:.6g}] entirely above {threshold:g}")
    return None
