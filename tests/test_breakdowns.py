"""`score --by COL` (metrics per group) and `score --worst N` (the largest losses).

Each group must report exactly what `score` reports on the file filtered to that group; the
worst-N list must equal the first N of a stable sort by (-loss, row). Both are streamed, so both
must not depend on the batch size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nllcli
from nllcli import readers

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
ROBOT = SAMPLES / "robot_tools.csv"
TARGETS = SAMPLES / "robot_tools_annotators.csv"
CAMERAS = {"top", "left", "right"}


# -- helpers ---------------------------------------------------------------------------------


def assert_metrics_equal(got: dict, expected: dict, rel=1e-12):
    assert set(got) == set(expected)
    for name, value in expected.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert got[name] is None or math.isnan(got[name]), name
        else:
            assert math.isclose(got[name], value, rel_tol=rel, abs_tol=1e-12), (name, got[name], value)


def filtered_metrics(frame: pd.DataFrame, path, **options) -> dict:
    """`score` on a file holding only these rows."""
    frame.to_csv(path, index=False)
    return nllcli.score(str(path), **options).metrics


def robot(**extra) -> pd.DataFrame:
    frame = pd.read_csv(ROBOT)
    for name, values in extra.items():
        frame[name] = values
    return frame


def group_of(report_or_dict, **by) -> dict:
    groups = report_or_dict["groups"] if isinstance(report_or_dict, dict) else report_or_dict.groups
    found = [g for g in groups if g["by"] == by]
    assert len(found) == 1, (by, [g["by"] for g in groups])
    return found[0]


# -- --by: groups equal separate runs ---------------------------------------------------------------


def test_each_camera_equals_a_run_on_the_filtered_file(run_json, tmp_path):
    code, data, err = run_json("score", ROBOT, "--by", "camera")
    assert code == 0, err
    frame = robot()
    assert {g["by"]["camera"] for g in data["groups"]} == CAMERAS
    assert all(list(g["by"]) == ["camera"] for g in data["groups"])
    for camera in CAMERAS:
        part = frame[frame["camera"] == camera]
        group = group_of(data, camera=camera)
        assert group["rows"] == len(part)
        expected = filtered_metrics(part, tmp_path / f"{camera}.csv")
        assert_metrics_equal(group["metrics"], expected)
        assert {"nll", "accuracy", "brier", "ece", "mce", "kl", "perplexity"} <= set(group["metrics"])
    assert sum(g["rows"] for g in data["groups"]) == data["rows"] == 1000
    # the overall metrics are unchanged by --by
    assert_metrics_equal(data["metrics"], nllcli.score(str(ROBOT)).metrics)


def test_library_groups_equal_cli_groups(run_json):
    code, data, _ = run_json("score", ROBOT, "--by", "camera")
    report = nllcli.score(str(ROBOT), by=["camera"])
    assert report.to_dict()["groups"] == data["groups"]


def test_two_by_columns(run_json, tmp_path):
    frame = robot(shift=[f"s{i % 3}" for i in range(1000)])
    path = tmp_path / "two.csv"
    frame.to_csv(path, index=False)
    code, data, err = run_json("score", path, "--by", "camera", "--by", "shift")
    assert code == 0, err
    assert len(data["groups"]) == 9
    assert all(list(g["by"]) == ["camera", "shift"] for g in data["groups"])
    for camera in CAMERAS:
        for shift in ("s0", "s1", "s2"):
            part = frame[(frame["camera"] == camera) & (frame["shift"] == shift)]
            group = group_of(data, camera=camera, shift=shift)
            assert group["rows"] == len(part)
            assert_metrics_equal(group["metrics"], filtered_metrics(part, tmp_path / "part.csv"))


def test_groups_sorted_worst_first(run_json):
    code, data, _ = run_json("score", ROBOT, "--by", "camera")
    nll = [g["metrics"]["nll"] for g in data["groups"]]
    assert nll == sorted(nll, reverse=True)
    assert [g["by"]["camera"] for g in data["groups"]] == ["top", "right", "left"]


def test_groups_with_equal_nll_keep_a_stable_order():
    frame = robot().iloc[:50]
    twice = pd.concat([frame.assign(site="b"), frame.assign(site="a"), frame.iloc[:10].assign(site="c")])
    twice["id"] = [f"r{i}" for i in range(len(twice))]
    first = nllcli.score(twice, by=["site"])
    again = nllcli.score(twice.iloc[::-1], by=["site"])
    names = [g["by"]["site"] for g in first.groups]
    assert [g["by"]["site"] for g in again.groups] == names
    a, b = group_of(first, site="a"), group_of(first, site="b")
    assert a["metrics"]["nll"] == pytest.approx(b["metrics"]["nll"], rel=1e-12)
    assert names.index("a") + 1 == names.index("b")  # ties: by the group's values


def test_groups_by_the_label_match_per_class(run_json):
    code, data, _ = run_json("score", ROBOT, "--by", "label")
    for row in data["per_class"]:
        group = group_of(data, label=row["class"])
        assert group["rows"] == row["rows"]
        assert group["metrics"]["nll"] == pytest.approx(row["nll"], rel=1e-12)
        assert group["metrics"]["accuracy"] == pytest.approx(row["accuracy"], rel=1e-12)


def test_weighted_groups(run_json, tmp_path):
    weights = np.random.default_rng(3).uniform(0.0, 3.0, 1000).round(3)
    frame = robot(w=weights)
    path = tmp_path / "weighted.csv"
    frame.to_csv(path, index=False)
    code, data, err = run_json("score", path, "--by", "camera", "--weight", "w")
    assert code == 0, err
    for camera in CAMERAS:
        part = frame[frame["camera"] == camera]
        group = group_of(data, camera=camera)
        assert group["rows"] == len(part)  # rows are counted, not weighed
        assert_metrics_equal(group["metrics"], filtered_metrics(part, tmp_path / "part.csv", weight="w"))
        unweighted = filtered_metrics(part, tmp_path / "part.csv")
        assert group["metrics"]["nll"] != pytest.approx(unweighted["nll"], rel=1e-6)


def test_soft_target_groups(tmp_path):
    report = nllcli.score(str(ROBOT), targets=str(TARGETS), by=["camera"])
    frame, targets = robot(), pd.read_csv(TARGETS)
    for camera in CAMERAS:
        part = frame[frame["camera"] == camera]
        targets[targets["id"].isin(part["id"])].to_csv(tmp_path / "t.csv", index=False)
        expected = filtered_metrics(part, tmp_path / "p.csv", targets=str(tmp_path / "t.csv"))
        group = group_of(report, camera=camera)
        assert_metrics_equal(group["metrics"], expected)
        assert group["metrics"]["kl"] > 0
    kl = [g["metrics"]["nll"] for g in report.groups]
    assert kl == sorted(kl, reverse=True)


def test_groups_in_bits():
    nats = nllcli.score(str(ROBOT), by=["camera"])
    bits = nllcli.score(str(ROBOT), by=["camera"], base="2")
    for camera in CAMERAS:
        n, b = group_of(nats, camera=camera)["metrics"], group_of(bits, camera=camera)["metrics"]
        assert b["nll"] == pytest.approx(n["nll"] / math.log(2), rel=1e-12)
        assert b["accuracy"] == n["accuracy"] and b["brier"] == pytest.approx(n["brier"], rel=1e-12)


# -- missing values ------------------------------------------------------------------------------------


def _with_missing_camera() -> pd.DataFrame:
    frame = robot()
    frame["camera"] = frame["camera"].astype(object)
    frame.loc[[3, 7, 11, 500], "camera"] = None
    return frame


def test_missing_value_forms_its_own_group_parquet(run_json, tmp_path):
    frame = _with_missing_camera()
    path = tmp_path / "missing.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    code, data, err = run_json("score", path, "--by", "camera")
    assert code == 0, err
    group = group_of(data, camera=None)
    assert group["rows"] == 4
    expected = filtered_metrics(frame.loc[[3, 7, 11, 500]], tmp_path / "part.csv")
    assert_metrics_equal(group["metrics"], expected)
    assert len(data["groups"]) == 4
    table = nllcli.score(pa.Table.from_pandas(frame, preserve_index=False), by=["camera"])
    assert group_of(table, camera=None)["rows"] == 4


def test_missing_value_forms_its_own_group_csv(run_json, tmp_path):
    """An empty field is CSV's missing value (as for labels): its group's key is null."""
    frame = _with_missing_camera()
    path = tmp_path / "missing.csv"
    frame.to_csv(path, index=False)  # None is written as an empty field
    code, data, err = run_json("score", path, "--by", "camera")
    assert code == 0, err
    assert len(data["groups"]) == 4
    group = group_of(data, camera=None)
    assert group["rows"] == 4


def test_missing_group_in_the_table(run, tmp_path):
    frame = _with_missing_camera()
    path = tmp_path / "missing.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    result = run("score", path, "--by", "camera")
    assert result.exit_code == 0, result.stderr
    assert "(missing)" in result.stdout


# -- streaming -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1, 7, 64])
def test_group_sums_do_not_depend_on_the_batch_size(monkeypatch, batch_rows):
    frame = _with_missing_camera()
    frame["w"] = np.random.default_rng(5).uniform(0.1, 2.0, len(frame))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    whole = nllcli.score(table, by=["camera"], weight="w")
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", batch_rows)
    small = nllcli.score(table, by=["camera"], weight="w")
    assert [g["by"] for g in small.groups] == [g["by"] for g in whole.groups]
    for a, b in zip(small.groups, whole.groups):
        assert a["rows"] == b["rows"]
        assert_metrics_equal(a["metrics"], b["metrics"], rel=1e-12)


def test_group_sums_do_not_depend_on_parquet_batches(monkeypatch, tmp_path):
    path = tmp_path / "robot.parquet"
    pq.write_table(pa.Table.from_pandas(robot(), preserve_index=False), path, row_group_size=100)
    whole = nllcli.score(str(ROBOT), by=["camera"])
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 13)
    small = nllcli.score(str(path), by=["camera"])
    for a, b in zip(small.groups, whole.groups):
        assert a["by"] == b["by"] and a["rows"] == b["rows"]
        assert_metrics_equal(a["metrics"], b["metrics"])


# -- --by: output and errors ------------------------------------------------------------------------


def test_group_table_output(run):
    result = run("score", ROBOT, "--by", "camera")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["camera", "rows"])
    assert [lines[header + k].split()[0] for k in (1, 2, 3)] == ["top", "right", "left"]
    assert lines[header + 1].split()[1] == "235"


def test_unknown_by_column_exits_2(run):
    result = run("score", ROBOT, "--by", "lens")
    assert result.exit_code == 2
    assert "lens" in result.stderr


def test_no_by_no_groups(run_json):
    code, data, _ = run_json("score", ROBOT)
    assert data["groups"] == [] and data["worst"] == []


def test_by_the_key_column(run_json):
    """Grouping by the id column is unusual but valid: one group per row, no internal error."""
    code, data, err = run_json("score", ROBOT, "--by", "id")
    assert code == 0, err
    assert len(data["groups"]) == 1000
    assert all(g["rows"] == 1 for g in data["groups"])


def test_by_the_weight_column(run_json, tmp_path):
    """Grouping by the weight column (strata of equal weight) must read it both ways."""
    frame = robot(w=[1.0 + i % 3 for i in range(1000)])
    path = tmp_path / "w.csv"
    frame.to_csv(path, index=False)
    code, data, err = run_json("score", path, "--by", "w", "--weight", "w")
    assert code == 0, err
    assert len(data["groups"]) == 3
    assert_metrics_equal(data["metrics"], nllcli.score(str(path), weight="w").metrics)


# -- --worst ---------------------------------------------------------------------------------------


def tied_predictions(n: int = 300, seed: int = 0, ids: bool = True) -> pd.DataFrame:
    """Four classes; the true-class probability is one of a few values, so many losses tie."""
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    labels = rng.integers(0, 4, n)
    p_true = rng.choice([0.04, 0.1, 0.3, 0.55, 0.9], n)
    rest = rng.dirichlet(np.ones(3), n) * (1.0 - p_true)[:, None]
    p = np.empty((n, 4))
    for i in range(n):
        others = [j for j in range(4) if j != labels[i]]
        p[i, labels[i]] = p_true[i]
        p[i, others] = rest[i]
    frame = pd.DataFrame({"label": [classes[i] for i in labels]})
    if ids:
        frame.insert(0, "id", [f"k{i:05d}" for i in rng.permutation(n)])
    for j, c in enumerate(classes):
        frame[c] = p[:, j]
    return frame


def expected_worst(frame: pd.DataFrame, n: int) -> list[dict]:
    classes = ["a", "b", "c", "d"]
    p = frame[classes].to_numpy()
    y = np.array([classes.index(v) for v in frame["label"]])
    p_true = p[np.arange(len(y)), y]
    loss = -np.log(p_true)
    order = sorted(range(len(frame)), key=lambda i: (-loss[i], i))  # stable: earliest row first on ties
    out = []
    for i in order[:n]:
        entry = {"row": i, "label": classes[y[i]], "predicted": classes[int(np.argmax(p[i]))],
                 "p_true": float(p_true[i]), "loss": float(loss[i])}
        if "id" in frame:
            entry["key"] = frame["id"].iloc[i]
        out.append(entry)
    return out


def assert_worst_equal(got: list[dict], expected: list[dict]):
    assert [w["row"] for w in got] == [w["row"] for w in expected]
    for g, e in zip(got, expected):
        assert set(g) == set(e)
        for field in ("label", "predicted") + (("key",) if "key" in e else ()):
            assert g[field] == e[field], (e["row"], field)
        assert g["p_true"] == pytest.approx(e["p_true"], rel=1e-12)
        assert g["loss"] == pytest.approx(e["loss"], rel=1e-12)


@pytest.mark.parametrize("n", [1, 5, 50, 500])
def test_worst_equals_a_full_stable_sort(run_json, tmp_path, n):
    frame = tied_predictions()
    path = tmp_path / "tied.csv"
    frame.to_csv(path, index=False)
    code, data, err = run_json("score", path, "--worst", n)
    assert code == 0, err
    assert len(data["worst"]) == min(n, len(frame))
    assert_worst_equal(data["worst"], expected_worst(frame, n))


def test_worst_ties_really_occur():
    frame = tied_predictions()
    top = expected_worst(frame, 50)
    assert len({w["loss"] for w in top}) < 5  # the test above is about ties


def test_worst_without_a_key_column():
    frame = tied_predictions(ids=False)
    report = nllcli.score(frame, worst=20)
    assert all("key" not in w for w in report.worst)
    assert_worst_equal(report.worst, expected_worst(frame, 20))


def test_worst_with_an_explicit_key():
    frame = tied_predictions().rename(columns={"id": "sample"})
    report = nllcli.score(frame, worst=10, key="sample")
    expected = expected_worst(frame.rename(columns={"sample": "id"}), 10)
    assert [w["key"] for w in report.worst] == [e["key"] for e in expected]
    assert [w["row"] for w in report.worst] == [e["row"] for e in expected]


@pytest.mark.parametrize("batch_rows", [1, 7, 64])
def test_worst_does_not_depend_on_the_batch_size(monkeypatch, tmp_path, batch_rows):
    frame = tied_predictions(seed=4)
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", batch_rows)
    for n in (1, 5, 50):
        report = nllcli.score(pa.Table.from_pandas(frame, preserve_index=False), worst=n)
        assert_worst_equal(report.worst, expected_worst(frame, n))
    path = tmp_path / "tied.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=50)
    assert_worst_equal(nllcli.score(str(path), worst=50).worst, expected_worst(frame, 50))


def test_worst_on_the_sample_file(run_json):
    code, data, err = run_json("score", ROBOT, "--worst", "5")
    assert code == 0, err
    rows = [w["row"] for w in data["worst"]]
    assert rows[:3] == [96, 146, 320]  # three tied, clipped losses, earliest first
    assert [w["key"] for w in data["worst"]] == [f"shot-{r + 1:04d}" for r in rows]
    losses = [w["loss"] for w in data["worst"]]
    assert losses == sorted(losses, reverse=True)
    assert data["worst"] == nllcli.score(str(ROBOT), worst=5).to_dict()["worst"]


def test_worst_table_output(run):
    result = run("score", ROBOT, "--worst", "3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("worst: row"))
    assert lines[header].split()[2:] == ["key", "label", "predicted", "p_true", "loss"]
    shown = [lines[header + k].split() for k in (1, 2, 3)]
    assert [r[0] for r in shown] == ["96", "146", "320"]
    assert [r[1] for r in shown] == ["shot-0097", "shot-0147", "shot-0321"]


def test_worst_with_by(run_json):
    code, data, _ = run_json("score", ROBOT, "--by", "camera", "--worst", "4")
    alone = nllcli.score(str(ROBOT), worst=4).to_dict()["worst"]
    assert data["worst"] == alone
    assert len(data["groups"]) == 3


def test_worst_in_bits():
    frame = tied_predictions()
    nats = nllcli.score(frame, worst=10).worst
    bits = nllcli.score(frame, worst=10, base="2").worst
    assert [w["row"] for w in bits] == [w["row"] for w in nats]
    for b, n in zip(bits, nats):
        assert b["loss"] == pytest.approx(n["loss"] / math.log(2), rel=1e-12)
        assert b["p_true"] == n["p_true"]


def test_worst_against_soft_targets_uses_cross_entropy(tmp_path):
    frame = tied_predictions(n=120, seed=6)
    rng = np.random.default_rng(7)
    targets = pd.DataFrame({"id": frame["id"]})
    t = rng.dirichlet(np.ones(4), len(frame))
    for j, c in enumerate("abcd"):
        targets[c] = t[:, j]
    targets.to_csv(tmp_path / "t.csv", index=False)
    report = nllcli.score(frame, targets=str(tmp_path / "t.csv"), worst=15)
    ce = -(t * np.log(frame[list("abcd")].to_numpy())).sum(axis=1)
    order = sorted(range(len(frame)), key=lambda i: (-ce[i], i))[:15]
    assert [w["row"] for w in report.worst] == order
    assert [w["loss"] for w in report.worst] == pytest.approx([ce[i] for i in order], rel=1e-10)


def test_worst_zero_is_off_and_negative_exits_2(run, run_json):
    code, data, _ = run_json("score", ROBOT, "--worst", "0")
    assert code == 0 and data["worst"] == []
    result = run("score", ROBOT, "--worst", "-1")
    assert result.exit_code == 2
    assert "--worst" in result.stderr


def test_worst_json_is_strict(run):
    result = run("score", ROBOT, "--worst", "3", "-f", "json")
    json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"non-strict JSON {name}"))
