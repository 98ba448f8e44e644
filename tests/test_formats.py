"""Markdown, JUnit XML and OpenMetrics: read back by real parsers (markdown-it-py, junitparser and
xml.etree, prometheus_client), with the numbers of the JSON report and hostile strings kept as text."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from junitparser import Failure, JUnitXml
from markdown_it import MarkdownIt
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers import loads_strict
from nllcli.errors import visible
from nllcli.formats import FORMATS, gate_results, label_value, markdown_text, metric_name
from nllcli.report import Gate, Report
from test_fuzz_injection import HOSTILE_PIECES

# Strings that mean something to Markdown, GitHub or HTML, beside the terminal ones of test_fuzz_injection.
MARKDOWN_HOSTILE = ["a|b", "|", "`code`", "``", "[x](http://evil.example)", "![i](http://evil.example/i.png)",
                    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "&amp;", "&#60;b&#62;", "# head",
                    "- item", "> quote", "1. one", "*em*", "__strong__", "~~gone~~", "http://evil.example",
                    "www.evil.example", "mail@evil.example", "$x^2$", "\\", "\\|", "---", "| --- |", "[ref]: /x",
                    "<!-- c -->", "<http://evil.example>", "[^1]", "a\nb", "x\r\ny"]
HOSTILE = MARKDOWN_HOSTILE + [p for p in HOSTILE_PIECES if p.strip() and "\x00" not in p]


def _markdown(text: str):
    return MarkdownIt("commonmark").enable("table").parse(text)


def _tables(tokens) -> list[list[list[str]]]:
    """Every table as rows of cell texts (the header row first), from the token stream."""
    tables, row, cell = [], None, None
    for token in tokens:
        if token.type == "table_open":
            tables.append([])
        elif token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            tables[-1].append(row)
        elif token.type in ("th_open", "td_open"):
            cell = ""
        elif token.type == "inline" and cell is not None:
            cell = "".join(child.content for child in token.children if child.type in ("text", "text_special"))
            row.append(cell)
            cell = None
        elif token.type in ("th_close", "td_close") and cell is not None:  # an empty cell has no inline token
            row.append("")
            cell = None
    return tables


def _table_with(tables, first_header: str) -> list[list[str]]:
    return next(t for t in tables if t[0][0] == first_header)


def _no_markup(tokens) -> None:
    """No link, image, HTML, code or emphasis came from the data (the report's own bold aside)."""
    bad = {"link_open", "image", "html_inline", "html_block", "code_inline", "em_open", "s_open", "fence",
           "code_block", "blockquote_open", "heading_open", "bullet_list_open", "ordered_list_open"}
    allowed_blocks = {"heading_open", "bullet_list_open"}  # the report's own headings and warning list
    for token in tokens:
        if token.type in bad and token.type not in allowed_blocks:
            raise AssertionError(f"markup from data: {token}")
        for child in token.children or []:
            assert child.type in ("text", "text_special", "softbreak", "strong_open", "strong_close"), child


def test_score_markdown_has_the_tables_and_numbers_of_the_json(run, samples):
    args = ("score", samples / "robot_tools.csv", "--by", "camera", "--worst", "3", "--max", "nll=0.3",
            "--min", "accuracy=0.8")
    data = loads_strict(run(*args, "-f", "json").stdout)
    result = run(*args, "-f", "markdown")
    assert result.exit_code == 1
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    metrics = {row[0]: row for row in _table_with(tables, "metric")[1:]}
    assert set(metrics) == set(data["metrics"])
    for name, value in data["metrics"].items():
        assert float(metrics[name][1]) == pytest.approx(value, abs=5e-7)
    assert metrics["nll"][2] == "nats"
    per_class = _table_with(tables, "true class")
    assert [row[0] for row in per_class[1:]] == [row["class"] for row in data["per_class"]]
    groups = _table_with(tables, "camera")
    assert groups[0] == ["camera", "rows", "nll", "accuracy", "brier", "ece"]
    assert [(row[0], int(row[1])) for row in groups[1:]] == [(g["by"]["camera"], g["rows"]) for g in data["groups"]]
    worst = _table_with(tables, "row")
    assert [row[1] for row in worst[1:]] == [w["key"] for w in data["worst"]]
    calibration = _table_with(tables, "confidence bin")
    assert len(calibration) - 1 == sum(1 for b in data["calibration"] if b["weight"])
    gates = _table_with(tables, "gate")
    assert gates[1:] == [["--max nll=0.3", "0.404979", "❌ fail"], ["--min accuracy=0.8", "0.899000", "✅ pass"]]
    assert "1 of 2 gates passed" in result.stdout
    warnings = [t for t in tokens if t.type == "inline" and "clipped to eps" in t.content]
    assert warnings  # the warnings are a list


def test_compare_markdown_has_the_comparison_with_intervals(run, samples):
    args = ("compare", samples / "robot_tools.csv", samples / "robot_tools_model_b.csv", "--by", "camera",
            "--worst", "2", "--fail-if-worse", "-0.5")
    data = loads_strict(run(*args, "-f", "json").stdout)
    result = run(*args, "-f", "markdown")
    assert result.exit_code == 1
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    comparison = _table_with(tables, "metric")  # the first one: base against new
    assert comparison[0] == ["metric", "base", "new", "delta", "95% interval", "new better"]
    for row, expected in zip(comparison[1:], data["comparison"]):
        assert row[0] == expected["metric"]
        assert float(row[3]) == pytest.approx(expected["delta"], abs=5e-7)
        low, high = (float(x) for x in row[4].strip("[]").split(","))
        assert (low, high) == pytest.approx(expected["ci"], abs=5e-7)
    groups = _table_with(tables, "camera")
    assert groups[0][-4:] == ["base nll", "new nll", "delta", "95% interval"]
    gates = _table_with(tables, "gate")
    assert gates[1] == ["--fail-if-worse -0.5", "-0.039845", "[-0.078763, 0.000187]", "❌ fail"]
    assert "Regression:" in result.stdout


@pytest.fixture
def hostile_file(tmp_path):
    """A Parquet file whose class names, labels, keys, --by values, column names and file name are hostile."""
    classes = ["a|b", "`c`", "<img src=x>", "[l](http://evil.example)"]
    n = len(HOSTILE)
    table = pa.table({
        "id": [f"{HOSTILE[i]}#{i}" for i in range(n)],
        "label": [classes[i % len(classes)] for i in range(n)],
        "site|<b>": [HOSTILE[(i * 7) % n] for i in range(n)],
        **{f"p_{c}": [0.7 if i % len(classes) == j else 0.1 for i in range(n)] for j, c in enumerate(classes)},
    })
    path = tmp_path / "preds [x](http:evil.example) <b>|`*_#\t.parquet"
    with open(path, "wb") as stream:
        pq.write_table(table, stream)
    return path, classes


@pytest.mark.parametrize("extra", [(), ("--interval",)])
def test_hostile_strings_make_no_markdown(run, hostile_file, extra):
    path, classes = hostile_file
    if extra and run("score", "--help").stdout.find("--interval") < 0:
        pytest.skip("--interval is not on this branch")
    result = run("score", path, "--by", "site|<b>", "--worst", len(HOSTILE), "-f", "markdown", *extra)
    assert result.exit_code == 0, result.stderr
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), table
    assert [row[0] for row in _table_with(tables, "true class")[1:]] == classes
    groups = _table_with(tables, "site|<b>")
    assert sorted(row[0] for row in groups[1:]) == sorted({visible(h) for h in HOSTILE})
    worst = _table_with(tables, "row")
    assert sorted(row[1] for row in worst[1:]) == sorted(visible(f"{h}#{i}") for i, h in enumerate(HOSTILE))
    heading = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "heading_open")
    assert visible(str(path)) in "".join(c.content for c in heading.children)


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_text_round_trips_through_a_table_cell(text):
    tokens = _markdown(f"| x |\n| --- |\n| {markdown_text(text)} |\n\n- {markdown_text(text)}\n")
    _no_markup(tokens)
    tables = _tables(tokens)
    assert tables[0][1] == [visible(text).strip()]
    item = [t for t in tokens if t.type == "inline"][-1]
    assert "".join(c.content for c in item.children) == visible(text).strip()


class WithIntervals(Report):
    """A Report as `--interval` and compare's relative gates will write it (keys of another branch)."""

    def to_dict(self):
        data = super().to_dict()
        data.update(intervals={"nll": [0.30, 0.45], "ece": [0.01, 0.07]}, confidence=0.9, resamples=500, seed=3)
        for group in data["groups"]:
            group["intervals"] = {"nll": [0.2, 0.9]}
        data["gates"][0].update(on="upper", interval=[0.30, 0.45], passed=False)  # 0.45 > 0.42
        data["gates"].append({"metric": "nll", "bound": "max_increase", "threshold": 0.02, "value": 0.05,
                              "passed": False, "relative": True, "base": 0.36, "on": "interval",
                              "interval": [0.03, 0.07]})
        return data


def _report_with_intervals() -> Report:
    return WithIntervals("score", {"preds": ["p.csv"]}, 100, ["a", "b"], "nats",
                         {"nll": 0.4, "accuracy": 0.9, "ece": 0.03},
                         groups=[{"by": {"site": "x"}, "rows": 100,
                                  "metrics": {"nll": 0.4, "accuracy": 0.9, "ece": 0.03, "brier": 0.1}}],
                         gates=[Gate("nll", "max", 0.42)])


def test_intervals_and_interval_gates_are_shown_when_present():
    report = _report_with_intervals()
    text = FORMATS["markdown"].render(report)
    tables = _tables(_markdown(text))
    metrics = _table_with(tables, "metric")
    assert metrics[0] == ["metric", "value", "unit", "90% interval"]
    assert metrics[1] == ["nll", "0.400000", "nats", "[0.300000, 0.450000]"]
    assert metrics[2][3] == "n/a"  # accuracy: no interval
    assert _table_with(tables, "site")[1][2] == "0.400000 [0.200000, 0.900000]"
    gates = _table_with(tables, "gate")
    assert gates[1] == ["--max nll=0.42 --gate-on upper", "0.400000", "[0.300000, 0.450000]", "❌ fail"]
    assert gates[2][0] == "--max-increase nll=2% --gate-on interval"
    results = gate_results(report)
    assert results[0].message == ("the upper end of the nll interval, 0.45, is above the maximum 0.42 "
                                  "(nll = 0.4; 90% interval [0.3, 0.45])")
    assert "base 0.36" in results[1].message and "90% interval [0.03, 0.07]" in results[1].message
    families = {f.name: f for f in text_string_to_metric_families(FORMATS["openmetrics"].render(report))}
    assert [s.value for s in families["nll_nll_lower"].samples] == [0.30, 0.2]
    assert families["nll_nll_upper"].samples[0].labels["confidence"] == "0.9"
    junit = JUnitXml.fromstring(FORMATS["junit"].render(report))
    messages = [case.result[0].message for suite in junit for case in suite if case.result]
    assert "90% interval [0.3, 0.45]" in messages[0]


# -- JUnit -------------------------------------------------------------------------------------


def _suites(text: str):
    ET.fromstring(text)  # well-formed for the standard library too
    return list(JUnitXml.fromstring(text))


def test_junit_has_one_testcase_per_gate_with_the_failure(run, samples):
    result = run("score", samples / "robot_tools.csv", "--max", "nll=0.3", "--min", "accuracy=0.8",
                 "--max", "ece=0.05", "-f", "junit")
    assert result.exit_code == 1
    (suite,) = _suites(result.stdout)
    assert (suite.tests, suite.failures, suite.errors) == (3, 1, 0)
    cases = list(suite)
    assert [c.name for c in cases] == ["--max nll=0.3", "--max ece=0.05", "--min accuracy=0.8"]  # plan.py's order
    assert [c.is_passed for c in cases] == [False, True, True]
    (failure,) = cases[0].result
    assert isinstance(failure, Failure)
    assert failure.message == "nll = 0.404979 is above the maximum 0.3"
    assert cases[0].classname == "nll.score"
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["metric.nll"] == "0.404979" and properties["input.preds"] == str(samples / "robot_tools.csv")


def test_junit_without_gates_has_one_passing_testcase(run, samples):
    result = run("kl", samples / "robot_tools_annotators.csv", samples / "robot_tools.csv", "-f", "junit")
    assert result.exit_code == 0
    (suite,) = _suites(result.stdout)
    (case,) = list(suite)
    assert case.is_passed and "no gates" in case.name
    assert suite.tests == 1 and suite.failures == 0


def test_junit_has_a_testcase_for_fail_if_worse(run, samples):
    base, new = samples / "robot_tools.csv", samples / "robot_tools_model_b.csv"
    passed = _suites(run("compare", base, new, "--fail-if-worse", "0", "-f", "junit").stdout)[0]
    assert [(c.name, c.is_passed) for c in passed] == [("--fail-if-worse 0", True)]
    result = run("compare", base, new, "--fail-if-worse", "-0.5", "--max", "ece=0.5", "-f", "junit")
    assert result.exit_code == 1
    (suite,) = _suites(result.stdout)
    cases = {c.name: c for c in suite}
    assert cases["--max ece=0.5"].is_passed
    (failure,) = cases["--fail-if-worse -0.5"].result
    assert "nll got worse" in failure.message and "interval" in failure.message


def test_junit_keeps_hostile_names_as_text(run, hostile_file):
    path, classes = hostile_file
    result = run("score", path, "--max", "nll=0.01", "-f", "junit")
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)
    suite = root.find("testsuite")
    assert visible(str(path)) in suite.get("name")
    assert visible(str(path)) in suite.find("system-out").text


# -- OpenMetrics -------------------------------------------------------------------------------


def _families(text: str) -> dict:
    assert text.endswith("# EOF\n")
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_openmetrics_parses_and_has_the_metrics_per_class_and_group(run, samples):
    args = ("score", samples / "robot_tools.csv", "--by", "camera", "--max", "nll=0.3")
    data = loads_strict(run(*args, "-f", "json").stdout)
    families = _families(run(*args, "-f", "openmetrics").stdout)
    for name, value in data["metrics"].items():
        family = families[f"nll_{name}"]
        assert family.type == "gauge"
        overall = [s for s in family.samples if "class" not in s.labels and "group" not in s.labels]
        assert overall[0].value == value
        assert overall[0].labels["command"] == "score"
        assert overall[0].labels["input"] == str(samples / "robot_tools.csv")
    nll = families["nll_nll"].samples
    assert nll[0].labels["units"] == "nats"
    per_class = {s.labels["class"]: s.value for s in nll if "class" in s.labels}
    assert per_class == {row["class"]: row["nll"] for row in data["per_class"]}
    per_group = {s.labels["group"]: s.value for s in nll if "group" in s.labels}
    assert per_group == {f"camera={g['by']['camera']}": g["metrics"]["nll"] for g in data["groups"]}
    (gate,) = families["nll_gate_passed"].samples
    assert gate.labels["gate"] == "--max nll=0.3" and gate.value == 0


def test_openmetrics_of_compare_has_base_new_and_delta(run, samples):
    text = run("compare", samples / "robot_tools.csv", samples / "robot_tools_model_b.csv", "-f",
               "openmetrics").stdout
    families = _families(text)
    data = loads_strict(run("compare", samples / "robot_tools.csv", samples / "robot_tools_model_b.csv",
                            "-f", "json").stdout)
    row = data["comparison"][0]
    models = {s.labels.get("model"): s.value for s in families["nll_nll"].samples if "class" not in s.labels}
    assert models == {"new": row["new"], "base": row["base"]}
    assert families["nll_nll_delta"].samples[0].value == row["delta"]
    assert [families[f"nll_nll_delta_{side}"].samples[0].value for side in ("lower", "upper")] == row["ci"]


def test_openmetrics_label_values_are_escaped(run, hostile_file):
    path, classes = hostile_file
    result = run("score", path, "--by", "site|<b>", "-f", "openmetrics")
    assert result.exit_code == 0, result.stderr
    families = _families(result.stdout)
    nll = families["nll_nll"].samples
    assert {s.labels["class"] for s in nll if "class" in s.labels} == set(classes)
    assert {s.labels["group"] for s in nll if "group" in s.labels} == {f"site|<b>={visible(h)}" for h in HOSTILE}
    assert nll[0].labels["input"] == visible(str(path))


def test_openmetrics_names_and_values():
    assert metric_name("nll_top-k.acc") == "nll_top_k_acc"
    assert metric_name("1x") == "_1x"
    assert label_value('a"b\\c') == 'a\\"b\\\\c'
    report = Report("score", {"preds": ["p.csv"]}, 3, ["a"], "nats", {"nll": math.inf, "ece": math.nan})
    families = _families(FORMATS["openmetrics"].render(report))
    assert families["nll_nll"].samples[0].value == math.inf
    assert math.isnan(families["nll_ece"].samples[0].value)
