"""Synthetic benchmark inputs, generated in chunks from a fixed seed and cached on disk.

Prediction files: ``label`` (int64, 0..9) and ``p_0`` .. ``p_9`` (float64); the ``_names`` CSV
holds the same rows with class names, as most real files do: ``label`` ``class_0`` .. ``class_9``
and ``p_class_0`` .. ``p_class_9``. Each row is a
Dirichlet draw peaked on one class (the label 80 % of the time, another class otherwise), mixed
with 0.1 % of the uniform distribution so no probability is below 1e-4, rounded to 8 decimals.
The largest entry is then set to 1 minus the sum of the others, so each row sums to 1 to within
float rounding (well inside scikit-learn's 1.5e-8 check). KL files hold ``p_0`` .. ``p_9`` only:
``q`` is ``p`` blended 70/30 with an independent draw, so KL(p || q) is moderate and finite.

A file is written under a temporary name and renamed when complete, so an interrupted run never
leaves a partial file that a later run would take as cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

K = 10
CHUNK = 500_000  # rows per generated chunk, also the Parquet row-group size
SEED = 20_240_611
DECIMALS = 8
P_COLS = [f"p_{k}" for k in range(K)]


def _distributions(rng: np.random.Generator, peak: np.ndarray) -> np.ndarray:
    """(n, K) probabilities, each row a Dirichlet draw concentrated on class ``peak[i]``."""
    n = peak.shape[0]
    alpha = np.full((n, K), 0.3)
    alpha[np.arange(n), peak] += rng.uniform(0.5, 12.0, n)
    g = rng.standard_gamma(alpha)
    return 0.999 * g / g.sum(axis=1, keepdims=True) + 0.001 / K


def _rounded(p: np.ndarray) -> np.ndarray:
    """Round to DECIMALS and put the residual on each row's largest entry, so rows sum to 1."""
    p = np.round(p, DECIMALS)
    rows, top = np.arange(p.shape[0]), p.argmax(axis=1)
    p[rows, top] = 0.0
    p[rows, top] = np.round(1.0 - p.sum(axis=1), DECIMALS)
    return p


def _preds_chunks(n_rows: int, stream: int) -> Iterator[dict[str, pa.Table]]:
    for index, start in enumerate(range(0, n_rows, CHUNK)):
        rng = np.random.default_rng([SEED, stream, index])
        n = min(CHUNK, n_rows - start)
        label = rng.integers(0, K, n)
        peak = np.where(rng.random(n) < 0.8, label, rng.integers(0, K, n))
        p = _rounded(_distributions(rng, peak))
        names = pa.array([f"class_{k}" for k in range(K)]).take(pa.array(label))
        yield {"preds": pa.table({"label": label.astype(np.int64), **dict(zip(P_COLS, p.T))}),
               "names": pa.table({"label": names, **{f"p_class_{k}": p[:, k] for k in range(K)}})}


def _kl_chunks(n_rows: int, stream: int) -> Iterator[dict[str, pa.Table]]:
    for index, start in enumerate(range(0, n_rows, CHUNK)):
        rng = np.random.default_rng([SEED, stream, index])
        n = min(CHUNK, n_rows - start)
        p = _distributions(rng, rng.integers(0, K, n))
        q = 0.7 * p + 0.3 * _distributions(rng, rng.integers(0, K, n))
        yield {name: pa.table(dict(zip(P_COLS, _rounded(x).T))) for name, x in (("p", p), ("q", q))}


class _CsvSink:
    """CSV with a plain (unquoted) header, values in Arrow's shortest round-trip format."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.file = pa.OSFile(str(path), "wb")
        self.file.write((",".join(schema.names) + "\n").encode())
        self.writer = pcsv.CSVWriter(self.file, schema, write_options=pcsv.WriteOptions(include_header=False))

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        self.file.close()


class _ParquetSink:
    def __init__(self, path: Path, schema: pa.Schema):
        self.writer = pq.ParquetWriter(str(path), schema, compression="snappy")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=CHUNK)

    def close(self) -> None:
        self.writer.close()


def _write(targets: dict[str, list[Path]], chunks: Iterator[dict[str, pa.Table]]) -> None:
    """Stream chunks into every target file (``targets`` maps a chunk key to its output paths)."""
    sinks: list[tuple[str, Path, object]] = []
    try:
        for chunk_number, chunk in enumerate(chunks):
            if chunk_number == 0:
                for key, paths in targets.items():
                    for path in paths:
                        sink_type = _ParquetSink if path.suffix == ".parquet" else _CsvSink
                        sinks.append((key, path, sink_type(_partial(path), chunk[key].schema)))
            for key, _, sink in sinks:
                sink.write(chunk[key])
        for _, path, sink in sinks:
            sink.close()
            os.replace(_partial(path), path)
    except BaseException:
        for _, path, _ in sinks:
            _partial(path).unlink(missing_ok=True)
        raise


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def datasets(cache: Path, with_10m: bool) -> dict[str, tuple[dict[str, list[Path]], Callable[[], Iterator]]]:
    """Name -> (output paths per chunk key, chunk generator) for each data set to cache."""
    def preds(n: int, tag: str, stream: int):
        return {"preds": [cache / f"preds_{tag}.csv", cache / f"preds_{tag}.parquet"]}, lambda: _preds_chunks(n, stream)

    paths_2m, chunks_2m = preds(2_000_000, "2m", 1)
    sets = {
        "preds_2m": ({**paths_2m, "names": [cache / "preds_2m_names.csv"]}, chunks_2m),
        "kl_2m": ({"p": [cache / "p_2m.csv"], "q": [cache / "q_2m.csv"]}, lambda: _kl_chunks(2_000_000, 2)),
        "tiny": ({"preds": [cache / "preds_10rows.csv"]}, lambda: _preds_chunks(10, 3)),
    }
    if with_10m:
        sets["preds_10m"] = preds(10_000_000, "10m", 4)
    return sets


def ensure(cache: Path, with_10m: bool, regen: bool = False, log=print) -> dict[str, float]:
    """Write whichever data sets are missing; return the seconds spent on each one written."""
    cache.mkdir(parents=True, exist_ok=True)
    spent = {}
    for name, (targets, chunks) in datasets(cache, with_10m).items():
        paths = [p for ps in targets.values() for p in ps]
        if not regen and all(p.exists() for p in paths):
            continue
        log(f"generating {name} -> {', '.join(p.name for p in paths)} ...")
        start = time.perf_counter()
        _write(targets, chunks())
        spent[name] = round(time.perf_counter() - start, 2)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths)
        log(f"  done in {spent[name]:.1f} s ({sizes})")
    return spent
