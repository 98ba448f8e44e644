"""A Report as a Rich table (plain aligned text when piped), JSON or NDJSON, and (formats.py) Markdown,
JUnit XML or OpenMetrics text: RENDERERS maps each format to its writer.

Every string from the data (class names, labels, keys, group values, column and file names) is
shown as text: never Rich markup, control and bidi characters escaped (errors.visible).
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from . import metrics as metric_table
from .errors import visible, without_trailing_spaces
from .report import Report
from .sinks import reported_as

if TYPE_CHECKING:
    from rich.text import Text

    from .calibration import Calibration

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
        RENDERERS[fmt](report, stream)
        stream.flush()


def write_json(report: Report, stream: IO[str]) -> None:
    stream.write(to_json(report) + "\n")


def write_ndjson(report: Report, stream: IO[str]) -> None:
    """The JSON report on one line (handy for appending to a log)."""
    stream.write(to_json(report, indent=None) + "\n")


def _number(value: float | None, digits: int = 6) -> str:
    if value is None or value != value:
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.{digits}g}"


def table_console(stream: IO[str]):
    """A Rich console that records what it prints, the table style and whether it is plain, for ``stream``: on a
    terminal, its size and colours and boxed tables; piped, plain text at unbounded width (never
    wrapped nor cut), no markup, highlighting or emoji interpreted in any cell."""
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
    return console, style, plain


def write_table(report: Report, stream: IO[str]) -> None:
    """Rich tables fitted to the terminal; piped, aligned plain text (no colour, no box lines), never
    wrapped nor cut, without trailing spaces."""

    console, style, plain = table_console(stream)
    files = ", ".join(name for names in report.inputs.values() for name in names)
    title = f"nll {report.command}: {files} ({report.rows:,} rows, {len(report.classes)} classes)"
    with console.capture() as captured:
        console.print(_cell(title))
        if report.comparison:
            console.print(_comparison_table(report, style, plain))
            if report.regression:
                console.print(_cell(f"REGRESSION: {report.regression}"))
            console.print(_cell("new model:"))
        interval_header = [(f"{report.bootstrap['confidence']:.0%} interval", "right")] \
            if report.intervals is not None and report.bootstrap else []
        metrics = _table(style, plain, ("metric", "left"), ("value", "right"), *interval_header, ("unit", "left"))
        for name, value in report.metrics.items():
            unit = report.units if metric_table.is_information(name) else ""
            intervals = report.intervals or {}
            shown = [_plain_interval(intervals[name])] if interval_header and name in intervals else []
            metrics.add_row(*_cells(name, _number(value), *shown, unit))
        console.print(metrics)
        if report.per_class:
            heading, shown = per_class_columns(report)
            per_class = _table(style, plain, (heading, "left"), *((name, "right") for name in shown))
            for row in report.per_class:
                per_class.add_row(*_cells(row["class"], *(per_class_cell(row, name) for name in shown)))
            console.print(per_class)
        if report.groups:
            console.print(_groups_table(report, style, plain))
        if report.worst:
            console.print(_worst_table(report, style, plain))
        if report.calibration:
            console.print(_reliability_chart(report, plain, style))
        if any(row["weight"] for row in report.loss_histogram):
            console.print(_loss_chart(report, plain, style))
        print_notes(console, report)
    stream.write(without_trailing_spaces(captured.get()))


def print_notes(console, report) -> None:
    """The warnings, then each gate's verdict, a line each, under a report's tables."""
    notes = report.all_warnings()
    for gate in report.gates:
        verdict = "ok" if gate.passes(report.metrics.get(gate.metric)) else "FAILED"
        notes.append(f"gate {gate.condition}: {verdict}")
    for note in notes:
        console.print(_cell(note))


def per_class_columns(report: Report) -> tuple[str, list[str]]:
    """The heading and the columns of the per-class table: of the true class, or (score
    --multilabel) of each label, with its positives, prevalence, Brier score and ECE."""
    if getattr(report, "multilabel", False):
        return "label", ["rows", "positives", "prevalence", "nll", "accuracy", "brier", "ece"]
    return "true class", ["rows", "nll", "accuracy"]


def per_class_cell(row: dict, name: str) -> str:
    """A cell of the per-class table: a count of rows, a weight sum of positives, or a number."""
    if name == "rows":
        return f"{row['rows']:,}"
    return f"{row[name]:,.6g}" if name == "positives" else _number(row[name])


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
        digits = next((d for d in range(2, 7) if f"{low:.{d}f}" != f"{high:.{d}f}"), 6)  # equal-mass bins near 1
        table.add_row(*_cells(f"{low:.{digits}f}-{high:.{digits}f}", f"{row['weight']:,.0f}",
                              f"{row['confidence']:.3f}", f"{row['accuracy']:.3f}", "".join(bar)))
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
    if report.command == "compare":  # the nll of both models per group
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
    intervals = "intervals" in report.groups[0]  # --interval: "value [low, high]" per cell, which may wrap
    table = _table(style, plain, *columns, *((metric, "right", intervals) for metric in shown))
    for group in report.groups:
        table.add_row(*_cells(*map(_text, group["by"].values()), f"{group['rows']:,}",
                              *[_number(group["metrics"][m]) + (f" {_plain_interval(group['intervals'][m])}"
                                                                if intervals else "") for m in shown]))
    return table


def _plain_interval(pair) -> str:
    """A metric's interval, "[low, high]"."""
    return f"[{_number(pair[0])}, {_number(pair[1])}]"


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


Renderer = Callable[[Report, IO[str]], None]
RENDERERS: dict[str, Renderer] = {"table": write_table, "json": write_json, "ndjson": write_ndjson}


def _format_writer(name: str) -> Renderer:
    """The writer of a format of formats.py (Markdown, JUnit, OpenMetrics), imported when it is used."""
    def write(report: Report, stream: IO[str]) -> None:
        from .formats import FORMATS

        stream.write(FORMATS[name].render(report))

    return write


RENDERERS.update({name: _format_writer(name) for name in ("markdown", "junit", "openmetrics")})
REPORT_SUFFIXES = {".json": "json", ".md": "markdown", ".markdown": "markdown", ".xml": "junit",
                   ".prom": "openmetrics", ".txt": "openmetrics"}
"""The format `--report FILE` writes, by the suffix of FILE."""


# -- nll calibrate -------------------------------------------------------------------------------


def write_calibration(result: Calibration, fmt: str, stream: IO[str]) -> None:
    """nll calibrate's result in any format: its own tables (like score's), else the writer of
    RENDERERS (JSON from its to_dict(); Markdown, JUnit, OpenMetrics from formats.py)."""
    if fmt != "table":
        write_report(result, fmt, stream)  # type: ignore[arg-type]  # a Calibration reads as a Report there
        return
    with reported_as("standard output" if stream is sys.stdout else "output"):
        _write_calibration_table(result, stream)
        stream.flush()


def describe_map(result: Calibration) -> str:
    """One line: the map and where it came from."""
    valid = ", ".join(result.valid[1].inputs["preds"])
    if result.method == "vector" and result.scale is not None:
        what = f"vector scaling: {len(result.scale)} scales and biases (below)"
    else:
        what = f"temperature scaling: T = {result.temperature:.6g}"
    if result.source == "fitted" and result.fit is not None:
        return f"{what}, fitted on {valid} ({result.fit.rows:,} rows, {result.fit.iterations} iterations)"
    origin = f"loaded from {result.loaded_from}" if result.source == "loaded" else "given"
    return f"{what}, {origin}"


def _write_calibration_table(result: Calibration, stream: IO[str]) -> None:
    """The map, then per input a table of each metric before and after, then notes and gates."""

    from .calibration import metric_changes

    console, style, plain = table_console(stream)
    with console.capture() as captured:
        console.print(_cell(f"nll calibrate: {describe_map(result)}"))
        if result.scale is not None and result.bias is not None:
            params = _table(style, plain, ("class", "left"), ("scale", "right"), ("bias", "right"))
            for name, a, b in zip(result.classes, result.scale, result.bias):
                params.add_row(*_cells(name, f"{a:.6f}", f"{b:+.6f}"))
            console.print(params)
        for role, before, after in result.stages():
            files = ", ".join(after.inputs["preds"])
            console.print(_cell(f"{role}: {files} ({after.rows:,} rows, {len(after.classes)} classes)"))
            table = _table(style, plain, ("metric", "left"), ("before", "right"), ("after", "right"),
                           ("change", "right"), ("unit", "left"))
            for name, old, value, change in metric_changes(before, after):
                unit = after.units if metric_table.is_information(name) else ""
                table.add_row(*_cells(name, _number(old), _number(value),
                                      "n/a" if change is None else f"{change:+.6f}", unit))
            console.print(table)
        notes = [f"wrote {path}" for path in result.outputs]
        if result.saved:
            notes.append(f"saved {'T' if result.method == 'temperature' else 'the scales and biases'} to "
                         f"{result.saved}")
        notes += result.all_warnings()
        for gate in result.gates:
            verdict = "ok" if gate.passes(result.metrics.get(gate.metric)) else "FAILED"
            sign = "<=" if gate.bound == "max" else ">="
            notes.append(f"gate {gate.metric} {sign} {gate.threshold:g} (valid, after): {verdict}")
        for note in notes:
            console.print(_cell(visible(note)))
    stream.write(without_trailing_spaces(captured.get()))
