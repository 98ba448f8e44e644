"""A few runs of the real program in a child process: exit codes, streams and a real shell pipe."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess

import pytest

import nllcli


def _no_constants(name):
    raise ValueError(f"non-strict JSON constant {name}")


def _run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def test_score_sample_csv(nll_exe, samples):
    result = _run([*nll_exe, "score", str(samples / "robot_tools.csv"), "--format", "json"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout, parse_constant=_no_constants)
    assert data["command"] == "score"
    assert data["rows"] == 1000
    assert data["classes"] == ["wrench", "screwdriver", "hammer"]
    assert 0 < data["metrics"]["nll"] < 1
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(data["metrics"]["nll"]))


def test_table_output_through_a_pipe_is_plain(nll_exe, samples):
    result = _run([*nll_exe, "score", str(samples / "robot_tools.csv")])
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    for name in ("nll", "cross_entropy", "perplexity", "accuracy"):
        assert name in result.stdout


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """20,000 rows: far more per-sample CSV than a pipe buffer holds, so `head -1` closes it early."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    lines = ["id,label,p_a,p_b,p_c"]
    for i in range(20_000):
        a = 0.1 + (i % 7) / 10
        lines.append(f"row-{i:06d},{'abc'[i % 3]},{a:.2f},{(1 - a) / 2:.3f},{(1 - a) / 2:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_per_sample_into_head_closes_quietly(nll_exe, big_csv):
    command = " ".join(shlex.quote(part) for part in nll_exe)
    script = (f"{command} score {shlex.quote(str(big_csv))} --per-sample - --format json 2>err.txt | head -1; "
              "echo \"status=${PIPESTATUS[0]}\"; cat err.txt >&2")
    result = _run(["bash", "-c", script], cwd=big_csv.parent)
    assert result.stdout.splitlines()[0] == '"id","label","predicted","p_true","nll"'
    assert result.stdout.splitlines()[1] == "status=0"
    assert "BrokenPipe" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr
    # Whatever reached stderr is the report (or nothing, when the closed pipe ended the run early).
    if result.stderr.strip():
        json.loads(result.stderr, parse_constant=_no_constants)


def test_per_sample_to_stdout_in_full(nll_exe, big_csv):
    result = _run([*nll_exe, "score", str(big_csv), "--per-sample", "-", "--format", "ndjson"])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 20_001
    report = json.loads(result.stderr, parse_constant=_no_constants)
    assert report["rows"] == 20_000


def test_input_error_exit_2_without_traceback(nll_exe, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label,p_a,p_b\nr1,a,0.5,0.5\nr2,b,0.9,0.9\n")  # found while reading the rows
    # Ten times over: a crash on the way out (SIGABRT, "terminate called without an active
    # exception") does not happen on every run.
    for _ in range(10):
        result = _run([*nll_exe, "score", str(bad)])
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert "Traceback" not in result.stderr and "terminate" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("nll: error: ")
        assert "bad.csv" in lines[0] and "row 2" in lines[0] and "--renormalize" in lines[0]


def test_gate_exit_1(nll_exe, samples):
    result = _run([*nll_exe, "kl", str(samples / "robot_tools_annotators.csv"), str(samples / "robot_tools.csv"),
                   "--max", "kl=0.05", "--format", "ndjson"])
    assert result.returncode == 1
    assert json.loads(result.stdout)["metrics"]["kl"] > 0.05
    assert result.stderr.startswith("nll: gate failed: kl = ")


def test_version(nll_exe):
    result = _run([*nll_exe, "--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"nll {nllcli.__version__}"
    assert result.stderr == ""


def _pipefail(script: str, cwd):
    """Run a bash pipeline under pipefail; stdout of the script, stderr of the command kept apart."""
    return _run(["bash", "-c", f"set -o pipefail; {script}"], cwd=cwd)


HEAD_COMMANDS = {
    "score": "score robot_tools.csv --by camera --worst 50",
    "kl": "kl robot_tools_annotators.csv robot_tools.csv --symmetric",
    "compare": "compare robot_tools.csv robot_tools_model_b.csv --by camera --worst 200 --resamples 200",
}


@pytest.mark.parametrize("fmt", ["table", "json", "ndjson"])
@pytest.mark.parametrize("command", sorted(HEAD_COMMANDS))
def test_head_ends_quietly_with_0(nll_exe, samples, tmp_path, command, fmt):
    nll = " ".join(shlex.quote(part) for part in nll_exe)
    err = shlex.quote(str(tmp_path / "err.txt"))
    for _ in range(2):  # the pipe may close before, during or after the write
        result = _pipefail(f"{nll} {HEAD_COMMANDS[command]} -f {fmt} 2>{err} | head -1 >/dev/null; "
                           f"echo status=$?; cat {err}", cwd=samples)
        assert result.stdout.splitlines() == ["status=0"], result.stdout


def test_head_on_per_sample_rows_ends_quietly_with_0(nll_exe, big_csv):
    nll = " ".join(shlex.quote(part) for part in nll_exe)
    for fmt in ("table", "json", "ndjson"):
        result = _pipefail(f"{nll} score {shlex.quote(str(big_csv))} --per-sample - -f {fmt} 2>err.txt "
                           "| head -1 >/dev/null; echo status=$?; grep -c -e Traceback -e 'nll: ' err.txt",
                           cwd=big_csv.parent)
        assert result.stdout.splitlines() == ["status=0", "0"], result.stdout


def test_head_on_plot_messages_and_help_ends_with_0(nll_exe, samples, tmp_path):
    nll = " ".join(shlex.quote(part) for part in nll_exe)
    out = shlex.quote(str(tmp_path / "p.png"))
    scripts = [f"{nll} plot robot_tools.csv -o {out} 2>&1 | head -1 >/dev/null",
               *(f"{nll} {command} --help | head -1 >/dev/null" for command in ("", "score", "kl", "compare", "plot")),
               f"{nll} --version | head -0"]
    for script in scripts:
        result = _pipefail(f"{script}; echo status=$?", cwd=samples)
        assert result.stdout.splitlines() == ["status=0"], (script, result.stdout, result.stderr)
        assert result.stderr == "", (script, result.stderr)


def test_piped_table_has_the_full_width_without_columns(nll_exe, samples):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "_TYPER_FORCE_DISABLE_TERMINAL")}
    result = _run([*nll_exe, "compare", "robot_tools.csv", "robot_tools_model_b.csv", "--worst", "2"], cwd=samples,
                  env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["metric", "base", "new", "delta", "95%", "interval", "new", "better"]
    assert lines[2].startswith("nll       0.404979  0.365134  -0.039845  [-0.078763, +0.000187]")
    assert all(line == line.rstrip() for line in lines)
