"""Reports as Rich tables, JSON or NDJSON; per-sample rows as CSV or Parquet, written atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from . import metrics as metric_table
from .errors import UsageError
from .report import Report


def to_json(report: Report, indent: int | None = 2) -> str:
    """Strict JSON (no NaN or Infinity), with schema_version."""
    return json.dumps(report.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)


def write_report(report: Report, fmt: str, stream: IO[str]) -> None:
    if fmt == "json":
        stream.write(to_json(report) + "\n")
    elif fmt == "ndjson":
        stream.write(to_json(report, indent=None) + "\n")
    else:
        write_table(report, stream)
    stream.flush()


def _number(value: float | None, digits: int = 6) -> str:
    if value is None or value != value:
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.{digits}g}"


def write_table(report: Report, stream: IO[str]) -> None:
    """A Rich table on a terminal; aligned plain text (no colour, no box lines) when piped."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, soft_wrap=False)
    plain = not console.is_terminal
    style = dict(box=None if plain else box.SIMPLE_HEAVY, show_edge=not plain, pad_edge=False)
    files = ", ".join(name for names in report.inputs.values() for name in names)
    title = f"nll {report.command}: {files} ({report.rows:,} rows, {len(report.classes)} classes)"
    console.print(title, markup=False)
    if report.comparison:
        console.print(_comparison_table(report, style))
        if report.regression:
            console.print(f"REGRESSION: {report.regression}", markup=False)
        console.print("new model:", markup=False)
    metrics = Table(**style)
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    metrics.add_column("unit")
    for name, value in report.metrics.items():
        unit = report.units if metric_table.is_information(name) else ""
        metrics.add_row(name, _number(value), unit)
    console.print(metrics)
    if report.per_class:
        per_class = Table(**style)
        for column, justify in (("true class", "left"), ("rows", "right"), ("nll", "right"), ("accuracy", "right")):
            per_class.add_column(column, justify=justify)
        for row in report.per_class:
            per_class.add_row(str(row["class"]), f"{row['rows']:,}", _number(row["nll"]), _number(row["accuracy"]))
        console.print(per_class)
    if report.groups:
        console.print(_groups_table(report, style))
    if report.worst:
        console.print(_worst_table(report, style))
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
        console.print(note, markup=False)


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
    from rich.table import Table

    table = Table(**style)
    for column, justify in (("confidence bin", "left"), ("rows", "right"), ("confidence", "right"),
                            ("accuracy", "right"), ("accuracy (bar) vs confidence (|)", "left")):
        table.add_column(column, justify=justify)
    for row in report.calibration:
        if not row["weight"]:
            continue
        bar = list(_bar(row["accuracy"], plain))
        mark = min(int(row["confidence"] * BAR_WIDTH), BAR_WIDTH - 1)
        bar[mark] = "|"
        low, high = row["bin"]
        table.add_row(f"{low:.2f}-{high:.2f}", f"{row['weight']:,.0f}", f"{row['confidence']:.3f}",
                      f"{row['accuracy']:.3f}", "".join(bar))
    return table


def _comparison_table(report: Report, style: dict):
    """Base against new, metric by metric, with the paired bootstrap interval of the difference."""
    from rich.table import Table

    table = Table(**style)
    level = report.comparison[0]["confidence"]
    for column in ("metric", "base", "new", "delta", f"{level:.0%} interval", "new better"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report.comparison:
        table.add_row(row["metric"], _number(row["base"]), _number(row["new"]), f"{row['delta']:+.6f}",
                      _interval(row["ci"]), f"{row['new_better_share']:.1%}")
    return table


def _groups_table(report: Report, style: dict):
    """Metrics per --by group, worst first."""
    from rich.table import Table

    table = Table(**style)
    by = list(report.groups[0]["by"])
    for column in by:
        table.add_column(column)
    table.add_column("rows", justify="right")
    if "comparison" in report.groups[0]:  # compare: the nll of both models per group
        level = report.groups[0]["comparison"][0]["confidence"]
        for column in ("base nll", "new nll", "delta", f"{level:.0%} interval"):
            table.add_column(column, justify="right")
        for group in report.groups:
            nll = group["comparison"][0]
            table.add_row(*[_text(v) for v in group["by"].values()], f"{group['rows']:,}", _number(nll["base"]),
                          _number(nll["new"]), f"{nll['delta']:+.6f}", _interval(nll["ci"]))
        return table
    shown = [m.name for m in metric_table.METRICS if m.in_groups and m.name in report.groups[0]["metrics"]
             and not (m.name == "kl" and "nll" in report.metrics and report.metrics.get("entropy") == 0)]
    for metric in shown:
        table.add_column(metric, justify="right")
    for group in report.groups:
        table.add_row(*[_text(v) for v in group["by"].values()], f"{group['rows']:,}",
                      *[_number(group["metrics"][m]) for m in shown])
    return table


def _interval(ci) -> str:
    return f"[{ci[0]:+.6f}, {ci[1]:+.6f}]"


def _worst_table(report: Report, style: dict):
    """The samples with the largest loss."""
    from rich.table import Table

    table = Table(**style)
    numbers = ("p_true", "loss", "base_loss", "new_loss", "delta")
    columns = [c for c in ("row", "key", "label", "predicted", *numbers) if c in report.worst[0]]
    for column in columns:
        table.add_column(f"worst: {column}" if column == columns[0] else column,
                         justify="right" if column in ("row", *numbers) else "left")
    for entry in report.worst:
        table.add_row(*[_number(entry[c]) if c in numbers else _text(entry[c]) for c in columns])
    return table


def _text(value) -> str:
    return "(missing)" if value is None else str(value)


def _loss_chart(report: Report, plain: bool, style: dict):
    """How many samples fall in each per-sample loss range."""
    from rich.table import Table

    table = Table(**style)
    for column, justify in ((f"loss ({report.units})", "left"), ("rows", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    top = max(row["weight"] for row in report.loss_histogram)
    for row in report.loss_histogram:
        low, high = row["range"]
        span = f"{low:g}-{high:g}" if high is not None else f">= {low:g}"
        table.add_row(span, f"{row['weight']:,.0f}", _bar(row["weight"] / top, plain))
    return table


class PerSampleWriter:
    """Per-sample rows streamed to CSV or Parquet.

    A file is written under a temporary name in its own folder and renamed into place by commit();
    abort() removes it, so an error never leaves a partial file nor touches an existing one.
    '-' streams CSV to standard output.
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
            if not target.lower().endswith((".csv", ".parquet", ".pq")):
                raise UsageError(f"--per-sample {target}: name a .csv or .parquet file, or - for stdout")
            folder = Path(target).resolve().parent
            if not folder.is_dir():
                raise UsageError(f"--per-sample {target}: folder {folder} does not exist")
            if Path(target).is_dir():
                raise UsageError(f"--per-sample {target}: is a directory")
        return cls(target)

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
        if self._writer is None:
            self._start(batch.schema)
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._close()
        if self._file is not None:
            self._file.commit()
        elif self.target == "-":
            sys.stdout.flush()

    def abort(self) -> None:
        try:
            self._close()
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


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it by commit().

    abort() removes it, so a failed run never leaves half a file behind, nor touches an existing
    file of that name. The file gets the mode a new file would get (mkstemp's is 0600), or the
    mode of the file it replaces.
    """

    def __init__(self, path: Path, suffix: str = ".tmp"):
        self.path = path
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.resolve().parent)
        os.close(fd)
        self.temp = Path(temp)
        os.chmod(self.temp, _file_mode(path))

    def commit(self) -> None:
        os.replace(self.temp, self.path)

    def abort(self) -> None:
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
