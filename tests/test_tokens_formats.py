"""`nll tokens` (and token compare) in every format: Markdown, JUnit and OpenMetrics read back by real
parsers (markdown-it-py, junitparser, prometheus_client), --report files by suffix and atomic, and the
GitHub Actions integration simulated by its environment variables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from junitparser import Failure, JUnitXml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from typer.testing import CliRunner

from helpers import assert_input_error, loads_strict, one_line
from nllcli.cli import app
from nllcli.errors import visible
from test_formats import HOSTILE, _markdown, _no_markup, _table_with, _tables
from test_tokens import layouts, random_tokens

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
TRIGRAM, BIGRAM = SAMPLES / "tokens_trigram.csv", SAMPLES / "tokens_bigram.csv"


def _invoke(*args, env=None):
    environment = {"GITHUB_ACTIONS": None, "GITHUB_STEP_SUMMARY": None, **(env or {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=environment)


def _json(*args) -> dict:
    return loads_strict(_invoke(*args, "-f", "json").stdout)


def _no_timestamp(text: str) -> str:
    return re.sub(r' timestamp="[^"]*"', "", text)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _families(text: str) -> dict:
    assert text.endswith("# EOF\n")
    return {family.name: family for family in text_string_to_metric_families(text)}


# -- Markdown ------------------------------------------------------------------------------------


def test_markdown_has_the_tables_and_numbers_of_the_json():
    args = ("tokens", TRIGRAM, "--by", "source", "--worst", "3", "--base", "2", "--max", "bits_per_byte=4",
            "--min", "nll=20")
    data = _json(*args)
    result = _invoke(*args, "-f", "markdown")
    assert result.exit_code == 1  # nll = 15.5 bits is below the minimum 20
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), table
    metrics = {row[0]: row for row in _table_with(tables, "metric")[1:]}
    assert list(metrics) == list(data["metrics"])
    for name, value in data["metrics"].items():
        assert float(metrics[name][1]) == pytest.approx(value, abs=5e-7)
    assert [metrics[m][2] for m in ("nll", "doc_nll", "bits_per_byte", "perplexity")] == ["bits", "bits", "bits", ""]
    groups = _table_with(tables, "source")
    assert groups[0] == ["source", "documents", "tokens", *data["metrics"]]
    assert [(r[0], int(r[1]), int(r[2])) for r in groups[1:]] == [
        (g["by"]["source"], g["documents"], g["tokens"]) for g in data["groups"]]
    for row, group in zip(groups[1:], data["groups"]):
        assert [float(x) for x in row[3:]] == pytest.approx(list(group["metrics"].values()), abs=5e-7)
    worst = _table_with(tables, "doc")
    assert worst[0] == ["doc", "tokens", "bytes", "nll", "perplexity", "bits_per_byte"]
    assert [r[0] for r in worst[1:]] == [w["doc"] for w in data["worst"]]
    assert [int(r[1]) for r in worst[1:]] == [w["tokens"] for w in data["worst"]]
    gates = _table_with(tables, "gate")
    assert gates[1:] == [["--max bits_per_byte=4", "3.496995", "✅ pass"], ["--min nll=20", "15.523444", "❌ fail"]]
    assert "1 of 2 gates passed" in result.stdout
    assert "Worst documents" in result.stdout
    heading = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "heading_open")
    assert "".join(c.content for c in heading.children) == (
        f"nll tokens: {TRIGRAM} (table; 435 tokens, 12 documents, 0 masked, 0 placeholders)")


def test_markdown_of_compare_has_the_deltas_and_the_fail_if_worse_gate():
    args = ("tokens", "--compare", TRIGRAM, BIGRAM, "--fail-if-worse", "0", "--worst", "2")
    data = _json(*args)
    result = _invoke(*args, "-f", "markdown")
    assert result.exit_code == 1  # the bigram is worse
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    comparison = _table_with(tables, "metric")  # the first: base against new
    assert comparison[0] == ["metric", "base", "new", "delta", "95% interval", "new better"]
    for row, expected in zip(comparison[1:], data["comparison"]):
        assert row[0] == expected["metric"]
        assert float(row[3]) == pytest.approx(expected["delta"], abs=5e-7)
        assert [float(x) for x in row[4].strip("[]").split(",")] == pytest.approx(expected["ci"], abs=5e-7)
    nll = data["comparison"][0]
    gates = _table_with(tables, "gate")
    assert gates[1][0] == "--fail-if-worse 0" and gates[1][-1] == "❌ fail"
    assert float(gates[1][1]) == pytest.approx(nll["delta"], abs=5e-7)
    assert "Regression:" in result.stdout and "New model" in result.stdout
    worst = _table_with(tables, "doc")
    assert worst[0] == ["doc", "nll_delta"]
    assert [r[0] for r in worst[1:]] == [w["doc"] for w in data["worst"]]
    assert "tokens_trigram.csv -> " in result.stdout.splitlines()[0].replace("\\", "")


def test_undefined_metrics_are_n_a_and_nan_and_null(tmp_path):
    frame = random_tokens(3, docs=6, placeholders=False, masks=False).drop(columns=["token"])
    path = tmp_path / "no_text.csv"
    frame.to_csv(path)  # with pandas' index column
    data = _json("tokens", path, "--doc", "doc_id")
    assert data["metrics"]["word_perplexity"] is None and data["metrics"]["bits_per_byte"] is None
    tables = _tables(_markdown(_invoke("tokens", path, "--doc", "doc_id", "-f", "markdown").stdout))
    metrics = {row[0]: row[1] for row in _table_with(tables, "metric")[1:]}
    assert metrics["word_perplexity"] == "n/a" and metrics["nll"] != "n/a"
    families = _families(_invoke("tokens", path, "--doc", "doc_id", "-f", "openmetrics").stdout)
    (sample,) = families["nll_word_perplexity"].samples
    assert sample.value != sample.value  # NaN
    assert families["nll_nll"].samples[0].value == data["metrics"]["nll"]


@pytest.fixture
def hostile_tokens(tmp_path):
    """A Parquet token table whose doc ids, --by values, --by column and file name are hostile."""
    rows = []
    for i, text in enumerate(HOSTILE):
        for j in range(1 + i % 3):
            rows.append({"doc_id": f"{text}#{i}", "logprob": -0.5 - (i * 7 + j) % 11 / 3, "token": "ab ",
                         "site|<b>": HOSTILE[(i * 7) % len(HOSTILE)]})
    path = tmp_path / "tokens [x](http:evil.example) <b>|`*_#.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_hostile_doc_ids_and_groups_make_no_markdown(hostile_tokens):
    result = _invoke("tokens", hostile_tokens, "--by", "site|<b>", "--worst", len(HOSTILE), "-f", "markdown")
    assert result.exit_code == 0, result.stderr
    tokens = _markdown(result.stdout)
    _no_markup(tokens)
    tables = _tables(tokens)
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), table
    groups = _table_with(tables, "site|<b>")
    assert sorted(row[0] for row in groups[1:]) == sorted({visible(h).strip() for h in HOSTILE})
    worst = _table_with(tables, "doc")
    assert sorted(row[0] for row in worst[1:]) == sorted(visible(f"{h}#{i}").strip() for i, h in enumerate(HOSTILE))
    heading = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "heading_open")
    assert visible(str(hostile_tokens)) in "".join(c.content for c in heading.children)


def test_hostile_strings_stay_text_in_junit_and_openmetrics(hostile_tokens):
    args = ("tokens", hostile_tokens, "--by", "site|<b>", "--max", "nll=0.1")
    junit = _invoke(*args, "-f", "junit")
    assert junit.exit_code == 1
    (suite,) = JUnitXml.fromstring(junit.stdout)
    properties = {p.name: p.value for p in suite.properties()}
    assert properties["input.files"] == visible(str(hostile_tokens))
    families = _families(_invoke(*args, "-f", "openmetrics").stdout)
    groups = {s.labels["group"] for s in families["nll_nll"].samples if "group" in s.labels}
    assert groups == {visible(f"site|<b>={h}") for h in HOSTILE}


# -- JUnit ---------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_gate():
    result = _invoke("tokens", TRIGRAM, "--max", "bits_per_byte=3", "--max", "nll=11", "--min", "doc_nll=1",
                     "-f", "junit")
    assert result.exit_code == 1
    (suite,) = JUnitXml.fromstring(result.stdout)
    assert (suite.tests, suite.failures, suite.errors) == (3, 1, 0)
    cases = list(suite)
    assert [c.name for c in cases] == ["--max bits_per_byte=3", "--max nll=11", "--min doc_nll=1"]
    assert [c.is_passed for c in cases] == [False, True, True]
    assert {c.classname for c in cases} == {"nll.tokens"}
    (failure,) = cases[0].result
    assert isinstance(failure, Failure)
    assert failure.message == "bits_per_byte = 3.497 is above the maximum 3"
    properties = {p.name: p.value for p in suite.properties()}
    assert (properties["documents"], properties["tokens"], properties["units"]) == ("12", "435", "nats")
    assert float(properties["metric.nll"]) == pytest.approx(_json("tokens", TRIGRAM)["metrics"]["nll"], abs=5e-7)


def test_junit_without_gates_has_one_passing_testcase():
    (suite,) = JUnitXml.fromstring(_invoke("tokens", TRIGRAM, "-f", "junit").stdout)
    (case,) = list(suite)
    assert case.is_passed and "no gates" in case.name


def test_junit_of_compare_tests_fail_if_worse_on_bits_per_byte_across_tokenizers(tmp_path):
    frame = random_tokens(5, docs=12, placeholders=False, masks=False)
    base = layouts(tmp_path, frame)["chat"]
    rows = []
    split = False
    for row in frame.assign(logprob=frame["logprob"] - 0.5).to_dict("records"):  # worse everywhere
        if not split and len(row["token"]) == 2:  # another tokenizer: one token in two, the same bytes
            rows += [{**row, "token": row["token"][0], "logprob": row["logprob"] / 2},
                     {**row, "token": row["token"][1], "logprob": row["logprob"] / 2}]
            split = True
        else:
            rows.append(row)
    retokenized = pd.DataFrame(rows)
    (tmp_path / "new").mkdir()
    new = layouts(tmp_path / "new", retokenized)["chat"]
    data = _json("compare", base, new, "--fail-if-worse", "0")
    assert data["fail_if_worse_metric"] == "bits_per_byte" and data["comparison"][0]["ci"] == [None, None]
    result = _invoke("compare", base, new, "--fail-if-worse", "0", "-f", "junit")
    assert result.exit_code == 1
    (suite,) = JUnitXml.fromstring(result.stdout)
    (case,) = list(suite)
    assert case.name == "--fail-if-worse 0" and case.classname == "nll.tokens.compare"
    assert case.result[0].message.startswith("bits_per_byte got worse: delta +")


# -- OpenMetrics ---------------------------------------------------------------------------------


def test_openmetrics_has_the_metrics_groups_and_gates():
    args = ("tokens", TRIGRAM, "--by", "source", "--base", "2", "--max", "bits_per_byte=4")
    data = _json(*args)
    families = _families(_invoke(*args, "-f", "openmetrics").stdout)
    for name, value in data["metrics"].items():
        overall = [s for s in families[f"nll_{name}"].samples if "group" not in s.labels]
        assert [s.value for s in overall] == [value]  # exactly: repr of the float64
        assert overall[0].labels["command"] == "tokens" and overall[0].labels["input"] == str(TRIGRAM)
    assert families["nll_nll"].samples[0].labels["units"] == "bits"
    assert families["nll_bits_per_byte"].samples[0].labels["units"] == "bits"
    assert "units" not in families["nll_perplexity"].samples[0].labels
    assert [s.value for s in families["nll_documents"].samples] == [12, *(g["documents"] for g in data["groups"])]
    assert [s.value for s in families["nll_tokens"].samples] == [435, *(g["tokens"] for g in data["groups"])]
    by_group = {s.labels["group"]: s.value for s in families["nll_doc_nll"].samples if "group" in s.labels}
    assert by_group == {f"source={g['by']['source']}": g["metrics"]["doc_nll"] for g in data["groups"]}
    (gate,) = families["nll_gate_passed"].samples
    assert gate.labels["gate"] == "--max bits_per_byte=4" and gate.value == 1


def test_openmetrics_of_compare_has_base_new_and_deltas():
    args = ("tokens", "--compare", BIGRAM, TRIGRAM, "--fail-if-worse", "0")
    data = _json(*args)
    result = _invoke(*args, "-f", "openmetrics")
    assert result.exit_code == 0
    families = _families(result.stdout)
    models = {s.labels["model"]: s.value for s in families["nll_nll"].samples}
    assert models == {"new": data["metrics"]["nll"], "base": data["base"]["metrics"]["nll"]}
    for row in data["comparison"]:
        assert families[f"nll_{row['metric']}_delta"].samples[0].value == row["delta"]
        assert [families[f"nll_{row['metric']}_delta_{side}"].samples[0].value for side in ("lower", "upper")] == \
            row["ci"]
    assert families["nll_gate_passed"].samples[0].labels["gate"] == "--fail-if-worse 0"
    assert {s.labels["command"] for f in families.values() for s in f.samples} == {"tokens compare"}


# -- --report ------------------------------------------------------------------------------------


def test_report_files_in_every_format_besides_stdout(tmp_path):
    files = [tmp_path / name for name in ("r.json", "r.md", "r.xml", "r.prom", "r.txt")]
    args = ["tokens", TRIGRAM, "--by", "source", "--worst", "2", "--max", "nll=10"]
    result = _invoke(*args, *[a for f in files for a in ("--report", f)])
    assert result.exit_code == 1  # the gate fails; the reports are written all the same
    assert result.stdout == _invoke(*args).stdout  # the table on stdout, unchanged
    assert loads_strict(files[0].read_text()) == loads_strict(_invoke(*args, "-f", "json").stdout)
    assert files[1].read_text() == _invoke(*args, "-f", "markdown").stdout
    assert _no_timestamp(files[2].read_text()) == _no_timestamp(_invoke(*args, "-f", "junit").stdout)
    assert files[3].read_text() == files[4].read_text() == _invoke(*args, "-f", "openmetrics").stdout
    assert _leftovers(tmp_path) == []


def test_report_on_token_compare_through_nll_compare(tmp_path):
    frame = random_tokens(7, docs=8, placeholders=False, masks=False)
    files = layouts(tmp_path, frame)
    report = tmp_path / "compare.md"
    result = _invoke("compare", files["chat"], files["vllm"], "--fail-if-worse", "0", "--report", report)
    assert result.exit_code == 0, result.stderr
    text = report.read_text()
    assert text.startswith("## nll tokens compare")
    assert text == _invoke("compare", files["chat"], files["vllm"], "--fail-if-worse", "0", "-f", "markdown").stdout


def test_report_paths_are_checked_before_reading(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("doc_id,logprob\nd1,0.5\n")  # a positive log-probability: an input error, if it were read
    assert_input_error(_invoke("tokens", bad, "--report", tmp_path / "r.html"), "unknown suffix", ".md (markdown)")
    assert_input_error(_invoke("tokens", bad, "--report", tmp_path / "missing" / "r.md"), "--report")
    assert_input_error(_invoke("tokens", bad, "--report", tmp_path / "r.json", "--per-doc", tmp_path / "r.json"),
                       "written twice")
    assert_input_error(_invoke("tokens", bad, "--report", tmp_path / "twice.md", "--report", tmp_path / "twice.md"),
                       "written twice")
    onto = tmp_path / "tokens.txt"
    onto.write_text("doc_id,logprob\nd1,-0.5\n")
    assert_input_error(_invoke("tokens", onto, "--report", onto), "--report")
    assert onto.read_text() == "doc_id,logprob\nd1,-0.5\n"
    frame = random_tokens(8, docs=4, placeholders=False, masks=False)
    chat = layouts(tmp_path, frame)["chat"]
    assert_input_error(_invoke("compare", chat, chat, "--report", chat), "--report")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".md", ".json", ".html")) == []


def test_a_failed_run_keeps_the_old_report_and_leaves_no_temp_file(tmp_path):
    old = tmp_path / "r.md"
    old.write_text("the report of yesterday\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("doc_id,logprob\nd1,-0.5\nd1,0.5\n")
    result = _invoke("tokens", bad, "--report", old)
    assert_input_error(result, "bad.csv")
    assert old.read_text() == "the report of yesterday\n"
    assert _leftovers(tmp_path) == []


def test_per_doc_on_stdout_sends_the_report_to_stderr_and_the_file(tmp_path):
    report = tmp_path / "r.prom"
    result = _invoke("tokens", TRIGRAM, "--per-doc", "-", "-f", "markdown", "--report", report)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith('"doc","tokens"')
    assert "## nll tokens" in result.stderr
    assert report.read_text().endswith("# EOF\n")


# -- GitHub Actions ------------------------------------------------------------------------------


@pytest.fixture
def summary(tmp_path):
    path = tmp_path / "step_summary.md"
    path.write_text("## an earlier step\n")
    return path


def test_github_actions_annotates_failed_gates_and_appends_the_summary(summary):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    args = ("tokens", TRIGRAM, "--by", "source", "--max", "bits_per_byte=3", "--max", "nll=11")
    result = _invoke(*args, env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert errors == ["::error title=nll tokens%3A --max bits_per_byte=3 failed::bits_per_byte = 3.497 is above "
                      "the maximum 3"]
    assert "nll: gate failed: bits_per_byte" in result.stderr  # as without CI
    text = summary.read_text()
    assert text == "## an earlier step\n\n" + _invoke(*args, "-f", "markdown").stdout
    assert result.stdout == _invoke(*args).stdout


def test_no_ci_integration_and_elsewhere_change_nothing(summary):
    args = ("tokens", TRIGRAM, "--max", "nll=1")
    off = _invoke(*args, "--no-ci-integration", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    elsewhere = _invoke(*args, env={"GITHUB_ACTIONS": "false", "GITHUB_STEP_SUMMARY": str(summary)})
    for result in (off, elsewhere):
        assert result.exit_code == 1 and "::error" not in result.stderr
    assert summary.read_text() == "## an earlier step\n"


def test_token_compare_regression_is_annotated(summary):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = _invoke("tokens", "--compare", TRIGRAM, BIGRAM, "--fail-if-worse", "0", env=env)
    assert result.exit_code == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert error.startswith("::error title=nll tokens compare%3A --fail-if-worse 0 failed::nll got worse: delta +")
    assert "Regression:" in summary.read_text()


def test_a_real_run_under_github_actions_piped_to_head(summary, tmp_path):
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    report, junit = tmp_path / "tokens.md", tmp_path / "tokens-junit.xml"
    command = [sys.executable, "-m", "nllcli", "tokens", str(TRIGRAM), "--by", "source", "--max", "nll=11",
               "--report", str(report), "--report", str(junit), "-f", "markdown", "-q"]
    head = subprocess.run(f"{' '.join(json.dumps(c) for c in command)} | head -1", shell=True, env=env,
                          capture_output=True, text=True, timeout=120)
    assert head.returncode == 0 and head.stdout.startswith("## nll tokens")
    full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert full.stderr == ""
    assert report.read_text() == full.stdout
    assert summary.read_text().endswith(full.stdout)
    (suite,) = JUnitXml.fromstring(junit.read_text())
    assert [c.name for c in suite] == ["--max nll=11"]
    assert one_line(subprocess.run([*command[:4], "--report", str(tmp_path / "x.pdf")], env=env,
                                   capture_output=True, text=True, timeout=120).stderr).startswith("nll: error: ")


def test_nll_compare_on_token_files_annotates_unless_told_not_to(tmp_path, summary):
    files = layouts(tmp_path, random_tokens(9, docs=8, placeholders=False, masks=False))
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    args = ("compare", files["chat"], files["vllm"], "--fail-if-worse", "-1")  # the same tokens: delta 0 > -1
    result = _invoke(*args, env=env)
    assert result.exit_code == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert error.startswith("::error title=nll tokens compare%3A --fail-if-worse -1 failed::nll got worse")
    assert summary.read_text().count("## nll tokens compare") == 1
    quiet = _invoke(*args, "--no-ci-integration", env=env)
    assert quiet.exit_code == 1 and "::error" not in quiet.stderr
    assert summary.read_text().count("## nll tokens compare") == 1
