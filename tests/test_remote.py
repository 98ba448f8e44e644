"""Remote inputs through real servers: moto's S3 server and a local HTTP server (tests/servers.py)."""

import gzip
import io

import numpy as np
import pandas as pd
import pytest

import nllcli
from nllcli import remote
from nllcli.errors import InputError, UsageError


def frame(rows=200, seed=0, start=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), size=rows)
    return pd.DataFrame({"id": np.arange(start, start + rows), "label": rng.choice(["a", "b", "c"], size=rows),
                         "p_a": p[:, 0], "p_b": p[:, 1], "p_c": p[:, 2]})


def csv_bytes(df, index=True):
    return df.to_csv(index=index).encode()


def parquet_bytes(df, row_group_size=None):
    out = io.BytesIO()
    df.to_parquet(out, index=False, row_group_size=row_group_size)
    return out.getvalue()


def same_report(a, b):
    da, db = a.to_dict(), b.to_dict()
    da.pop("inputs"), db.pop("inputs")
    assert da == db


def test_s3_csv_equals_the_local_file(s3_bucket, tmp_path):
    df = frame()
    local = tmp_path / "preds.csv"
    df.to_csv(local)  # pandas' index column, as people write it
    url = s3_bucket.put("runs/preds.csv", local)
    report = nllcli.score(url, storage_options=s3_bucket.options, by=["label"], worst=3)
    same_report(report, nllcli.score(str(local), by=["label"], worst=3))
    assert report.inputs == {"preds": [url]}


def test_s3_parquet_streams_row_groups_and_equals_the_local_file(s3_bucket, tmp_path):
    df = frame(3000, seed=1)
    local = tmp_path / "preds.parquet"
    local.write_bytes(parquet_bytes(df, row_group_size=500))
    url = s3_bucket.put("preds.parquet", local)
    report = nllcli.score(url, storage_options=s3_bucket.options, worst=5)
    same_report(report, nllcli.score(str(local), worst=5))
    assert report.rows == 3000


def test_s3_gzip_csv(s3_bucket):
    df = frame(300, seed=2)
    url = s3_bucket.put("preds.csv.gz", gzip.compress(csv_bytes(df, index=False)))
    report = nllcli.score(url, storage_options=s3_bucket.options)
    assert report.rows == 300
    assert report.metrics["nll"] == pytest.approx(nllcli.score(df).metrics["nll"], rel=1e-12)


def test_s3_glob_and_prefix_read_every_shard_in_order(s3_bucket):
    parts = [frame(100, seed=s, start=100 * s) for s in range(3)]
    for i, part in enumerate(parts):
        s3_bucket.put(f"shards/part-{i}.csv", csv_bytes(part, index=False))
    s3_bucket.put("shards/_SUCCESS", b"")
    whole = nllcli.score(pd.concat(parts, ignore_index=True), worst=4)
    by_glob = nllcli.score(s3_bucket.url("shards/part-*.csv"), storage_options=s3_bucket.options, worst=4)
    by_prefix = nllcli.score(s3_bucket.url("shards/"), storage_options=s3_bucket.options, worst=4)
    for report in (by_glob, by_prefix):
        same_report(report, whole)
        assert report.inputs["preds"] == [s3_bucket.url(f"shards/part-{i}.csv") for i in range(3)]


def test_s3_targets_and_kl_and_compare(s3_bucket, tmp_path):
    df = frame(150, seed=3)
    rng = np.random.default_rng(9)
    t = rng.dirichlet(np.ones(3), size=150)
    targets = pd.DataFrame({"id": df["id"][::-1].values, "a": t[:, 0], "b": t[:, 1], "c": t[:, 2]})
    preds_url = s3_bucket.put("preds.csv", csv_bytes(df, index=False))
    targets_url = s3_bucket.put("targets.csv", csv_bytes(targets, index=False))
    options = s3_bucket.options
    soft = nllcli.score(preds_url, targets=targets_url, storage_options=options)
    assert soft.metrics["cross_entropy"] == pytest.approx(nllcli.score(df, targets=targets).metrics["cross_entropy"],
                                                          rel=1e-12)
    q = df.drop(columns="label").rename(columns={"p_a": "a", "p_b": "b", "p_c": "c"})
    q_url = s3_bucket.put("q.parquet", parquet_bytes(q))
    kl = nllcli.kl(targets_url, q_url, storage_options=options)
    assert kl.metrics["kl"] == pytest.approx(nllcli.kl(targets, q).metrics["kl"], rel=1e-12)
    other = frame(150, seed=4)
    other["label"] = df["label"]
    new_url = s3_bucket.put("new.csv", csv_bytes(other, index=False))
    compared = nllcli.compare(preds_url, new_url, storage_options=options, resamples=200)
    local = tmp_path / "base.csv", tmp_path / "new.csv"
    df.to_csv(local[0], index=False)
    other.to_csv(local[1], index=False)
    assert compared.comparison == nllcli.compare(str(local[0]), str(local[1]), resamples=200).comparison


def test_s3_through_the_command_line(run, s3_bucket):
    url = s3_bucket.put("preds.csv", csv_bytes(frame(), index=False))
    result = run("score", url, *s3_bucket.cli_options, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"rows": 200' in result.stdout


def test_missing_key_and_bucket_are_one_line_naming_the_url(run, s3_bucket):
    missing = s3_bucket.url("nope.csv")
    result = run("score", missing, *s3_bucket.cli_options)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"nll: error: {missing}: no such file (or bucket)"
    result = run("score", "s3://nll-no-such-bucket-here/x.csv", *s3_bucket.cli_options)
    assert result.exit_code == 2 and "s3://nll-no-such-bucket-here/x.csv: no such file" in result.stderr
    result = run("score", s3_bucket.url("nothing-*.csv"), *s3_bucket.cli_options)
    assert result.exit_code == 2 and "no file matches this pattern" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_connection_is_one_line(run, dummy_aws):
    from servers import free_port

    url = "s3://bucket/preds.csv"
    result = run("score", url, "--storage-option", f"endpoint_url=http://127.0.0.1:{free_port()}",
                 "--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}}')
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"nll: error: {url}: ") and len(result.stderr.strip().splitlines()) == 1


def test_no_http_server_is_one_line_saying_so(run):
    from servers import free_port

    url = f"http://127.0.0.1:{free_port()}/preds.csv"
    result = run("score", url + "?token=SECRET")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"nll: error: {url}: cannot connect: ") and "SECRET" not in result.stderr


def test_a_missing_extra_names_the_install_command(run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now fails, as without the extra
    result = run("score", "s3://bucket/preds.csv")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("nll: error: s3://bucket/preds.csv: reading s3:// needs s3fs: "
                                     "pip install 'nllcli[s3]'")
    with pytest.raises(UsageError, match=r"pip install 'nllcli\[gcs\]'"):
        remote.resolve("gs://bucket/x.csv") if "gcsfs" not in sys.modules else remote.filesystem("gs://b/x", {})


def test_http_csv_and_parquet(http_root, tmp_path):
    df = frame(2500, seed=5)
    csv_url = http_root.put("data/preds.csv", csv_bytes(df))
    pq_url = http_root.put("data/preds.parquet", parquet_bytes(df, row_group_size=400))
    expected = nllcli.score(df, worst=3, by=["label"])
    for url in (csv_url, pq_url):
        report = nllcli.score(url, worst=3, by=["label"])
        same_report(report, expected)


def test_http_errors_and_secrets(run, http_root):
    http_root.put("x.csv", csv_bytes(frame(10), index=False))
    result = run("score", http_root.url("missing.csv?token=SECRET"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"nll: error: {http_root.url('missing.csv')}: no such file (or bucket)"
    url = http_root.url("x.csv").replace("http://", "http://user:hunter2@")
    assert run("score", url).exit_code == 0
    result = run("score", http_root.url("private/x.csv?sig=SECRET"))
    assert result.exit_code == 2 and "SECRET" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"nll: error: {http_root.url('private/x.csv')}: access denied (HTTP 403)"
    result = run("score", http_root.url("*.csv"))
    assert result.exit_code == 2 and "HTTP has no file listing" in result.stderr


def test_shown_urls_lose_user_info_and_tokens():
    assert remote.shown("https://me:pw@host:8080/a/b.csv?X-Amz-Signature=abc#frag") == "https://host:8080/a/b.csv"
    assert remote.shown("s3://bucket/key.csv") == "s3://bucket/key.csv"
    assert remote.is_url("s3://b/k") and remote.is_url("HTTPS://x/y") and not remote.is_url("C:/data/x.csv")
    assert not remote.is_url("./s3:/x") and not remote.is_url("file.csv")


def test_storage_options_are_json_scalars_or_text():
    assert remote.parse_storage_options(["anon=true", "endpoint_url=http://127.0.0.1:9000", "n=4", "x=1.5",
                                         "name=abc", "empty="]) == {
        "anon": True, "endpoint_url": "http://127.0.0.1:9000", "n": 4, "x": 1.5, "name": "abc", "empty": ""}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        remote.parse_storage_options(["anon"])


@pytest.mark.parametrize("option", [
    "key=SEKRIT1", "secret=SEKRIT2", "token=SEKRIT3", "aws_secret_access_key=SEKRIT4",
    "account_key=SEKRIT5", "sas_token=SEKRIT6", "password=SEKRIT7", "client_secret=SEKRIT8"])
def test_credentials_are_refused_on_the_command_line(run, option):
    result = run("score", "s3://bucket/x.csv", "--storage-option", option)
    assert result.exit_code == 2 and "credentials are not taken on the command line" in result.stderr
    assert option.split("=")[1] not in result.stderr


def test_ordinary_options_are_not_mistaken_for_secrets():
    for name in ("endpoint_url", "anon", "requester_pays", "use_ssl", "client_kwargs", "keyring_x"):
        assert not remote.SECRET_OPTIONS.search(name), name


def test_bad_storage_option_is_a_usage_error(run, s3_bucket):
    url = s3_bucket.put("preds.csv", csv_bytes(frame(), index=False))
    result = run("score", url, "--storage-option", "no_such_option=1", *s3_bucket.cli_options)
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr


def test_a_remote_bad_row_names_the_url_and_row(run, s3_bucket):
    text = "label,p_a,p_b\na,0.5,0.5\nb,0.2,oops\n"
    url = s3_bucket.put("bad.csv", text)
    result = run("score", url, *s3_bucket.cli_options)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"nll: error: {url}: ") and "row 2" in result.stderr, result.stderr


def test_remote_input_is_never_mistaken_for_the_output(run, s3_bucket, tmp_path):
    url = s3_bucket.put("preds.csv", csv_bytes(frame(), index=False))
    out = tmp_path / "rows.csv"
    result = run("score", url, *s3_bucket.cli_options, "--per-sample", out)
    assert result.exit_code == 0, result.stderr
    assert len(pd.read_csv(out)) == 200


def test_resolve_gives_the_file_system_and_urls(s3_bucket):
    for i in range(2):
        s3_bucket.put(f"d/p{i}.parquet", parquet_bytes(frame(10, seed=i)))
    fs, urls = remote.resolve(s3_bucket.url("d/*.parquet"), s3_bucket.options)
    assert urls == [s3_bucket.url("d/p0.parquet"), s3_bucket.url("d/p1.parquet")]
    assert fs.protocol[0] in ("s3", "s3a")
    with pytest.raises(InputError, match="no file matches"):
        remote.resolve(s3_bucket.url("d/*.csv"), s3_bucket.options)


def test_remote_files_are_read_in_bounded_ranges(http_root):
    from nllcli.readers import CSV_BLOCK_BYTES
    from nllcli.remote import READ_BLOCK_BYTES
    from servers import RangeHandler

    df = frame(150_000, seed=7)
    csv_url = http_root.put("big/preds.csv", csv_bytes(df))
    size = (http_root.folder / "big/preds.csv").stat().st_size
    assert size > READ_BLOCK_BYTES
    RangeHandler.requests.clear()
    assert nllcli.score(csv_url).rows == 150_000
    ranges = [r for path, r in RangeHandler.requests if path == "/big/preds.csv"]
    assert ranges and all(r is not None for r in ranges)  # never the whole file in one answer
    spans = [min(int(b), size - 1) - int(a) + 1 for a, b in (r.removeprefix("bytes=").split("-") for r in ranges)]
    # fsspec's read-ahead: what pyarrow asks for (one CSV block) plus one block of its own, never more
    assert max(spans) <= READ_BLOCK_BYTES + CSV_BLOCK_BYTES
    assert sum(spans) <= 2 * size, ranges  # the header, then one streamed pass
