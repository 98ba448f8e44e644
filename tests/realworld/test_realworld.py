"""Each real-world layout (tests/realworld/make_files.py) scored with the bare `nll score FILE`
agrees with scikit-learn's log_loss and accuracy_score to 1e-10."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import make_files  # noqa: E402

HAS_POLARS = importlib.util.find_spec("polars") is not None


@pytest.fixture(scope="session")
def realworld(tmp_path_factory):
    """(folder, {file: manifest entry}), the files written once per session."""
    folder = tmp_path_factory.mktemp("realworld")
    return folder, {entry["file"]: entry for entry in make_files.write_all(folder)}


@pytest.mark.parametrize("name", make_files.FILES)
def test_bare_score_agrees_with_sklearn(run_json, realworld, name):
    if name in make_files.POLARS_FILES and not HAS_POLARS:
        pytest.skip("polars is not installed")
    folder, entries = realworld
    entry = entries[name]
    code, data, stderr = run_json("score", folder / name, *entry["args"])
    assert code == 0, stderr
    assert data["rows"] == entry["rows"] and len(data["classes"]) == entry["classes"]
    assert math.isclose(data["metrics"]["nll"], entry["nll"], rel_tol=1e-10)
    assert math.isclose(data["metrics"]["accuracy"], entry["accuracy"], rel_tol=1e-10)
    for line in stderr.splitlines():  # only notes of what was guessed, each naming the file
        assert line.startswith(f"nll: {folder / name}: ") and ("found by its values" in line or "--positive" in line)


def test_label_found_by_values_is_said_once(run_json, realworld):
    folder, _ = realworld
    _, _, stderr = run_json("score", folder / "iris_species.csv")
    assert stderr.count("label column 'species' found by its values") == 1
