"""nll calibrate: temperature scaling (or vector scaling) fitted by maximum likelihood, applied to
other files.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from . import losses
from .errors import InputError, UsageError

if TYPE_CHECKING:
    from .plan import Job
    from .report import Report

METHODS = ("temperature", "vector")
VECTOR_L2 = 1e-4  # vector scaling's default penalty towards the identity map
TEMPERATURE_BOUNDS = (1e-4, 1e4)  # the fit searches T in this range (log T in [-9.21, 9.21])
STEP_TOLERANCE = 1e-10  # the last Newton step on log T: T is converged to about 1e-10 relative
MAX_ITERATIONS = 200
SAVE_KIND = "nll-calibration"  # the "kind" of a file written by --save
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


@dataclass(frozen=True)
class VectorFit:
    """Vector scaling's fitted scales and biases, one per class, and how the fit went."""

    scale: tuple[float, ...]
    bias: tuple[float, ...]
    nll_before: float  # mean NLL (nats) of the fitted rows with a = 1, b = 0
    nll_after: float  # ... with the fitted a, b (the penalty not included)
    rows: int
    iterations: int
    converged: bool
    l2: float


def vector_terms(x: np.ndarray, y: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray, l2: float,
                 derivatives: bool = True) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
    """Penalised mean NLL of vector scaling, its gradient and Hessian in theta = (a, b).

    With q_i = softmax(a * x_i + b), r_i = q_i - onehot(y_i), weights w_i (W = sum w_i) and the
    penalty (l2 / 2) (|a - 1|^2 + |b|^2) towards the identity map:

        F      = sum_i w_i [logsumexp(a * x_i + b) - a_y x_iy - b_y] / W + penalty
        dF/da  = sum_i w_i r_i * x_i / W + l2 (a - 1)       dF/db = sum_i w_i r_i / W + l2 b
        H      = sum_i w_i J_i^T (diag q_i - q_i q_i^T) J_i / W + l2 I,   J_i = [diag x_i, I]

    F is convex (the NLL of a softmax is convex in its logits, which are linear in theta), strictly
    so with l2 > 0. Returns (F, the mean NLL alone, gradient, Hessian); without ``derivatives``
    the last two are None.
    """
    n, k = x.shape
    total = w.sum()
    logits = x * a + b
    lse = losses.logsumexp(logits)
    rows = np.arange(n)
    nll = float(w @ (lse - logits[rows, y]) / total)
    penalty = 0.5 * l2 * (float(((a - 1.0) ** 2).sum()) + float((b ** 2).sum()))
    if not derivatives:
        return nll + penalty, nll, None, None
    q = np.exp(logits - lse[:, None])
    r = q.copy()
    r[rows, y] -= 1.0
    wr = r * w[:, None]
    grad = np.concatenate([(wr * x).sum(axis=0), wr.sum(axis=0)]) / total
    wq = q * w[:, None]
    u = q * x
    wu = u * w[:, None]
    h_aa = np.diag((wu * x).sum(axis=0)) - wu.T @ u
    h_ab = np.diag(wu.sum(axis=0)) - wu.T @ q
    h_bb = np.diag(wq.sum(axis=0)) - wq.T @ q
    hess = np.block([[h_aa, h_ab], [h_ab.T, h_bb]]) / total
    grad += l2 * np.concatenate([a - 1.0, b])
    hess += l2 * np.eye(2 * k)
    return nll + penalty, nll, grad, hess


def fit_vector(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, l2: float = 1e-4) -> VectorFit:
    """Scales a and biases b minimising the penalised mean NLL of softmax(a * x + b) (vector_terms).

    Newton's method from the identity (a = 1, b = 0), with a backtracking line search until the
    Newton decrement g^T H^-1 g is below 1e-8 (then full steps, where Newton converges
    quadratically); stops when the decrement falls below 1e-24 or a step moves no parameter by
    more than 1e-13. x: the feature log-probabilities of each row (losses.feature_log_probs).
    """
    k = x.shape[1]
    a, b = np.ones(k), np.zeros(k)
    f, before, grad, hess = vector_terms(x, y, w, a, b, l2)
    nll = before

    def done(iteration: int, converged: bool = True) -> VectorFit:
        return VectorFit(tuple(a.tolist()), tuple(b.tolist()), before, nll, len(y), iteration, converged, l2)

    for iteration in range(1, MAX_ITERATIONS + 1):
        assert grad is not None and hess is not None
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = float(-grad @ step)
        if decrement < 1e-24 or np.abs(step).max() < 1e-13:
            return done(iteration)
        t = 1.0
        if decrement > 1e-8:
            while t > 1e-10 and vector_terms(x, y, w, a + t * step[:k], b + t * step[k:], l2, False)[0] > \
                    f - 0.25 * t * decrement:
                t *= 0.5
            if t <= 1e-10:  # no decrease left to find in float64
                return done(iteration)
        a, b = a + t * step[:k], b + t * step[k:]
        f, nll, grad, hess = vector_terms(x, y, w, a, b, l2)
    return done(MAX_ITERATIONS, converged=False)


def scaled_values(values: np.ndarray, log_q: np.ndarray, kind: str, mapping: dict[str, Any]) -> np.ndarray:
    """The calibrated class values in the input's own kind: logits z / T (temperature; vector
    scaling writes its log-probabilities, logits of the same softmax), else the calibrated
    log-probabilities or probabilities (``log_q``)."""
    if kind == "logits" and "temperature" in mapping:
        return values / mapping["temperature"]
    return log_q if kind != "probs" else np.exp(log_q)


# -- the job -----------------------------------------------------------------------------------


@dataclass
class Calibration:
    """The result of `nll calibrate`: the calibration map (a temperature, or vector scaling's scales
    and biases), and score's reports before and after for the validation file and each test file."""

    method: str
    temperature: float | None  # None for vector scaling
    source: str  # "fitted", "given" or "loaded"
    fit: TemperatureFit | VectorFit | None
    valid: tuple[Report, Report]  # (before, after)
    tests: list[tuple[Report, Report]]
    loaded_from: str | None = None
    saved: str | None = None
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    scale: tuple[float, ...] | None = None  # vector scaling, one per class
    bias: tuple[float, ...] | None = None

    @property
    def mapping(self) -> dict[str, Any]:
        """The map as score() takes it: temperature=T, or vector_scaling=(scales, biases)."""
        if self.method == "vector":
            return {"vector_scaling": (self.scale, self.bias)}
        return {"temperature": self.temperature}

    # What the report formats (formats.py) and the CI integration (ci.py) read of a report: the
    # command, the inputs by role, and VALID's calibrated metrics (those the gates test).
    command = "calibrate"
    regression = None

    @property
    def inputs(self) -> dict[str, list[str]]:
        """The input files by role: valid, then every --apply file as test."""
        return {"valid": list(self.valid[1].inputs["preds"]),
                "test": [name for _, after in self.tests for name in after.inputs["preds"]]}

    @property
    def rows(self) -> int:
        return self.valid[1].rows

    @property
    def classes(self) -> list[str]:
        return self.valid[1].classes

    @property
    def units(self) -> str:
        return self.valid[1].units

    @property
    def metrics(self) -> dict[str, float]:
        """VALID's metrics after calibration: those the --max/--min gates test."""
        return self.valid[1].metrics

    def stages(self) -> list[tuple[str, Report, Report]]:
        """(role, before, after) of VALID and of each --apply file."""
        return [("valid", *self.valid), *(("test", *pair) for pair in self.tests)]

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
        fit: dict[str, Any] | None = None
        if self.fit is not None:
            fit = {"rows": self.fit.rows, "iterations": self.fit.iterations, "converged": self.fit.converged,
                   "nll_before": _finite(self.fit.nll_before), "nll_after": _finite(self.fit.nll_after)}
            if isinstance(self.fit, TemperatureFit):
                fit.update(at_bound=self.fit.at_bound, bounds=list(TEMPERATURE_BOUNDS))
            else:
                fit.update(l2=self.fit.l2)
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "calibrate",
            "method": self.method,
            "temperature": self.temperature,
            "scale": None if self.scale is None else dict(zip(after.classes, self.scale)),
            "bias": None if self.bias is None else dict(zip(after.classes, self.bias)),
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
        load: str | None = None, save: str | None = None, output: str | None = None, l2: float = VECTOR_L2,
        max: Sequence[str] = (), min: Sequence[str] = (), **score_options) -> Calibration:
    """The calibrate job (see api.calibrate): fit (or take) the map, score every input before and
    after, write the calibrated copies and the saved map."""
    from . import api
    from .plan import Settings, plan_score

    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if temperature is not None and load is not None:
        raise UsageError("--temperature and --load both give the temperature: use one")
    if temperature is not None and method != "temperature":
        raise UsageError(f"--temperature gives a temperature; --method {method} fits something else")
    if not (0 <= l2 < math.inf):
        raise UsageError(f"--l2 {l2:g}: must be >= 0")
    inputs = [valid, *apply]
    for item in inputs:
        if isinstance(item, (str, Path)) and str(item) == "-":
            raise UsageError("nll calibrate reads each file more than once: give files, not standard input (-)")
    targets = _output_paths(output, inputs) if output is not None else []
    if save is not None:
        _check_save_target(save, inputs)
    loaded = load_map(load) if load is not None else None
    job = plan_score(valid, max=max, min=min, **score_options)  # gates checked before any work
    if job.layout.label is None:
        raise UsageError("nll calibrate needs the true labels of VALID (--label COLUMN)")
    classes = list(job.layout.class_names)
    result = Calibration(method, None, "fitted", None, (None, None), [], loaded_from=load)  # type: ignore[arg-type]
    if temperature is not None:
        result.source, result.temperature = "given", float(temperature)
    elif loaded is not None:
        result.source, result.method = "loaded", loaded["method"]
        if loaded["method"] == "vector":
            if loaded["classes"] != classes:
                raise UsageError(f"--load {load}: fitted on classes {', '.join(map(str, loaded['classes']))}, "
                                 f"not {', '.join(classes)}")
            result.scale, result.bias = tuple(loaded["scale"]), tuple(loaded["bias"])
        else:
            result.temperature = loaded["temperature"]
            if loaded.get("classes") not in (None, classes):
                result.warnings.append(f"{load} was fitted on classes {', '.join(map(str, loaded['classes']))}, "
                                       f"not {', '.join(classes)}")
    elif method == "vector":
        vector = _fit_vector(job, l2)
        result.fit, result.scale, result.bias = vector, vector.scale, vector.bias
        if not vector.converged:
            result.warnings.append(f"the fit did not converge in {vector.iterations} iterations")
    else:
        fit = _fit(job)
        result.fit, result.temperature = fit, fit.temperature
        result.warnings += _fit_warnings(fit)
    mapping = result.mapping
    Settings(**mapping)  # the same checks as score's
    result.valid = (api.score(valid, **score_options),
                    api.score(valid, max=max, min=min, **mapping, **score_options))
    result.tests = [(api.score(test, **score_options), api.score(test, **mapping, **score_options))
                    for test in apply]
    before, after = result.valid[0].metrics.get("nll"), result.valid[1].metrics.get("nll")
    if result.fit is not None and before is not None and after is not None and after > before:
        result.warnings.append(f"nll on VALID rose from {before:.6g} to {after:.6g}: values clipped by --eps "
                               "differ from what the fit saw")
    for item, target in zip(inputs, targets):
        write_calibrated(item, target, mapping, **score_options)
        result.outputs.append(str(target))
    if save is not None:
        save_map(save, result, job)
        result.saved = str(save)
    return result


def _fit_arrays(job: Job, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of every batch, joined; an InputError when none is left."""
    from .engine import model_rows

    parts = [rows(log_q, labels, weights) for log_q, labels, weights in model_rows(job) if labels is not None]
    name = ", ".join(s.name for s in job.sources)
    if not parts or sum(len(p[1]) for p in parts) == 0:
        raise InputError(name, "no row to fit on (every weight is 0, or every true class has probability 0)")
    z, y, w = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return z, y, w


def _fit(job: Job) -> TemperatureFit:
    return fit_temperature(*_fit_arrays(job, fit_rows))


def _fit_vector(job: Job, l2: float) -> VectorFit:
    eps = job.settings.eps

    def rows(log_q, labels, weights):
        keep = np.ones(len(labels), dtype=bool) if weights is None else weights > 0
        x = losses.feature_log_probs(log_q[keep], "log-probs", eps)
        return x, labels[keep], np.ones(int(keep.sum())) if weights is None else weights[keep]

    return fit_vector(*_fit_arrays(job, rows), l2=l2)


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


# -- files: the saved map, the calibrated copies ---------------------------------------------


def save_map(path: str, result: Calibration, job: Job) -> None:
    """Write the calibration map (T, or the scales and biases) as versioned JSON, atomically."""
    from .sinks import AtomicFile, reported_as

    fit = result.fit
    document = {"schema_version": SAVE_VERSION, "kind": SAVE_KIND, "method": result.method,
                "temperature": result.temperature,
                "scale": None if result.scale is None else list(result.scale),
                "bias": None if result.bias is None else list(result.bias),
                "classes": list(job.layout.class_names),
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


def load_map(path: str) -> dict[str, Any]:
    """A calibration map written by --save (its schema_version, kind, method and numbers checked)."""
    from .sinks import reported_as

    if not Path(path).is_file():
        raise UsageError(f"--load {path}: no such file")
    what = "not a calibration file written by nll calibrate --save"
    try:
        with reported_as(path), open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--load {path}: {what} ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != SAVE_KIND:
        raise UsageError(f"--load {path}: {what}")
    if document.get("schema_version") != SAVE_VERSION:
        raise UsageError(f"--load {path}: schema_version {document.get('schema_version')!r}, this nll reads "
                         f"{SAVE_VERSION}")
    method = document.get("method")
    if method not in METHODS:
        raise UsageError(f"--load {path}: method {method!r} is not one of {', '.join(METHODS)}")

    def number(value) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    if method == "vector":
        scale, bias, classes = document.get("scale"), document.get("bias"), document.get("classes")
        if not (isinstance(scale, list) and isinstance(bias, list) and isinstance(classes, list)
                and len(scale) == len(bias) == len(classes) and all(map(number, scale + bias))):
            raise UsageError(f"--load {path}: vector scaling needs finite scale and bias lists, one per class")
        document["scale"], document["bias"] = [float(v) for v in scale], [float(v) for v in bias]
        document["classes"] = [str(c) for c in classes]
        return document
    t = document.get("temperature")
    if not (number(t) and isinstance(t, (int, float)) and t > 0):
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


def write_calibrated(preds, target: Path, mapping: dict[str, Any], **score_options) -> None:
    """Copy ``preds`` to ``target`` with its class values calibrated by ``mapping`` (temperature=T or
    vector_scaling=(a, b)), in its format, columns and order; every other column as it was.
    Streamed batch by batch, written atomically."""
    import dataclasses

    import pyarrow as pa

    from .engine import prepare
    from .plan import plan_score
    from .sinks import write_copy

    job = plan_score(preds, **score_options)
    settings = dataclasses.replace(job.settings, **mapping)
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
            out = scaled_values(prepared.values, prepared.logs(), settings.kind, mapping)
            batch = chunk.batch
            if layout.binary:  # one column: P(class 1), its log, or its logit log q1 - log q0
                out = out[:, 1:] - out[:, :1] if settings.kind == "logits" else out[:, 1:]
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


def metric_changes(before: Report, after: Report) -> list[tuple[str, float | None, float, float | None]]:
    """(metric, before, after, after - before) for each metric of ``after``; the change is None
    where either value is missing or not finite."""
    out = []
    for name, value in after.metrics.items():
        old = before.metrics.get(name)
        change = value - old if old is not None and math.isfinite(value) and math.isfinite(old) else None
        out.append((name, old, value, change))
    return out
