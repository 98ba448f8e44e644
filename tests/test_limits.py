"""Bounded reading whatever the bytes, wide rows, and every operating-system fault named in one line.

Hostile inputs run in real processes with a generous safety bound on time (a subprocess timeout,
not a speed assertion) and their own peak memory (measured by a wrapper process whose only
child is nll, from its RUSAGE_CHILDREN).
Permission cases run the child without root's right to ignore file modes (see _unprivileged).
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import scipy.stats
from corpus import EPS, ref_kl, ref_nll
from helpers import assert_input_error, loads_strict

from nllcli import readers

MIB = 1 << 20
SAFETY_SECONDS = 60  # far above the second or so these take: a hang or a runaway read fails
PEAK_MB = 400  # the interpreter with numpy and pyarrow is about 110 MB


# Runs its arguments as its one child and prints that child's peak RSS (KiB) as a last stderr line.
_MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def _run_hostile(nll_exe, *args, stdin=subprocess.DEVNULL) -> tuple[int, str, str, float]:
    """Run nll to its end: (exit code, stdout, stderr, its peak RSS in MB)."""
    try:
        proc = subprocess.run([sys.executable, "-c", _MEASURE, *nll_exe, *map(str, args)], stdin=stdin,
                              capture_output=True, timeout=SAFETY_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {SAFETY_SECONDS} s: {args}")
    *lines, peak = proc.stderr.decode("utf-8", "replace").splitlines()
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), "\n".join(lines), int(peak) / 1024


def _check_refused(result, *fragments) -> str:
    code, stdout, stderr, peak = result
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nll: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert peak < PEAK_MB, f"peak RSS {peak:.0f} MB"
    return lines[0]


def _gzip_members(piece: bytes, copies: int) -> bytes:
    """A gzip file of ``copies`` members each holding ``piece``: tiny on disk, huge inflated."""
    member = gzip.compress(piece, compresslevel=9)
    return member * copies


# -- hostile bytes ----------------------------------------------------------------------------


def test_dev_zero_is_refused_at_once(nll_exe):
    """A first "line" that never ends, of NUL bytes: refused as binary after one block."""
    _check_refused(_run_hostile(nll_exe, "score", "/dev/zero"), "/dev/zero", "binary")


def test_file_of_nul_bytes(nll_exe, tmp_path):
    path = tmp_path / "zeros.csv"
    with open(path, "wb") as handle:
        handle.truncate(300 * MIB)  # sparse: 300 MB of NUL bytes without the disk writes
    _check_refused(_run_hostile(nll_exe, "score", path), "zeros.csv", "binary")


def test_gzip_bomb_of_nul_bytes(nll_exe, tmp_path):
    """5 MB of gzip that inflates to 5 GB: decompression is streamed and stops at the first block."""
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(_gzip_members(bytes(MIB), 5 * 1024))
    assert path.stat().st_size < 8 * MIB
    _check_refused(_run_hostile(nll_exe, "score", path), "bomb.csv.gz", "binary")


def test_gzip_bomb_of_one_endless_line(nll_exe, tmp_path):
    path = tmp_path / "line.csv.gz"
    path.write_bytes(_gzip_members(b"a" * MIB, 5 * 1024))
    _check_refused(_run_hostile(nll_exe, "score", path), "line.csv.gz", "header line longer than 16 MiB")


def test_single_line_longer_than_the_header_limit(nll_exe, tmp_path):
    path = tmp_path / "line.csv"
    path.write_bytes(b"p_a," * (200 * MIB // 4))  # 200 MB, no line end
    _check_refused(_run_hostile(nll_exe, "score", path), "line.csv", "header line longer than 16 MiB")


def test_endless_line_on_stdin(nll_exe):
    """The same from a pipe: `yes p_a, | tr -d '\\n' | nll score -` is refused, not read forever."""
    feeder = subprocess.Popen(["sh", "-c", "yes p_a, | tr -d '\\n'"], stdout=subprocess.PIPE)
    try:
        result = _run_hostile(nll_exe, "score", "-", stdin=feeder.stdout)
    finally:
        feeder.kill()
        feeder.wait()
        feeder.stdout.close()
    _check_refused(result, "<stdin>", "header line longer than 16 MiB")


# -- long rows --------------------------------------------------------------------------------


def _rows(n: int, start: int = 0) -> str:
    return "".join(f"k{i},{'ab'[i % 2]},0.75,0.25\n" for i in range(start, start + n))


def test_row_longer_than_the_limit_in_the_sample_is_named(run, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "ROW_LIMIT", 4 * MIB)
    path = tmp_path / "p.csv"
    path.write_text("id,label,p_a,p_b\n" + _rows(1) + "x" * (5 * MIB) + ",a,0.5,0.5\n" + _rows(3, 2))
    assert_input_error(run("score", path), "p.csv", "row longer than 4 MiB", "at row 2")


def test_row_longer_than_the_limit_past_the_sample_is_named(run, tmp_path, monkeypatch):
    """The long row is met while streaming: read again with larger blocks up to the limit, then named.
    (A row up to the limit always fits a block of that size; one up to twice as long may, depending on
    where it starts, so this one is longer than that.)"""
    monkeypatch.setattr(readers, "ROW_LIMIT", 4 * MIB)
    rows = 100_000  # about 2.4 MB of ordinary rows first
    path = tmp_path / "p.csv"
    path.write_text("id,label,p_a,p_b\n" + _rows(rows) + "x" * (9 * MIB) + ",a,0.5,0.5\n" + _rows(3, rows + 1))
    assert_input_error(run("score", path), "p.csv", "row longer than 4 MiB", f"at row {rows + 1}")


@pytest.mark.parametrize("where", ["in the sample", "past the sample"])
def test_row_of_3_mib_is_read(run_json, tmp_path, where):
    """A 3 MiB key among short rows: the block grows (or the file is read again), nothing is lost."""
    before = 3 if where == "in the sample" else 100_000
    long_key = "K" * (3 * MIB)
    path = tmp_path / "p.csv"
    path.write_text("id,label,p_a,p_b\n" + _rows(before) + f"{long_key},b,0.75,0.25\n" + _rows(50, before + 1))
    out = tmp_path / "out.csv"
    code, report, stderr = run_json("score", path, "--per-sample", out)
    assert code == 0, stderr
    n = before + 51
    assert report["rows"] == n
    labels = np.array([i % 2 for i in range(before)] + [1] + [i % 2 for i in range(before + 1, n)])
    p = np.tile([0.75, 0.25], (n, 1))
    assert report["metrics"]["nll"] == pytest.approx(ref_nll(p, labels), rel=1e-12)
    keys = pacsv.read_csv(out, read_options=pacsv.ReadOptions(block_size=8 * MIB)).column("id").to_pylist()
    assert keys[before] == long_key and len(keys) == n


def test_long_row_on_stdin_past_the_sample_says_how_to_read_it(run, tmp_path):
    """A stream cannot be read twice: a row wider than the block chosen from its first rows is named."""
    text = "id,label,p_a,p_b\n" + _rows(100_000) + "K" * (3 * MIB) + ",b,0.75,0.25\n"
    line = assert_input_error(run("score", "-", input=text.encode()), "<stdin>", "at row 100001")
    assert "by its path" in line


# -- wide rows --------------------------------------------------------------------------------

WIDE_K = 10_000  # rows over 1 MiB: each value written in 110 characters (trailing zeros, same double)


def _long_digits(value: float) -> str:
    mantissa, exponent = f"{value:.17e}".split("e")
    return f"{mantissa}{'0' * 86}e{exponent}"


def _write_wide_csv(path: Path, p: np.ndarray, labels: np.ndarray | None, keys: list[str]) -> None:
    names = [f"p_c{j}" for j in range(p.shape[1])]
    with open(path, "w") as handle:
        handle.write(",".join(["id", *(["label"] if labels is not None else []), *names]) + "\n")
        for i, row in enumerate(p):
            cells = [keys[i], *([f"c{labels[i]}"] if labels is not None else []), *map(_long_digits, row)]
            handle.write(",".join(cells) + "\n")


def _write_wide_parquet(path: Path, p: np.ndarray, labels: np.ndarray | None, keys: list[str]) -> None:
    columns = {"id": pa.array(keys)}
    if labels is not None:
        columns["label"] = pa.array([f"c{y}" for y in labels])
    columns.update({f"p_c{j}": p[:, j] for j in range(p.shape[1])})
    pq.write_table(pa.table(columns), path)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Two files of 12 rows over WIDE_K classes (rows of about 1.1 MB in CSV), in CSV and Parquet."""
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("wide")
    n = 12
    p, q = rng.dirichlet(np.ones(WIDE_K), size=n), rng.dirichlet(np.ones(WIDE_K), size=n)  # none below eps
    labels = rng.integers(0, WIDE_K, n)
    keys = [f"r{i}" for i in range(n)]
    order = rng.permutation(n)  # Q's rows in another order: paired by key
    for suffix, write in ((".csv", _write_wide_csv), (".parquet", _write_wide_parquet)):
        write(folder / f"p{suffix}", p, labels, keys)
        write(folder / f"q{suffix}", q[order], None, [keys[i] for i in order])
    return folder, p, q, labels


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_wide_rows_score(run_json, wide, suffix):
    folder, p, _, labels = wide
    if suffix == ".csv":
        with open(folder / "p.csv", "rb") as handle:
            assert max(len(line) for line in handle) > MIB
    code, report, stderr = run_json("score", folder / f"p{suffix}")
    assert code == 0, stderr
    assert report["rows"] == len(p) and len(report["classes"]) == WIDE_K
    assert report["metrics"]["nll"] == pytest.approx(ref_nll(p, labels), rel=1e-10)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_wide_rows_kl_equals_scipy(run_json, wide, suffix):
    folder, p, q, _ = wide
    code, report, stderr = run_json("kl", folder / f"p{suffix}", folder / f"q{suffix}")
    assert code == 0, stderr
    scipy_kl = np.mean([scipy.stats.entropy(p[i], q[i]) for i in range(len(p))])
    assert report["metrics"]["kl"] == pytest.approx(scipy_kl, rel=1e-10)
    assert report["metrics"]["entropy"] == pytest.approx(np.mean([scipy.stats.entropy(r) for r in p]), rel=1e-10)
    assert report["metrics"]["cross_entropy"] == pytest.approx(ref_kl(p, q, EPS)["cross_entropy"], rel=1e-10)


def test_wide_parquet_batches_are_bounded_in_values(wide):
    folder, p, _, _ = wide
    source = readers.open_source(str(folder / "p.parquet"))
    columns = [f"p_c{j}" for j in range(WIDE_K)]
    sizes = [c.batch.num_rows for c in source.batches(columns, {c: pa.float64() for c in columns})]
    assert sum(sizes) == len(p)
    assert max(sizes) * WIDE_K <= readers.PARQUET_BATCH_VALUES


def test_parquet_list_batches_are_bounded_in_values(tmp_path):
    """A list column of 5,000 probabilities per row counts as 5,000 values per row."""
    k, n = 5_000, 2_000
    p = np.random.default_rng(3).dirichlet(np.ones(k), size=n)
    lists = pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), k).cast(pa.list_(pa.float64()))
    pq.write_table(pa.table({"label": pa.array(np.arange(n) % k), "probs": lists}), tmp_path / "p.parquet")
    source = readers.open_source(str(tmp_path / "p.parquet"))
    sizes = [c.batch.num_rows for c in source.batches(["label", "probs"], {"probs": pa.list_(pa.float64())})]
    assert sum(sizes) == n
    assert max(sizes) * (k + 1) <= readers.PARQUET_BATCH_VALUES


def test_block_grows_with_the_row_width_only(tmp_path, samples):
    assert readers.open_source(str(samples / "robot_tools.csv")).block_size == readers.CSV_BLOCK_BYTES
    path = tmp_path / "wide.csv"
    path.write_text("id,label,p_a,p_b\n" + "K" * 300_000 + ",a,0.5,0.5\n" + _rows(3))
    block = readers.open_source(str(path)).block_size
    assert block >= readers.ROWS_PER_BLOCK * 300_000 and block & (block - 1) == 0  # a power of 2


# -- operating-system faults --------------------------------------------------------------------

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _unprivileged() -> None:
    """preexec_fn: the child obeys file modes like any user.

    Root ignores file modes through two capabilities; dropped from the bounding set before exec,
    the new program never has them. (Switching to `nobody` would be the other way, but here the
    interpreter itself lives in a folder only root may enter.) A non-root user has nothing to drop.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def locked(tmp_path, samples):
    """A folder with: ok.csv; secret.csv (mode 000); ds/ (a.csv, sub/b.csv, locked/ mode 000);
    ds_file/ (a.csv, secret.csv mode 000); closed/ (mode 600: listed, not entered) holding x.csv;
    ds_hidden/ (a.csv, .cache/ mode 000, not data). Modes are restored afterwards for cleanup."""
    data = (samples / "robot_tools.csv").read_bytes()
    files = ["ok.csv", "secret.csv", "ds/a.csv", "ds/sub/b.csv", "ds/locked/c.csv", "ds_file/a.csv",
             "ds_file/secret.csv", "closed/x.csv", "ds_hidden/a.csv", "ds_hidden/.cache/d.csv"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    modes = {"secret.csv": 0o000, "ds/locked": 0o000, "ds_file/secret.csv": 0o000, "closed": 0o600,
             "ds_hidden/.cache": 0o000}
    for name, mode in modes.items():
        (tmp_path / name).chmod(mode)
    probe = subprocess.run([sys.executable, "-c", f"open({str(tmp_path / 'secret.csv')!r}).close()"],
                           preexec_fn=_unprivileged, capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("this process cannot give up the right to read every file")
    yield tmp_path
    for name in modes:
        (tmp_path / name).chmod(0o755)


def _run_unprivileged(nll_exe, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*nll_exe, *map(str, args), "--format", "json"], capture_output=True, text=True,
                          timeout=SAFETY_SECONDS, preexec_fn=_unprivileged, check=False)


def _check_os_error(proc, *fragments) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nll: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_unreadable_file(locked, nll_exe):
    _check_os_error(_run_unprivileged(nll_exe, "score", locked / "secret.csv"),
                    f"{locked / 'secret.csv'}: permission denied")


def test_unreadable_file_as_targets_and_as_q(locked, nll_exe):
    _check_os_error(_run_unprivileged(nll_exe, "score", locked / "ok.csv", "--targets", locked / "secret.csv"),
                    "secret.csv: permission denied")
    _check_os_error(_run_unprivileged(nll_exe, "kl", locked / "ok.csv", locked / "secret.csv"),
                    "secret.csv: permission denied")


def test_unreadable_subfolder_of_a_directory_is_an_error(locked, nll_exe):
    """Not skipped with half the rows: the folder that cannot be listed is named."""
    _check_os_error(_run_unprivileged(nll_exe, "score", locked / "ds"),
                    f"{locked / 'ds' / 'locked'}: cannot list folder: permission denied")


def test_unreadable_file_inside_a_directory_is_an_error(locked, nll_exe):
    _check_os_error(_run_unprivileged(nll_exe, "score", locked / "ds_file"),
                    f"{locked / 'ds_file' / 'secret.csv'}: permission denied")


def test_folder_that_cannot_be_entered(locked, nll_exe):
    """Its names can be listed, its files not opened: as a directory input and as a path in it."""
    expected = f"permission denied (cannot enter folder {str(locked / 'closed')!r})"
    for target in (locked / "closed", locked / "closed" / "x.csv"):
        _check_os_error(_run_unprivileged(nll_exe, "score", target), str(locked / "closed" / "x.csv"), expected)


def test_unreadable_hidden_folder_is_not_data(locked, nll_exe):
    proc = _run_unprivileged(nll_exe, "score", locked / "ds_hidden")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 1000


def test_parquet_file_unreadable(locked, nll_exe, samples):
    path = locked / "p.parquet"
    path.write_bytes((samples / "robot_tools.parquet").read_bytes())
    path.chmod(0)
    try:
        _check_os_error(_run_unprivileged(nll_exe, "score", path), f"{path}: permission denied")
    finally:
        path.chmod(0o644)


def test_broken_link_in_a_directory_is_an_error(run, tmp_path, samples):
    (tmp_path / "a.csv").write_bytes((samples / "robot_tools.csv").read_bytes())
    (tmp_path / "b.csv").symlink_to(tmp_path / "gone.csv")
    assert_input_error(run("score", tmp_path), f"{tmp_path / 'b.csv'}: broken symbolic link")


def test_linked_folder_is_read_once(run_json, tmp_path, samples):
    """A link to a folder is followed; a link back up does not loop."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.csv").write_bytes((samples / "robot_tools.csv").read_bytes())
    (tmp_path / "real" / "up").symlink_to(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, report, stderr = run_json("score", tmp_path / "link")
    assert code == 0, stderr
    assert report["rows"] == 1000


def test_stdin_parquet_is_spooled_not_held(nll_exe, samples):
    """Parquet on standard input goes to a temporary file (deleted at once), so memory stays bounded."""
    data = (samples / "robot_tools.parquet").read_bytes()
    proc = subprocess.run([*nll_exe, "score", "-", "--format", "json"], input=data, capture_output=True,
                          timeout=SAFETY_SECONDS, check=False)
    assert proc.returncode == 0, proc.stderr
    assert loads_strict(proc.stdout)["rows"] == 1000
