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

# Runs nllcli.cli.main() and prints sys.modules on stderr just before its os._exit.
DUMP = """
import json, os, sys
real_exit = os._exit
def dump(code):
    sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
    real_exit(code)
os._exit = dump
sys.argv = ["nll", *sys.argv[1:]]
from nllcli.cli import main
main()
"""

NEVER = ["pandas", "pydantic", "matplotlib", "dask", "distributed", "fsspec", "s3fs", "scipy", "sklearn", "polars",
         "duckdb", "rich.progress", "nllcli.plot", "nllcli.engine_dask", "nllcli.comparison", "nllcli.tokens"]


def modules_of(*args: str, cwd: Path) -> tuple[int, str, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-c", DUMP, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    line = next(line for line in done.stderr.splitlines() if line.startswith("MODULES "))
    return done.returncode, done.stdout, set(json.loads(line[len("MODULES "):]))


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


def test_help_imports_neither_numpy_nor_pyarrow(tmp_path):
    for args in (["--help"], ["score", "--help"], ["kl", "--help"]):
        code, stdout, modules = modules_of(*args, cwd=tmp_path)
        assert code == 0 and "Usage" in stdout
        found = [name for name in ["numpy", "pyarrow", *NEVER] if imported(modules, name)]
        assert found == [], args
