"""State files: a run's State saved to disk, loaded back and merged (`--save-state`, `nll merge`).

The format is JSON (UTF-8), one object, documented here and in the README:

    {"format": "nllstate", "format_version": 1, "nll_version": "...", "fingerprint": "<sha256>",
     "command": "score" | "kl", "agree": {...settings and columns that must match to merge...},
     "layout": {"classes": [...], "label": ..., "key": ..., "weight": ..., "groups": [...], ...},
     "inputs": {"preds": [...], "targets": [...]}  (kl: {"p": [...], "q": [...]}),
     "state": {"overall": SUMMARY | null, "groups": [[[key values], SUMMARY], ...],
               "worst": {"n": N, "entries": [{"index": i, "loss": x, ...}, ...]} | null}}

A SUMMARY holds every field of summary.Summary by name; arrays are JSON lists. Numbers are written
with Python's shortest round-trip repr, so every float64 reads back bit for bit; the non-finite
values, which JSON has no number for, are the strings "inf", "-inf" and "nan". JSON rather than
Arrow IPC: a State is small (sums per quantity, class, bin and group, never a row), and a text
file can be read, diffed and checked by anyone without nll; nothing in it is ever executed.

``fingerprint`` is the SHA-256 of the canonical JSON of ``agree``: two states merge only when it is
the same; otherwise the first field that differs is named. Worst rows carry their 0-based position
in their own inputs; merging offsets them by the rows of the states before, so ``merge A B`` lists
the rows a single run over A's then B's inputs would.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .errors import InputError, UsageError
from .summary import State, Summary, Worst

if TYPE_CHECKING:
    from .plan import Job

FORMAT = "nllstate"
FORMAT_VERSION = 1
SUFFIX = ".nllstate"
MAX_STATE_BYTES = 1 << 30  # a state file larger than this is not one nll wrote for a sane job
_INTEGER_FIELDS = ("rows", "clipped", "clipped_zero", "reverse_zero", "ignored")
_INTEGER_ARRAYS = ("class_rows",)


@dataclass(frozen=True)
class SavedInput:
    """An input as a saved job remembers it: its name only."""

    name: str


@dataclass
class SavedState:
    """A Job as far as the report needs it, its State and the file it came from."""

    job: Job
    state: State
    name: str = "<state>"
    _agree: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def agree(self) -> dict[str, Any]:
        """agreement(job), computed once (a merge of many states asks the running sum each time)."""
        if self._agree is None:
            self._agree = agreement(self.job)
        return self._agree

    def __add__(self, other: "SavedState") -> "SavedState":
        check_mergeable(self, other)
        offset = self.state.rows
        shifted = other.state
        if other.state.worst is not None and offset:
            entries = [{**e, "index": e["index"] + offset} for e in other.state.worst.entries]
            shifted = State(other.state.overall, other.state.groups, Worst(other.state.worst.n, entries))
        job = dataclasses.replace(self.job, sources=self.job.sources + other.job.sources,
                                  target_sources=self.job.target_sources + other.job.target_sources)
        return SavedState(job, self.state + shifted, self.name, self.agree)


CALIBRATION_SETTINGS = ("temperature", "vector_scaling")  # nll calibrate's; None when not asked for


def agreement(job: Job) -> dict[str, Any]:
    """What two states must share to merge: the command, every setting (units, bins, eps...), the
    classes in order and the column roles the report shows."""
    from .metrics import reported

    layout = job.layout
    settings = dataclasses.asdict(job.settings)
    for name in CALIBRATION_SETTINGS:  # absent unless set, so that states written before them still match
        if settings[name] is None:
            del settings[name]
    return {"command": job.command, **settings, "soft": job.soft,
            "classes": list(layout.class_names), "labelled": layout.label is not None,
            "weighted": layout.weight is not None, "key": layout.key, "groups": list(layout.groups),
            "worst": job.worst, "metrics": [m.name for m in reported(job)]}


def fingerprint(agree: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(agree, sort_keys=True, allow_nan=False).encode()).hexdigest()


def check_mergeable(a: SavedState, b: SavedState) -> None:
    """A UsageError naming both files and the first thing that differs."""
    left, right = a.agree, b.agree
    if fingerprint(left) == fingerprint(right):
        sums = [s.state.overall.names for s in (a, b) if s.state.overall is not None]
        if len(sums) == 2 and sums[0] != sums[1]:
            raise UsageError(f"cannot merge {b.name} into {a.name}: their sums are of different quantities "
                             f"({', '.join(sums[1])} in {b.name}, {', '.join(sums[0])} in {a.name})")
        return
    for field_ in left:
        if left[field_] != right.get(field_):
            what = _DESCRIBED.get(field_, field_)
            raise UsageError(f"cannot merge {b.name} into {a.name}: different {what} "
                             f"({_shown(right.get(field_))} in {b.name}, {_shown(left[field_])} in {a.name})")


_DESCRIBED = {"command": "commands", "kind": "--input", "eps": "--eps", "tol": "--tol", "renormalize": "--renormalize",
              "base": "units (--base)", "label_smoothing": "--label-smoothing", "symmetric": "--symmetric",
              "bins": "bins (--bins)", "top_k": "--top-k", "soft": "targets (soft or hard labels)",
              "classes": "classes", "labelled": "label columns", "weighted": "weights (--weight)",
              "key": "key columns", "groups": "groups (--by)", "worst": "--worst", "metrics": "metrics"}


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# -- writing ---------------------------------------------------------------------------------


def state_document(saved: SavedState) -> dict[str, Any]:
    """The JSON object of a state file."""
    job, state = saved.job, saved.state
    agree = agreement(job)
    layout = job.layout
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "nll_version": __version__,
        "fingerprint": fingerprint(agree), "command": job.command, "agree": agree,
        "layout": {"classes": list(layout.class_names), "label": layout.label, "key": layout.key,
                   "weight": layout.weight, "groups": list(layout.groups), "binary": layout.binary,
                   "positive": layout.positive, "explicit_classes": job.explicit_classes},
        "inputs": job.inputs,
        "state": {
            "overall": _summary_json(state.overall) if state.overall is not None else None,
            "groups": [[list(key), _summary_json(part)] for key, part in state.groups.items()],
            "worst": ({"n": state.worst.n, "entries": [_finite_or_text(e) for e in state.worst.entries]}
                      if state.worst is not None else None),
        },
    }


def save_state(saved: SavedState, path: str | Path, *, storage_options: dict[str, Any] | None = None) -> None:
    """Write a state file atomically: a local file under a temporary name renamed into place, a
    remote one (s3://, gs://, az://) as one object."""
    from . import remote
    from .sinks import AtomicFile, reported_as

    text = json.dumps(state_document(saved), allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n"
    if remote.is_url(str(path)):
        remote.write_bytes(str(path), text.encode("utf-8"), storage_options)
        return
    target = AtomicFile(Path(path))
    try:
        with reported_as(str(path)):
            with open(target.temp, "w", encoding="utf-8") as out:
                out.write(text)
        target.commit()
    except BaseException:
        target.abort()
        raise


def check_state_target(path: str | Path | None, *inputs) -> None:
    """Refuse early a --save-state that is missing its folder, is a directory or is an input (a URL
    is written as one object and checked when written)."""
    from . import remote

    if path is None or remote.is_url(str(path)):
        return
    from .sinks import check_destination, refuse_input_as_output

    check_destination(str(path), "--save-state")
    refuse_input_as_output(str(path), "--save-state", inputs)


def _summary_json(s: Summary) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if isinstance(value, np.ndarray):
            out[f.name] = _finite_or_text(value.tolist())
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = _finite_or_text(value)
    return out


def _finite_or_text(value):
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no number for them), anywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else "nan" if value != value else "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return [_finite_or_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _finite_or_text(value.item())
    return value


# -- reading ---------------------------------------------------------------------------------


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _number(value, name: str, field_: str) -> float:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InputError(name, f"not a valid state file: {field_} holds {_shown(value)}, not a number")


def _array(value, name: str, field_: str, shape: tuple[int, ...], integer: bool = False) -> np.ndarray:
    def decode(v):
        if isinstance(v, list):
            return [decode(x) for x in v]
        if integer:
            if not isinstance(v, int) or isinstance(v, bool):
                raise InputError(name, f"not a valid state file: {field_} holds {_shown(v)}, not a count")
            return v
        return _number(v, name, field_)

    if not isinstance(value, list):
        raise InputError(name, f"not a valid state file: {field_} is not a list")
    try:
        plain = np.array(value)  # the common case, all numbers: no per-element Python
        if plain.dtype.kind == "i" or (plain.dtype.kind == "f" and not integer):
            array = plain.astype(np.int64 if integer else np.float64, copy=False)
        else:
            array = np.array(decode(value), dtype=np.int64 if integer else np.float64)
    except (ValueError, OverflowError) as exc:
        raise InputError(name, f"not a valid state file: {field_}: {exc}") from exc
    if array.size == 0 and math.prod(shape) == 0:
        array = array.reshape(shape)
    if array.shape != shape:
        raise InputError(name, f"not a valid state file: {field_} has shape {list(array.shape)}, expected "
                               f"{list(shape)}")
    return array


def _summary(doc, name: str, where: str, names: tuple[str, ...], n_classes: int, n_bins: int) -> Summary:
    from .losses import FINE_BINS
    from .summary import CLASS_BIN_SUMS, CLASS_TOTALS, LOSS_EDGES

    if not isinstance(doc, dict):
        raise InputError(name, f"not a valid state file: {where} is not an object")
    if tuple(doc.get("names", ())) != names or doc.get("n_classes") != n_classes:
        raise InputError(name, f"not a valid state file: {where} does not match the file's classes and metrics")
    m, k = len(names), n_classes
    shapes = {"sums": (m,), "class_rows": (k,), "class_weight": (k,), "class_sums": (k, m), "class_correct": (k,),
              "bin_weight": (n_bins,), "bin_confidence": (n_bins,), "bin_correct": (n_bins,),
              "loss_histogram": (len(LOSS_EDGES),)}
    # Sums kept only when asked for (calibration, classwise bins): an empty array when not kept.
    optional = {"bin_weight_sq": (n_bins,), "fine_weight": (FINE_BINS,), "fine_weight_sq": (FINE_BINS,),
                "fine_confidence": (FINE_BINS,), "fine_correct": (FINE_BINS,),
                "class_bins": (len(CLASS_BIN_SUMS), k, n_bins), "class_totals": (len(CLASS_TOTALS), k)}
    values: dict[str, Any] = {"names": names, "n_classes": n_classes}
    for f in dataclasses.fields(Summary):
        if f.name in values:
            continue
        if f.name not in doc:
            raise InputError(name, f"not a valid state file: {where} has no {f.name}")
        raw = doc[f.name]
        if f.name in shapes:
            values[f.name] = _array(raw, name, f"{where}.{f.name}", shapes[f.name], f.name in _INTEGER_ARRAYS)
        elif f.name in optional:
            values[f.name] = _array(raw, name, f"{where}.{f.name}", optional[f.name] if raw else (0,))
        elif f.name in _INTEGER_FIELDS:
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                raise InputError(name, f"not a valid state file: {where}.{f.name} is not a count")
            values[f.name] = raw
        else:
            values[f.name] = _number(raw, name, f"{where}.{f.name}")
    return Summary(**values)


def parse_state(doc: Any, name: str) -> SavedState:
    """A SavedState from the parsed JSON of a state file; InputError naming ``name`` if it is not one."""
    from .columns import Layout
    from .plan import Job, Settings

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(name, "not an nll state file (written by nll score --save-state)")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(name, f"state format version {_shown(version)}, this nll {__version__} reads version "
                               f"{FORMAT_VERSION} (save the state again with this version)")
    try:
        agree, layout_doc, inputs = doc["agree"], doc["layout"], doc["inputs"]
        setting_names = {f.name for f in dataclasses.fields(Settings)}
        settings = Settings(**{k: v for k, v in agree.items() if k in setting_names})
        layout = Layout(name, [str(c) for c in layout_doc["classes"]], label=layout_doc["label"],
                        key=layout_doc["key"], weight=layout_doc["weight"], groups=list(layout_doc["groups"]),
                        binary=bool(layout_doc["binary"]), positive=layout_doc["positive"])
        command = doc["command"]
        scored, targets = ("q", "p") if command == "kl" else ("preds", "targets")  # Job.inputs, read back
        sources = [SavedInput(str(n)) for n in inputs.get(scored, [])]
        target_sources = [SavedInput(str(n)) for n in inputs.get(targets, [])]
        job = Job(command, settings, bool(agree["soft"]), [], sources, target_sources, layout.key, layout,
                  explicit_classes=bool(layout_doc.get("explicit_classes")), worst=int(agree["worst"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(name, f"not a valid state file: {type(exc).__name__}: {exc}") from exc
    except UsageError as exc:
        raise InputError(name, f"not a valid state file: {exc}") from exc
    if fingerprint(agree) != doc.get("fingerprint") or agreement(job) != agree:
        raise InputError(name, "not a valid state file: its fingerprint does not match its settings (edited?)")
    state_doc = doc.get("state")
    if not isinstance(state_doc, dict):
        raise InputError(name, "not a valid state file: no state")
    names = tuple(_quantities(state_doc))
    k, bins = len(layout.class_names), settings.bins
    overall = (_summary(state_doc["overall"], name, "overall", names, k, bins)
               if state_doc.get("overall") is not None else None)
    groups: dict[tuple, Summary] = {}
    for i, entry in enumerate(state_doc.get("groups") or []):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)
                and len(entry[0]) == len(layout.groups)):
            raise InputError(name, f"not a valid state file: group {i + 1} is malformed")
        groups[tuple(entry[0])] = _summary(entry[1], name, f"group {i + 1}", names, k, bins)
    worst = None
    if state_doc.get("worst") is not None:
        w = state_doc["worst"]
        if not isinstance(w, dict) or not isinstance(w.get("entries"), list) or w.get("n") != job.worst:
            raise InputError(name, "not a valid state file: worst is malformed")
        entries = []
        for e in w["entries"]:
            if not isinstance(e, dict) or not isinstance(e.get("index"), int) or "loss" not in e:
                raise InputError(name, "not a valid state file: a worst entry is malformed")
            entries.append({**e, "loss": _number(e["loss"], name, "worst.loss"),
                            **({"p_true": _number(e["p_true"], name, "worst.p_true")} if "p_true" in e else {})})
        worst = Worst(w["n"], entries)
    return SavedState(job, State(overall, groups, worst), name)


def _quantities(state_doc: dict) -> list[str]:
    """The quantities the summaries sum, as the overall summary names them."""
    overall = state_doc.get("overall")
    source = overall if isinstance(overall, dict) else next(
        (g[1] for g in state_doc.get("groups") or [] if isinstance(g, list) and len(g) == 2), {})
    names = source.get("names", []) if isinstance(source, dict) else []
    return [str(n) for n in names] if isinstance(names, list) else []


def load_state(path: str | Path, *, storage_options: dict[str, Any] | None = None) -> SavedState:
    """Read one state file (a local path or a URL); InputError naming it when it is not a valid one."""
    from . import remote

    name = str(path)
    try:
        if remote.is_url(name):
            data = remote.read_bytes(name, storage_options, limit=MAX_STATE_BYTES)
        else:
            with open(name, "rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
    except OSError as exc:
        from .readers import os_error

        raise os_error(name, exc) from exc
    if len(data) > MAX_STATE_BYTES:
        raise InputError(name, f"larger than {MAX_STATE_BYTES >> 20} MiB: not a state file")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(name, f"not an nll state file (not JSON: {exc})") from exc
    return parse_state(doc, name)


def expand_state_paths(paths: Iterable[str | Path], storage_options: dict[str, Any] | None = None) -> list[str]:
    """State files as given: globs expanded (sorted), a directory replaced by its *.nllstate files."""
    import glob
    import os

    from . import remote

    out: list[str] = []
    for raw in map(str, paths):
        if remote.is_url(raw):
            _, found = remote.resolve(raw, storage_options)
            out.extend(found)
        elif os.path.isdir(raw):
            found = sorted(str(p) for p in Path(raw).glob(f"*{SUFFIX}") if not p.name.startswith("."))
            if not found:
                raise InputError(raw, f"directory holds no {SUFFIX} files")
            out.extend(found)
        elif glob.has_magic(raw) and not os.path.exists(raw):
            found = sorted(glob.glob(raw))
            if not found:
                raise InputError(raw, "no file matches this pattern")
            out.extend(found)
        else:
            out.append(raw)
    if not out:
        raise UsageError("nll merge needs at least one state file")
    seen: dict[str, str] = {}
    for path in out:
        same = path if remote.is_url(path) else os.path.realpath(path)
        if same in seen:
            raise UsageError(f"{path}: given twice (also as {seen[same]}); its rows would be counted twice")
        seen[same] = path
    return out


def iter_states(paths: Sequence[str], storage_options: dict[str, Any] | None = None) -> Iterator[SavedState]:
    """Load the states one at a time (the caller keeps only the running sum)."""
    for path in paths:
        yield load_state(path, storage_options=storage_options)


def merge_states(paths: Iterable[str | Path], *, storage_options: dict[str, Any] | None = None,
                 progress=None) -> SavedState:
    """The sum of the states of ``paths`` (globs, directories), in order, streamed: one state in
    memory at a time besides the running sum. UsageError if two states cannot merge.
    ``progress(rows, files)`` is called after each state."""
    total: SavedState | None = None
    for done, saved in enumerate(iter_states(expand_state_paths(paths, storage_options), storage_options), 1):
        total = saved if total is None else total + saved
        if progress is not None:
            progress(total.state.rows, done)
    assert total is not None  # expand_state_paths never returns an empty list
    return total
