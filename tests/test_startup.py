"""Start-up: a command imports only what it uses. Each case runs the real console entry point in a
fresh interpreter and lists sys.modules when it leaves (not a timing test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs the console script's nllcli.__main__.main() and prints sys.modules on stderr just before its os._exit.
DUMP = """
import json, os, sys
real_exit = os._exit
def dump(code):
    sys.stderr.write("BLAS " + os.environ.get("OPENBLAS_NUM_THREADS", "") + "\\n")
    if "pyarrow" in sys.modules:
        pa = sys.modules["pyarrow"]
        sys.stderr.write("POOL " + pa.default_memory_pool().backend_name + "\\n")
        if "mimalloc" in pa.supported_memory_backends():  # what Arrow's C++ code took from mimalloc
            sys.stderr.write("MIMALLOC " + str(pa.mimalloc_memory_pool().max_memory()) + "\\n")
    import gc
    sys.stderr.write("GC " + json.dumps([gc.isenabled(), gc.get_freeze_count()]) + "\\n")
    sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
    real_exit(code)
os._exit = dump
sys.argv = ["nll", *sys.argv[1:]]
from nllcli.__main__ import main
main()
"""

NEVER = ["pandas", "pydantic", "matplotlib", "dask", "distributed", "fsspec", "s3fs", "scipy", "sklearn", "polars",
         "duckdb", "rich.progress", "nllcli.plot", "nllcli.engine_dask", "nllcli.comparison", "nllcli.tokens"]


def run_dump(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-c", DUMP, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    line = next(line for line in done.stderr.splitlines() if line.startswith("MODULES "))
    return done, set(json.loads(line[len("MODULES "):]))


def modules_of(*args: str, cwd: Path) -> tuple[int, str, set[str]]:
    done, modules = run_dump(*args, cwd=cwd)
    return done.returncode, done.stdout, modules


def imported(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.csv"
    rows = ["id,label,p_cat,p_dog"] + [f"{i},{'cat' if i % 2 else 'dog'},0.{i}5,0.{9 - i}5" for i in range(10)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_score_imports_nothing_it_does_not_use(tiny, fmt):
    code, stdout, modules = modules_of("score", str(tiny), "--format", fmt, cwd=tiny.parent)
    assert code == 0 and "nll" in stdout
    assert [name for name in NEVER if imported(modules, name)] == []
    if fmt == "json":  # nothing is drawn: no Rich at all
        assert not imported(modules, "rich")
    # Each costs milliseconds of start-up and serves only other paths (state files, temporary
    # files, pyarrow's conversion of Python datetimes).
    assert [name for name in ("dateutil", "tempfile", "hashlib") if imported(modules, name)] == []


def test_blas_runs_on_one_thread_unless_the_environment_says(tiny):
    """nll runs its own threads; OpenBLAS's would spin beside them (0.1 s of CPU on 2M rows)."""
    chosen_before = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
    unset = {k: v for k, v in os.environ.items() if k not in chosen_before}
    by_default, _ = run_dump("score", str(tiny), "--format", "json", cwd=tiny.parent, env=unset)
    chosen, _ = run_dump("score", str(tiny), "--format", "json", cwd=tiny.parent,
                         env={**unset, "OPENBLAS_NUM_THREADS": "3"})
    assert by_default.returncode == chosen.returncode == 0
    assert "BLAS 1\n" in by_default.stderr and "BLAS 3\n" in chosen.stderr


def gc_state(stderr: str) -> list:
    return json.loads(next(line for line in stderr.splitlines() if line.startswith("GC "))[len("GC "):])


def test_the_collector_pauses_while_modules_load_and_runs_for_the_data(tiny):
    """The entry point pauses the cyclic garbage collector (60 collections of import-time objects,
    9-15 ms a run); before any row is read it runs again, with what the imports built frozen."""
    state = tiny.parent / "tiny.nllstate"
    done, _ = run_dump("score", str(tiny), "--format", "json", "--save-state", str(state), cwd=tiny.parent)
    assert done.returncode == 0, done.stderr
    enabled, frozen = gc_state(done.stderr)
    assert enabled and frozen > 10_000
    merged, _ = run_dump("merge", str(state), "--format", "json", cwd=tiny.parent)  # reads no rows
    assert merged.returncode == 0, merged.stderr
    enabled, frozen = gc_state(merged.stderr)
    assert enabled and frozen > 10_000


def test_a_collector_never_paused_is_left_as_it_is(tiny):
    """The app called in-process (a test, a notebook) keeps its collector as it was, nothing frozen."""
    import gc

    from typer.testing import CliRunner

    from nllcli.cli import app

    before = gc.get_freeze_count()
    result = CliRunner().invoke(app, ["score", str(tiny), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled() and gc.get_freeze_count() == before


def test_help_imports_neither_numpy_nor_pyarrow(tmp_path):
    for args in (["--help"], ["score", "--help"], ["kl", "--help"]):
        code, stdout, modules = modules_of(*args, cwd=tmp_path)
        assert code == 0 and "Usage" in stdout
        found = [name for name in ["numpy", "pyarrow", *NEVER] if imported(modules, name)]
        assert found == [], args


def test_arrow_buffers_come_from_jemalloc_unless_the_environment_says(tiny):
    """jemalloc keeps peak RSS 20-40 MB lower than pyarrow's default mimalloc, in no more time."""
    import pyarrow as pa

    if "jemalloc" not in pa.supported_memory_backends():
        pytest.skip("this pyarrow has no jemalloc")
    unset = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    by_default, _ = run_dump("score", str(tiny), "--format", "json", cwd=tiny.parent, env=unset)
    chosen, _ = run_dump("score", str(tiny), "--format", "json", cwd=tiny.parent,
                         env={**unset, "ARROW_DEFAULT_MEMORY_POOL": "system"})
    assert by_default.returncode == chosen.returncode == 0
    assert "POOL jemalloc\n" in by_default.stderr and "POOL system\n" in chosen.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the variable is set on Linux only")
def test_arrow_cpp_code_uses_the_same_pool(tiny, tmp_path):
    """The Parquet reader's buffers come from Arrow's C++ default pool, not pyarrow's: with the
    variable set before pyarrow's import, nothing is taken from mimalloc beside jemalloc."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not {"jemalloc", "mimalloc"} <= set(pa.supported_memory_backends()):
        pytest.skip("this pyarrow lacks jemalloc or mimalloc")
    parquet = tmp_path / "tiny.parquet"
    pq.write_table(pacsv.read_csv(tiny), parquet)
    unset = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done, _ = run_dump("score", str(parquet), "--format", "json", cwd=tmp_path, env=unset)
    assert done.returncode == 0, done.stderr
    assert "POOL jemalloc\n" in done.stderr and "MIMALLOC 0\n" in done.stderr, done.stderr
    mixed, _ = run_dump("score", str(parquet), "--format", "json", cwd=tmp_path,
                        env={**unset, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"})
    assert "MIMALLOC 0\n" not in mixed.stderr  # the check sees what mimalloc gives
