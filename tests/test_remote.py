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
