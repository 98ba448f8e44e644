"""A real 2-worker Dask LocalCluster for the tests: worker processes, the dashboard on a free port of
127.0.0.1, a scratch folder of its own; one for the whole session (it takes seconds to start)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import nllcli

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # before distributed is imported


@pytest.fixture(scope="session")
def dask_client(tmp_path_factory):
    """A distributed Client of a LocalCluster whose workers import this checkout of nllcli."""
    from distributed import Client, LocalCluster

    code = str(Path(nllcli.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (code, old) if p)  # the workers are new processes
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", local_directory=tmp_path_factory.mktemp("dask-scratch"),
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
