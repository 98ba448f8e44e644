"""Options and headers -> a plain job: settings checked, inputs opened, columns decided; no rows read."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import losses, metrics
from .columns import Layout, column_not_found, find_column, index_key, parse_classes, resolve_layout, target_layout
from .errors import InputError, UsageError, visible
from .report import GATE_ON, UNITS, Gate, check_gate_metrics
from .summary import BINS_KINDS


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How values are read and scored; shared by every command."""

    kind: str = "probs"
    eps: float = losses.EPS
    tol: float = 1e-4
    renormalize: bool = False
    base: str = "e"
    label_smoothing: float | None = None
    symmetric: bool = False
    bins: int = 15
    top_k: int | None = None
    bins_kind: str = "width"  # the bins of ece, mce, ece_l2(_debiased) and the calibration table
    ignore_label: str | None = None  # rows with this label are dropped and counted (torch's ignore_index)
    temperature: float | None = None  # scale logits by 1/T before scoring (nll calibrate)
    vector_scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (scales, biases) per class

    def __post_init__(self):
        if self.kind not in losses.INPUT_KINDS:
            raise UsageError(f"--input {self.kind!r}: choose one of {', '.join(losses.INPUT_KINDS)}")
        if self.base not in UNITS:
            raise UsageError(f"--base {self.base!r}: choose e, 2 or 10")
        if not (0 <= self.eps < 0.5):
            raise UsageError(f"--eps {self.eps:g}: must be in [0, 0.5)")
        if not (self.tol >= 0):
            raise UsageError(f"--tol {self.tol:g}: must be >= 0")
        if self.label_smoothing is not None and not (0 <= self.label_smoothing <= 1):
            raise UsageError(f"--label-smoothing {self.label_smoothing:g}: must be in [0, 1]")
        if not (1 <= self.bins <= 10_000):
            raise UsageError(f"--bins {self.bins}: must be between 1 and 10000")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k {self.top_k}: must be at least 1")
        if self.bins_kind not in BINS_KINDS:
            raise UsageError(f"--bins-kind {self.bins_kind!r}: choose width or mass")
        if self.ignore_label is not None and not str(self.ignore_label).strip():
            raise UsageError("--ignore-label: give the label value to drop, e.g. -100")
        if self.temperature is not None and not (0 < self.temperature < math.inf):
            raise UsageError(f"--temperature {self.temperature:g}: must be a positive finite number")
        if self.vector_scaling is not None and (self.temperature is not None or len(self.vector_scaling) != 2 or
                                                len(self.vector_scaling[0]) != len(self.vector_scaling[1]) or
                                                not all(map(math.isfinite, sum(self.vector_scaling, ())))):
            raise UsageError("vector scaling needs as many finite scales as biases, and no temperature")

    @property
    def scored_kind(self) -> str:
        """The kind the kernels see: probabilities scaled by a temperature arrive as log-probabilities
        (clipped by eps like them)."""
        scaled = self.temperature is not None or self.vector_scaling is not None
        return "log-probs" if scaled and self.kind == "probs" else self.kind

    @property
    def unit_scale(self) -> float:
        return {"e": 1.0, "2": math.log(2), "10": math.log(10)}[self.base]


def check_stdin_once(*inputs) -> None:
    """Standard input can feed one input only."""
    paths = [str(i) for x in inputs for i in (x if isinstance(x, (list, tuple)) else [x]) if isinstance(i, (str, Path))]
    if paths.count("-") > 1:
        raise UsageError("standard input (-) can be read only once")


def open_inputs(inputs, storage_options: dict | None = None) -> list:
    """Sources of paths, URLs (opened with ``storage_options``), or an in-memory table."""
    from . import readers

    if isinstance(inputs, (str, Path)):
        return readers.open_sources([str(inputs)], storage_options)
    if isinstance(inputs, Sequence) and inputs and all(isinstance(i, (str, Path)) for i in inputs):
        return readers.open_sources([str(i) for i in inputs], storage_options)
    return [readers.Source.from_table(inputs)]


def input_names(sources) -> list[str]:
    return [s.name for s in sources]


def default_key(explicit: str | None, *schemas) -> str | None:
    """The pairing key as named in the first file: --key, else 'id' when every file has it, else
    an integer pandas index column of the same name in every file.

    Names match regardless of case, as for --label.
    """
    wanted = explicit or "id"
    found = []
    for schema, name in schemas:
        match = find_column(schema.names, wanted)
        if match is None and explicit:
            raise column_not_found(schema.names, explicit, name, "key")
        found.append(match)
    if all(found):
        return found[0]
    index = [index_key(schema) for schema, _ in schemas]
    return index[0] if not explicit and index[0] is not None and len(set(index)) == 1 else None


@dataclass(frozen=True)
class Interval:
    """--interval: a Poisson bootstrap of every metric (see bootstrap.py and summary.Replicates).

    ``key``: the column whose hashed values seed each row's weights (compare pairs by it); None:
    the row's global position.
    """

    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    key: str | None = None

    def __post_init__(self):
        check_bootstrap_settings(self.confidence, self.resamples)


def check_bootstrap_settings(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise UsageError(f"--confidence {confidence:g}: must be between 0 and 1")
    if resamples < 1:
        raise UsageError(f"--resamples {resamples}: must be at least 1")


@dataclass
class Job:
    """A resolved command: inputs opened, columns decided, settings checked; no row read yet.

    ``target_sources`` are the targets of `score` or P of `kl`; ``same_file_targets`` the layout
    of --target-prefix columns.
    """

    command: str  # "score" or "kl"
    settings: Settings
    soft: bool
    gates: list[Gate]
    sources: list
    target_sources: list
    pair_key: str | None
    layout: Layout
    same_file_targets: Layout | None = None
    target_probs: str | None = None
    explicit_classes: bool = False
    worst: int = 0
    class_weights: list[float] | None = None  # --class-weight: one weight per class, in class order
    interval: Interval | None = None  # --interval (or a gate on a bound of it)

    @property
    def calibration(self) -> bool:
        """Brier score and confidence bins: `score` (and compare), not `kl`."""
        return self.command != "kl"

    @property
    def target_kind(self) -> str:
        """How the target values are read: P of `kl` like Q, targets of `score` as probabilities."""
        return self.settings.kind if self.command == "kl" else "probs"

    @property
    def labelled(self) -> bool:
        return self.layout.label is not None

    @property
    def inputs(self) -> dict[str, list[str]]:
        """The files read, by role."""
        if self.command == "kl":
            return {"p": input_names(self.target_sources), "q": input_names(self.sources)}
        inputs = {"preds": input_names(self.sources)}
        if self.target_sources:
            inputs["targets"] = input_names(self.target_sources)
        return inputs


def plan_score(preds, *, targets=None, label: str | None = None, classes: str | list[str] | None = None,
               probs: str | None = None, key: str | None = None, weight: str | None = None,
               positive: str | None = None, input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4,
               renormalize: bool = False, base: str = "e", target_prefix: str | None = None,
               target_probs: str | None = None, label_smoothing: float | None = None,
               bins: int = 15, top_k: int | None = None, by: Sequence[str] = (), worst: int = 0,
               max: Sequence[str] = (), min: Sequence[str] = (), ignore: Sequence[str] = (),
               bins_kind: str = "width", ignore_label: str | int | None = None,
               class_weight: str | dict[str, float] | Sequence[float] | None = None,
               class_weight_file: str | Path | None = None,
               storage_options: dict | None = None,
               interval: bool = False, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
               gate_on: str = "value", temperature: float | None = None,
               vector_scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Job:
    """Check the options and open the inputs of a `score` (see score())."""
    settings = Settings(kind=input, eps=eps, tol=tol, renormalize=renormalize, base=str(base),
                        label_smoothing=label_smoothing, bins=bins, top_k=top_k, bins_kind=bins_kind,
                        ignore_label=None if ignore_label is None else str(ignore_label).strip(),
                        temperature=temperature, vector_scaling=vector_scaling)
    soft = targets is not None or target_prefix is not None or label_smoothing is not None
    if label_smoothing is not None and (targets is not None or target_prefix is not None):
        raise UsageError("--label-smoothing softens hard labels; it does not combine with --targets or --target-prefix")
    if worst < 0:
        raise UsageError(f"--worst {worst}: must be >= 0")
    weights_asked = read_class_weights(class_weight, class_weight_file)
    if weights_asked is not None and soft:
        raise UsageError("--class-weight follows torch's hard-label mean; it does not combine with --targets, "
                         "--target-prefix or --label-smoothing")
    check_stdin_once(preds, targets)
    if isinstance(preds, (list, tuple)) and len(preds) == 1:
        preds = preds[0]
    gates = parse_gates(max, min, "score", settings, gate_on)
    wants_interval = interval or any(g.on != "value" for g in gates)
    for gate in gates:
        metric = metrics.get(gate.metric)
        if gate.on != "value" and metric is not None and not metric.resampled(settings):
            raise UsageError(f"{gate.option} {gate.metric}=... --gate-on {gate.on}: {gate.metric} has no interval "
                             "(its sums are too large to resample); gate on its value")
    intervals = Interval(confidence, resamples, seed) if wants_interval else None
    sources = open_inputs(preds, storage_options)
    schema, name = sources[0].schema, sources[0].name
    target_sources = open_inputs(targets, storage_options) if targets is not None else []
    pair_key = default_key(key, (schema, name), *((s.schema, s.name) for s in target_sources[:1]))
    reserved = [n for n in schema.names if n.lower().startswith(target_prefix.lower())] if target_prefix else []
    layout = resolve_layout(schema, name, classes=parse_classes(classes) if isinstance(classes, str) else classes,
                            label=label, probs=probs, key=pair_key or key, weight=weight, positive=positive,
                            reserved=reserved, label_required=not soft or label_smoothing is not None,
                            groups=list(by), ignore=list(ignore or ()), sample=sources[0].head)
    if layout.list_column and not layout.class_names:
        layout.class_names = _list_width_names(sources, layout)
    if soft and layout.binary:
        raise UsageError("soft targets need one probability column per class (this file has one)")
    if vector_scaling is not None and len(vector_scaling[0]) != len(layout.class_names):
        raise UsageError(f"vector scaling has {len(vector_scaling[0])} scales, the file "
                         f"{len(layout.class_names)} classes")
    if layout.label is None:
        for gate in gates:
            if metrics.find(gate.metric).needs_label:
                raise UsageError(f"{gate.option} {gate.metric}=...: {gate.metric} needs a label column (--label)")
    if settings.ignore_label is not None and layout.label is None:
        raise UsageError("--ignore-label needs a label column (--label)")
    same_file_targets = (target_layout(schema, name, layout.class_names, name, prefix=target_prefix)
                         if target_prefix else None)
    class_weights = (class_weight_vector(weights_asked, layout.class_names, class_weight_file)
                     if weights_asked is not None else None)
    return Job("score", settings, soft, gates, sources, target_sources, pair_key, layout, same_file_targets,
               target_probs, classes is not None, worst, class_weights,
               interval=intervals)


def plan_kl(p, q, *, classes: str | list[str] | None = None, probs: str | None = None, key: str | None = None,
            input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False,
            base: str = "e", symmetric: bool = False, max: Sequence[str] = (), min: Sequence[str] = (),
            ignore: Sequence[str] = (), storage_options: dict | None = None) -> Job:
    """Check the options and open the inputs of a `kl` (see kl())."""
    settings = Settings(kind=input, eps=eps, tol=tol, renormalize=renormalize, base=str(base), symmetric=symmetric)
    check_stdin_once(p, q)
    gates = parse_gates(max, min, "kl", settings)
    p_sources, q_sources = open_inputs(p, storage_options), open_inputs(q, storage_options)
    p_schema, q_schema = p_sources[0].schema, q_sources[0].schema
    pair_key = default_key(key, (q_schema, q_sources[0].name), (p_schema, p_sources[0].name))
    class_list = parse_classes(classes) if isinstance(classes, str) else classes
    layout = resolve_layout(q_schema, q_sources[0].name, classes=class_list, probs=probs, key=pair_key,
                            label_required=False, ignore=list(ignore or ()))
    layout.label = None  # a label column is never a class here, and is not needed
    if layout.list_column and not layout.class_names:
        layout.class_names = _list_width_names(q_sources, layout)
    if layout.binary:
        raise InputError(q_sources[0].name, "needs one probability column per class, found one")
    return Job("kl", settings, True, gates, q_sources, p_sources, pair_key, layout, target_probs=probs,
               explicit_classes=class_list is not None)


def say_notes(job: Job) -> None:
    """What was guessed about the columns, on stderr, once the run succeeded (then forgotten)."""
    notes, job.layout.notes = job.layout.notes, []
    for note in notes:
        sys.stderr.write(f"nll: {visible(note)}\n")  # names in notes come from the data


def parse_gates(max_: Sequence[str], min_: Sequence[str], command: str, settings: Settings,
                gate_on: str = "value", changes: dict[str, Sequence[str]] | None = None) -> list[Gate]:
    """--max / --min gates (and compare's --max-increase ... in ``changes``: bound -> texts), each
    tested on ``gate_on``: the value, a bound of its interval, or the whole interval."""
    if gate_on not in GATE_ON:
        raise UsageError(f"--gate-on {gate_on!r}: choose one of {', '.join(GATE_ON)}")
    gates = [Gate.parse(t, "max", gate_on) for t in max_] + [Gate.parse(t, "min", gate_on) for t in min_]
    gates += [Gate.parse(t, bound, gate_on) for bound, texts in (changes or {}).items() for t in texts]
    offered = [m.name for m in metrics.offered(command, settings)]
    for gate in gates:
        metric = metrics.get(gate.metric)
        if gate.metric not in offered and metric is not None and command in metric.commands and metric.option:
            raise UsageError(f"{gate.option} {gate.metric}=...: {gate.metric} needs {metric.option}")
    check_gate_metrics(gates, offered)
    return gates


def _list_width_names(sources, layout: Layout) -> list[str]:
    """Class names 0..K-1 for a list column, K from the first row."""
    first = next(sources[0].batches([layout.list_column], layout.types(sources[0].schema)), None)
    if first is None:
        return ["0"]
    import pyarrow.compute as pc

    width = pc.list_value_length(first.batch.column(0))[0].as_py() or 0
    return [str(i) for i in range(width)]


# -- class weights (--class-weight, --class-weight-file) --------------------------------------


ClassWeights = dict[str, float] | list[float]  # by class name (or position), or one per class in order


def read_class_weights(text, path) -> ClassWeights | None:
    """The weights asked for: ``text`` as NAME=W,... (or W,W,... one per class, torch's weight vector),
    a dict or a list; or ``path``, a JSON object or list, or a CSV file with columns class,weight."""
    if text is not None and path is not None:
        raise UsageError("--class-weight and --class-weight-file: give one of them")
    if path is not None:
        return _class_weight_file(str(path))
    if text is None:
        return None
    if isinstance(text, dict):
        return {str(k): _weight_value(v, "--class-weight", str(k)) for k, v in text.items()}
    if not isinstance(text, str):
        return [_weight_value(v, "--class-weight", str(i)) for i, v in enumerate(text)]
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise UsageError(f"--class-weight {text!r}: expected NAME=W,NAME=W,... or W,W,... (one per class)")
    if not any("=" in item for item in items):
        return [_weight_value(item, "--class-weight", str(i)) for i, item in enumerate(items)]
    weights: dict[str, float] = {}
    for item in items:
        name, equals, value = item.rpartition("=")
        if not equals or not name.strip():
            raise UsageError(f"--class-weight {text!r}: {item!r} is not NAME=W")
        if name.strip() in weights:
            raise UsageError(f"--class-weight: class {name.strip()!r} is given twice")
        weights[name.strip()] = _weight_value(value, "--class-weight", name.strip())
    return weights


def _weight_value(value, where: str, name: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: weight {value!r} of class {name!r} is not a number") from None
    if not (math.isfinite(w) and w >= 0):
        raise UsageError(f"{where}: weight {value!r} of class {name!r} must be finite and >= 0")
    return w


def _class_weight_file(path: str) -> ClassWeights:
    import csv
    import json

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read(1 << 24)  # a weight per class: 16 MiB is far more than any file of them
    except OSError as exc:
        raise InputError(path, f"cannot read the class weights: {exc.strerror or exc}") from None
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(path, f"not valid JSON: {exc}") from None
        if isinstance(data, dict):
            return {str(k): _file_weight(path, v, str(k)) for k, v in data.items()}
        if isinstance(data, list):
            return [_file_weight(path, v, str(i)) for i, v in enumerate(data)]
        raise InputError(path, "expected a JSON object {class: weight} or a list of weights, one per class")
    rows = list(csv.reader(text.splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "class" not in header or "weight" not in header:
        raise InputError(path, "expected a CSV header with columns class and weight")
    at_class, at_weight = header.index("class"), header.index("weight")
    weights: dict[str, float] = {}
    for number, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at_class, at_weight):
            raise InputError(path, "row has too few cells", rows=[number])
        name = row[at_class].strip()
        if name in weights:
            raise InputError(path, f"class {name!r} is given twice", column="class", rows=[number])
        try:
            weights[name] = _weight_value(row[at_weight].strip(), path, name)
        except UsageError as exc:
            raise InputError(path, str(exc).split(": ", 1)[-1], column="weight", rows=[number]) from None
    return weights


def _file_weight(path: str, value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(path, f"weight {value!r} of class {name!r} is not a number")
    try:
        return _weight_value(value, path, name)
    except UsageError as exc:
        raise InputError(path, str(exc).split(": ", 1)[-1]) from None


def class_weight_vector(weights: ClassWeights, class_names: Sequence[str], source: str | Path | None) -> list[float]:
    """One weight per class, in class order. Names match class names (or, when they are not class
    names, integer positions 0..K-1, as labels do); classes not named weigh 1. A list gives every class."""
    where = str(source) if source is not None else "--class-weight"
    k = len(class_names)
    if isinstance(weights, list):
        if len(weights) != k:
            raise UsageError(f"{where}: {len(weights)} weights for {k} classes {list(class_names)[:20]}")
        return list(weights)
    vector = [1.0] * k
    position = {name: j for j, name in enumerate(class_names)}
    for name, w in weights.items():
        j = position.get(name)
        if j is None and name.lstrip("-").isdigit() and 0 <= int(name) < k:
            j = int(name)
        if j is None:
            raise UsageError(f"{where}: {name!r} is not a class (classes: {', '.join(list(class_names)[:20])})")
        vector[j] = w
    return vector
