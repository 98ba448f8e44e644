"""A TokensReport as a table (plain text when piped), JSON or NDJSON, through render.py's pieces, or as
Markdown, JUnit or OpenMetrics through the writers of formats.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from ..errors import UsageError, without_trailing_spaces
from ..render import PLAIN_WIDTH, _cell, _cells, _interval, _number, _table, _text, print_notes, table_console, to_json
from ..render import RENDERERS as SCORE_RENDERERS
from ..sinks import reported_as
from .report import TokensReport


def _plain_interval(pair) -> str:
    """A metric's interval, "[low, high]" ("n/a" when undefined)."""
    if not pair or any(v is None or v != v for v in pair):
        return "n/a"
    return f"[{_number(pair[0])}, {_number(pair[1])}]"


def _count(value) -> str:
    return "n/a" if value is None else f"{value:,}"


def _print(console, table) -> None:
    """Print a table whose numbers are never cut: each column is at least as wide as its widest
    number; text columns fold first, and a terminal too narrow even then wraps the lines."""
    for column in table.columns:
        if column.justify == "right":
            column.min_width = max([len(str(cell)) for cell in column._cells] + [len(str(column.header)) // 2, 1])
        else:
            column.min_width = max(4, min(12, len(str(column.header))))
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(width=PLAIN_WIDTH), table).minimum
    width = console.width
    console.width = max(width, needed)
    console.print(table)
    console.width = width


def write_table(report: TokensReport, stream: IO[str]) -> None:

    console, style, plain = table_console(stream)
    title = report.title()
    with console.capture() as captured:
        console.print(_cell(title))
        if report.base is not None:
            table = _table(style, plain, ("metric", "left", False), ("base", "right"), ("new", "right"),
                           ("delta", "right"), (f"{report.comparison[0]['confidence']:.0%} interval", "right", True),
                           ("docs better", "right"))
            for row in report.comparison:
                delta = "n/a" if row["delta"] != row["delta"] else f"{row['delta']:+.6f}"
                ci = "n/a" if row["ci"][0] != row["ci"][0] else _interval(row["ci"])
                better = row["new_better_share"]
                share = "n/a" if better != better else f"{better:.1%}"
                table.add_row(*_cells(row["metric"], _number(row["base"]), _number(row["new"]), delta, ci, share))
            _print(console, table)
            if report.regression:
                console.print(_cell(f"REGRESSION: {report.regression}"))
            console.print(_cell("new model:"))
        intervals = report.intervals if report.intervals is not None and report.bootstrap else None
        level = (report.bootstrap or {}).get("confidence", 0.95)
        interval_header = [(f"{level:.0%} interval", "right")] if intervals else []
        metrics = _table(style, plain, ("metric", "left"), ("value", "right"), *interval_header, ("unit", "left"))
        for name, value in report.metrics.items():
            shown = [_plain_interval(intervals.get(name))] if intervals else []
            metrics.add_row(*_cells(name, _number(value), *shown, report.unit(name)))
        _print(console, metrics)
        if report.groups:
            columns = [(c, "left") for c in report.groups[0]["by"]]
            in_groups = ["nll", "perplexity", "bits_per_byte"]  # all seven are in the JSON report
            table = _table(style, plain, *columns, ("documents", "right"), ("tokens", "right"),
                           *((m, "right") for m in in_groups))
            for group in report.groups:
                group_ci = group.get("intervals")  # --interval: "value [low, high]" per cell
                values = [_number(group["metrics"][m]) for m in in_groups]
                bounds = [_plain_interval(group_ci[m]) for m in in_groups] if group_ci else []
                if bounds and plain:  # one line a group, for grep
                    values = [f"{value} {bound}" for value, bound in zip(values, bounds)]
                table.add_row(*_cells(*map(_text, group["by"].values()), f"{group['documents']:,}",
                                      _count(group["tokens"]), *values))
                if bounds and not plain:  # on a terminal the intervals go under the values
                    table.add_row(*_cells(*[""] * (len(group["by"]) + 2), *bounds))
            _print(console, table)
        if report.worst:
            keys = [k for k in report.worst[0] if k != "doc"]
            table = _table(style, plain, ("worst: doc", "left"), *((k, "right") for k in keys))
            for entry in report.worst:
                table.add_row(*_cells(_text(entry["doc"]), *[_count(entry[k]) if isinstance(entry[k], int) or
                                                             entry[k] is None else _number(entry[k]) for k in keys]))
            _print(console, table)
        print_notes(console, report)
    stream.write(without_trailing_spaces(captured.get()))


def write_json(report: TokensReport, stream: IO[str]) -> None:
    stream.write(to_json(report) + "\n")  # type: ignore[arg-type]  # to_json needs only to_dict()


def write_ndjson(report: TokensReport, stream: IO[str]) -> None:
    stream.write(to_json(report, indent=None) + "\n")  # type: ignore[arg-type]


# Markdown, JUnit and OpenMetrics: the writers of formats.py, which read a TokensReport as they read a Report.
RENDERERS: dict[str, Callable[[Any, IO[str]], None]] = {
    "table": write_table, "json": write_json, "ndjson": write_ndjson,
    **{name: SCORE_RENDERERS[name] for name in ("markdown", "junit", "openmetrics")}}


def check_format(fmt: str) -> None:
    """Before any work: the formats a TokensReport is written in."""
    if fmt not in RENDERERS:
        raise UsageError(f"--format {fmt}: nll tokens writes {', '.join(RENDERERS)}")


def write_report(report: TokensReport, fmt: str, stream: IO[str]) -> None:
    import sys

    name = "standard error" if stream is sys.stderr else "standard output" if stream is sys.stdout else "output"
    with reported_as(name):
        RENDERERS[fmt](report, stream)
        stream.flush()
