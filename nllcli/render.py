"""Reports as Rich tables, JSON or NDJSON; per-sample rows as CSV or Parquet, written atomically.

Every string from the data (class names, labels, keys, group values, column and file names) is
shown as text: never Rich markup, control and bidi characters escaped (errors.visible).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import metrics as metric_table
from .errors import UsageError, environment_fault, visible
from .report import Report

if TYPE_CHECKING:
    from rich.text import Text

PLAIN_WIDTH = 1_000_000  # piped or redirected: no table is ever wrapped or cut


def to_json(report: Report, indent: int | None = 2) -> str:
    """Strict JSON (no NaN or Infinity), with schema_version.

    Strings stay exact; characters that could drive a terminal (DEL, C1, bidi and zero-width
    marks, line separators) are written as \\uXXXX escapes, which JSON readers decode back.
    """
    text = json.dumps(report.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)
    return _NOT_PLAIN_ASCII.sub(_json_escape, text)


_NOT_PLAIN_ASCII = re.compile("[^\x00-\x7e]")


def _json_escape(match: re.Match) -> str:
    char = match.group()
    if visible(char) == char:
        return char
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def write_report(report: Report, fmt: str, stream: IO[str]) -> None:
    """Write the report; an operating-system fault on the stream becomes an OutputError naming it."""
    name = "standard error" if stream is sys.stderr else "standard output" if stream is sys.stdout else "output"
    with reported_as(name):
        if fmt == "json":
            stream.write(to_json(report) + "\n")
        elif fmt == "ndjson":
            stream.write(to_json(report, indent=None) + "\n")
        else:
            write_table(report, stream)
        stream.flush()


@contextlib.contextmanager
def reported_as(path: str):
    """Turn an operating-system fault (full disk, permission, closed stream) into an OutputError naming
    ``path``. A closed pipe (`| head`) stays a BrokenPipeError: the reader chose to stop."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        fault = environment_fault(exc, path)
        if fault is None:
            raise
        raise fault from exc


def _number(value: float | None, digits: int = 6) -> str:
    if value is None or value != value:
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.{digits}g}"


def write_table(report: Report, stream: IO[str]) -> None:
    """Rich tables fitted to the terminal; piped, aligned plain text (no colour, no box lines), never
    wrapped nor cut, without trailing spaces."""
    from rich import box
    from rich.console import Console

    terminal = stream.isatty()
    console = Console(file=io.StringIO(), force_terminal=terminal, color_system="auto" if terminal else None,
                      width=None if terminal else PLAIN_WIDTH, highlight=False, markup=False, emoji=False,
                      soft_wrap=False)
    if terminal:
        console.size = _terminal_size(stream, console.size)
    plain = not terminal
    style = dict(box=None if plain else box.SIMPLE_HEAVY, show_edge=not plain, pad_edge=False)
    files = ", ".join(name for names in report.inputs.values() for name in names)
    title = f"nll {report.command}: {files} ({report.rows:,} rows, {len(report.classes)} classes)"
    with console.capture() as captured:
        console.print(_cell(title))
        if report.comparison:
            console.print(_comparison_table(report, style, plain))
            if report.regression:
                console.print(_cell(f"REGRESSION: {report.regression}"))
            console.print(_cell("new model:"))
        metrics = _table(style, plain, ("metric", "left"), ("value", "right"), ("unit", "left"))
        for name, value in report.metrics.items():
            unit = report.units if metric_table.is_information(name) else ""
            metrics.add_row(*_cells(name, _number(value), unit))
        console.print(metrics)
        if report.per_class:
            per_class = _table(style, plain, ("true class", "left"), ("rows", "right"), ("nll", "right"),
                               ("accuracy", "right"))
            for row in report.per_class:
                per_class.add_row(*_cells(row["class"], f"{row['rows']:,}", _number(row["nll"]),
                                          _number(row["accuracy"])))
            console.print(per_class)
        if report.groups:
            console.print(_groups_table(report, style, plain))
        if report.worst:
            console.print(_worst_table(report, style, plain))
        if report.calibration:
            console.print(_reliability_chart(report, plain, style))
        if any(row["weight"] for row in report.loss_histogram):
            console.print(_loss_chart(report, plain, style))
        notes = report.all_warnings()
        for gate in report.gates:
            verdict = "ok" if gate.passes(report.metrics.get(gate.metric)) else "FAILED"
            sign = "<=" if gate.bound == "max" else ">="
            notes.append(f"gate {gate.metric} {sign} {gate.threshold:g}: {verdict}")
        for note in notes:
            console.print(_cell(note))
    stream.write("".join(line.rstrip(" ") + "\n" for line in captured.get().splitlines()))


def _terminal_size(stream: IO[str], fallback):
    """The size of the terminal ``stream`` is on (Rich asks stdout, which may be a pipe)."""
    from rich.console import ConsoleDimensions

    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return fallback
    columns = os.environ.get("COLUMNS", "")
    return ConsoleDimensions(int(columns) if columns.isdigit() and int(columns) > 0 else size.columns,
                             size.lines)


def _cell(value) -> Text:
    """A table cell or line of text: data shown as it is, never read as markup."""
    from rich.text import Text

    return Text(visible(value))


def _cells(*values) -> list:
    return [_cell(v) for v in values]


def _table(style: dict, plain: bool, *columns: tuple):
    """A table with these (header, justify[, may_wrap]) columns. Piped, cells are never wrapped nor
    cut; on a terminal numbers (right-justified, unless may_wrap) stay whole and a long text cell
    (left, unless may_wrap is False) folds onto the next line rather than losing its end."""
    from rich.table import Table

    table = Table(**style)
    for header, justify, *may_wrap in columns:
        wraps = may_wrap[0] if may_wrap else justify != "right"
        table.add_column(_cell(header), justify=justify, no_wrap=plain or not wraps, overflow="fold")
    return table


BAR_WIDTH = 24
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _bar(fraction: float, plain: bool, width: int = BAR_WIDTH) -> str:
    """A horizontal bar for a fraction in [0, 1]: eighth blocks on a terminal, '#' when piped."""
    fraction = min(max(fraction, 0.0), 1.0)
    if plain:
        return ("#" * max(round(fraction * width), fraction > 0)).ljust(width)
    eighths = max(round(fraction * width * 8), fraction > 0)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def _reliability_chart(report: Report, plain: bool, style: dict):
    """Accuracy per confidence bin as bars; a calibrated model's bars reach their confidence."""
    table = _table(style, plain, ("confidence bin", "left"), ("rows", "right"), ("confidence", "right"),
                   ("accuracy", "right"), ("accuracy (bar) vs confidence (|)", "left"))
    for row in report.calibration:
        if not row["weight"]:
            continue
        bar = list(_bar(row["accuracy"], plain))
        mark = min(int(row["confidence"] * BAR_WIDTH), BAR_WIDTH - 1)
        bar[mark] = "|"
        low, high = row["bin"]
        table.add_row(*_cells(f"{low:.2f}-{high:.2f}", f"{row['weight']:,.0f}", f"{row['confidence']:.3f}",
                              f"{row['accuracy']:.3f}", "".join(bar)))
    return table


def _comparison_table(report: Report, style: dict, plain: bool):
    """Base against new, metric by metric, with the paired bootstrap interval of the difference."""
    level = report.comparison[0]["confidence"]
    table = _table(style, plain, ("metric", "left", False), ("base", "right"), ("new", "right"), ("delta", "right"),
                   (f"{level:.0%} interval", "right", True), ("new better", "right"))
    for row in report.comparison:
        table.add_row(*_cells(row["metric"], _number(row["base"]), _number(row["new"]), f"{row['delta']:+.6f}",
                              _interval(row["ci"]), f"{row['new_better_share']:.1%}"))
    return table


def _groups_table(report: Report, style: dict, plain: bool):
    """Metrics per --by group, worst first."""
    columns = [(column, "left") for column in report.groups[0]["by"]] + [("rows", "right")]
    if "comparison" in report.groups[0]:  # compare: the nll of both models per group
        level = report.groups[0]["comparison"][0]["confidence"]
        table = _table(style, plain, *columns, *((column, "right") for column in
                                                 ("base nll", "new nll", "delta", f"{level:.0%} interval")))
        for group in report.groups:
            nll = group["comparison"][0]
            table.add_row(*_cells(*map(_text, group["by"].values()), f"{group['rows']:,}", _number(nll["base"]),
                                  _number(nll["new"]), f"{nll['delta']:+.6f}", _interval(nll["ci"])))
        return table
    shown = [m.name for m in metric_table.METRICS if m.in_groups and m.name in report.groups[0]["metrics"]
             and not (m.name == "kl" and "nll" in report.metrics and report.metrics.get("entropy") == 0)]
    table = _table(style, plain, *columns, *((metric, "right") for metric in shown))
    for group in report.groups:
        table.add_row(*_cells(*map(_text, group["by"].values()), f"{group['rows']:,}",
                              *[_number(group["metrics"][m]) for m in shown]))
    return table


def _interval(ci) -> str:
    return f"[{ci[0]:+.6f}, {ci[1]:+.6f}]"


def _worst_table(report: Report, style: dict, plain: bool):
    """The samples with the largest loss."""
    numbers = ("p_true", "loss", "base_loss", "new_loss", "delta")
    columns = [c for c in ("row", "key", "label", "predicted", *numbers) if c in report.worst[0]]
    table = _table(style, plain, *((f"worst: {column}" if column == columns[0] else column,
                                    "right" if column in ("row", *numbers) else "left") for column in columns))
    for entry in report.worst:
        table.add_row(*_cells(*[_number(entry[c]) if c in numbers else _text(entry[c]) for c in columns]))
    return table


def _text(value) -> str:
    return "(missing)" if value is None else str(value)


def _loss_chart(report: Report, plain: bool, style: dict):
    """How many samples fall in each per-sample loss range."""
    table = _table(style, plain, (f"loss ({report.units})", "left"), ("rows", "right"), ("", "left"))
    top = max(row["weight"] for row in report.loss_histogram)
    for row in report.loss_histogram:
        low, high = row["range"]
        span = f"{low:g}-{high:g}" if high is not None else f">= {low:g}"
        table.add_row(*_cells(span, f"{row['weight']:,.0f}", _bar(row["weight"] / top, plain)))
    return table


class PerSampleWriter:
    """Per-sample rows streamed to CSV or Parquet.

    A file is written through an AtomicFile, renamed into place by commit(); abort() removes it, so
    an error never leaves a partial file nor touches an existing one. '-' streams CSV to standard
    output. A fault of the operating system (full disk, permission) is an OutputError naming the file.
    """

    def __init__(self, target: str):
        self.target = target
        self.format = "parquet" if target.lower().endswith((".parquet", ".pq")) else "csv"
        self._writer = None
        self._sink = None
        self._file: AtomicFile | None = None

    @classmethod
    def open(cls, target) -> "PerSampleWriter":
        target = str(target)
        if target != "-":
            device = os.path.exists(target) and not os.path.isfile(target) and not os.path.isdir(target)
            if not device and not target.lower().endswith((".csv", ".parquet", ".pq")):  # /dev/null, a FIFO: CSV
                raise UsageError(f"--per-sample {target}: name a .csv or .parquet file, or - for stdout")
            check_destination(target, "--per-sample")
        return cls(target)

    @property
    def _shown_name(self) -> str:
        return "standard output" if self.target == "-" else self.target

    def _start(self, schema) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if self.target == "-":
            self._sink = pa.PythonFile(sys.stdout.buffer, mode="w")
        else:
            self._file = AtomicFile(Path(self.target))
            self._sink = pa.OSFile(str(self._file.temp), "w")
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._sink, schema)
        else:
            self._writer = pacsv.CSVWriter(self._sink, schema, write_options=pacsv.WriteOptions(quoting_style="needed"))

    def write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa

        batch = pa.RecordBatch.from_pydict({k: _arrow(v) for k, v in columns.items()})
        with reported_as(self._shown_name):
            if self._writer is None:
                self._start(batch.schema)
            self._writer.write_batch(batch)

    def commit(self) -> None:
        with reported_as(self._shown_name):
            self._close()
            if self._file is not None:
                self._file.commit()
            elif self.target == "-":
                sys.stdout.flush()

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # the run already failed; its own error is the one to report
            pass
        finally:
            if self._file is not None:
                self._file.abort()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        sink, self._sink = self._sink, None
        if sink is not None and self.target != "-":
            sink.close()
        elif sink is not None:
            sink.flush()


def check_destination(target: str, option: str) -> None:
    """Refuse early an output whose folder is missing or that is a directory."""
    folder = Path(target).resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{option} {target}: {folder} is not a folder" if folder.exists() else
                         f"{option} {target}: folder {folder} does not exist")
    if Path(target).is_dir():
        raise UsageError(f"{option} {target}: is a directory")


def refuse_input_as_output(target, option: str, inputs) -> None:
    """Raise a UsageError if ``target`` is one of ``inputs`` (the same device and inode): a file
    named directly, a file inside an input directory, or the file behind standard input."""
    from .readers import expand_inputs

    try:
        wanted = os.stat(target)
    except OSError:  # does not exist yet: it cannot be an input
        return
    if not stat.S_ISREG(wanted.st_mode):  # /dev/null, a FIFO, a terminal: written, never replaced
        return
    paths = [str(p) for x in inputs if x is not None
             for p in (x if isinstance(x, (list, tuple)) else [x]) if isinstance(p, (str, Path))]
    for path in expand_inputs([p for p in paths if p != "-" and os.path.isdir(p)]) + paths:
        try:
            found = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
        except (OSError, ValueError, AttributeError):
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            where = "standard input" if path == "-" else path
            raise UsageError(f"{option} {target}: that is an input file ({where}); write the output elsewhere")


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it by commit().

    Symbolic links are followed: the temporary file is made in the folder of the file the link
    points to, and renamed over that file (the link stays). It is private (0600) until commit()
    gives it the mode a new file would get, or that of the file it replaces. abort() removes it,
    and so does a failed commit, so a failed run never leaves half a file behind. A destination
    that exists and is not a regular file (/dev/null, /dev/full, a FIFO) is written directly.
    Faults of the operating system are OutputErrors naming ``path``.
    """

    def __init__(self, path: Path, suffix: str = ".tmp"):
        self.path = Path(path)
        self.final = Path(os.path.realpath(self.path))
        with reported_as(str(self.path)):
            self.direct = self.final.exists() and not self.final.is_file()
            if self.direct:
                self.temp = self.final
                return
            self.mode = _file_mode(self.final)
            fd, temp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=suffix, dir=self.final.parent)
            os.close(fd)
            self.temp = Path(temp)

    def commit(self) -> None:
        if self.direct:
            return
        try:
            with reported_as(str(self.path)):
                os.chmod(self.temp, self.mode)
                os.replace(self.temp, self.final)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self.direct:
            with contextlib.suppress(OSError):
                self.temp.unlink(missing_ok=True)


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _arrow(values):
    import numpy as np
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(values, pa.string())
    return pa.array(values)
