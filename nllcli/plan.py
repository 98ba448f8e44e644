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
from .report import UNITS, Gate, check_gate_metrics


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


def open_inputs(inputs) -> list:
    from . import readers

    if isinstance(inputs, (str, Path)):
        return readers.open_sources([str(inputs)])
    if isinstance(inputs, Sequence) and inputs and all(isinstance(i, (str, Path)) for i in inputs):
        return readers.open_sources([str(i) for i in inputs])
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
               temperature: float | None = None,
               vector_scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Job:
    """Check the options and open the inputs of a `score` (see score())."""
    settings = Settings(kind=input, eps=eps, tol=tol, renormalize=renormalize, base=str(base),
                        label_smoothing=label_smoothing, bins=bins, top_k=top_k, temperature=temperature,
                        vector_scaling=vector_scaling)
    soft = targets is not None or target_prefix is not None or label_smoothing is not None
    if label_smoothing is not None and (targets is not None or target_prefix is not None):
        raise UsageError("--label-smoothing softens hard labels; it does not combine with --targets or --target-prefix")
    if worst < 0:
        raise UsageError(f"--worst {worst}: must be >= 0")
    check_stdin_once(preds, targets)
    if isinstance(preds, (list, tuple)) and len(preds) == 1:
        preds = preds[0]
    gates = parse_gates(max, min, "score", settings)
    sources = open_inputs(preds)
    schema, name = sources[0].schema, sources[0].name
    target_sources = open_inputs(targets) if targets is not None else []
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
                raise UsageError(f"--{gate.bound} {gate.metric}=...: {gate.metric} needs a label column (--label)")
    same_file_targets = (target_layout(schema, name, layout.class_names, name, prefix=target_prefix)
                         if target_prefix else None)
    return Job("score", settings, soft, gates, sources, target_sources, pair_key, layout, same_file_targets,
               target_probs, classes is not None, worst)


def plan_kl(p, q, *, classes: str | list[str] | None = None, probs: str | None = None, key: str | None = None,
            input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False,
            base: str = "e", symmetric: bool = False, max: Sequence[str] = (), min: Sequence[str] = (),
            ignore: Sequence[str] = ()) -> Job:
    """Check the options and open the inputs of a `kl` (see kl())."""
    settings = Settings(kind=input, eps=eps, tol=tol, renormalize=renormalize, base=str(base), symmetric=symmetric)
    check_stdin_once(p, q)
    gates = parse_gates(max, min, "kl", settings)
    p_sources, q_sources = open_inputs(p), open_inputs(q)
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


def parse_gates(max_: Sequence[str], min_: Sequence[str], command: str, settings: Settings) -> list[Gate]:
    gates = [Gate.parse(t, "max") for t in max_] + [Gate.parse(t, "min") for t in min_]
    offered = [m.name for m in metrics.offered(command, settings)]
    for gate in gates:
        metric = metrics.get(gate.metric)
        if gate.metric not in offered and metric is not None and command in metric.commands and metric.option:
            raise UsageError(f"--{gate.bound} {gate.metric}=...: {gate.metric} needs {metric.option}")
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
