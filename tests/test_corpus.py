"""The corpus of broken and awkward inputs (tests/corpus.py) against the CLI contract.

Exit 0 ok, 1 a gate failed, 2 usage or input error (one stderr line, nothing on stdout, no partial
per-sample file), 3 internal error, 130 interrupted. Never a traceback for user errors.
Also: pipes closed early (`| head`) and Ctrl-C, in real subprocesses.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from corpus import CASES, CASES_BY_NAME, ref_nll

# Warning categories Python hides by default; any other warning would reach the user's stderr.
HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under folder, with the bytes of the files."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def _invoke(run, case, folder: Path, *extra: str):
    """Run in-process; also return what the real program would print besides its own lines:
    warnings, and exceptions "ignored" in callbacks (Python prints those with a traceback)."""
    stdin = case.stdin() if case.stdin else None
    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run(*case.argv(folder), *extra, input=stdin)
    finally:
        sys.unraisablehook = hook
    leaked = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
              if not issubclass(w.category, HIDDEN)]
    leaked += [f"Exception ignored in {u.object!r}: {u.exc_type.__name__}: {u.exc_value}" for u in unraisable]
    return result, leaked


def _check_message(stderr: str, case) -> None:
    for fragment in case.message:
        assert fragment.lower() in stderr.lower(), f"{fragment!r} not in stderr {stderr!r}"


def _check_metrics(report: dict, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = report["metrics"][name]
        if math.isfinite(value):
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12), name
        else:  # JSON has no infinity: null, with a warning naming the metric
            assert got is None, f"{name}: expected null (infinite), got {got}"
            assert any(w.startswith(name) for w in report["warnings"]), report["warnings"]


@pytest.fixture
def case_dir(tmp_path, request):
    """A fresh folder holding the case's files."""
    folder = tmp_path / "case"
    folder.mkdir()
    request.param.write(folder)
    return request.param, folder


def _cases(*exits):
    return [pytest.param(c, id=c.name) for c in CASES if not exits or c.exit in exits]


def test_corpus_size():
    assert len(CASES) >= 45


@pytest.mark.parametrize("case_dir", _cases(), indirect=True)
def test_case(case_dir, run):
    case, folder = case_dir
    before = _snapshot(folder)
    result, leaked = _invoke(run, case, folder, "--format", "json")
    stdout, stderr = result.stdout, result.stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert result.exit_code == case.exit, f"exit {result.exit_code}, stderr {stderr!r}"
    assert _snapshot(folder) == before, "the inputs or their folder changed"
    _check_message(stderr, case)
    if case.exit == 2:
        assert stdout == ""
        assert len(stderr.splitlines()) == 1, f"expected one line, got {stderr!r}"
        assert stderr.startswith("nll: error: ")
        assert not leaked, f"would be printed on stderr: {leaked}"
        return
    report = json.loads(stdout)
    if case.exit == 0:
        assert stderr == ""
    else:  # gate failed: only the gate lines on stderr
        lines = stderr.splitlines()
        assert lines and all(line.startswith("nll: gate failed: ") for line in lines), stderr
        assert any(not g["passed"] for g in report["gates"])
    if case.expect:
        _check_metrics(report, case.expect())
    assert not leaked, f"would be printed on stderr: {leaked}"


@pytest.mark.parametrize("case_dir", [c for c in _cases(2) if c.values[0].per_sample], indirect=True)
def test_case_leaves_no_per_sample_file(case_dir, run):
    """An erroring run never leaves out.csv nor its temp file, and never touches an existing out.csv."""
    case, folder = case_dir
    out = folder / "out.csv"
    before = _snapshot(folder)
    result, _ = _invoke(run, case, folder, "--per-sample", str(out))
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert _snapshot(folder) == before, "out.csv or a temp file was left behind"

    out.write_bytes(b"previous,contents\n1,2\n")
    before = _snapshot(folder)
    result, _ = _invoke(run, case, folder, "--per-sample", str(out))
    assert result.exit_code == 2, result.stderr
    assert _snapshot(folder) == before, "an existing out.csv was changed, or a temp file was left"


@pytest.mark.parametrize("case_dir", [c for c in _cases(0, 1) if c.values[0].per_sample], indirect=True)
def test_case_per_sample_file(case_dir, run):
    """A successful run writes every row to out.csv (and nothing else); rows agree with the report."""
    case, folder = case_dir
    out = folder / "out.csv"
    before = set(_snapshot(folder))
    result, _ = _invoke(run, case, folder, "--per-sample", str(out), "--format", "json")
    assert result.exit_code == case.exit, result.stderr
    assert set(_snapshot(folder)) - before == {"out.csv"}, "expected exactly one new file, out.csv"
    report = json.loads(result.stdout)
    rows = pacsv.read_csv(out, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert rows.num_rows == report["rows"]
    metric = "kl" if report["command"] == "kl" else ("cross_entropy" if "cross_entropy" in rows.column_names
                                                      else "nll")
    values = rows.column(metric).to_numpy(zero_copy_only=False).astype(np.float64)
    if report["metrics"][metric] is not None and not report["weighted"]:
        assert values.mean() == pytest.approx(report["metrics"][metric], rel=1e-9, abs=1e-12)


def test_quoted_ids_survive_in_per_sample_file(tmp_path, run):
    """Ids with commas, quotes and newlines come back unchanged from the per-sample CSV."""
    ids = ["a,b\nc", 'say "hi"', "plain", "tab\there"]
    quoted = ['"' + i.replace('"', '""') + '"' for i in ids]
    body = "id,label,p_a,p_b\n" + "".join(f"{q},a,0.5,0.5\n" for q in quoted)
    (tmp_path / "p.csv").write_text(body)
    result = run("score", tmp_path / "p.csv", "--per-sample", tmp_path / "out.csv")
    assert result.exit_code == 0, result.stderr
    rows = pacsv.read_csv(tmp_path / "out.csv", parse_options=pacsv.ParseOptions(newlines_in_values=True))
    assert rows.column("id").to_pylist() == ids


# -- real processes -------------------------------------------------------------------------

# The cases whose outcome can differ outside CliRunner: option parsing by Click (usage errors),
# numpy warnings (printed by the interpreter), standard input.
REAL = {"unknown_input_kind", "eps_not_a_number", "huge_logits", "huge_logits_finite_result",
        "stdin_csv", "stdin_empty", "truncated_last_line_on_stdin", "latin1_header", "empty_file",
        "subnormal_probabilities_exact", "zero_probability_exact_maths", "gate_fails",
        "malformed_row_with_invalid_utf8", "parquet_label_invalid_utf8"}
assert REAL <= set(CASES_BY_NAME), REAL - set(CASES_BY_NAME)


@pytest.mark.parametrize("case_dir", [c for c in _cases() if c.id in REAL], indirect=True)
def test_case_real_process(case_dir, nll_exe):
    case, folder = case_dir
    proc = subprocess.run([*nll_exe, *case.argv(folder), "--format", "json"], cwd=folder, capture_output=True,
                          input=case.stdin() if case.stdin else b"", timeout=60)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr
    assert proc.returncode == case.exit, stderr
    _check_message(stderr, case)
    if case.exit == 2:
        assert proc.stdout == b""
        assert len(stderr.splitlines()) == 1, f"expected one line, got {stderr!r}"
    elif case.exit == 0:
        assert stderr == "", "nothing on stderr when all is well (no numpy warnings)"
        if case.expect:
            _check_metrics(json.loads(proc.stdout), case.expect())


def test_fifo_input(tmp_path, nll_exe):
    """A named pipe (what `nll score <(zcat preds.csv.gz)` passes) is read like standard input."""
    from corpus import P3, VALID3, Y3

    fifo = tmp_path / "preds.csv"
    os.mkfifo(fifo)
    proc = subprocess.Popen([*nll_exe, "score", str(fifo), "-f", "json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed():  # one writer, writing once, like a shell's process substitution
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.01)
                continue
            os.set_blocking(fd, True)
            try:
                os.write(fd, VALID3.encode())
            except BrokenPipeError:
                pass
            finally:
                os.close(fd)
            return

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    writer.join(5)
    assert proc.returncode == 0, stderr.decode()
    assert json.loads(stdout)["metrics"]["nll"] == pytest.approx(ref_nll(P3, Y3), rel=1e-9)


# -- pipes and signals ----------------------------------------------------------------------

BIG_ROWS = 200_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory) -> Path:
    """~200k rows of 3-class predictions (about 9 MB)."""
    rng = np.random.default_rng(7)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=BIG_ROWS)
    table = pa.table({"id": pa.array(np.arange(BIG_ROWS).astype(str)),
                      "label": pa.array(np.array(["a", "b", "c"])[rng.integers(0, 3, BIG_ROWS)]),
                      "p_a": p[:, 0], "p_b": p[:, 1], "p_c": 1.0 - p[:, 0] - p[:, 1]})
    path = tmp_path_factory.mktemp("big") / "big.csv"
    pacsv.write_csv(table, path)
    return path


def test_per_sample_to_closed_pipe_is_quiet(big_csv, nll_exe, tmp_path):
    """`nll score BIG.csv --per-sample - | head -3`: three lines out, nothing on stderr but the report."""
    nll = subprocess.Popen([*nll_exe, "score", str(big_csv), "--per-sample", "-"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-3"], stdin=nll.stdout, stdout=subprocess.PIPE)
    nll.stdout.close()  # head alone holds the read end
    out, _ = head.communicate(timeout=60)
    stderr = nll.stderr.read().decode()
    nll.wait(timeout=60)
    nll.stderr.close()
    lines = out.decode().splitlines()
    assert len(lines) == 3 and "id" in lines[0] and "nll" in lines[0], lines
    for text in ("Traceback", "BrokenPipe", "Broken pipe", "Exception ignored", "internal error"):
        assert text not in stderr, stderr
    assert nll.returncode == 0, stderr


def test_stdin_per_sample_to_closed_pipe_is_quiet(big_csv, nll_exe, tmp_path):
    """`cat BIG.csv | nll score - --per-sample - | head -3`, five times (the reader of standard input
    is still busy when the pipe closes, so a bad exit is a matter of timing)."""
    data = big_csv.read_bytes()
    for _ in range(5):
        nll = subprocess.Popen([*nll_exe, "score", "-", "--per-sample", "-"], cwd=tmp_path, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        head = subprocess.Popen(["head", "-3"], stdin=nll.stdout, stdout=subprocess.PIPE)
        nll.stdout.close()

        def feed():
            try:
                for i in range(0, len(data), 1 << 16):
                    nll.stdin.write(data[i:i + (1 << 16)])
                nll.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        out, _ = head.communicate(timeout=60)
        try:
            nll.wait(timeout=60)
        finally:
            if nll.poll() is None:
                nll.kill()
                nll.wait()
        writer.join(5)
        _close(nll.stdin)
        stderr = nll.stderr.read().decode()
        nll.stderr.close()
        assert len(out.decode().splitlines()) == 3
        for text in ("Traceback", "BrokenPipe", "Fatal Python error", "Exception ignored", "internal error"):
            assert text not in stderr, stderr
        assert nll.returncode == 0, (nll.returncode, stderr)


def _close(stream) -> None:
    if stream is not None:
        try:
            stream.close()
        except (OSError, ValueError):  # a pipe whose reader is gone
            pass


def _default_sigint():
    """Children of a non-interactive shell may inherit SIGINT ignored; Python then keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when_temp_file_appears(nll, folder: Path) -> str:
    """Wait for the per-sample temp file, send SIGINT, return stderr once the process is gone."""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(folder.glob(".out.csv.*.tmp")):
            if nll.poll() is not None:
                pytest.fail(f"ended before the interrupt: exit {nll.returncode}, {nll.stderr.read().decode()!r}")
            time.sleep(0.02)
        assert list(folder.glob(".out.csv.*.tmp")), "the per-sample temp file never appeared"
        time.sleep(0.2)
        nll.send_signal(signal.SIGINT)
        try:
            nll.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 20 s after SIGINT")
    finally:
        if nll.poll() is None:
            nll.kill()
            nll.wait()
    stderr = nll.stderr.read().decode()
    for stream in (nll.stdin, nll.stdout, nll.stderr):
        _close(stream)
    return stderr


def _check_interrupted(nll, stderr: str, folder: Path) -> None:
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr
    assert nll.returncode == 130, stderr
    assert stderr.splitlines() == ["nll: interrupted"], stderr
    assert not (folder / "out.csv").exists()
    assert not list(folder.glob(".out.csv*")), "temp file left behind"


def test_sigint_on_large_file_exits_130_and_leaves_nothing(big_csv, nll_exe, tmp_path):
    """Ctrl-C while scoring a large input (the 200k-row file, 40 times over)."""
    nll = subprocess.Popen([*nll_exe, "score", *[str(big_csv)] * 40, "--per-sample", str(tmp_path / "out.csv")],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_default_sigint)
    stderr = _interrupt_when_temp_file_appears(nll, tmp_path)
    _check_interrupted(nll, stderr, tmp_path)


def _slow_writer(nll, data: bytes, stop: threading.Event) -> threading.Thread:
    """Write data at once, then a trickle of its rows that never ends (until stop)."""
    def write():
        try:
            nll.stdin.write(data)
            nll.stdin.flush()
            rows = data.split(b"\n", 1)[1].splitlines(keepends=True)
            i = 0
            while not stop.is_set():
                nll.stdin.write(b"".join(rows[i:i + 100]))
                nll.stdin.flush()
                i = (i + 100) % max(1, len(rows) - 100)
                time.sleep(0.02)
        except (BrokenPipeError, ValueError, OSError):
            pass

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_sigint_on_slow_stdin_exits_130_and_leaves_nothing(big_csv, nll_exe, tmp_path):
    """Ctrl-C while reading a standard input that is still being written."""
    nll = subprocess.Popen([*nll_exe, "score", "-", "--per-sample", str(tmp_path / "out.csv")], cwd=tmp_path,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_default_sigint)
    stop = threading.Event()
    writer = _slow_writer(nll, big_csv.read_bytes(), stop)
    try:
        stderr = _interrupt_when_temp_file_appears(nll, tmp_path)
    finally:
        stop.set()
        writer.join(5)
    _check_interrupted(nll, stderr, tmp_path)


def test_input_error_on_slow_stdin_exits_2(big_csv, nll_exe, tmp_path):
    """A bad row early in a standard input that is still being written: exit 2 at once, one line.
    Three times: whether the reader of standard input is mid-read at exit is a matter of timing."""
    data = big_csv.read_bytes()
    header, first, rest = data.split(b"\n", 2)
    bad = first.replace(first.split(b",")[2], b"1.5", 1)  # p_a of row 1 above 1
    for _ in range(3):
        nll = subprocess.Popen([*nll_exe, "score", "-"], cwd=tmp_path, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stop = threading.Event()
        writer = _slow_writer(nll, header + b"\n" + bad + b"\n" + rest, stop)
        try:
            nll.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop.set()
            if nll.poll() is None:
                nll.kill()
                nll.wait()
            writer.join(5)
        stderr = nll.stderr.read().decode()
        for stream in (nll.stdin, nll.stdout, nll.stderr):
            _close(stream)
        assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr
        assert nll.returncode == 2, (nll.returncode, stderr)
        assert len(stderr.splitlines()) == 1 and "row 1" in stderr, stderr
