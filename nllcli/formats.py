"""Report formats read by CI systems: GitHub-flavoured Markdown, JUnit XML and OpenMetrics text.

Each format is a class with a name and render(report) -> str (`--report` picks one by the file's
suffix: render.REPORT_SUFFIXES). They read the report's strict dict (Report.to_dict()) and show
whatever keys are there (the intervals of `--interval`, the `on`, `interval`, `relative` and `base`
of a gate), so a key added to the report is shown as soon as it exists and a missing one is not.

Strings from the data (class names, labels, keys, group values, column and file names) stay text in
every format: escaped for Markdown so that they never make a link, an image, HTML, a list, a
heading or a table cell; for XML (and with the characters XML 1.0 forbids written as \\uXXXX); for
OpenMetrics label values as its grammar says. Control characters are escaped visibly first
(errors.visible), as on the terminal.

A TokensReport (`nll tokens`) is written by the same classes: its dict has the same keys, and its
input_roles(), counts() (documents and tokens, not rows), unit() and title() say what differs.
A Calibration (`nll calibrate`) too: its command, inputs (valid, test), rows, classes, units and
metrics (VALID after calibration, what its gates test) are those of a Report; its stages() give
each input's metrics before and after, which each format shows in its own way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from . import metrics as metric_table
from .errors import visible
from .render import _interval, _number, _text, describe_map, per_class_cell, per_class_columns

if TYPE_CHECKING:
    from .calibration import Calibration
    from .report import Report
    from .tokens.report import TokensReport


# -- gates, shared by every format and the CI annotations ----------------------------------------


@dataclass(frozen=True)
class GateResult:
    """One verdict of a run: a --max/--min (or compare) gate, or compare's --fail-if-worse."""

    name: str  # as it was asked: "--max nll=0.35", "--fail-if-worse 0"
    passed: bool
    message: str  # what was measured against what: value, bound, base and interval when present
    metric: str
    value: float | None
    interval: list | None = None


def gate_results(report: Report | Calibration) -> list[GateResult]:
    """The gates of a report, in order, then compare's --fail-if-worse when it was asked."""
    data = report.to_dict()
    level = _confidence(data)
    results = [_gate_result(entry, level, report.metrics) for entry in data.get("gates", [])]
    threshold = data.get("fail_if_worse")
    if threshold is not None:
        tested = data.get("fail_if_worse_metric", "nll")  # nll tokens --compare: bits_per_byte across tokenizers
        nll: dict[str, Any] = next((row for row in data.get("comparison", []) if row.get("metric") == tested), {})
        ci = nll.get("ci")
        regression = data.get("regression")
        measured = f"{tested} delta {_signed(nll.get('delta'))} {_unit(report, tested)}".rstrip()
        if ci:
            measured += f", {_level(nll.get('confidence', level))} interval [{_short(ci[0])}, {_short(ci[1])}]"
        message = regression or f"{measured}: not entirely above {threshold:g}"
        results.append(GateResult(f"--fail-if-worse {threshold:g}", regression is None, message, tested,
                                  nll.get("delta"), ci))
    return results


def _gate_result(entry: dict[str, Any], level: float | None, metrics: dict[str, float]) -> GateResult:
    metric, bound, threshold = entry["metric"], str(entry["bound"]), entry["threshold"]
    relative = bool(entry.get("relative"))
    shown_threshold = f"{threshold * 100:g}%" if relative else f"{threshold:g}"
    name = f"--{bound.replace('_', '-')} {metric}={shown_threshold}"
    on = entry.get("on")
    if on in ("lower", "upper", "interval"):  # calibrate's "after.valid" says which metrics, not --gate-on
        name += f" --gate-on {on}"
    value, interval, base = entry.get("value"), entry.get("interval"), entry.get("base")
    if value is None and base is None and metric in metrics:  # infinite or undefined: null in the dict
        value = metrics[metric]
    passed = bool(entry.get("passed"))
    if "change" in entry:  # compare's gates on new - base: the change is tested, against `limit`
        return _change_gate_result(entry, name, passed, level)
    upper = not bound.startswith("min")
    kind = {"max": "maximum", "min": "minimum"}.get(bound, f"{bound.replace('_', ' ')} bound")
    subject, tested = f"{metric} = {_short(value)}", value
    if interval and on in ("lower", "upper"):
        tested = interval[0] if on == "lower" else interval[1]
        subject = f"the {on} end of the {metric} interval, {_short(tested)},"
    elif interval and on == "interval":
        subject = f"the whole {metric} interval"
    if passed:
        relation = "is within the" if upper else "meets the"
    else:
        relation = "is above the" if upper else "is below the"
    details = ["VALID after calibration"] if on == "after.valid" else []
    if on in ("lower", "upper", "interval"):
        details.append(f"{metric} = {_short(value)}")
    if base is not None:
        details.append(f"base {_short(base)}")
    if interval:
        details.append(f"{_level(level)} interval [{_short(interval[0])}, {_short(interval[1])}]")
    message = f"{subject} {relation} {kind} {shown_threshold}" + (f" ({'; '.join(details)})" if details else "")
    return GateResult(name, passed, message, metric, value, interval)


def _change_gate_result(entry: dict[str, Any], name: str, passed: bool, level: float | None) -> GateResult:
    """A gate on the change new - base (--max-increase ...): the change, or an end of its interval,
    against the limit on the change (report.Gate.limit)."""
    metric, on, interval = entry["metric"], entry.get("on"), entry.get("interval")
    change, limit = entry.get("change"), entry.get("limit")
    keeps_below = entry["bound"] in ("max_increase", "min_decrease")
    subject = f"{metric} change {_signed(change)}"
    if interval and on in ("lower", "upper"):
        subject = f"the {on} end of the {metric} change interval, {_signed(interval[0 if on == 'lower' else 1])},"
    elif interval and on == "interval":
        subject = f"the whole {metric} change interval"
    relation = ("is within" if passed else "is above") if keeps_below else ("meets" if passed else "is below")
    details = [f"base {_short(entry.get('base'))}", f"new {_short(entry.get('value'))}"]
    if interval:
        details.append(f"{_level(level)} interval [{_signed(interval[0])}, {_signed(interval[1])}]")
    message = f"{subject} {relation} the limit {_signed(limit)} ({'; '.join(details)})"
    return GateResult(name, passed, message, metric, change, interval)


def _confidence(data: dict[str, Any]) -> float | None:
    """The level of the report's intervals: `--interval`'s, else compare's."""
    if data.get("confidence") is not None:
        return data["confidence"]
    comparison = data.get("comparison") or [{}]
    return comparison[0].get("confidence")


def _level(level: float | None) -> str:
    return f"{level:.0%}" if level is not None else "the"


def _short(value: float | None) -> str:
    return "undefined" if value is None or value != value else f"{value:.6g}"


def _signed(value: float | None) -> str:
    return "undefined" if value is None or value != value else f"{value:+.6g}"


def title(report: Report | Calibration) -> str:
    """The first line of every format: command, files, rows and classes (data: not escaped here)."""
    if _tokens(report):  # files, documents and tokens
        return report.title()
    if _calibration(report):  # VALID, then the --apply files
        tests = "".join(f", applied to {', '.join(after.inputs['preds'])} ({after.rows:,} rows)"
                        for _, after in report.tests)
        return (f"nll calibrate: {', '.join(report.inputs['valid'])} ({report.rows:,} rows, "
                f"{len(report.classes)} classes){tests}")
    return f"nll {report.command}: {', '.join(_files(report))} ({report.rows:,} rows, {len(report.classes)} classes)"


# A TokensReport (nll tokens) is read through the same keys; these say what differs: its inputs are a
# list, it counts documents and tokens, its metrics have their own units.


def _calibration(report: object) -> TypeGuard[Calibration]:
    """Whether the report is the result of nll calibrate."""
    return getattr(report, "command", None) == "calibrate"


def _tokens(report: object) -> TypeGuard[TokensReport]:
    """Whether the report is a TokensReport (of nll tokens or its --compare)."""
    return hasattr(report, "input_roles")


def _inputs(report: Report | Calibration) -> dict[str, list[str]]:
    """The input files by role: preds and targets, base and new, or nll tokens' files."""
    return report.input_roles() if _tokens(report) else report.inputs


def _files(report: Report | Calibration) -> list[str]:
    return [name for names in _inputs(report).values() for name in names]


def _counts(report: Report) -> list[tuple[str, int | None]]:
    """What was scored: [("rows", n)], or documents and tokens."""
    return report.counts() if _tokens(report) else [("rows", report.rows)]


def _unit(report: Report | Calibration, name: str) -> str:
    """The unit of a metric: the report's for information metrics, else none."""
    if _tokens(report):
        return report.unit(name)
    return report.units if metric_table.is_information(name) else ""


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


# -- the formats ---------------------------------------------------------------------------------


class ReportFormat:
    """A way to write a Report as text, registered by name in render.RENDERERS."""

    name: ClassVar[str]

    def render(self, report: Report) -> str:
        raise NotImplementedError


# What Markdown (GFM, and GitHub's $math$) gives a meaning to: emphasis, code, links, images, HTML,
# entities, cells, headings, lists, quotes, strikethrough, and the '.', ':' and '@' of autolinks.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_\[\]<>&|#+\-.!~:@$]")


def markdown_text(value: object) -> str:
    """Data as Markdown text: controls escaped visibly, then each character Markdown reads backslash-
    escaped (CommonMark's escape of an ASCII punctuation character), so that no string can open a
    link, an image, an autolink, HTML, emphasis, code, a list, a heading, a quote or a table cell."""
    return _MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(), visible(value))


def _ours(text: str) -> str:
    """Text made here (numbers, intervals, headers): brackets and pipes escaped, nothing else."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def markdown_table(header: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """A GFM table of cells already escaped; columns in ``right`` are right-aligned."""
    rule = ["---:" if i in right else ":---" for i in range(len(header))]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cell or " " for cell in line) + " |" for line in lines) + "\n"


class Markdown(ReportFormat):
    """GitHub-flavoured Markdown: the content of the table format as headings, tables and lists."""

    name = "markdown"

    def render(self, report: Report) -> str:
        if _calibration(report):
            return self._calibrate(report)
        data = report.to_dict()
        level = _confidence(data)
        parts = [f"## {markdown_text(title(report))}\n"]
        results = gate_results(report)
        if results:
            parts.append(self._gates(results))
        if report.comparison:
            parts.append(self._comparison(report))
            if data.get("regression"):
                parts.append(f"**❌ Regression:** {markdown_text(data['regression'])}\n")
            parts.append("### New model\n")
        elif results:
            parts.append("### Metrics\n")
        parts.append(self._metrics(report, data, level))
        if data.get("per_class"):
            heading, shown = per_class_columns(report)
            parts.append(f"### Per {heading}\n")
            parts.append(markdown_table([heading, *shown],
                                        [[markdown_text(row["class"]), *(per_class_cell(row, name) for name in shown)]
                                         for row in report.per_class], set(range(1, len(shown) + 1))))
        if report.groups:
            parts.append(self._groups(report, data))
        if report.worst:
            parts.append(self._worst(report))
        if any(row.get("weight") for row in data.get("calibration", [])):
            parts.append(self._calibration(data))
        if any(row.get("weight") for row in data.get("loss_histogram", [])):
            parts.append(self._loss_histogram(data))
        warnings = report.all_warnings()
        if warnings:
            parts.append("### Warnings\n")
            parts.append("".join(f"- {markdown_text(note)}\n" for note in warnings))
        return "\n".join(parts)

    @staticmethod
    def _gates(results: list[GateResult]) -> str:
        """How many gates passed, then a table of them."""
        failed = sum(not r.passed for r in results)
        with_intervals = any(r.interval for r in results)
        return (f"**{'❌' if failed else '✅'} {len(results) - failed} of {len(results)} "
                f"gate{'s' if len(results) != 1 else ''} passed**\n\n"
                + markdown_table(["gate", "value", *(["interval"] if with_intervals else []), "result"],
                                 [[markdown_text(r.name), _number(r.value),
                                   *([_ours(_bracketed(r.interval)) if r.interval else ""] if with_intervals else []),
                                   "✅ pass" if r.passed else "❌ **fail**"] for r in results], {1, 2}))

    def _calibrate(self, result: Calibration) -> str:
        """nll calibrate: the map (T, or a scale and a bias per class), the gates on VALID after
        calibration, then per input a table of each metric before and after."""
        from .calibration import metric_changes

        parts = [f"## {markdown_text(title(result))}\n",
                 f"**Calibration map:** {markdown_text(describe_map(result))}\n"]
        if result.scale is not None and result.bias is not None:
            parts.append(markdown_table(["class", "scale", "bias"],
                                        [[markdown_text(name), f"{a:.6f}", f"{b:+.6f}"]
                                         for name, a, b in zip(result.classes, result.scale, result.bias)], {1, 2}))
        results = gate_results(result)
        if results:
            parts.append("### Gates (VALID after calibration)\n")
            parts.append(self._gates(results))
        for role, before, after in result.stages():
            files = ", ".join(after.inputs["preds"])
            parts.append(f"### {markdown_text(f'{role}: {files} ({after.rows:,} rows)')}\n")
            body = [[markdown_text(name), _number(old), _number(new), _delta(change), _unit(after, name)]
                    for name, old, new, change in metric_changes(before, after)]
            parts.append(markdown_table(["metric", "before", "after", "change", "unit"], body, {1, 2, 3}))
        written = [*result.outputs, *([result.saved] if result.saved else [])]
        if written:
            parts.append("### Files written\n")
            parts.append("".join(f"- {markdown_text(path)}\n" for path in written))
        warnings = result.all_warnings()
        if warnings:
            parts.append("### Warnings\n")
            parts.append("".join(f"- {markdown_text(note)}\n" for note in warnings))
        return "\n".join(parts)

    @staticmethod
    def _comparison(report: Report) -> str:
        rows = report.comparison
        level = rows[0].get("confidence")
        header = ["metric", "base", "new", "delta", f"{_level(level)} interval", "new better"]
        body = [[markdown_text(row["metric"]), _number(row["base"]), _number(row["new"]), _delta(row["delta"]),
                 _ours(_ci(row.get("ci"))), _share(row.get("new_better_share"))] for row in rows]
        return "### Base against new\n\n" + markdown_table(header, body, {1, 2, 3, 4, 5})

    @staticmethod
    def _metrics(report: Report, data: dict[str, Any], level: float | None) -> str:
        intervals = data.get("intervals") or {}
        header = ["metric", "value", "unit"] + ([f"{_level(level)} interval"] if intervals else [])
        body = []
        for name, value in report.metrics.items():
            row = [markdown_text(name), _number(value), _unit(report, name)]
            if intervals:
                row.append(_ours(_bracketed(intervals.get(name))))
            body.append(row)
        return markdown_table(header, body, {1, 3})

    @staticmethod
    def _groups(report: Report, data: dict[str, Any]) -> str:
        groups = report.groups
        columns = [markdown_text(column) for column in groups[0]["by"]]
        counted = [name for name, _ in _counts(report)]
        if report.command == "compare" and groups[0].get("comparison"):
            level = groups[0]["comparison"][0].get("confidence")
            header = [*columns, "rows", "base nll", "new nll", "delta", f"{_level(level)} interval"]
            body = []
            for group in groups:
                nll = group["comparison"][0]
                body.append([*(markdown_text(_text(v)) for v in group["by"].values()), f"{group['rows']:,}",
                             _number(nll["base"]), _number(nll["new"]), _delta(nll["delta"]),
                             _ours(_ci(nll.get("ci")))])
        else:
            first = report.groups[0]["metrics"]
            shown = [m.name for m in metric_table.METRICS if m.in_groups and m.name in first
                     and not (m.name == "kl" and "nll" in report.metrics and report.metrics.get("entropy") == 0)]
            if _tokens(report):  # every metric of the group
                shown = list(first)
            header = [*columns, *counted, *shown]
            body = []
            for group, shown_group in zip(groups, data["groups"]):
                intervals = shown_group.get("intervals") or {}
                body.append([*(markdown_text(_text(v)) for v in group["by"].values()),
                             *(_count(group[name]) for name in counted),
                             *(_number(group["metrics"][m]) + (f" {_ours(_bracketed(intervals[m]))}"
                                                               if intervals.get(m) else "") for m in shown)])
        right = set(range(len(columns), len(header)))
        return "### Per group\n\n" + markdown_table(header, body, right)

    @staticmethod
    def _worst(report: Report) -> str:
        numbers: tuple[str, ...] = ("p_true", "loss", "base_loss", "new_loss", "delta")
        worst = report.worst
        columns = [c for c in ("row", "key", "label", "predicted", *numbers) if c in worst[0]]
        counts: tuple[str, ...] = ()
        if _tokens(report):  # doc, tokens, bytes, nll, ... or doc, nll_delta
            columns, counts = list(worst[0]), ("tokens", "bytes")
            numbers = tuple(c for c in columns if c not in ("doc", *counts))
        body = [[_number(entry[c]) if c in numbers else str(entry[c]) if c == "row" else _count(entry[c])
                 if c in counts else markdown_text(_text(entry[c])) for c in columns] for entry in worst]
        right = {i for i, c in enumerate(columns) if c in ("row", *numbers, *counts)}
        heading = "Worst documents" if counts else "Worst samples"
        return f"### {heading}\n\n" + markdown_table(list(columns), body, right)

    @staticmethod
    def _calibration(data: dict[str, Any]) -> str:
        body = []
        for row in data["calibration"]:
            if not row.get("weight"):
                continue
            low, high = row["bin"]
            body.append([f"{low:.2f}-{high:.2f}", f"{row['weight']:,.0f}", f"{row['confidence']:.3f}",
                         f"{row['accuracy']:.3f}", f"{row['accuracy'] - row['confidence']:+.3f}"])
        header = ["confidence bin", "rows", "confidence", "accuracy", "accuracy - confidence"]
        return "### Calibration\n\n" + markdown_table(header, body, {1, 2, 3, 4})

    @staticmethod
    def _loss_histogram(data: dict[str, Any]) -> str:
        units = data.get("units", "")
        body = []
        for row in data["loss_histogram"]:
            low, high = row["range"]
            span = f"{low:g}-{high:g}" if high is not None else f">= {low:g}"
            body.append([span, f"{row['weight']:,.0f}"])
        return f"### Per-sample loss ({units})\n\n" + markdown_table(["loss", "rows"], body, {1})


def _delta(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:+.6f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1%}"


def _ci(ci) -> str:
    return "n/a" if not ci or any(v is None or v != v for v in ci) else _interval(ci)


def _bracketed(interval) -> str:
    """An interval of a metric, [low, high], in the format of values."""
    if not interval:
        return "n/a"
    return f"[{_number(interval[0])}, {_number(interval[1])}]"


# -- JUnit -------------------------------------------------------------------------------------


def _xml_text(value: object) -> str:
    """Text XML 1.0 can hold: controls escaped visibly, then the characters XML forbids as \\uXXXX
    (the noncharacters U+FFFE and U+FFFF, lone surrogates)."""
    return _NOT_XML.sub(lambda match: f"\\u{ord(match.group()):04x}", visible(value))


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class JUnit(ReportFormat):
    """JUnit XML: one testsuite per run, one testcase per gate (and for --fail-if-worse); a failed
    gate is a <failure> whose message says value, bound and interval. Without gates, one passing
    testcase says so (test-report actions show an empty suite as an error)."""

    name = "junit"

    def render(self, report: Report) -> str:
        import datetime
        import socket
        import xml.etree.ElementTree as ET

        results = gate_results(report)
        failures = sum(not r.passed for r in results)
        cases = len(results) or 1
        counts = {"tests": str(cases), "failures": str(failures), "errors": "0", "skipped": "0", "time": "0"}
        root = ET.Element("testsuites", {"name": "nll", **counts})
        suite = ET.SubElement(root, "testsuite", {
            "name": _xml_text(title(report)), **counts, "hostname": _xml_text(socket.gethostname()),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()})
        properties = ET.SubElement(suite, "properties")
        for name, value in self._properties(report):
            ET.SubElement(properties, "property", {"name": _xml_text(name), "value": _xml_text(value)})
        classname = "nll." + report.command.replace(" ", ".")  # nll.score, nll.compare, nll.tokens.compare
        for result in results:
            case = ET.SubElement(suite, "testcase", {"classname": classname, "name": _xml_text(result.name),
                                                     "time": "0"})
            if not result.passed:
                failure = ET.SubElement(case, "failure", {"message": _xml_text(result.message), "type": "gate"})
                failure.text = _xml_text(result.message)
        if not results:
            ET.SubElement(suite, "testcase", {"classname": classname, "name": "no gates: nothing to fail (set "
                                              "--max, --min or --fail-if-worse to gate the run)", "time": "0"})
        output = ET.SubElement(suite, "system-out")
        output.text = "".join(_xml_text(line) + "\n" for line in self._summary_lines(report))
        ET.indent(root)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

    @staticmethod
    def _properties(report: Report) -> list[tuple[str, str]]:
        files = [(f"input.{role}", name) for role, names in _inputs(report).items() for name in names]
        values = [(f"metric.{name}", _number(value)) for name, value in report.metrics.items()]
        counts = [(name, "n/a" if value is None else str(value)) for name, value in _counts(report)]
        if _calibration(report):  # the map; the metrics are VALID's after calibration
            mapping = [("method", report.method)] + ([("temperature", repr(report.temperature))]
                                                     if report.temperature is not None else [])
            return [("command", report.command), *files, *mapping, *counts, ("units", report.units), *values]
        return [("command", report.command), *files, *counts, ("units", report.units), *values]

    @staticmethod
    def _summary_lines(report: Report) -> list[str]:
        lines = [title(report)]
        if _calibration(report):
            from .calibration import metric_changes

            lines.append(describe_map(report))
            for role, before, after in report.stages():
                lines.append(f"{role}: {', '.join(after.inputs['preds'])} ({after.rows:,} rows)")
                lines += [f"  {name}: before {_number(old)}, after {_number(new)}, change {_delta(change)} "
                          f"{_unit(after, name)}".rstrip() for name, old, new, change in metric_changes(before, after)]
            return lines + [f"warning: {note}" for note in report.all_warnings()]
        for row in report.comparison:
            lines.append(f"{row['metric']}: base {_number(row['base'])}, new {_number(row['new'])}, delta "
                         f"{_delta(row['delta'])}, {_level(row.get('confidence'))} interval {_ci(row.get('ci'))}")
        lines += [f"{name} = {_number(value)} {_unit(report, name)}".rstrip() for name, value in report.metrics.items()]
        return lines + [f"warning: {note}" for note in report.all_warnings()]


# -- OpenMetrics -----------------------------------------------------------------------------


def metric_name(text: str) -> str:
    """A valid OpenMetrics metric name: characters other than letters, digits and _ become _."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


def label_value(value: object) -> str:
    """A label value as OpenMetrics writes it: backslash, double quote and newline escaped."""
    return visible(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value: float | None) -> str:
    if value is None or value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class OpenMetrics(ReportFormat):
    """OpenMetrics text (what GitLab's metrics report reads): one gauge family per metric,
    `nll_<metric>`, with the labels command, input and units, plus class, group or model where the
    value is one of a class, a --by group or compare's base model; `nll_<metric>_lower` / `_upper`
    for intervals, `nll_<metric>_delta` (and its interval) for compare, `nll_rows` (`nll_documents`
    and `nll_tokens` for nll tokens), and
    `nll_gate_passed` (1 or 0) per gate. Ends with `# EOF`."""

    name = "openmetrics"

    def render(self, report: Report) -> str:
        if _calibration(report):
            return self._calibrate(report)
        data = report.to_dict()
        common = {"command": report.command, "input": ", ".join(_files(report))}
        families: _Families = {}

        def add(family: str, help_text: str, labels: dict[str, str], value: float | None) -> None:
            families.setdefault(metric_name(f"nll_{family}"), (help_text, []))[1].append(({**common, **labels}, value))

        level = _confidence(data)
        confidence = {"confidence": f"{level:g}"} if level is not None else {}
        main_model = {"model": "new"} if report.comparison else {}
        for count, amount in _counts(report):
            add(count, f"{count.capitalize()} scored", main_model, amount)
        for name, value in report.metrics.items():
            units = {"units": _unit(report, name)} if _unit(report, name) else {}
            add(name, _help(name), {**units, **main_model}, value)
            interval = (data.get("intervals") or {}).get(name)
            if interval:
                for side, bound in zip(("lower", "upper"), interval):
                    add(f"{name}_{side}", _interval_help(side, name), {**units, **confidence}, bound)
        for row in data.get("comparison", []):
            name = row["metric"]
            units = {"units": _unit(report, name)} if _unit(report, name) else {}
            add(name, _help(name), {**units, "model": "base"}, row["base"])
            add(f"{name}_delta", f"{name} of the new model minus that of the base model", units, row["delta"])
            for side, bound in zip(("lower", "upper"), row.get("ci") or ()):
                add(f"{name}_delta_{side}", f"{side} end of the paired bootstrap interval of the {name} delta",
                    {**units, "confidence": f"{row.get('confidence', level):g}"}, bound)
        per_class_metrics = [name for name in per_class_columns(report)[1] if name not in ("rows", "positives")] \
            if data.get("per_class") else []
        for row in data.get("per_class", []):
            for name in per_class_metrics:
                units = {"units": report.units} if metric_table.is_information(name) else {}
                add(name, _help(name), {**units, "class": str(row["class"])}, row[name])
        for group, shown_group in zip(report.groups, data.get("groups", [])):
            label = {"group": ", ".join(f"{column}={_text(value)}" for column, value in group["by"].items())}
            for count, _ in _counts(report):
                add(count, f"{count.capitalize()} scored", label, group[count])
            for name, value in group["metrics"].items():
                units = {"units": _unit(report, name)} if _unit(report, name) else {}
                add(name, _help(name), {**units, **label}, value)
                for side, bound in zip(("lower", "upper"), (shown_group.get("intervals") or {}).get(name) or ()):
                    add(f"{name}_{side}", _interval_help(side, name), {**units, **label, **confidence}, bound)
        for result in gate_results(report):
            add("gate_passed", "1 when the gate passed, 0 when it failed", {"gate": result.name}, float(result.passed))
        return _exposition(families)

    @staticmethod
    def _calibrate(result: Calibration) -> str:
        """nll calibrate: `nll_temperature` (or `nll_scale` and `nll_bias` per class), and per input
        `nll_rows` and `nll_<metric>` with the labels input and stage (before, after)."""
        families: _Families = {}

        def add(family: str, help_text: str, labels: dict[str, str], value: float | None) -> None:
            families.setdefault(metric_name(f"nll_{family}"), (help_text, []))[1].append(
                ({"command": "calibrate", **labels}, value))

        valid = {"input": ", ".join(result.inputs["valid"])}
        if result.temperature is not None:
            add("temperature", "The temperature T of the calibration map softmax(z / T)", valid, result.temperature)
        for name, a, b in zip(result.classes, result.scale or (), result.bias or ()):
            add("scale", "Vector scaling's scale a of the class: softmax(a * x + b)", {**valid, "class": str(name)}, a)
            add("bias", "Vector scaling's bias b of the class: softmax(a * x + b)", {**valid, "class": str(name)}, b)
        for role, before, after in result.stages():
            labels = {"input": ", ".join(after.inputs["preds"]), "role": role}
            add("rows", "Rows scored", labels, after.rows)
            for stage, report in (("before", before), ("after", after)):
                for name, value in report.metrics.items():
                    units = {"units": _unit(report, name)} if _unit(report, name) else {}
                    add(name, f"nll's {name} of the input, before or after calibration (stage)",
                        {**labels, **units, "stage": stage}, value)
        for gate in gate_results(result):
            add("gate_passed", "1 when the gate passed, 0 when it failed", {"gate": gate.name}, float(gate.passed))
        return _exposition(families)


_Families = dict[str, tuple[str, list[tuple[dict[str, str], float | None]]]]


def _exposition(families: _Families) -> str:
    """The gauge families as OpenMetrics text, ending with `# EOF`."""
    lines = []
    for family, (help_text, samples) in families.items():
        lines += [f"# TYPE {family} gauge", f"# HELP {family} {help_text}"]
        for labels, sample in samples:
            shown = ",".join(f'{metric_name(key)}="{label_value(text)}"' for key, text in labels.items())
            lines.append(f"{family}{{{shown}}} {_sample_value(sample)}")
    return "\n".join(lines) + "\n# EOF\n"


def _help(name: str) -> str:
    return f"nll's {name}: of all rows, or of the class, --by group or model its labels name"


def _interval_help(side: str, name: str) -> str:
    return f"The {side} end of the bootstrap interval of {name}"


FORMATS: dict[str, ReportFormat] = {f.name: f for f in (Markdown(), JUnit(), OpenMetrics())}
