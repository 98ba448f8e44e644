"""Remote inputs on the Dask engine: workers receive URLs and storage options (never file-system
objects) and read Parquet row groups and CSV byte ranges with ranged requests; the reports equal the
local engine's. Real servers: moto's S3 server and a local HTTP server (tests/servers.py), with the
2-worker LocalCluster, whose workers inherited the dummy AWS credentials when they started."""

from __future__ import annotations

import json
import pickle

from dask_cluster import dask_client  # noqa: F401  (the fixture)
from nllcli import remote
from nllcli.comparison import compare
from nllcli.engine_dask import DaskOptions, plan_pieces, run_dask
from nllcli.plan import plan_score
from nllcli.report import build_report
from servers import RangeHandler
from test_dask_compare import new_model
from test_dask_engine import frame, parquet_files
from test_partitions import assert_same


def dask_report(client, urls, storage_options, partition_bytes, **options):
    job = plan_score(urls, storage_options=storage_options, **options)
    pieces = plan_pieces(client, job.sources, partition_bytes)
    state = run_dask(job, DaskOptions(partition_bytes=partition_bytes), client=client)
    report = build_report(job, state).to_dict()
    report.pop("inputs")
    return report, len(pieces)


def local_report(paths, **options):
    job = plan_score(paths, **options)
    from nllcli.engine import run

    report = build_report(job, run(job)).to_dict()
    report.pop("inputs")
    return report


OPTIONS = {"weight": "w", "by": ["camera"], "worst": 4, "bins": 9}


def test_s3_csv_byte_ranges_on_dask_equal_the_local_engine(dask_client, s3_bucket, tmp_path):  # noqa: F811
    path = tmp_path / "preds.csv"
    frame(31, 900).to_csv(path)  # pandas' index column, as people write them
    url = s3_bucket.put("runs/preds.csv", path)
    dask, partitions = dask_report(dask_client, [url], s3_bucket.options, 8 << 10, **OPTIONS)
    assert partitions >= 5
    assert_same(dask, local_report([str(path)], **OPTIONS))


def test_s3_parquet_row_groups_on_dask_equal_the_local_engine(dask_client, s3_bucket, tmp_path):  # noqa: F811
    paths = parquet_files(tmp_path, frame(32, 700), 2, 4)
    urls = [s3_bucket.put(f"pq/part{i}.parquet", tmp_path / f"part{i}.parquet") for i in range(2)]
    dask, partitions = dask_report(dask_client, [s3_bucket.url("pq/*.parquet")], s3_bucket.options, 1, **OPTIONS)
    assert partitions == 8 and len(urls) == 2
    assert_same(dask, local_report(paths, **OPTIONS))


def test_compare_on_dask_reads_s3(dask_client, s3_bucket, tmp_path):  # noqa: F811
    base = frame(33, 400)
    base.to_csv(tmp_path / "base.csv", index=False)
    new_model(base, 5).to_csv(tmp_path / "new.csv", index=False)
    urls = [s3_bucket.put(name, tmp_path / name) for name in ("base.csv", "new.csv")]
    options = {"by": ["camera"], "worst": 3, "resamples": 200}
    local = compare(str(tmp_path / "base.csv"), str(tmp_path / "new.csv"), bootstrap="poisson", **options).to_dict()
    dask = compare(*urls, engine="dask", scheduler=dask_client.scheduler.address, partition_size="4kB",
                   storage_options=s3_bucket.options, **options).to_dict()
    local.pop("inputs"), dask.pop("inputs")
    assert_same(dask, local)


def test_http_csv_on_dask_is_read_in_ranges(dask_client, http_root, tmp_path):  # noqa: F811
    path = tmp_path / "preds.csv"
    frame(34, 900).to_csv(path)
    url = http_root.put("dask/preds.csv", path)
    RangeHandler.requests.clear()
    dask, partitions = dask_report(dask_client, [url], None, 8 << 10, **OPTIONS)
    assert partitions >= 5
    assert_same(dask, local_report([str(path)], **OPTIONS))
    gets = [r for p, r in RangeHandler.requests if p.endswith("/dask/preds.csv")]
    assert gets and all(r is not None for r in gets)  # every read a ranged request, no whole download
    spans = [int(b) - int(a) + 1 for a, b in (r.removeprefix("bytes=").split("-") for r in gets if r.split("-")[1])]
    assert max(spans) <= 8 << 20


def test_a_remote_file_pickles_as_its_url_and_options(s3_bucket):
    url = s3_bucket.put("one.csv", "label,p_a,p_b\na,0.5,0.5\n")
    opened = remote.RemoteFile.open(url, s3_bucket.options)
    data = pickle.dumps(opened)
    assert b"S3FileSystem" not in data and b"s3fs" not in data
    again = pickle.loads(data)
    assert (again.url, again.path, again.size, again.storage_options) == (url, opened.path, opened.size,
                                                                          s3_bucket.options)
    assert again.read(100) == b"label,p_a,p_b\na,0.5,0.5\n"


def test_the_workers_inherited_the_credentials(dask_client):  # noqa: F811
    import os

    def variable() -> str | None:
        return os.environ.get("AWS_ACCESS_KEY_ID")

    assert set(dask_client.run(variable).values()) == {os.environ["AWS_ACCESS_KEY_ID"]}


def test_cli_on_dask_with_s3_inputs(dask_client, s3_bucket, run, tmp_path):  # noqa: F811
    path = tmp_path / "preds.csv"
    frame(35, 300).to_csv(path)
    url = s3_bucket.put("cli/preds.csv", path)
    address = dask_client.scheduler.address
    local = run("score", path, "--by", "camera", "-f", "json")
    dask = run("score", url, *s3_bucket.cli_options, "--by", "camera", "-f", "json", "--engine", "dask",
               "--scheduler", address, "--partition-size", "4kB")
    assert dask.exit_code == 0, dask.stderr
    got, expected = json.loads(dask.stdout), json.loads(local.stdout)
    got.pop("inputs"), expected.pop("inputs")
    assert_same(got, expected)
    missing = run("score", s3_bucket.url("cli/missing.csv"), *s3_bucket.cli_options, "--engine", "dask",
                  "--scheduler", address)
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1 and "missing.csv" in missing.stderr
