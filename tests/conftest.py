"""Shared fixtures. The environment is fixed before Typer (and Rich) are imported."""

import os

os.environ["_TYPER_FORCE_DISABLE_TERMINAL"] = "1"
os.environ["COLUMNS"] = "120"
os.environ.pop("FORCE_COLOR", None)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from nllcli.cli import app  # noqa: E402

from helpers import loads_strict  # noqa: E402
from servers import dummy_aws, http_root, s3_bucket, s3_endpoint  # noqa: E402,F401  (real S3 and HTTP servers)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_data"


@pytest.fixture
def run():
    """Invoke the CLI in-process: run("score", path, ...) -> Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


@pytest.fixture
def run_json(run):
    """Invoke with --format json: (exit code, stdout parsed strictly (no NaN/Infinity) or None, stderr)."""

    def invoke(*args, input=None):
        result = run(*args, "--format", "json", input=input)
        data = loads_strict(result.stdout) if result.stdout.strip() else None
        return result.exit_code, data, result.stderr

    return invoke


@pytest.fixture
def nll_exe():
    """The real console script, for subprocess tests."""
    return [sys.executable, "-m", "nllcli"]


@pytest.fixture
def samples():
    return SAMPLES
