"""nll calibrate: temperature scaling fitted by maximum likelihood, applied to other files.

The fit keeps the log-probabilities of the validation file in memory (n x K float64, plus about
three working copies of that size while it iterates); test files are streamed. Metrics before and
after come from the score pipeline itself (api.score, with Settings.temperature applied where the
class values become log-probabilities), so they are exactly those `nll score --temperature T` gives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import losses
from .errors import InputError, UsageError, visible

if TYPE_CHECKING:
    from .plan import Job
    from .report import Report

METHODS = ("temperature",)
TEMPERATURE_BOUNDS = (1e-4, 1e4)  # the fit searches T in this range (log T in [-9.21, 9.21])
STEP_TOLERANCE = 1e-10  # the last Newton step on log T: T is converged to about 1e-10 relative
MAX_ITERATIONS = 200
SAVE_KIND = "nll-calibration"
SAVE_VERSION = 1


# -- the kernel ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and how the fit went."""

    temperature: float
    nll_before: float  # mean NLL (nats, unclipped) of the fitted rows at T = 1
    nll_after: float  # ... at the fitted T
    rows: int  # rows the fit used (weight > 0, true class not of probability 0)
    iterations: int
    converged: bool
    at_bound: str | None = None  # "lower" or "upper": the likelihood still rises beyond the search range
    flat: bool = False  # every row's log-probabilities are equal: any T gives the same predictions


def fit_rows(log_q: np.ndarray, labels: np.ndarray, weights: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows a temperature is fitted on: (z, y, w) with each row of z shifted so its maximum is 0
    (-inf stays -inf: a zero probability). Rows of weight 0 are dropped, and so are rows whose true
    class has probability 0: their loss is -log(eps) (or infinite) whatever T, so they carry no
    information about T."""
    keep = np.isfinite(losses.true_class(log_q, labels))
    if weights is not None:
        keep &= weights > 0
    z, y = log_q[keep], labels[keep]
    z = z - z.max(axis=1, keepdims=True)
    w = np.ones(len(y)) if weights is None else weights[keep]
    return z, y, w


def temperature_terms(z: np.ndarray, y: np.ndarray, w: np.ndarray, log_t: float) -> tuple[float, float, float]:
    """Mean NLL of temperature-scaled rows and its first two derivatives in s = log T.

    With b = 1/T = exp(-s), q = softmax(b z) and weights w_i:

        F(s)     = sum_i w_i [logsumexp(b z_i) - b z_iy] / sum_i w_i
        dF/db    = mean_w(E_q[z] - z_y) =: G          d2F/db2 = mean_w(Var_q[z]) =: V >= 0
        dF/ds    = -b G                               d2F/ds2 = b^2 V + b G

    F is convex in b, so dF/ds changes sign at most once (from - to +) as s grows: a bracket and
    bisection always hold. Entries z = -inf (zero probabilities) have q = 0 and add nothing.
    """
    b = math.exp(-log_t)
    scaled = b * z
    lse = losses.logsumexp(scaled)
    q = np.exp(scaled - lse[:, None])
    finite = np.where(np.isfinite(z), z, 0.0)
    mean = np.einsum("ij,ij->i", q, finite)
    centred = finite - mean[:, None]
    var = np.einsum("ij,ij->i", q, centred * centred)
    z_true = losses.true_class(finite, y)
    total = w.sum()
    f = float(w @ (lse - b * z_true) / total)
    g = float(w @ (mean - z_true) / total)
    v = float(w @ var / total)
    return f, -b * g, b * b * v + b * g


def fit_temperature(z: np.ndarray, y: np.ndarray, w: np.ndarray, *,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> TemperatureFit:
    """T > 0 maximising the weighted likelihood of softmax(z / T) (rows from fit_rows).

    Newton's method on s = log T with a bracketing safeguard: a step leaving the bracket, or taken
    where F is not convex in s, is replaced by bisection. Stops when a step moves s by less than
    STEP_TOLERANCE (T to about 1e-10 relative). A likelihood still rising at a bound (a file
    separated perfectly, say) gives that bound and ``at_bound``.
    """
    if len(y) == 0:
        raise ValueError("no rows to fit a temperature on")
    before = temperature_terms(z, y, w, 0.0)
    if before[2] == 0.0 and before[1] == 0.0:  # no variance in any row: T changes nothing
        return TemperatureFit(1.0, before[0], before[0], len(y), 0, True, flat=True)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    at_lo, at_hi = temperature_terms(z, y, w, lo), temperature_terms(z, y, w, hi)
    if at_lo[1] >= 0:
        return TemperatureFit(bounds[0], before[0], at_lo[0], len(y), 2, True, at_bound="lower")
    if at_hi[1] <= 0:
        return TemperatureFit(bounds[1], before[0], at_hi[0], len(y), 2, True, at_bound="upper")
    s, (f, d1, d2) = 0.0, before
    for iteration in range(1, MAX_ITERATIONS + 1):
        if d1 < 0:
            lo = s
        elif d1 > 0:
            hi = s
        else:
            return TemperatureFit(math.exp(s), before[0], f, len(y), iteration, True)
        step = -d1 / d2 if d2 > 0 else math.nan
        new = s + step
        if not (lo < new < hi):
            new = 0.5 * (lo + hi)
        moved, s = abs(new - s), new
        f, d1, d2 = temperature_terms(z, y, w, s)
        if moved < STEP_TOLERANCE or hi - lo < STEP_TOLERANCE:
            return TemperatureFit(math.exp(s), before[0], f, len(y), iteration, True)
    return TemperatureFit(math.exp(s), before[0], f, len(y), MAX_ITERATIONS, False)


def scaled_values(values: np.ndarray, log_q: np.ndarray, kind: str, temperature: float) -> np.ndarray:
    """The calibrated class values in the input's own kind: logits z / T (not normalised), else the
    scaled log-probabilities or probabilities (``log_q`` = tempered_log_softmax(values, kind, T))."""
    if kind == "logits":
        return values / temperature
    return log_q if kind == "log-probs" else np.exp(log_q)


# -- the job -----------------------------------------------------------------------------------


@dataclass
class Calibration:
    """The result of `nll calibrate`: the temperature, and score's reports before and after for
    the validation file and each test file."""

    method: str
    temperature: float
    source: str  # "fitted", "given" or "loaded"
    fit: TemperatureFit | None
    valid: tuple[Report, Report]  # (before, after)
    tests: list[tuple[Report, Report]]
    loaded_from: str | None = None
    saved: str | None = None
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def gates(self):
        return self.valid[1].gates

    @property
    def failed_gates(self):
        """The --max/--min gates on the calibrated validation metrics that failed."""
        return self.valid[1].failed_gates

    def all_warnings(self) -> list[str]:
        out = list(self.warnings)
        for role, (_, after) in [("valid", self.valid), *(("test", t) for t in self.tests)]:
            out += [f"{role} {', '.join(after.inputs['preds'])}: {w}" for w in after.all_warnings()]
        return out

    def to_dict(self) -> dict[str, Any]:
        from .report import SCHEMA_VERSION

        def entry(report: Report) -> dict[str, Any]:
            d = report.to_dict()
            return {k: d[k] for k in ("inputs", "rows", "classes", "metrics", "per_class", "calibration",
                                      "clipped", "warnings")}

        after = self.valid[1]
        fit = None
        if self.fit is not None:
            fit = {"rows": self.fit.rows, "iterations": self.fit.iterations, "converged": self.fit.converged,
                   "at_bound": self.fit.at_bound, "bounds": list(TEMPERATURE_BOUNDS),
                   "nll_before": _finite(self.fit.nll_before), "nll_after": _finite(self.fit.nll_after)}
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "calibrate",
            "method": self.method,
            "temperature": self.temperature,
            "temperature_source": self.source,
            "loaded_from": self.loaded_from,
            "saved": self.saved,
            "fit": fit,
            "inputs": {"valid": after.inputs["preds"], "tests": [a.inputs["preds"] for _, a in self.tests]},
            "units": after.units,
            "input": after.input_kind,
            "eps": after.eps,
            "weighted": after.weighted,
            "before": {"valid": entry(self.valid[0]), "tests": [entry(b) for b, _ in self.tests]},
            "after": {"valid": entry(after), "tests": [entry(a) for _, a in self.tests]},
            "outputs": self.outputs,
            "warnings": self.all_warnings(),
            "gates": [{"metric": g.metric, "bound": g.bound, "threshold": g.threshold, "on": "after.valid",
                       "value": _finite(after.metrics.get(g.metric)), "passed": g.passes(after.metrics.get(g.metric))}
                      for g in after.gates],
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def run(valid, *, apply: Sequence = (), method: str = "temperature", temperature: float | None = None,
        load: str | None = None, save: str | None = None, output: str | None = None,
        max: Sequence[str] = (), min: Sequence[str] = (), **score_options) -> Calibration:
    """The calibrate job (see api.calibrate): fit (or take) T, score every input before and after,
    write the calibrated copies and the saved temperature."""
    from . import api
    from .plan import plan_score

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if temperature is not None and load is not None:
        raise UsageError("--temperature and --load both give the temperature: use one")
    inputs = [valid, *apply]
    for item in inputs:
        if isinstance(item, (str, Path)) and str(item) == "-":
            raise UsageError("nll calibrate reads each file more than once: give files, not standard input (-)")
    targets = _output_paths(output, inputs) if output is not None else []
    if save is not None:
        _check_save_target(save, inputs)
    loaded = load_temperature(load) if load is not None else None
    job = plan_score(valid, max=max, min=min, **score_options)  # gates checked before any work
    if job.layout.label is None:
        raise UsageError("nll calibrate needs the true labels of VALID (--label COLUMN)")
    warnings: list[str] = []
    fit = None
    if temperature is not None:
        source, value = "given", float(temperature)
    elif loaded is not None:
        source, value = "loaded", loaded["temperature"]
        if loaded.get("classes") not in (None, list(job.layout.class_names)):
            warnings.append(f"{load} was fitted on classes {', '.join(map(str, loaded['classes']))}, "
                            f"not {', '.join(job.layout.class_names)}")
    else:
        fit = _fit(job)
        source, value = "fitted", fit.temperature
        warnings += _fit_warnings(fit)
    from .plan import Settings

    Settings(temperature=value)  # the same check as --temperature
    valid_pair = (api.score(valid, **score_options),
                  api.score(valid, temperature=value, max=max, min=min, **score_options))
    test_pairs = [(api.score(test, **score_options), api.score(test, temperature=value, **score_options))
                  for test in apply]
    before, after = valid_pair[0].metrics.get("nll"), valid_pair[1].metrics.get("nll")
    if fit is not None and before is not None and after is not None and after > before:
        warnings.append(f"nll on VALID rose from {before:.6g} to {after:.6g}: values clipped by --eps differ "
                        "from what the fit saw")
    result = Calibration(method, value, source, fit, valid_pair, test_pairs, loaded_from=load, warnings=warnings)
    for item, target in zip(inputs, targets):
        write_calibrated(item, target, value, **score_options)
        result.outputs.append(str(target))
    if save is not None:
        save_temperature(save, result, job)
        result.saved = str(save)
    return result


def _fit(job: Job) -> TemperatureFit:
    from .engine import model_rows

    parts = [fit_rows(log_q, labels, weights) for log_q, labels, weights in model_rows(job)
             if labels is not None]
    name = ", ".join(s.name for s in job.sources)
    if not parts:
        raise InputError(name, "no data rows")
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    w = np.concatenate([p[2] for p in parts])
    if len(y) == 0:
        raise InputError(name, "no row to fit a temperature on (every weight is 0, or every true class has "
                         "probability 0)")
    return fit_temperature(z, y, w)


def _fit_warnings(fit: TemperatureFit) -> list[str]:
    low, high = TEMPERATURE_BOUNDS
    if fit.flat:
        return ["every row of VALID gives its classes equal scores: no temperature changes the predictions, T = 1"]
    if fit.at_bound == "lower":
        return [f"the likelihood of VALID still rises as T falls below {low:g} (are its predictions all right "
                "and separable?): T is that bound"]
    if fit.at_bound == "upper":
        return [f"the likelihood of VALID still rises as T grows above {high:g} (do the predictions carry no "
                "information?): T is that bound"]
    if not fit.converged:
        return [f"the fit did not converge in {fit.iterations} iterations"]
    return []


# -- files: the saved temperature, the calibrated copies -----------------------------------


def save_temperature(path: str, result: Calibration, job: Job) -> None:
    """Write the temperature as versioned JSON, atomically."""
    from .sinks import AtomicFile, reported_as

    fit = result.fit
    document = {"schema_version": SAVE_VERSION, "kind": SAVE_KIND, "method": result.method,
                "temperature": result.temperature, "classes": list(job.layout.class_names),
                "input": job.settings.kind, "fitted_on": result.valid[1].inputs["preds"],
                "rows": fit.rows if fit else None,
                "nll_before": _finite(fit.nll_before) if fit else None,
                "nll_after": _finite(fit.nll_after) if fit else None}
    file = AtomicFile(Path(path), suffix=".tmp")
    try:
        with reported_as(path), open(file.temp, "w", encoding="utf-8") as out:
            out.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
        file.commit()
    except BaseException:
        file.abort()
        raise


def load_temperature(path: str) -> dict[str, Any]:
    """A temperature written by --save (its schema_version, kind and method checked)."""
    from .sinks import reported_as

    if not Path(path).is_file():
        raise UsageError(f"--load {path}: no such file")
    try:
        with reported_as(path), open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--load {path}: not a temperature file written by nll calibrate --save ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != SAVE_KIND:
        raise UsageError(f"--load {path}: not a temperature file written by nll calibrate --save")
    if document.get("schema_version") != SAVE_VERSION:
        raise UsageError(f"--load {path}: schema_version {document.get('schema_version')!r}, this nll reads "
                         f"{SAVE_VERSION}")
    if document.get("method") not in METHODS:
        raise UsageError(f"--load {path}: method {document.get('method')!r} is not one of {', '.join(METHODS)}")
    t = document.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
        raise UsageError(f"--load {path}: temperature {t!r} is not a positive number")
    document["temperature"] = float(t)
    return document


def _check_save_target(save: str, inputs) -> None:
    from .sinks import check_destination, refuse_input_as_output

    check_destination(save, "--save")
    refuse_input_as_output(save, "--save", inputs)


def _output_paths(output: str, inputs) -> list[Path]:
    """Where each input's calibrated copy goes: OUTPUT/<its file name>; never onto an input."""
    from .sinks import check_destination, refuse_input_as_output

    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {output}: is not a folder")
    if not folder.exists():
        check_destination(str(folder), "--output")  # its parent must exist
        folder.mkdir()
    targets: list[Path] = []
    for item in inputs:
        if not isinstance(item, (str, Path)) or Path(item).is_dir():
            raise UsageError("--output writes a copy of each input file: give files (not folders or tables)")
        target = folder / Path(item).name
        if target in targets:
            raise UsageError(f"--output {output}: two inputs are named {Path(item).name}")
        refuse_input_as_output(str(target), "--output", inputs)
        targets.append(target)
    return targets


def write_calibrated(preds, target: Path, temperature: float, **score_options) -> None:
    """Copy ``preds`` to ``target`` with its class values scaled by T, in its format, columns and
    order; every other column as it was. Streamed batch by batch, written atomically."""
    import dataclasses

    import pyarrow as pa

    from .engine import prepare
    from .plan import plan_score
    from .sinks import write_copy

    job = plan_score(preds, **score_options)
    settings = dataclasses.replace(job.settings, temperature=temperature)
    layout, source = job.layout, job.sources[0]
    schema = source.schema
    keep_text = source.format == "csv"  # CSV cells are copied as the text they were
    types = {f.name: (pa.string() if keep_text else f.type) for f in schema}  # every column, in order
    for name in layout.class_columns:
        types[name] = pa.float64()
    if layout.list_column:
        types[layout.list_column] = pa.list_(pa.float64())

    def batches():
        for chunk in source.batches(list(schema.names), types):
            prepared = prepare(chunk, layout, settings)
            out = scaled_values(prepared.values, prepared.logs(), settings.kind, temperature)
            batch = chunk.batch
            if layout.binary:
                out = out[:, 1:]
            if layout.list_column:
                flat = pa.array(np.ascontiguousarray(out).ravel())
                offsets = pa.array(np.arange(0, out.size + 1, out.shape[1], dtype=np.int32))
                index = batch.schema.get_field_index(layout.list_column)
                batch = batch.set_column(index, layout.list_column, pa.ListArray.from_arrays(offsets, flat))
            for j, name in enumerate(layout.class_columns):
                index = batch.schema.get_field_index(name)
                batch = batch.set_column(index, name, pa.array(out[:, j]))
            yield batch

    write_copy(target, batches(), fmt=source.format, delimiter=source.delimiter, compressed=source.compressed,
               metadata=schema.metadata if source.format == "parquet" else None)


# -- rendering -------------------------------------------------------------------------------


def write_calibration(result: Calibration, fmt: str, stream: IO[str]) -> None:
    """The result as tables (like score's), JSON or NDJSON."""
    from .sinks import reported_as

    name = "standard output"
    with reported_as(name):
        if fmt == "table":
            _write_table(result, stream)
        else:
            stream.write(_json(result, indent=2 if fmt == "json" else None) + "\n")
        stream.flush()


def _json(result: Calibration, indent: int | None) -> str:
    from .render import _NOT_PLAIN_ASCII, _json_escape

    text = json.dumps(result.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)
    return _NOT_PLAIN_ASCII.sub(_json_escape, text)


def describe_temperature(result: Calibration) -> str:
    """One line: T and where it came from."""
    valid = ", ".join(result.valid[1].inputs["preds"])
    if result.source == "fitted" and result.fit is not None:
        return (f"temperature scaling: T = {result.temperature:.6g}, fitted on {valid} "
                f"({result.fit.rows:,} rows, {result.fit.iterations} iterations)")
    origin = f"loaded from {result.loaded_from}" if result.source == "loaded" else "given"
    return f"temperature scaling: T = {result.temperature:.6g}, {origin}"


def _write_table(result: Calibration, stream: IO[str]) -> None:
    import io

    from rich import box
    from rich.console import Console

    from . import metrics as metric_table
    from .errors import without_trailing_spaces
    from .render import PLAIN_WIDTH, _cell, _cells, _number, _table

    terminal = stream.isatty()
    console = Console(file=io.StringIO(), force_terminal=terminal, color_system="auto" if terminal else None,
                      width=None if terminal else PLAIN_WIDTH, highlight=False, markup=False, emoji=False,
                      soft_wrap=False)
    plain = not terminal
    style = dict(box=None if plain else box.SIMPLE_HEAVY, show_edge=not plain, pad_edge=False)
    with console.capture() as captured:
        console.print(_cell(f"nll calibrate: {describe_temperature(result)}"))
        for role, (before, after) in [("valid", result.valid), *(("test", t) for t in result.tests)]:
            files = ", ".join(after.inputs["preds"])
            console.print(_cell(f"{role}: {files} ({after.rows:,} rows, {len(after.classes)} classes)"))
            table = _table(style, plain, ("metric", "left"), ("before", "right"), ("after", "right"),
                           ("change", "right"), ("unit", "left"))
            for name, value in after.metrics.items():
                old = before.metrics.get(name)
                change = value - old if old is not None and math.isfinite(value) and math.isfinite(old) else None
                unit = after.units if metric_table.is_information(name) else ""
                table.add_row(*_cells(name, _number(old), _number(value),
                                      "n/a" if change is None else f"{change:+.6f}", unit))
            console.print(table)
        notes = [f"wrote {path}" for path in result.outputs]
        if result.saved:
            notes.append(f"saved T to {result.saved}")
        notes += result.all_warnings()
        for gate in result.gates:
            verdict = "ok" if gate.passes(result.valid[1].metrics.get(gate.metric)) else "FAILED"
            sign = "<=" if gate.bound == "max" else ">="
            notes.append(f"gate {gate.metric} {sign} {gate.threshold:g} (valid, after): {verdict}")
        for note in notes:
            console.print(_cell(visible(note)))
    stream.write(without_trailing_spaces(captured.get()))
