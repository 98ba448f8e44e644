"""--report files (by suffix, atomic, never an input) and GitHub Actions (annotations, job summary),
simulated by environment variables and a temporary summary file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from junitparser import JUnitXml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from typer.testing import CliRunner

from helpers import assert_input_error, loads_strict, one_line
from nllcli.ci import error_annotations, escape_data, escape_property, github_actions
from nllcli.cli import app
from nllcli.report import Gate, Report


def _invoke(*args, env=None):
    environment = {"GITHUB_ACTIONS": None, "GITHUB_STEP_SUMMARY": None, **(env or {})}
    return CliRunner().invoke(app, [str(a) for a in args], env=environment)


def _no_timestamp(text: str) -> str:
    return re.sub(r' timestamp="[^"]*"', "", text)


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# -- --report ----------------------------------------------------------------------------------


def test_report_files_in_every_format_besides_stdout(samples, tmp_path):
    files = [tmp_path / name for name in ("r.json", "r.md", "r.xml", "r.prom", "r.txt")]
    args = ["score", samples / "robot_tools.csv", "--by", "camera", "--max", "nll=0.3"]
    result = _invoke(*args, *(x for f in files for x in ("--report", f)))
    assert result.exit_code == 1  # the gate failed, and every file is written all the same
    assert "nll score: " in result.stdout  # the table, on stdout as without --report
    for path, fmt in zip(files, ("json", "markdown", "junit", "openmetrics", "openmetrics")):
        expected = _invoke(*args, "--format", fmt).stdout
        assert _no_timestamp(path.read_text()) == _no_timestamp(expected), fmt
    assert loads_strict(files[0].read_text())["gates"][0]["passed"] is False
    assert JUnitXml.fromstring(files[2].read_text()).failures == 1
    assert list(text_string_to_metric_families(files[3].read_text()))
    assert _leftovers(tmp_path) == []


def test_report_on_kl_and_compare(samples, tmp_path):
    kl = _invoke("kl", samples / "robot_tools_annotators.csv", samples / "robot_tools.csv",
                 "--report", tmp_path / "kl.md", "-f", "json")
    assert kl.exit_code == 0, kl.stderr
    assert loads_strict(kl.stdout)["command"] == "kl"
    assert (tmp_path / "kl.md").read_text().startswith("## nll kl")
    compare = _invoke("compare", samples / "robot_tools.csv", samples / "robot_tools_model_b.csv",
                      "--fail-if-worse", "-0.5", "--report", tmp_path / "c.xml", "--report", tmp_path / "c.json")
    assert compare.exit_code == 1
    (suite,) = JUnitXml.fromstring((tmp_path / "c.xml").read_text())
    assert [(c.name, c.is_passed) for c in suite] == [("--fail-if-worse -0.5", False)]
    assert loads_strict((tmp_path / "c.json").read_text())["fail_if_worse"] == -0.5


def test_unknown_suffix_is_a_usage_error_naming_the_known_ones(samples, tmp_path):
    result = _invoke("score", samples / "robot_tools.csv", "--report", tmp_path / "r.html")
    line = assert_input_error(result, "--report", "r.html", "unknown suffix '.html'")
    for suffix in (".json", ".md", ".xml", ".prom", ".txt"):
        assert suffix in line
    assert list(tmp_path.iterdir()) == []


def test_report_onto_an_input_is_refused(samples, tmp_path):
    preds = tmp_path / "preds.csv"
    preds.write_bytes((samples / "robot_tools.csv").read_bytes())
    os.link(preds, tmp_path / "preds.md")
    result = _invoke("score", preds, "--report", tmp_path / "preds.md")
    assert_input_error(result, "--report", "that is an input file")
    assert (tmp_path / "preds.md").read_bytes() == (samples / "robot_tools.csv").read_bytes()


def test_report_twice_or_onto_per_sample_is_refused(samples, tmp_path):
    twice = _invoke("score", samples / "robot_tools.csv", "--report", tmp_path / "r.json",
                    "--report", tmp_path / "." / "r.json")
    assert_input_error(twice, "written twice")
    (tmp_path / "r.json").symlink_to(tmp_path / "x.csv")
    both = _invoke("score", samples / "robot_tools.csv", "--per-sample", tmp_path / "x.csv",
                   "--report", tmp_path / "r.json")
    assert_input_error(both, "--report", "written twice")
    assert not (tmp_path / "x.csv").exists()


def test_report_into_a_missing_folder_is_refused_before_reading(samples, tmp_path):
    result = _invoke("score", samples / "robot_tools.csv", "--report", tmp_path / "no" / "r.json")
    assert_input_error(result, "--report", "does not exist")


def test_a_failed_run_keeps_the_old_report_and_leaves_no_temp_file(samples, tmp_path):
    old = tmp_path / "r.md"
    old.write_text("the report of yesterday\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,p_a,p_b\na,0.5,0.7\n")
    result = _invoke("score", bad, "--report", old)
    assert_input_error(result, "bad.csv")
    assert old.read_text() == "the report of yesterday\n"
    assert _leftovers(tmp_path) == []


def test_a_report_onto_a_full_device_is_one_line_and_exit_2(samples, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    (tmp_path / "full.json").symlink_to("/dev/full")
    result = _invoke("score", samples / "robot_tools.csv", "--report", tmp_path / "full.json")
    assert result.exit_code == 2
    assert "No space left on device" in one_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_a_report_replacing_a_file_keeps_its_mode(samples, tmp_path):
    target = tmp_path / "r.json"
    target.write_text("{}")
    target.chmod(0o640)
    assert _invoke("score", samples / "robot_tools.csv", "--report", target).exit_code == 0
    assert loads_strict(target.read_text())["command"] == "score"
    assert target.stat().st_mode & 0o777 == 0o640


def test_plot_has_no_report_option(run):
    assert "--report" not in run("plot", "--help").stdout
    for command in ("score", "kl", "compare"):
        text = run(command, "--help").stdout
        assert "--report" in text and "--no-ci-integration" in text


# -- GitHub Actions ------------------------------------------------------------------------------


@pytest.fixture
def summary(tmp_path):
    path = tmp_path / "step_summary.md"
    path.write_text("## an earlier step\n")
    return path


def test_github_actions_annotates_failed_gates_and_appends_the_summary(samples, summary):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    args = ("score", samples / "robot_tools.csv", "--by", "camera", "--max", "nll=0.3", "--max", "ece=0.01",
            "--min", "accuracy=0.5")
    result = _invoke(*args, env=env)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert errors == ["::error title=nll score%3A --max nll=0.3 failed::nll = 0.404979 is above the maximum 0.3",
                      "::error title=nll score%3A --max ece=0.01 failed::ece = 0.0403786 is above the maximum 0.01"]
    assert "nll: gate failed: nll = 0.404979 is above the maximum 0.3" in result.stderr  # as without CI
    text = summary.read_text()
    assert text.startswith("## an earlier step\n")
    assert text.endswith(_invoke(*args, "-f", "markdown").stdout)
    assert result.stdout == _invoke(*args).stdout  # stdout is untouched
    second = _invoke(*args, env=env)  # a second step appends again
    assert summary.read_text() == text + text[len("## an earlier step\n"):]
    assert second.exit_code == 1


def test_no_ci_integration_and_no_github_change_nothing(samples, summary):
    args = ("score", samples / "robot_tools.csv", "--max", "nll=0.3")
    plain = _invoke(*args)
    off = _invoke(*args, "--no-ci-integration", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    elsewhere = _invoke(*args, env={"GITHUB_ACTIONS": "false", "GITHUB_STEP_SUMMARY": str(summary)})
    for result in (off, elsewhere):
        assert (result.exit_code, result.stdout, result.stderr) == (plain.exit_code, plain.stdout, plain.stderr)
    assert "::error" not in plain.stderr
    assert summary.read_text() == "## an earlier step\n"


def test_compare_regression_is_annotated(samples, summary):
    result = _invoke("compare", samples / "robot_tools.csv", samples / "robot_tools_model_b.csv",
                     "--fail-if-worse", "-0.5", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("::error")]
    assert line.startswith("::error title=nll compare%3A --fail-if-worse -0.5 failed::nll got worse: delta")
    assert "Regression:" in summary.read_text()


def test_an_unwritable_summary_is_a_warning_and_keeps_the_exit_code(samples, tmp_path):
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "missing" / "summary.md")}
    ok = _invoke("score", samples / "robot_tools.csv", env=env)
    assert ok.exit_code == 0
    assert "nll: warning: GITHUB_STEP_SUMMARY" in one_line(ok.stderr)
    gate = _invoke("score", samples / "robot_tools.csv", "--max", "nll=0.3", env=env)
    assert gate.exit_code == 1


def test_without_a_summary_file_only_annotations(samples):
    result = _invoke("score", samples / "robot_tools.csv", "--max", "nll=0.3", env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    assert sum(line.startswith("::error") for line in result.stderr.splitlines()) == 1


def test_workflow_command_escaping():
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a: b, c%\n") == "a%3A b%2C c%25%0A"
    assert github_actions({"GITHUB_ACTIONS": "true"})
    assert not github_actions({"GITHUB_ACTIONS": "1"}) and not github_actions({})


def test_annotation_of_a_hostile_gate_is_one_line():
    report = Report("score", {"preds": ["p.csv"]}, 1, ["a"], "nats", {"nll:\n%,x": 1.0},
                    gates=[Gate("nll:\n%,x", "max", 0.5)])
    (line,) = error_annotations(report)
    assert "\n" not in line and "\r" not in line
    title, _, message = line[len("::error title="):].partition("::")
    assert ":" not in title and "," not in title and "%25" in title
    assert message == "nll:\\n%25,x = 1 is above the maximum 0.5"  # the newline shown as \\n, as on stderr


def test_a_real_run_under_github_actions(nll_exe, samples, summary, tmp_path):
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = subprocess.run([*nll_exe, "compare", str(samples / "robot_tools.csv"),
                             str(samples / "robot_tools_model_b.csv"), "--by", "camera", "--fail-if-worse", "0",
                             "--max", "ece=0.02", "--report", str(tmp_path / "c.xml")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stderr
    assert "::error title=nll compare%3A --max ece=0.02 failed::ece = 0.0251523 is above the maximum 0.02" \
        in result.stderr.splitlines()
    assert "### Base against new" in summary.read_text()
    (suite,) = JUnitXml.fromstring((tmp_path / "c.xml").read_text())
    assert [(c.name, c.is_passed) for c in suite] == [("--max ece=0.02", False), ("--fail-if-worse 0", True)]


def test_stdout_is_untouched_by_ci_when_piped_to_head(nll_exe, samples, summary):
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = subprocess.run(f"{sys.executable} -m nllcli score {samples / 'robot_tools.csv'} -f markdown | head -1",
                            shell=True, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.startswith("## nll score")
    assert "Traceback" not in result.stderr


def test_report_files_are_written_when_stdout_closes_early(nll_exe, samples, tmp_path):
    """A reader that closed its end before the report (`| head` on a long one): exit 0, files written."""
    script = (f"{sys.executable} -m nllcli score {samples / 'robot_tools.csv'} --max nll=0.3 "
              f"--report {tmp_path / 'r.json'} | (exec 0<&-; sleep 1)")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert loads_strict((tmp_path / "r.json").read_text())["gates"][0]["passed"] is False


def test_a_summary_over_githubs_limit_is_cut_at_a_line_with_a_note(tmp_path):
    from nllcli import ci

    groups = [{"by": {"site": f"site-{i:06d}"}, "rows": 1, "metrics": {"nll": 0.1}} for i in range(40_000)]
    report = Report("score", {"preds": ["p.csv"]}, 40_000, ["a"], "nats", {"nll": 0.1}, groups=groups)
    summary = tmp_path / "summary.md"
    warnings = ci.github_integration(report, {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    text = summary.read_text()
    assert len(text.encode()) <= ci.SUMMARY_LIMIT
    assert text.endswith("write it whole with --report FILE.md.*\n")
    assert "| site\\-000000 |" in text and "| site\\-039999 |" not in text
    assert len(warnings) == 1 and "over GitHub's 1 MiB job summary limit" in warnings[0]
