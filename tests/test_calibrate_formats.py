"""nll calibrate and score --multilabel in Markdown, JUnit XML and OpenMetrics, read back by real
parsers (markdown-it-py, junitparser, prometheus_client) against the JSON report; --report files and
the GitHub integration of calibrate; hostile class names kept as text."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from junitparser import JUnitXml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from typer.testing import CliRunner

from helpers import assert_input_error, loads_strict, one_line
from nllcli.cli import app
from nllcli.errors import visible
from test_formats import _markdown, _no_markup, _table_with, _tables


def _invoke(*args, env=None):
    environment = {"GITHUB_ACTIONS": None, "GITHUB_STEP_SUMMARY": None, **(env or {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=environment)


def _families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(family, **labels) -> float:
    (value,) = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    return value


@pytest.fixture
def calibrate_args(samples):
    valid, test = samples / "robot_tools_val_logits.csv", samples / "robot_tools_test_logits.csv"
    return ("calibrate", valid, "--input", "logits", "--apply", test, "--max", "ece=0.01", "--min", "accuracy=0.5")


def test_markdown_has_the_map_the_gates_and_before_after_tables_of_the_json(calibrate_args, samples):
    data = loads_strict(_invoke(*calibrate_args, "-f", "json").stdout)
    result = _invoke(*calibrate_args, "-f", "markdown")
    assert result.exit_code == 1
    assert "nll: gate failed: ece = 0.0374589 is above the maximum 0.01 (VALID after calibration)" in result.stderr
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    text = "".join(child.content for t in tokens if t.type == "inline" for child in t.children)
    assert f"temperature scaling: T = {data['temperature']:.6g}" in text
    assert f"({data['fit']['rows']:,} rows, {data['fit']['iterations']} iterations)" in text
    tables = _tables(tokens)
    gates = _table_with(tables, "gate")
    assert gates[1:] == [["--max ece=0.01", f"{data['after']['valid']['metrics']['ece']:.6f}", "❌ fail"],
                         ["--min accuracy=0.5", f"{data['after']['valid']['metrics']['accuracy']:.6f}", "✅ pass"]]
    metric_tables = [t for t in tables if t[0] == ["metric", "before", "after", "change", "unit"]]
    assert len(metric_tables) == 2  # VALID, then the --apply file
    for table, before, after in zip(metric_tables, [data["before"]["valid"], *data["before"]["tests"]],
                                    [data["after"]["valid"], *data["after"]["tests"]]):
        rows = {row[0]: row[1:] for row in table[1:]}
        assert list(rows) == list(after["metrics"])
        for name, (old, new, change, unit) in rows.items():
            assert float(old) == pytest.approx(before["metrics"][name], abs=5e-7)
            assert float(new) == pytest.approx(after["metrics"][name], abs=5e-7)
            assert float(change) == pytest.approx(after["metrics"][name] - before["metrics"][name], abs=1e-6)
            assert unit == ("nats" if name in ("nll", "cross_entropy", "entropy", "kl") else "")
    headings = ["".join(c.content for c in tokens[i + 1].children) for i, t in enumerate(tokens)
                if t.type == "heading_open"]
    assert headings[2].startswith("valid: ") and headings[3].startswith("test: ")
    assert str(samples / "robot_tools_test_logits.csv") in headings[3]


def test_vector_scaling_markdown_lists_each_class_scale_and_bias(samples):
    args = ("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits", "--method", "vector")
    data = loads_strict(_invoke(*args, "-f", "json").stdout)
    result = _invoke(*args, "-f", "markdown")
    assert result.exit_code == 0
    table = _table_with(_tables(_markdown(result.stdout)), "class")
    assert [row[0] for row in table[1:]] == list(data["scale"])
    for name, scale, bias in table[1:]:
        assert float(scale) == pytest.approx(data["scale"][name], abs=5e-7)
        assert float(bias) == pytest.approx(data["bias"][name], abs=5e-7)
    families = _families(_invoke(*args, "-f", "openmetrics").stdout)
    assert "nll_temperature" not in families
    for name in data["scale"]:
        assert _sample(families["nll_scale"], **{"class": name}) == data["scale"][name]
        assert _sample(families["nll_bias"], **{"class": name}) == data["bias"][name]


def test_junit_has_one_testcase_per_gate_and_the_map_as_properties(calibrate_args):
    data = loads_strict(_invoke(*calibrate_args, "-f", "json").stdout)
    result = _invoke(*calibrate_args, "-f", "junit")
    assert result.exit_code == 1
    (suite,) = JUnitXml.fromstring(result.stdout)
    assert [(case.name, case.is_passed, case.classname) for case in suite] == [
        ("--max ece=0.01", False, "nll.calibrate"), ("--min accuracy=0.5", True, "nll.calibrate")]
    failure = next(iter(suite)).result[0]
    assert failure.message == "ece = 0.0374589 is above the maximum 0.01 (VALID after calibration)"
    properties = {p.name: p.value for p in suite.properties()}
    assert float(properties["temperature"]) == data["temperature"]
    assert properties["method"] == "temperature" and properties["command"] == "calibrate"
    assert properties["input.valid"] == data["inputs"]["valid"][0]
    assert properties["input.test"] == data["inputs"]["tests"][0][0]
    assert float(properties["metric.ece"]) == pytest.approx(data["after"]["valid"]["metrics"]["ece"], abs=5e-7)
    assert suite.tests == 2 and suite.failures == 1


def test_junit_without_gates_has_one_passing_testcase(samples):
    result = _invoke("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits", "-f", "junit")
    (suite,) = JUnitXml.fromstring(result.stdout)
    assert result.exit_code == 0 and [case.is_passed for case in suite] == [True]


def test_openmetrics_has_each_metric_before_and_after_per_input_and_the_temperature(calibrate_args):
    data = loads_strict(_invoke(*calibrate_args, "-f", "json").stdout)
    result = _invoke(*calibrate_args, "-f", "openmetrics")
    assert result.exit_code == 1 and result.stdout.endswith("# EOF\n")
    families = _families(result.stdout)
    valid, test = data["inputs"]["valid"][0], data["inputs"]["tests"][0][0]
    assert _sample(families["nll_temperature"], input=valid) == data["temperature"]  # exact: repr of the float
    for name, value in data["after"]["valid"]["metrics"].items():
        family = families[f"nll_{name}"]
        assert _sample(family, input=valid, stage="after") == value
        assert _sample(family, input=valid, stage="before") == data["before"]["valid"]["metrics"][name]
        assert _sample(family, input=test, stage="after") == data["after"]["tests"][0]["metrics"][name]
        assert {s.labels["command"] for s in family.samples} == {"calibrate"}
    assert {s.labels.get("units") for s in families["nll_nll"].samples} == {"nats"}
    assert _sample(families["nll_rows"], input=test, role="test") == data["after"]["tests"][0]["rows"]
    assert _sample(families["nll_gate_passed"], gate="--max ece=0.01") == 0.0
    assert _sample(families["nll_gate_passed"], gate="--min accuracy=0.5") == 1.0


def test_report_files_in_every_format_besides_the_table(calibrate_args, tmp_path):
    files = [tmp_path / name for name in ("r.json", "r.md", "r.xml", "r.prom")]
    result = _invoke(*calibrate_args, *(a for f in files for a in ("--report", f)))
    assert result.exit_code == 1
    assert result.stdout.startswith("nll calibrate: temperature scaling: T = 2.71069")  # the table, as without
    assert loads_strict(files[0].read_text()) == loads_strict(_invoke(*calibrate_args, "-f", "json").stdout)
    assert files[1].read_text() == _invoke(*calibrate_args, "-f", "markdown").stdout
    (suite,) = JUnitXml.fromstring(files[2].read_text())
    assert [case.is_passed for case in suite] == [False, True]
    assert files[3].read_text() == _invoke(*calibrate_args, "-f", "openmetrics").stdout
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_report_is_refused_onto_an_input_the_save_file_a_copy_or_twice(calibrate_args, samples, tmp_path):
    json_input = tmp_path / "valid.json"
    json_input.write_text("{}")
    saved = tmp_path / "t.json"
    refused = [(("--report", saved, "--save", saved), "--report"),
               (("--report", tmp_path / "a.md", "--report", tmp_path / "a.md"), "written twice"),
               (("--report", tmp_path / "r.doc"), "unknown suffix '.doc'"),
               (("--report", tmp_path / "o.md", "-o", tmp_path / "o.md"), "written twice"),
               (("--report", tmp_path / "missing" / "r.md"), "does not exist")]
    for extra, fragment in refused:
        assert_input_error(_invoke(*calibrate_args, *extra), fragment)
    assert not saved.exists()
    copy = tmp_path / "out" / "robot_tools_test_logits.txt"
    test = tmp_path / "robot_tools_test_logits.txt"  # a CSV named .txt: a report path OpenMetrics could take
    test.write_bytes((samples / "robot_tools_test_logits.csv").read_bytes())
    (tmp_path / "out").mkdir()
    args = ("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits", "--apply", test)
    assert_input_error(_invoke(*args, "-o", tmp_path / "out", "--report", copy), "--report")
    assert_input_error(_invoke(*args, "--report", test), "--report")
    assert test.read_bytes() == (samples / "robot_tools_test_logits.csv").read_bytes()
    assert not copy.exists()


def test_a_failed_run_keeps_the_old_report(calibrate_args, samples, tmp_path):
    report = tmp_path / "r.md"
    report.write_text("old\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,a,b\na,0.5,nan\n")
    result = _invoke("calibrate", bad, "--report", report)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert report.read_text() == "old\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture
def summary(tmp_path):
    path = tmp_path / "step_summary.md"
    path.write_text("## an earlier step\n")
    return path


def test_github_actions_annotates_failed_gates_and_appends_the_summary(calibrate_args, summary):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = _invoke(*calibrate_args, env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert errors == ["::error title=nll calibrate%3A --max ece=0.01 failed::ece = 0.0374589 is above the maximum "
                      "0.01 (VALID after calibration)"]
    assert result.stdout == _invoke(*calibrate_args).stdout  # stdout untouched
    assert summary.read_text() == "## an earlier step\n\n" + _invoke(*calibrate_args, "-f", "markdown").stdout
    off = _invoke(*calibrate_args, "--no-ci-integration", env=env)
    assert off.exit_code == 1 and "::" not in off.stderr
    assert summary.read_text().count("## nll calibrate") == 1


def test_an_unwritable_summary_is_a_warning_and_keeps_the_exit_code(samples, tmp_path):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "missing" / "summary.md")}
    result = _invoke("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits", env=env)
    assert result.exit_code == 0
    assert "nll: warning: GITHUB_STEP_SUMMARY" in one_line(result.stderr)


# -- hostile class names -----------------------------------------------------------------------


HOSTILE_CLASSES = ["a|b", "[x](http://evil.example)", "<script>alert(1)</script>", "*em*", "$x^2$", "back\\slash",
                   "line\nbreak", "\x1b[31mred"]


@pytest.fixture
def hostile(tmp_path):
    rng = np.random.default_rng(3)
    n, k = 300, len(HOSTILE_CLASSES)
    labels = rng.integers(0, k, n)
    logits = 3.0 * rng.normal(size=(n, k))
    logits[np.arange(n), labels] += 2.0
    frame = pd.DataFrame(logits, columns=HOSTILE_CLASSES)
    frame["label"] = [HOSTILE_CLASSES[i] for i in labels]
    frame.to_parquet(tmp_path / "valid.parquet")
    return tmp_path / "valid.parquet"


def test_hostile_class_names_stay_text_in_every_format(hostile):
    args = ("calibrate", hostile, "--input", "logits", "--method", "vector", "--max", "nll=0.01")
    markdown = _invoke(*args, "-f", "markdown")
    assert markdown.exit_code == 1, markdown.stderr
    tokens = _markdown(markdown.stdout)
    _no_markup(tokens)
    table = _table_with(_tables(tokens), "class")
    assert [row[0] for row in table[1:]] == [visible(name) for name in HOSTILE_CLASSES]
    assert "\x1b" not in markdown.stdout
    families = _families(_invoke(*args, "-f", "openmetrics").stdout)
    assert [s.labels["class"] for s in families["nll_scale"].samples] == [visible(n) for n in HOSTILE_CLASSES]
    (suite,) = JUnitXml.fromstring(_invoke(*args, "-f", "junit").stdout)
    assert [case.is_passed for case in suite] == [False]


# -- a real process ----------------------------------------------------------------------------


def test_a_real_run_writes_reports_and_ends_well_under_head(nll_exe, samples, tmp_path):
    env = {**os.environ, "GITHUB_ACTIONS": "false"}
    valid = samples / "robot_tools_val_logits.csv"
    result = subprocess.run(f"{sys.executable} -m nllcli calibrate {valid} --input logits -f markdown "
                            f"--report {tmp_path / 'r.prom'} | head -1", shell=True, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert result.stdout.startswith("## nll calibrate")
    families = _families((tmp_path / "r.prom").read_text())
    assert _sample(families["nll_temperature"]) == pytest.approx(2.71069, abs=1e-5)


# -- score --multilabel ------------------------------------------------------------------------


@pytest.fixture
def multilabel(tmp_path):
    rng = np.random.default_rng(0)
    names = ["red", "green", "a|b"]
    p = rng.uniform(0.01, 0.99, (200, len(names)))
    y = rng.uniform(size=p.shape) < p
    frame = pd.DataFrame(p, columns=names)
    frame["tags"] = [";".join(c for k, c in enumerate(names) if y[i, k]) for i in range(len(y))]
    frame.to_csv(tmp_path / "ml.csv")  # with pandas' index
    return ("score", tmp_path / "ml.csv", "--multilabel", "--label", "tags", "--max", "nll=0.4")


def test_multilabel_formats_show_the_per_label_table(multilabel, tmp_path):
    data = loads_strict(_invoke(*multilabel, "-f", "json").stdout)
    result = _invoke(*multilabel, "-f", "markdown", "--report", tmp_path / "r.prom", "--report", tmp_path / "r.xml")
    assert result.exit_code == 1
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    table = _table_with(_tables(tokens), "label")
    assert table[0] == ["label", "rows", "positives", "prevalence", "nll", "accuracy", "brier", "ece"]
    for row, entry in zip(table[1:], data["per_class"], strict=True):
        assert row[0] == entry["class"] and int(row[1]) == entry["rows"]
        for column, cell in zip(table[0][2:], row[2:]):
            assert float(cell) == pytest.approx(entry[column], abs=5e-7)
    table_text = _invoke(*multilabel).stdout
    assert "label  rows  positives  prevalence" in table_text
    families = _families((tmp_path / "r.prom").read_text())
    for entry in data["per_class"]:
        for name in ("nll", "accuracy", "brier", "ece", "prevalence"):
            assert _sample(families[f"nll_{name}"], **{"class": entry["class"]}) == entry[name]
    (suite,) = JUnitXml.fromstring((tmp_path / "r.xml").read_text())
    assert [(case.name, case.is_passed) for case in suite] == [("--max nll=0.4", False)]
