"""The Dask step of the benchmark: ROWS rows in 20 Parquet files, the local engine against a 2-worker
LocalCluster (one thread each).

    python benchmarks/bench_dask.py               10M rows (about 1 GB of Parquet, generated once)
    python benchmarks/bench_dask.py --rows 1000000

Measured: the local engine (`nll score DIR`, a fresh process, wall and peak RSS); the same command on
an already running cluster (`--scheduler`, wall, peak RSS of each worker sampled with psutil every
50 ms); `nll score --engine dask --workers 2` starting and closing its own cluster (wall); the
ratio of the walls; and the largest relative difference between the local and Dask reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import _datagen

HERE = Path(__file__).resolve().parent
FILES = 20


def dataset(cache: Path, rows: int) -> Path:
    """FILES Parquet files of rows / FILES rows each (the generator of the other benchmarks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = cache / f"dask_{rows}"
    if (folder / f"part-{FILES - 1:02d}.parquet").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    per_file = rows // FILES
    for i in range(FILES):
        tables = [c["preds"] for c in _datagen._preds_chunks(per_file, 100 + i)]
        pq.write_table(pa.concat_tables(tables), folder / f"part-{i:02d}.parquet", row_group_size=100_000)
    return folder


def measured(cmd: list[str]) -> dict:
    wrapper = [sys.executable, str(HERE / "_measure.py"), "--timeout", "900", "--", *cmd]
    run = json.loads(subprocess.run(wrapper, check=True, capture_output=True, text=True).stdout)
    if run["returncode"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {run['stderr'][-500:]}")
    return {"wall_s": round(run["wall_s"], 3), "rss_mb": round(run["maxrss_kb"] / 1024, 1),
            "report": json.loads(run["stdout"])}


def peak_rss(pids: list[int], stop: threading.Event, peaks: dict) -> None:
    import psutil

    processes = [psutil.Process(p) for p in pids]
    while not stop.is_set():
        for process in processes:
            try:
                peaks[process.pid] = max(peaks.get(process.pid, 0), process.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.05)


def largest_difference(a, b) -> float:
    """The largest relative difference over every number of two reports."""
    if isinstance(a, dict):
        return max((largest_difference(a[k], b[k]) for k in a if k in b), default=0.0)
    if isinstance(a, list):
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(abs(a), abs(b)) if a != b else 0.0
    return 0.0


def run(cache: Path, rows: int) -> dict:
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    from distributed import Client, LocalCluster

    folder = dataset(cache, rows)
    nll = [sys.executable, "-m", "nllcli", "score", str(folder), "--format", "json", "--quiet"]
    local = measured(nll)
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", local_directory=str(cache / "dask-scratch"),
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        cluster_start = time.perf_counter() - started
        pids = list(client.run(os.getpid).values())
        stop, peaks = threading.Event(), {}
        sampler = threading.Thread(target=peak_rss, args=(pids, stop, peaks), daemon=True)
        sampler.start()
        warm = measured([*nll, "--engine", "dask", "--scheduler", cluster.scheduler_address])
        stop.set()
        sampler.join()
    cold = measured([*nll, "--engine", "dask", "--workers", "2"])
    result = {
        "rows": rows, "files": FILES, "bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "local_wall_s": local["wall_s"], "local_rss_mb": local["rss_mb"],
        "dask_wall_s": warm["wall_s"], "dask_client_rss_mb": warm["rss_mb"],
        "dask_worker_peak_rss_mb": sorted(round(v / 2**20, 1) for v in peaks.values()),
        "dask_over_local": round(warm["wall_s"] / local["wall_s"], 2),
        "dask_own_cluster_wall_s": cold["wall_s"], "cluster_start_s": round(cluster_start, 2),
        "largest_relative_difference": largest_difference(local["report"], warm["report"]),
        "nll": [local["report"]["metrics"]["nll"], warm["report"]["metrics"]["nll"]],
    }
    return result


def show(result: dict) -> None:
    r = result
    print(f"\n-- Dask, {r['rows']:,} rows in {r['files']} Parquet files ({r['bytes'] / 1e6:.0f} MB)")
    print(f"  local engine                          {r['local_wall_s']:7.2f} s   peak RSS {r['local_rss_mb']:.0f} MB")
    print(f"  2-worker LocalCluster (running)       {r['dask_wall_s']:7.2f} s   x{r['dask_over_local']:.2f} of local; "
          f"worker peak RSS {r['dask_worker_peak_rss_mb']} MB, client {r['dask_client_rss_mb']:.0f} MB")
    print(f"  --workers 2 (own cluster, start+stop) {r['dask_own_cluster_wall_s']:7.2f} s   "
          f"(a cluster starts in {r['cluster_start_s']:.1f} s)")
    print(f"  largest relative difference local vs Dask: {r['largest_relative_difference']:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    cache = Path(os.environ.get("NLL_BENCH_DIR") or Path.home() / ".cache" / "nll-bench").expanduser()
    result = run(cache, args.rows)
    show(result)
    (cache / "last_dask_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
