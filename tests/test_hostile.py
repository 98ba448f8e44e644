"""A hostile environment, in real processes: read-only folders and file systems, full disks, symlinks
to other file systems, closed standard streams, SIGTERM and SIGHUP in the middle of a run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import loads_strict

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "robot_tools.csv"
NLL = [sys.executable, "-m", "nllcli"]


def _run(args, *, prefix=(), **kwargs):
    return subprocess.run([*prefix, *NLL, *map(str, args)], capture_output=True, text=True, timeout=120, **kwargs)


def _one_error_line(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name or
                 p.name.startswith(".") and p.suffix in (".png", ".svg", ".pdf")]
    assert leftovers == []


def _without_dac_override():
    """Run as root without the power to ignore file permissions (the interpreter lives under /root,
    which `nobody` cannot reach); as any other user, nothing is needed."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search")


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def _mount_tmpfs(folder: Path, options: str):
    """Mount a tmpfs on ``folder`` for the test, when mount works here (root, say), else skip."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 16 KB tmpfs (the per-sample file is 63 KB)."""
    yield from _mount_tmpfs(tmp_path / "tiny", "size=16k")


@pytest.fixture
def read_only_tmpfs(tmp_path):
    yield from _mount_tmpfs(tmp_path / "rofs", "ro,size=64k")


# -- operating-system faults on output: exit 2, one line naming the path and the reason ------------


def test_per_sample_into_a_read_only_folder(read_only_folder):
    result = _run(["score", SAMPLE, "--per-sample", read_only_folder / "p.csv"], prefix=_without_dac_override())
    _one_error_line(result, str(read_only_folder / "p.csv"), "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_plot_into_a_read_only_folder(read_only_folder):
    pytest.importorskip("matplotlib")
    result = _run(["plot", SAMPLE, "-o", read_only_folder / "p.png"], prefix=_without_dac_override())
    _one_error_line(result, "p.png", "Permission denied")
    assert list(read_only_folder.iterdir()) == []


def test_per_sample_on_a_read_only_file_system(read_only_tmpfs):
    result = _run(["score", SAMPLE, "--per-sample", read_only_tmpfs / "p.csv"])
    _one_error_line(result, "p.csv", "Read-only file system")


@pytest.mark.parametrize("name", ["p.csv", "p.parquet"])
def test_per_sample_fills_the_disk(tiny_tmpfs, name):
    result = _run(["score", SAMPLE, "--per-sample", tiny_tmpfs / name, "--format", "json"])
    _one_error_line(result, str(tiny_tmpfs / name), "No space left on device")
    assert list(tiny_tmpfs.iterdir()) == []  # the temp file went with the error


def test_plot_fills_the_disk(tiny_tmpfs):
    pytest.importorskip("matplotlib")
    result = _run(["plot", SAMPLE, "-o", tiny_tmpfs / "p.png"])
    _one_error_line(result, "p.png", "No space left on device")
    assert list(tiny_tmpfs.iterdir()) == []


@pytest.mark.parametrize("fmt", ["table", "json", "ndjson"])
def test_report_into_a_full_device(fmt):
    with open("/dev/full", "w") as full:
        result = subprocess.run([*NLL, "score", str(SAMPLE), "--format", fmt], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    _one_error_line(result, "standard output", "No space left on device")


def test_per_sample_through_a_symlink_to_a_full_device(tmp_path):
    (tmp_path / "p.csv").symlink_to("/dev/full")
    result = _run(["score", SAMPLE, "--per-sample", tmp_path / "p.csv"])
    _one_error_line(result, "p.csv", "No space left on device")
    assert (tmp_path / "p.csv").is_symlink()
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]


def test_per_sample_through_a_symlink_to_another_file_system(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    real = shm / f"nll-test-{os.getpid()}.csv"
    real.write_text("old\n")
    try:
        (tmp_path / "p.csv").symlink_to(real)
        result = _run(["score", SAMPLE, "--per-sample", tmp_path / "p.csv", "--format", "ndjson"])
        assert result.returncode == 0, result.stderr
        assert real.read_text().count("\n") == 1001
        assert (tmp_path / "p.csv").is_symlink()
        assert not [p for p in shm.iterdir() if p.name.startswith(f".{real.name}.")]
    finally:
        real.unlink(missing_ok=True)


# -- closed standard streams -----------------------------------------------------------------------


def _shell(script: str, **kwargs):
    command = " ".join(f"'{part}'" for part in NLL)
    return subprocess.run(["bash", "-c", script.replace("NLL", command)], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_closed_stdout_is_exit_2_without_traceback():
    result = _shell(f"NLL score '{SAMPLE}' >&-; echo status=$? >&2")
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["nll: error: standard output: Bad file descriptor", "status=2"]


@pytest.mark.parametrize("args", [["--version"], ["score", "--help"]])
def test_closed_stdout_for_help_and_version(args):
    result = _shell(f"NLL {' '.join(args)} >&-; echo status=$? >&2")
    assert result.stderr.splitlines()[-1] == "status=2"
    assert "Traceback" not in result.stderr


def test_closed_stderr_leaves_a_good_run_at_0():
    result = _shell(f"NLL score '{SAMPLE}' --format ndjson 2>&-; echo status=$?")
    lines = result.stdout.splitlines()
    assert loads_strict(lines[0])["rows"] == 1000
    assert lines[1] == "status=0"


def test_closed_stderr_keeps_the_gate_code():
    result = _shell(f"NLL score '{SAMPLE}' --format ndjson --max nll=0.1 2>&-; echo status=$?")
    assert result.stdout.splitlines()[-1] == "status=1"


def test_closed_stdin_reads_as_empty():
    result = _shell("NLL score - <&-; echo status=$? >&2")
    assert result.stderr.splitlines()[-1] == "status=2"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("nll: error: ")


# -- signals ---------------------------------------------------------------------------------------


def _feed_slowly(fifo: Path, rows: int, stop: threading.Event) -> None:
    """Many rows at once, then hold the FIFO open (no end of file) until told to stop."""
    with open(fifo, "w") as out:
        out.write("id,label,p_a,p_b\n")
        out.write("".join(f"r{i},a,0.6,0.4\n" for i in range(rows)))
        out.flush()
        stop.wait(60)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_during_per_sample_removes_the_temp_file(tmp_path, signum, code):
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    out.mkdir()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_slowly, args=(fifo, 300_000, stop), daemon=True)
    feeder.start()
    process = subprocess.Popen([*NLL, "score", str(fifo), "--per-sample", str(out / "p.csv"), "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(out.iterdir()):  # wait until the temp file exists: the run is under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no temp file appeared"
            time.sleep(0.05)
        temp = next(out.iterdir())
        assert temp.name.startswith(".p.csv.") and temp.name.endswith(".tmp")
        assert (temp.stat().st_mode & 0o777) == 0o600
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert list(out.iterdir()) == []
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
