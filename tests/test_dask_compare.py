"""`nll compare --engine dask` gives the local `compare --bootstrap poisson`: point values, interval
bounds, groups and most-worsened rows to 1e-12, however the inputs are cut into partitions and in
whatever order their files come; gates, --fail-if-worse and the errors are the local ones."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dask_cluster import dask_client  # noqa: F401  (the fixture)
from nllcli.comparison import compare
from nllcli.engine_dask import plan_pieces
from nllcli.errors import InputError, NllError, UsageError
from nllcli.plan import plan_score
from test_dask_engine import frame, parquet_files
from test_partitions import CLASSES, assert_same

OPTIONS = {"weight": "w", "by": ["camera"], "worst": 5, "resamples": 300, "seed": 3, "bins": 7}


def new_model(base: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same rows (labels, weights, groups) with other probabilities."""
    rng = np.random.default_rng(seed)
    new = base.copy()
    p = base[[f"p_{c}" for c in CLASSES]].to_numpy() * rng.uniform(0.3, 3.0, (len(base), len(CLASSES)))
    new[[f"p_{c}" for c in CLASSES]] = p / p.sum(axis=1, keepdims=True)
    return new


def both(client, base, new, partition_size=1, **options) -> tuple[dict, dict]:
    """(local report with --bootstrap poisson, Dask report) of the same comparison."""
    local = compare(base, new, bootstrap="poisson", **options).to_dict()
    dask = compare(base, new, engine="dask", scheduler=client.scheduler.address, partition_size=partition_size,
                   **options).to_dict()
    return local, dask


def largest_difference(a, b) -> float:
    if isinstance(a, dict):
        return max((largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list):
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, float) and isinstance(b, float) and np.isfinite(a) and a != b:
        return abs(a - b) / max(abs(a), abs(b))
    return 0.0


@pytest.mark.parametrize(("files", "groups", "partitions"), [(1, 1, 1), (2, 1, 2), (1, 7, 7)])
def test_by_key_any_partitioning_gives_the_local_poisson_compare(dask_client, tmp_path, files, groups,  # noqa: F811
                                                                 partitions):
    base_frame = frame(21, 600)
    new_frame = new_model(base_frame, 1).sample(frac=1.0, random_state=4)  # the new rows in another order
    (tmp_path / "base").mkdir()
    (tmp_path / "new").mkdir()
    base = parquet_files(tmp_path / "base", base_frame, files, groups)
    new = parquet_files(tmp_path / "new", new_frame, files, groups)
    new = new[::-1]  # shuffled file order
    assert len(plan_pieces(dask_client, plan_score(new).sources, 1)) == partitions
    local, dask = both(dask_client, base, new, **OPTIONS)
    assert_same(dask, local)
    assert dask["comparison"][0]["bootstrap"] == "poisson" and len(dask["worst"]) == 5
    assert {tuple(g["by"].values()) for g in dask["groups"]} == {("left",), ("right",), ("top",)}
    assert all("key" in w for w in dask["worst"])
    assert largest_difference(dask, local) < 1e-12


@pytest.mark.parametrize("same_cuts", [True, False])
def test_by_position_gives_the_local_poisson_compare(dask_client, tmp_path, same_cuts):  # noqa: F811
    base_frame = frame(22, 500).drop(columns="id")
    new_frame = new_model(base_frame, 2)
    paths = {}
    for side, df in (("base", base_frame), ("new", new_frame)):
        (tmp_path / side).mkdir()
        if same_cuts:  # Parquet files of the same row groups: partition pairs with partition
            paths[side] = parquet_files(tmp_path / side, df, 2, 3)
        else:  # CSV byte ranges cut where each file's bytes fall: paired through a join on the position
            paths[side] = []
            for i, rows in enumerate(np.array_split(np.arange(len(df)), 3 if side == "base" else 2)):
                df.iloc[rows].to_csv(tmp_path / side / f"{i}.csv")  # pandas' index column, as people write them
                paths[side].append(str(tmp_path / side / f"{i}.csv"))
    local, dask = both(dask_client, paths["base"], paths["new"], partition_size=4000, **OPTIONS)
    assert_same(dask, local)
    assert "key" not in dask["worst"][0] and len(dask["worst"]) == 5
    with pytest.raises(InputError, match="row counts differ"):
        compare(paths["base"], paths["new"][:1], engine="dask", scheduler=dask_client.scheduler.address)


def test_gates_and_fail_if_worse_are_the_local_verdicts(dask_client, run, tmp_path):  # noqa: F811
    base_frame = frame(23, 800)
    base_frame.to_csv(tmp_path / "base.csv", index=False)
    worse = new_model(base_frame, 3)
    p = worse[[f"p_{c}" for c in CLASSES]].to_numpy() ** 3  # sharper on random labels: a clear nll regression
    worse[[f"p_{c}" for c in CLASSES]] = p / p.sum(axis=1, keepdims=True)
    worse.to_csv(tmp_path / "new.csv", index=False)
    address = dask_client.scheduler.address
    args = ["compare", tmp_path / "base.csv", tmp_path / "new.csv", "--resamples", "200", "--fail-if-worse", "0",
            "--max-increase", "ece=0.001", "--max-increase", "accuracy=5%", "--gate-on", "upper", "-f", "json"]
    local = run(*args, "--bootstrap", "poisson")
    dask = run(*args, "--engine", "dask", "--scheduler", address, "--partition-size", "4kB")
    assert local.exit_code == dask.exit_code == 1, dask.stderr
    assert "uses --bootstrap poisson" in dask.stderr
    local_report, dask_report = json.loads(local.stdout), json.loads(dask.stdout)
    assert_same(dask_report, local_report)
    assert dask_report["regression"] and [g["passed"] for g in dask_report["gates"]] == \
        [g["passed"] for g in local_report["gates"]]
    rows = run(*args, "--engine", "dask", "--scheduler", address, "--bootstrap", "rows")
    assert rows.exit_code == 2 and rows.stderr.count("\n") == 1 and "poisson" in rows.stderr


@pytest.mark.parametrize("problem", ["missing", "duplicate base", "duplicate new", "unused", "labels"])
def test_pairing_problems_are_the_local_errors(dask_client, tmp_path, problem):  # noqa: F811
    base_frame = frame(24, 300)
    new_frame = new_model(base_frame, 4)
    if problem == "missing":
        base_frame = base_frame[~base_frame["id"].isin(["r7", "r150"])]
    elif problem == "duplicate base":
        base_frame = pd.concat([base_frame, base_frame[base_frame["id"] == "r9"]])
    elif problem == "duplicate new":
        new_frame = pd.concat([new_frame, new_frame[new_frame["id"] == "r11"]])
    elif problem == "unused":
        new_frame = new_frame[new_frame["id"] != "r5"]
    else:
        new_frame.loc[new_frame.index[[40, 41]], "label"] = [
            CLASSES[(CLASSES.index(v) + 1) % 4] for v in base_frame["label"].iloc[[40, 41]]]
    base_frame.to_csv(tmp_path / "base.csv", index=False)
    new_frame.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(InputError) as caught:
        compare(str(tmp_path / "base.csv"), str(tmp_path / "new.csv"), bootstrap="poisson")
    with pytest.raises(NllError) as on_dask:
        compare(str(tmp_path / "base.csv"), str(tmp_path / "new.csv"), engine="dask",
                scheduler=dask_client.scheduler.address, partition_size=2000)
    assert str(on_dask.value) == str(caught.value)


def test_what_compare_on_dask_refuses(dask_client, tmp_path):  # noqa: F811
    frame(25, 50).to_csv(tmp_path / "a.csv", index=False)
    address = dask_client.scheduler.address
    with pytest.raises(UsageError, match="--ignore-label"):
        compare(str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), engine="dask", scheduler=address,
                ignore_label="a")
    with pytest.raises(UsageError, match="--scheduler"):
        compare(str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), scheduler=address)


@pytest.mark.parametrize("key", ["id", None])
def test_progress_counts_the_rows_of_both_inputs(dask_client, tmp_path, key):  # noqa: F811
    base_frame = frame(26, 300) if key else frame(26, 300).drop(columns="id")  # no id: by position
    (tmp_path / "base").mkdir()
    (tmp_path / "new").mkdir()
    base = parquet_files(tmp_path / "base", base_frame, 3, 1)
    new = parquet_files(tmp_path / "new", new_model(base_frame, 6), 3, 1)
    seen: list = []
    compare(base, new, key=key, engine="dask", scheduler=dask_client.scheduler.address, partition_size=1,
            progress=lambda rows, size: seen.append((rows, size)))
    assert seen == sorted(seen) and seen[-1][0] == 600 and seen[-1][1] > 0
