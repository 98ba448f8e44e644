"""The Dask engine gives the local engine's report, however the input is cut into partitions (files,
Parquet row groups, CSV byte ranges), with targets by position, in the same file or by key; its
errors are the local engine's, naming the true rows. One real 2-worker LocalCluster serves all."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dask_cluster import dask_client  # noqa: F401  (the fixture)
from nllcli import engine_dask
from nllcli.engine import run
from nllcli.engine_dask import DaskOptions, parse_size, plan_pieces, run_dask
from nllcli.errors import InputError, NllError, UsageError
from nllcli.plan import plan_kl, plan_score
from nllcli.report import build_report
from test_partitions import CLASSES, assert_same, predictions


def frame(seed: int, n: int, soft: bool = False) -> pd.DataFrame:
    return predictions(np.random.default_rng(seed), n, soft_columns=soft).to_pandas()


def reports(client, plan, *args, partition_bytes=1 << 26, per_sample=None, **options):
    """(local report, Dask report, partitions of the predictions) of the same job."""
    job = plan(*args, **options)
    local = build_report(job, run(job)).to_dict()
    job = plan(*args, **options)
    pieces = plan_pieces(client, job.sources, partition_bytes) if job.sources[0].path is not None else None
    state = run_dask(job, DaskOptions(partition_bytes=partition_bytes), per_sample=per_sample, client=client)
    return local, build_report(job, state).to_dict(), pieces


def parquet_files(tmp_path, df: pd.DataFrame, files: int, groups_per_file: int) -> list[str]:
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(df)), files)):
        path = tmp_path / f"part{i}.parquet"
        table = pa.Table.from_pandas(df.iloc[part], preserve_index=False)
        pq.write_table(table, path, row_group_size=max(1, -(-len(part) // groups_per_file)))
        paths.append(str(path))
    return paths


SCORE_OPTIONS = {"weight": "w", "by": ["camera", "site"], "worst": 6, "bins": 9}


@pytest.mark.parametrize(("files", "groups", "partitions"), [(1, 1, 1), (2, 1, 2), (1, 7, 7), (3, 3, 9)])
def test_parquet_partitions_give_the_local_report(dask_client, tmp_path, files, groups, partitions):  # noqa: F811
    paths = parquet_files(tmp_path, frame(1, 700), files, groups)
    local, dask, pieces = reports(dask_client, plan_score, paths, partition_bytes=1, **SCORE_OPTIONS)
    assert len(pieces) == partitions
    assert_same(dask, local)
    assert dask["rows"] == 700 and len(dask["worst"]) == 6


def test_shuffled_file_order_gives_the_same_metrics(dask_client, tmp_path):  # noqa: F811
    paths = parquet_files(tmp_path, frame(2, 500), 5, 2)
    rng = np.random.default_rng(0)
    shuffled = [paths[i] for i in rng.permutation(len(paths))]
    local, dask, _ = reports(dask_client, plan_score, shuffled, partition_bytes=1, **SCORE_OPTIONS)
    assert_same(dask, local)
    _, in_order, _ = reports(dask_client, plan_score, paths, partition_bytes=1, **SCORE_OPTIONS)
    assert_same(dask["metrics"], in_order["metrics"])
    assert_same(dask["groups"], in_order["groups"])


@pytest.mark.parametrize(("partition_bytes", "partitions"), [(1 << 26, 1), (None, 2), (None, 7)])
def test_csv_byte_ranges_give_the_local_report(dask_client, tmp_path, partition_bytes, partitions):  # noqa: F811
    path = tmp_path / "preds.csv"
    frame(3, 900).to_csv(path)  # with pandas' index column, as people write them
    size = os.path.getsize(path)
    partition_bytes = partition_bytes or size // partitions + 1
    local, dask, pieces = reports(dask_client, plan_score, str(path), partition_bytes=partition_bytes,
                                  **SCORE_OPTIONS)
    assert len(pieces) == partitions
    assert {p.kind for p in pieces} == {"bytes"}
    assert sum(p.rows for p in pieces) == 900
    assert_same(dask, local)


def test_csv_with_blank_lines_and_crlf_counts_rows_as_the_reader(dask_client, tmp_path):  # noqa: F811
    path = tmp_path / "crlf.csv"
    text = frame(4, 300).to_csv(index=False, lineterminator="\r\n")
    lines = text.split("\r\n")
    lines.insert(50, "")
    lines.insert(200, "")
    path.write_bytes("\r\n".join(lines).encode())
    local, dask, pieces = reports(dask_client, plan_score, str(path), partition_bytes=4000, worst=3)
    assert len(pieces) > 3
    assert_same(dask, local)


def test_quoted_or_compressed_csv_is_one_partition(dask_client, tmp_path):  # noqa: F811
    df = frame(5, 400)
    df.loc[10, "camera"] = "left\nwing"  # a quoted newline: the file cannot be cut at line ends
    quoted = tmp_path / "quoted.csv"
    df.to_csv(quoted, index=False)
    zipped = tmp_path / "z.csv.gz"
    with gzip.open(zipped, "wt") as handle:
        frame(6, 300).to_csv(handle, index=False)
    local, dask, pieces = reports(dask_client, plan_score, [str(quoted), str(zipped)], partition_bytes=2000,
                                  by=["camera"], worst=4)
    assert [p.kind for p in pieces] == ["file", "file"]
    assert [p.rows for p in pieces] == [400, 300]
    assert_same(dask, local)


def test_same_file_targets_and_label_smoothing(dask_client, tmp_path):  # noqa: F811
    path = tmp_path / "soft.parquet"
    pq.write_table(pa.Table.from_pandas(frame(7, 600, soft=True)), path, row_group_size=90)
    local, dask, pieces = reports(dask_client, plan_score, str(path), partition_bytes=1, target_prefix="t_",
                                  by=["site"], worst=5, weight="w")
    assert len(pieces) == 7
    assert_same(dask, local)
    local, dask, _ = reports(dask_client, plan_score, str(path), partition_bytes=1, label_smoothing=0.1)
    assert_same(dask, local)


def soft_targets(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = rng.dirichlet(np.ones(len(CLASSES)), len(df))
    out = pd.DataFrame({"id": df["id"], **{c: t[:, j] for j, c in enumerate(CLASSES)}})
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)  # in another order


def test_targets_by_key_are_joined_across_files(dask_client, tmp_path):  # noqa: F811
    df = frame(8, 800)
    preds = parquet_files(tmp_path, df, 3, 2)
    targets = tmp_path / "targets.csv"
    soft_targets(df, 1).to_csv(targets, index=False)
    local, dask, pieces = reports(dask_client, plan_score, preds, targets=str(targets), partition_bytes=9000,
                                  by=["camera"], worst=5)
    assert len(pieces) >= 3
    assert_same(dask, local)
    assert dask["metrics"]["kl"] > 0


def test_kl_by_key_and_by_position(dask_client, tmp_path):  # noqa: F811
    df = frame(9, 500)
    q = df[["id", *[f"p_{c}" for c in CLASSES]]].rename(columns=lambda c: c.removeprefix("p_"))
    p = soft_targets(df, 2)
    q.to_csv(tmp_path / "q.csv", index=False)
    p.to_csv(tmp_path / "p.csv", index=False)
    local, dask, _ = reports(dask_client, plan_kl, str(tmp_path / "p.csv"), str(tmp_path / "q.csv"),
                             partition_bytes=3000, symmetric=True)
    assert_same(dask, local)
    # by position: P in Q's order, both without the id, cut the same way (one partition per file)
    p_aligned = p.set_index("id").loc[q["id"]].reset_index(drop=True)
    for i, rows in enumerate(np.array_split(np.arange(500), 2)):
        p_aligned.iloc[rows].to_csv(tmp_path / f"p{i}.csv", index=False)
        q.drop(columns="id").iloc[rows].to_csv(tmp_path / f"q{i}.csv", index=False)
    ps, qs = [str(tmp_path / f"p{i}.csv") for i in range(2)], [str(tmp_path / f"q{i}.csv") for i in range(2)]
    local, dask, _ = reports(dask_client, plan_kl, ps, qs, partition_bytes=3000)
    assert_same(dask, local)
    job = plan_kl(ps, [str(tmp_path / "q.csv")], key=None, ignore=["id"])
    with pytest.raises(UsageError, match="--key"):
        run_dask(job, DaskOptions(), client=dask_client)


def local_error(job_of) -> str:
    with pytest.raises(InputError) as caught:
        run(job_of())
    return str(caught.value)


def dask_error(client, job_of, partition_bytes=1) -> str:
    with pytest.raises(NllError) as caught:
        run_dask(job_of(), DaskOptions(partition_bytes=partition_bytes), client=client)
    return str(caught.value)


@pytest.mark.parametrize("problem", ["missing", "duplicate target", "duplicate prediction", "unused"])
def test_key_problems_are_the_local_errors(dask_client, tmp_path, problem):  # noqa: F811
    df = frame(10, 300)
    targets = soft_targets(df, 3)
    if problem == "missing":
        targets = targets[~targets["id"].isin(["r7", "r150", "r3"])]
    elif problem == "duplicate target":
        targets = pd.concat([targets, targets[targets["id"].isin(["r9", "r20"])]])
    elif problem == "duplicate prediction":
        df = pd.concat([df, df[df["id"].isin(["r11", "r200"])]])
    else:
        df = df[~df["id"].isin(["r5", "r6"])]
    preds = parquet_files(tmp_path, df, 3, 1)
    targets.to_csv(tmp_path / "t.csv", index=False)

    def job():
        return plan_score(preds, targets=str(tmp_path / "t.csv"))

    expected = local_error(job)
    assert dask_error(dask_client, job, partition_bytes=2000) == expected


def test_bad_rows_are_named_by_their_row_in_the_file(dask_client, tmp_path):  # noqa: F811
    df = frame(11, 1000)
    df.loc[[640, 910], "p_a"] = -0.5
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    expected = local_error(lambda: plan_score(str(path)))
    assert "at rows 641, 911 " in expected  # both rows in the local engine's one batch
    # 911 is in another partition: the first bad partition's rows are named
    assert (dask_error(dask_client, lambda: plan_score(str(path)), partition_bytes=5000)
            == expected.replace("rows 641, 911", "row 641"))
    broken = tmp_path / "broken.csv"  # a row with a missing field, in a late byte range
    lines = path.read_text().splitlines()
    lines[700] = ",".join(lines[700].split(",")[:-1])
    broken.write_text("\n".join(lines) + "\n")
    expected = local_error(lambda: plan_score(str(broken)))
    assert dask_error(dask_client, lambda: plan_score(str(broken)), partition_bytes=5000) == expected


def test_per_sample_parts_hold_the_local_rows(dask_client, tmp_path):  # noqa: F811
    paths = parquet_files(tmp_path, frame(12, 400), 2, 2)
    out = tmp_path / "per-sample"
    local_file = tmp_path / "local.parquet"
    job = plan_score(paths, worst=2)
    from nllcli.sinks import per_sample_sink

    with per_sample_sink(job, str(local_file)) as sink:
        run(job, sink)
    run_dask(plan_score(paths, worst=2), DaskOptions(partition_bytes=1), per_sample=out, client=dask_client)
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    got = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(got.sort_values("id").reset_index(drop=True),
                                  pq.read_table(local_file).to_pandas().sort_values("id").reset_index(drop=True),
                                  check_exact=False, rtol=1e-12)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".per-sample")]  # the temporary one is gone
    with pytest.raises(UsageError, match="not an empty directory"):
        run_dask(plan_score(paths), DaskOptions(), per_sample=out, client=dask_client)


def test_failed_run_leaves_no_per_sample_directory(dask_client, tmp_path):  # noqa: F811
    df = frame(13, 300)
    df.loc[250, "p_b"] = np.nan
    paths = parquet_files(tmp_path, df, 3, 1)
    with pytest.raises(NllError, match="row"):
        run_dask(plan_score(paths), DaskOptions(partition_bytes=1), per_sample=tmp_path / "out", client=dask_client)
    assert not [p for p in tmp_path.iterdir() if "out" in p.name]


def test_progress_counts_every_row_and_byte(dask_client, tmp_path):  # noqa: F811
    paths = parquet_files(tmp_path, frame(19, 400), 4, 1)
    seen = []
    run_dask(plan_score(paths), DaskOptions(partition_bytes=1), progress=lambda r, b: seen.append((r, b)),
             client=dask_client)
    assert len(seen) == 4 and seen == sorted(seen)
    assert seen[-1][0] == 400 and seen[-1][1] > 0


def test_in_memory_table_is_sent_in_batches(dask_client):  # noqa: F811
    df = frame(14, 300)
    local, dask, _ = reports(dask_client, plan_score, df, by=["camera"], worst=3)
    assert_same(dask, local)


def test_in_memory_tables_pair_by_key(dask_client):  # noqa: F811
    df = frame(20, 400)
    targets = soft_targets(df, 4)
    local, dask, _ = reports(dask_client, plan_score, df, targets=targets, worst=3)
    assert_same(dask, local)
    assert dask["metrics"]["kl"] > 0
    q = df[[f"p_{c}" for c in CLASSES]].rename(columns=lambda c: c.removeprefix("p_"))
    local, dask, _ = reports(dask_client, plan_kl, targets.drop(columns="id"), q, symmetric=True)  # by position
    assert_same(dask, local)


def test_cli_against_a_running_scheduler(dask_client, run, tmp_path):  # noqa: F811
    path = tmp_path / "preds.csv"
    frame(15, 500).to_csv(path)
    address = dask_client.scheduler.address
    local = run("score", path, "--by", "camera", "--worst", "3", "-f", "json")
    dask = run("score", path, "--by", "camera", "--worst", "3", "-f", "json", "--engine", "dask",
               "--scheduler", address, "--partition-size", "8kB")
    assert dask.exit_code == 0, dask.stderr
    assert_same(json.loads(dask.stdout), json.loads(local.stdout))
    gate = run("score", path, "--engine", "dask", "--scheduler", address, "--max", "nll=0.01")
    assert gate.exit_code == 1
    bad = run("score", path, "--engine", "dask", "--scheduler", address, "--workers", "2")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "--workers" in bad.stderr


def test_usage_errors(monkeypatch, run, tmp_path):
    path = tmp_path / "preds.csv"
    frame(16, 20).to_csv(path)
    result = run("score", path, "--workers", "2")
    assert result.exit_code == 2 and "only with --engine dask" in result.stderr
    result = run("compare", path, path, "--engine", "dask")
    assert result.exit_code == 2 and "local engine" in result.stderr
    monkeypatch.setitem(sys.modules, "distributed", None)  # Dask not installed
    result = run("score", path, "--engine", "dask")
    assert result.exit_code == 2
    assert result.stderr == "nll: error: --engine dask needs Dask: pip install 'nllcli[dask]'\n"
    assert parse_size("64MB") == 64 << 20 and parse_size("1.5k") == 1536 and parse_size(100) == 100
    with pytest.raises(UsageError):
        parse_size("lots")


def test_a_dead_scheduler_is_a_one_line_error(monkeypatch, run, tmp_path):
    monkeypatch.setattr(engine_dask, "CONNECT_TIMEOUT", "1s")
    path = tmp_path / "preds.csv"
    frame(17, 20).to_csv(path)
    started = time.monotonic()
    result = run("score", path, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 2
    assert result.stderr.startswith("nll: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert result.stderr.count("\n") == 1
    assert time.monotonic() - started < 60  # not the 30 s default wait (a generous bound on a loaded machine)
    missing = run("score", path, "--engine", "dask", "--scheduler-file", tmp_path / "none.json")
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_a_real_run_starts_and_closes_its_own_cluster(nll_exe, tmp_path):
    import psutil

    path = tmp_path / "preds.parquet"
    pq.write_table(pa.Table.from_pandas(frame(18, 2000)), path, row_group_size=500)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(engine_dask.__file__)),
                                                    env.get("PYTHONPATH")) if p)
    result = subprocess.run([*nll_exe, "score", str(path), "--engine", "dask", "--workers", "2",
                             "--partition-size", "1", "-f", "json"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["rows"] == 2000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("nll-dask-")]  # its scratch folder is gone

    def ours(process):
        try:
            return process.environ().get("TMPDIR") == str(tmp_path)
        except (psutil.Error, OSError):
            return False

    deadline = time.monotonic() + 10
    while [p for p in psutil.process_iter() if ours(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.pid for p in psutil.process_iter() if ours(p)]
