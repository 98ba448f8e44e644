"""What reaches the terminal and what is written: width, escaping, --help, atomic files, inputs kept."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest
from helpers import assert_input_error, loads_strict, write_csv

from nllcli.cli import EXAMPLES
from nllcli.errors import OutputError, visible
from nllcli.render import to_json
from nllcli.sinks import AtomicFile


def _run(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "_TYPER_FORCE_DISABLE_TERMINAL")}
    return subprocess.run([sys.executable, "-m", "nllcli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env, **kwargs)


LONG = "left-handed-wrench-with-a-very-long-descriptive-name-" * 3


@pytest.fixture
def long_names(tmp_path):
    folder = tmp_path / ("a-folder-whose-name-is-much-longer-than-eighty-columns-" * 2)
    folder.mkdir()
    rows = [[f"k{i}", [LONG, "screwdriver"][i % 2], 0.7 if i % 2 == 0 else 0.2, 0.3 if i % 2 == 0 else 0.8,
             ["site with spaces", "x"][i % 2]] for i in range(6)]
    return write_csv(folder / "preds.csv", ["id", "label", f"p_{LONG}", "p_screwdriver", "camera"], rows)


# -- width ----------------------------------------------------------------------------------------


def test_piped_table_is_never_cut_nor_wrapped_and_has_no_trailing_spaces(long_names):
    result = _run(["score", long_names, "--by", "camera", "--worst", "3"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"nll score: {long_names} (6 rows, 2 classes)"  # the path whole, on one line
    assert sum(LONG in line for line in lines) >= 4  # per class, worst label and predicted: never cut
    assert not any(line != line.rstrip() for line in lines)
    assert "..." not in result.stdout and "…" not in result.stdout
    header = next(line for line in lines if line.startswith("true class"))
    assert header.split() == ["true", "class", "rows", "nll", "accuracy"]  # headers on one line
    assert max(map(len, lines)) > 160


def test_piped_width_ignores_a_narrow_columns_setting(long_names):
    env = {**os.environ, "COLUMNS": "40"}
    result = subprocess.run([sys.executable, "-m", "nllcli", "score", str(long_names)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith(LONG) for line in result.stdout.splitlines())


def test_in_process_table_rows_are_right_stripped(run, samples):
    result = run("score", samples / "robot_tools.csv", "--by", "camera")
    assert result.exit_code == 0, result.stderr
    assert all(line == line.rstrip() for line in result.stdout.splitlines())
    assert "0.93-1.00        698       0.987     0.961  #######################|" in result.stdout


# -- escaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J", "\\x1b[2J"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("a\u202eb", "a\\u202eb"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("line\nbreak\r\t", "line\\nbreak\\r\\t"),
    ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
    ("sep\u2028\u2029", "sep\\u2028\\u2029"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("[bold red]x[/]", "[bold red]x[/]"),
    ("café 中文 😀 no\xa0break", "café 中文 😀 no\xa0break"),
])
def test_visible_escapes_controls_and_keeps_other_characters(raw, shown):
    assert visible(raw) == shown
    assert visible(shown) == shown  # escaping twice changes nothing more


def test_json_keeps_strings_exact_but_escapes_terminal_controls(run, tmp_path):
    names = ["a\u202eb", "c\x9bd", "e\x1bf"]
    path = write_csv(tmp_path / "p.csv", ["label", *(f"p_{n}" for n in names)],
                     [[names[i % 3], *(0.5 if j == i % 3 else 0.25 for j in range(3))] for i in range(3)])
    result = run("score", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert loads_strict(result.stdout)["classes"] == names
    assert not any(c in result.stdout for c in "\u202e\x9b\x1b")
    assert "\\u202e" in result.stdout and "\\u009b" in result.stdout


def test_json_escape_of_astral_format_characters_round_trips():
    class Stub:
        def to_dict(self):
            return {"schema_version": 1, "name": "tag\U000e0041 ok é"}

    text = to_json(Stub())
    assert "\U000e0041" not in text and "é" in text
    assert loads_strict(text)["name"] == "tag\U000e0041 ok é"


def test_error_names_a_file_with_escape_sequences_visibly(run, tmp_path):
    bad = tmp_path / "evil\x1b[2J\u202e.csv"
    bad.write_text("label,p_a,p_b\na,0.5,0.9\n")
    result = run("score", bad)
    line = assert_input_error(result, "evil\\x1b[2J\\u202e.csv", "row 1")
    assert "\x1b" not in line and "\u202e" not in line


def test_markup_in_class_names_is_shown_as_text(run, tmp_path):
    names = ["[bold red]x[/]", "[/bold]", "[link=file:///etc/passwd]y"]
    rows = [[names[i % 3], *(0.5 if j == i % 3 else 0.25 for j in range(3)), "[/]"] for i in range(6)]
    path = write_csv(tmp_path / "p.csv", ["label", *(f"p_{n}" for n in names), "[red]g[/]"], rows)
    result = run("score", path, "--by", "[red]g[/]", "--worst", "2")
    assert result.exit_code == 0, result.stderr
    for text in (*names, "[red]g[/]"):
        assert text in result.stdout


# -- --help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "kl", "compare", "plot"])
def test_help_has_no_type_noise_and_ends_with_examples(run, command):
    result = run(command, "--help")
    assert result.exit_code == 0
    text = result.stdout
    for noise in ("<bool>", "<str>", "<float>", "<int>", "<list", "{PREDS}", "{BASE}"):
        assert noise not in text, noise
    assert "Examples" in text
    assert text.rstrip().splitlines()[-1].strip() == EXAMPLES[command][-1]
    for example in EXAMPLES[command]:
        assert example in text


def test_piped_help_has_no_trailing_spaces(run):
    for command in ("score", "compare"):
        lines = run(command, "--help").stdout.splitlines()
        assert lines and all(line == line.rstrip() for line in lines)


def test_help_flags_and_values(run):
    text = run("score", "--help").stdout
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    assert lines["--quiet"].split()[1:4] == ["--quiet", "-q", "Hide"]
    assert lines["--renormalize"].split()[2] == "Divide"
    assert " FILE " in lines["--per-sample"] and " COLUMN " in lines["--weight"] and " N " in lines["--worst"]
    assert "Usage: nll score [OPTIONS] PREDS..." in text


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_examples_run_in_sample_data(command, samples, tmp_path):
    folder = tmp_path / "sample_data"
    shutil.copytree(samples, folder)
    for example in EXAMPLES[command]:
        args = shlex.split(example)
        assert args[:2] == ["nll", command]
        result = _run(args[1:], cwd=folder)
        assert result.returncode == 0, (example, result.stderr)
        assert "error" not in result.stderr


# -- files written safely ------------------------------------------------------------------------


def test_atomic_file_is_private_until_commit_then_takes_the_usual_mode(tmp_path):
    target = tmp_path / "out.csv"
    file = AtomicFile(target)
    assert file.temp.parent == tmp_path and file.temp != target
    assert stat.S_IMODE(file.temp.stat().st_mode) == 0o600
    file.temp.write_text("x\n")
    file.commit()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_atomic_file_follows_a_symlink_and_keeps_it(tmp_path):
    real_folder = tmp_path / "real"
    real_folder.mkdir()
    real = real_folder / "data.csv"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    file = AtomicFile(link)
    assert file.temp.parent == real_folder
    file.temp.write_text("new\n")
    file.commit()
    assert link.is_symlink() and real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real_folder.iterdir()) == ["data.csv"]


def test_atomic_file_removes_its_temp_when_the_rename_fails(tmp_path):
    target = tmp_path / "out.csv"
    file = AtomicFile(target)
    file.temp.write_text("x\n")
    target.mkdir()  # os.replace of a file over a directory fails
    (target / "keep").write_text("")
    with pytest.raises(OutputError, match="Is a directory"):
        file.commit()
    assert not file.temp.exists()


def test_a_device_destination_is_written_directly(run, samples):
    result = run("score", samples / "robot_tools.csv", "--per-sample", os.devnull, "--format", "ndjson")
    assert result.exit_code == 0, result.stderr
    assert loads_strict(result.stdout)["rows"] == 1000


def test_per_sample_replacing_a_file_keeps_nothing_else_behind(run, samples, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    result = run("score", samples / "robot_tools.csv", "--per-sample", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert out.read_text().startswith('"id","label","predicted","p_true","nll"')
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# -- no output is an input -----------------------------------------------------------------------


def test_per_sample_inside_an_input_directory_is_refused(run, samples, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    shutil.copy(samples / "robot_tools.csv", folder / "p.csv")
    before = (folder / "p.csv").read_bytes()
    result = run("score", folder, "--per-sample", folder / "p.csv")
    assert_input_error(result, "--per-sample", "that is an input file")
    assert (folder / "p.csv").read_bytes() == before


def test_per_sample_onto_the_file_behind_stdin_is_refused(samples, tmp_path):
    path = tmp_path / "x.csv"
    shutil.copy(samples / "robot_tools.csv", path)
    before = path.read_bytes()
    with open(path, "rb") as stdin:
        result = _run(["score", "-", "--per-sample", path], stdin=stdin)
    assert result.returncode == 2, result.stderr
    assert "standard input" in result.stderr and "that is an input file" in result.stderr
    assert path.read_bytes() == before


def test_per_sample_onto_a_hard_link_or_symlink_of_an_input_is_refused(run, samples, tmp_path):
    path = tmp_path / "x.csv"
    shutil.copy(samples / "robot_tools.csv", path)
    (tmp_path / "hard.csv").hardlink_to(path)
    (tmp_path / "soft.csv").symlink_to(path)
    for name in ("hard.csv", "soft.csv"):
        assert_input_error(run("score", path, "--per-sample", tmp_path / name), "that is an input file")
    targets = tmp_path / "t.csv"
    shutil.copy(samples / "robot_tools_annotators.csv", targets)
    assert_input_error(run("score", path, "--targets", targets, "--per-sample", targets), "that is an input file")
    assert_input_error(run("kl", targets, path, "--per-sample", path), "that is an input file")


def test_plot_output_onto_an_input_is_refused(run, samples, tmp_path):
    path = tmp_path / "x.png"  # a data file under an image's name: a hard link to an input
    (tmp_path / "in").mkdir()
    data = tmp_path / "in" / "p.parquet"
    shutil.copy(samples / "robot_tools.parquet", data)
    os.link(data, path)
    pytest.importorskip("matplotlib")
    result = run("plot", tmp_path / "in", "-o", path)
    assert_input_error(result, "--output", "that is an input file")
    assert path.read_bytes() == data.read_bytes()


def test_per_sample_under_a_file_says_it_is_not_a_folder(run, samples, tmp_path):
    (tmp_path / "f.csv").write_text("")
    result = run("score", samples / "robot_tools.csv", "--per-sample", tmp_path / "f.csv" / "x.csv")
    assert_input_error(result, "f.csv is not a folder")
