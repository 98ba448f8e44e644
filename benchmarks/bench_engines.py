"""nll beside DuckDB and Polars on the shapes of issue 17, in the same interleaved runs.

    python benchmarks/bench_engines.py            every shape, interleaved rounds: 11 for the 2M shapes
                                                  (200k x 1000: 5, 10M shapes: 3)
    python benchmarks/bench_engines.py --only csv_10m_10,parquet_10m_10 --rounds 3
    python benchmarks/bench_engines.py --quick    2M and smaller shapes, 1 round (about 2 minutes)
    python benchmarks/bench_engines.py --rounds 5 --only csv_2m_10,parquet_2m_10

Every command computes the same two numbers, the mean NLL (probabilities clipped at 1e-15, as
nll does) and the accuracy, and runs in a fresh process under _measure.py (a small parent, so
the child's peak RSS is its own): nll score, one DuckDB SQL query over read_csv / read_parquet,
a Polars lazy scan, and the parse floor (pyarrow reading the same columns and nothing else).
Within a round every command of a shape runs once, in turn, so load drifts hit them alike; the
table shows medians of wall and CPU time (user + system), the peak RSS, and nll's ratio to the
faster of DuckDB and Polars. The 1-minute load average is printed beside the figures. A command
more than SLOW_FACTOR times slower than the faster of DuckDB and Polars in the first round (Polars
on every shape here, and pandas) is timed in that round only: the faster one decides the ratio.

Data (cached in $NLL_BENCH_DIR/engines, default ~/.cache/nll-bench/engines): an ``id`` column,
a string label ``class_<k>``, columns ``p_class_<k>`` written with 6 decimals, as a to_csv of
a real model's output looks; generated in a child process, from a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
NLL = str(Path(sys.executable).parent / "nll")
EPS = 1e-15
TIMEOUT_S = 1800

# name: (rows, classes, format); the table
SHAPES = {
    "csv_2m_10": (2_000_000, 10, "csv"),
    "csv_10m_10": (10_000_000, 10, "csv"),
    "csv_200k_1000": (200_000, 1000, "csv"),
    "csv_2m_2": (2_000_000, 2, "csv"),
    "gzip_2m_10": (2_000_000, 10, "csv.gz"),
    "parquet_2m_10": (2_000_000, 10, "parquet"),
    "parquet_10m_10": (10_000_000, 10, "parquet"),
}
BIG = {"csv_10m_10", "parquet_10m_10"}  # a minute or more a round: BIG_ROUNDS, left out by --quick
# Interleaved rounds: a ratio moved by up to 15% between runs of 3 rounds on this noisy machine, and
# two runs of the same nll command, 31 rounds each, still differed by 4%: the shapes that take nll
# under 1.5 s get QUICK_ROUNDS (about a minute more for all four).
ROUNDS, BIG_ROUNDS, QUICK_ROUNDS = 5, 3, 11
QUICK = {"csv_2m_10", "csv_2m_2", "gzip_2m_10", "parquet_2m_10"}
RESAMPLES = 2000  # bootstrap resamples of the rounds for the interval of the paired ratio
SLOW_FACTOR = 2.0
STARTUP = "startup"  # nll score on 10 rows beside `python -c "import numpy, pyarrow.csv"`
STARTUP_ROUNDS = 21
STARTUP_GAP_S = 0.05  # the target for the gap between the two medians
CHUNK = 250_000


# -- data ------------------------------------------------------------------------------------


def data_path(cache: Path, shape: str) -> Path:
    rows, classes, fmt = SHAPES[shape]
    return cache / f"preds_{rows}_{classes}.{fmt}"


def generate(path: Path, rows: int, classes: int, fmt: str) -> None:
    """Write the file under a temporary name, renamed when complete."""
    import gzip

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(17)
    names = np.array([f"class_{k}" for k in range(classes)])
    columns = ["id", "label", *[f"p_class_{k}" for k in range(classes)]]
    partial = path.with_name(path.name + ".partial")
    chunk = max(1000, min(CHUNK, 20_000_000 // classes))
    writer = None
    raw = gzip.open(partial, "wb", compresslevel=6) if fmt == "csv.gz" else open(partial, "wb")
    try:
        if fmt != "parquet":
            raw.write((",".join(columns) + "\n").encode())
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            y = rng.integers(0, classes, n)
            alpha = np.full((n, classes), 0.3)
            alpha[np.arange(n), y] += rng.uniform(0.5, 12.0, n)
            p = rng.standard_gamma(alpha)
            p /= p.sum(axis=1, keepdims=True)
            p = np.round(0.999 * p + 0.001 / classes, 6)
            table = pa.table({"id": np.arange(start, start + n), "label": names[y],
                              **{c: p[:, k] for k, c in enumerate(columns[2:])}})
            if fmt == "parquet":
                writer = writer or pq.ParquetWriter(raw, table.schema)
                writer.write_table(table, row_group_size=500_000)
            else:
                pcsv.write_csv(table, raw, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    finally:
        if writer is not None:
            writer.close()
        raw.close()
    partial.rename(path)


def ensure_data(cache: Path, shapes: list[str]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for shape in shapes:
        path = data_path(cache, shape)
        if not path.exists():
            print(f"generating {path.name} ...", flush=True)
            rows, classes, fmt = SHAPES[shape]
            # In a child: this process stays small, and so do the _measure.py children it starts.
            subprocess.run([PYTHON, __file__, "--generate", str(path), str(rows), str(classes), fmt], check=True)


# -- the commands --------------------------------------------------------------------------------


def duckdb_query(path: str, classes: int) -> str:
    """One SQL query: the label's probability and position, and the position of the first largest
    probability (ties go to the first class, as nll's argmax does)."""
    probs = [f"p_class_{k}" for k in range(classes)]
    pick = " ".join(f"WHEN '{c[2:]}' THEN {c}" for c in probs)
    position = " ".join(f"WHEN '{c[2:]}' THEN {k + 1}" for k, c in enumerate(probs))
    row = f"[{', '.join(probs)}]"
    source = f"read_parquet('{path}')" if path.endswith(".parquet") else f"read_csv('{path}')"
    return (f"SELECT avg(-ln(greatest(p, {EPS}))) AS nll, avg(CASE WHEN y = top THEN 1.0 ELSE 0.0 END) AS accuracy "
            f"FROM (SELECT CASE label {pick} END AS p, CASE label {position} END AS y, "
            f"list_position({row}, greatest({', '.join(probs)})) AS top FROM {source})")


def run_duckdb(path: str, classes: int) -> dict:
    import duckdb

    nll, accuracy = duckdb.execute(duckdb_query(path, classes)).fetchone()
    return {"nll": nll, "accuracy": accuracy}


def run_polars(path: str, classes: int) -> dict:
    import polars as pl

    probs = [f"p_class_{k}" for k in range(classes)]
    frame = pl.scan_parquet(path) if path.endswith(".parquet") else pl.scan_csv(path)
    index = pl.col("label").replace_strict({c[2:]: k for k, c in enumerate(probs)}, return_dtype=pl.UInt32)
    row = pl.concat_list(probs)
    p = row.list.get(index)
    out = frame.select(
        (-(p.clip(lower_bound=EPS).log())).mean().alias("nll"),
        (row.list.arg_max() == index).cast(pl.Float64).mean().alias("accuracy"),
    ).collect()
    return {"nll": out["nll"][0], "accuracy": out["accuracy"][0]}


def run_floor(path: str, classes: int) -> dict:
    """pyarrow reading the label and class columns, and nothing else."""
    import pyarrow as pa

    columns = ["label", *[f"p_class_{k}" for k in range(classes)]]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return {"rows": pq.read_table(path, columns=columns).num_rows}
    import pyarrow.csv as pcsv

    types = {c: pa.string() if c == "label" else pa.float64() for c in columns}
    rows = 0
    for batch in pcsv.open_csv(path, convert_options=pcsv.ConvertOptions(include_columns=columns, column_types=types)):
        rows += batch.num_rows
    return {"rows": rows}


def run_pandas(path: str, classes: int) -> dict:
    import pandas as pd
    from sklearn.metrics import accuracy_score, log_loss

    df = pd.read_csv(path)
    probs = [f"p_class_{k}" for k in range(classes)]
    P = df[probs].to_numpy()
    labels = [c[2:] for c in probs]
    predicted = pd.Series(labels).to_numpy()[P.argmax(axis=1)]
    return {"nll": float(log_loss(df["label"], P, labels=labels)), "accuracy": accuracy_score(df["label"], predicted)}


RUNNERS = {"duckdb": run_duckdb, "polars": run_polars, "floor": run_floor, "pandas": run_pandas}


def commands(path: Path, classes: int, with_pandas: bool) -> dict[str, list[str]]:
    own = [PYTHON, __file__, "--run"]
    out = {"nll": [NLL, "score", str(path), "--format", "json", "--quiet"],
           "duckdb": [*own, "duckdb", str(path), str(classes)],
           "polars": [*own, "polars", str(path), str(classes)],
           "floor": [*own, "floor", str(path), str(classes)]}
    if with_pandas:
        out["pandas"] = [*own, "pandas", str(path), str(classes)]
    return out


# -- measuring -------------------------------------------------------------------------------


def measure_once(cmd: list[str]) -> dict:
    wrapper = [PYTHON, str(HERE / "_measure.py"), "--timeout", str(TIMEOUT_S), "--", *cmd]
    run = json.loads(subprocess.run(wrapper, check=True, capture_output=True, text=True).stdout)
    if run.get("error") or run["returncode"] != 0:
        return {"error": run.get("error") or f"exit {run['returncode']}: {run['stderr'].strip()[-300:]}"}
    metrics = _metrics(run["stdout"])
    return {"wall_s": run["wall_s"], "cpu_s": run.get("cpu_s"), "rss_mb": run["maxrss_kb"] / 1024,
            "nll": metrics.get("nll"), "accuracy": metrics.get("accuracy")}


def _metrics(stdout: str) -> dict:
    """The mean NLL and accuracy of a command's JSON; _measure.py keeps the first 20,000
    characters, where nll's "metrics" come before its (long, for 1000 classes) per-class table."""
    import re

    try:
        output = json.loads(stdout)
        return output.get("metrics", output)
    except json.JSONDecodeError:
        if '"metrics"' not in stdout:
            return {}  # a command printing nothing (the bare imports)
        metrics = stdout[stdout.index('"metrics"'):]
        found = {k: re.search(rf'"{k}": ([-0-9.eE+]+|null)', metrics) for k in ("nll", "accuracy")}
        return {k: float(m.group(1)) if m and m.group(1) != "null" else None for k, m in found.items()}


def bench_shape(path: Path, classes: int, rounds: int, with_pandas: bool, skip: frozenset[str] = frozenset()) -> dict:
    cmds = {name: cmd for name, cmd in commands(path, classes, with_pandas).items() if name not in skip}
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    loads = []
    for name, cmd in cmds.items():  # warm-up: the page cache, and a first import of each library
        if name != "pandas":
            measure_once(cmd)
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for name, cmd in cmds.items():
            if runs[name] and _slow(name, runs):
                continue  # the faster engine decides the ratio; once is enough to know this one is slower
            runs[name].append(measure_once(cmd))
    summary = {}
    for name, got in runs.items():
        errors = [r["error"] for r in got if "error" in r]
        if errors:
            summary[name] = {"error": errors[0]}
            continue
        summary[name] = {"wall_s": statistics.median(r["wall_s"] for r in got),
                         "cpu_s": statistics.median(r["cpu_s"] for r in got) if got[0]["cpu_s"] is not None else None,
                         "rss_mb": max(r["rss_mb"] for r in got), "nll": got[0]["nll"],
                         "accuracy": got[0]["accuracy"], "walls": [round(r["wall_s"], 3) for r in got]}
    summary["load"] = loads
    summary["paired"] = paired_ratio(runs)
    return summary


def paired_ratio(runs: dict[str, list[dict]]) -> dict | None:
    """nll's wall time over the faster of DuckDB and Polars in the same round, round by round:
    the median of those ratios and a 95% percentile-bootstrap interval over the rounds (seeded).
    Pairing within a round cancels the machine's slower drifts, which move both alike; the
    interval says how far the median ratio could move on another run."""
    import random

    def walls(name: str) -> list[float | None]:
        return [r.get("wall_s") for r in runs.get(name, [])]

    nll = walls("nll")
    engines = [walls("duckdb"), walls("polars")]
    ratios = []
    for i, mine in enumerate(nll):
        theirs = [w[i] for w in engines if i < len(w) and w[i] is not None]
        if mine is not None and theirs:
            ratios.append(mine / min(theirs))
    if not ratios:
        return None
    rng = random.Random(17)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES))
    return {"median": statistics.median(ratios), "low": medians[int(0.025 * RESAMPLES)],
            "high": medians[int(0.975 * RESAMPLES) - 1], "rounds": len(ratios),
            "ratios": [round(r, 3) for r in ratios]}


def _slow(name: str, runs: dict[str, list[dict]]) -> bool:
    """pandas, or an engine whose first run took more than SLOW_FACTOR times the other engine's."""
    if name == "pandas":
        return True
    if name not in ("duckdb", "polars"):
        return False
    other = runs.get("polars" if name == "duckdb" else "duckdb")
    first = runs[name][0]
    if not other or "wall_s" not in other[0] or "wall_s" not in first:
        return False
    return first["wall_s"] > SLOW_FACTOR * other[0]["wall_s"]


def bench_startup(cache: Path) -> dict:
    """nll score on a 10-row file and the bare imports of numpy and pyarrow.csv, interleaved,
    STARTUP_ROUNDS times: the medians of wall and CPU time, and the gap between them."""
    path = cache / "preds_10_10.csv"
    if not path.exists():
        subprocess.run([PYTHON, __file__, "--generate", str(path), "10", "10", "csv"], check=True)
    cmds = {"nll": [NLL, "score", str(path), "--format", "json", "--quiet"],
            "imports": [PYTHON, "-c", "import numpy, pyarrow.csv"]}
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    load = os.getloadavg()[0]
    for cmd in cmds.values():  # warm-up
        measure_once(cmd)
    for _ in range(STARTUP_ROUNDS):
        for name, cmd in cmds.items():
            runs[name].append(measure_once(cmd))
    summary = {name: {"wall_s": statistics.median(r["wall_s"] for r in got),
                      "cpu_s": statistics.median(r["cpu_s"] for r in got), "rss_mb": max(r["rss_mb"] for r in got),
                      "walls": [round(r["wall_s"], 3) for r in got]} for name, got in runs.items()}
    summary["gap_s"] = summary["nll"]["wall_s"] - summary["imports"]["wall_s"]
    summary["load"] = [load, os.getloadavg()[0]]
    return summary


def show_startup(result: dict) -> None:
    print(f"\n{STARTUP}  (1-min load before and after: {', '.join(f'{x:.2f}' for x in result['load'])}; "
          f"medians of {STARTUP_ROUNDS})")
    print(f"  {'':8} {'wall s':>8} {'cpu s':>8} {'RSS MB':>8}")
    for name in ("nll", "imports"):
        r = result[name]
        print(f"  {name:8} {r['wall_s']:8.3f} {r['cpu_s']:8.2f} {r['rss_mb']:8.1f}")
    verdict = "PASS" if result["gap_s"] <= STARTUP_GAP_S else "FAIL"
    print(f"  nll score on 10 rows - import numpy, pyarrow.csv: {result['gap_s']:.3f} s "
          f"(target <= {STARTUP_GAP_S})  {verdict}")


def show(shape: str, result: dict) -> None:
    print(f"\n{shape}  (1-min load before each round: {', '.join(f'{x:.2f}' for x in result['load'])})")
    print(f"  {'':8} {'wall s':>8} {'cpu s':>8} {'RSS MB':>8}  {'nll':>12} {'accuracy':>9}")
    for name in ("nll", "duckdb", "polars", "floor", "pandas"):
        r = result.get(name)
        if r is None:
            continue
        if "error" in r:
            print(f"  {name:8} FAILED: {r['error']}")
            continue
        cpu = f"{r['cpu_s']:8.2f}" if r["cpu_s"] is not None else f"{'':8}"
        value = f"{r['nll']:12.8f}" if r["nll"] is not None else f"{'':12}"
        accuracy = f"{r['accuracy']:9.6f}" if r["accuracy"] is not None else ""
        print(f"  {name:8} {r['wall_s']:8.3f} {cpu} {r['rss_mb']:8.1f}  {value} {accuracy}")
    others = [result[n]["wall_s"] for n in ("duckdb", "polars") if "wall_s" in result.get(n, {})]
    if "wall_s" in result.get("nll", {}) and others:
        ratio = result["nll"]["wall_s"] / min(others)
        verdict = "PASS" if ratio <= 1.0 else "FAIL"
        line = f"  nll / faster of DuckDB and Polars: {ratio:.2f}  {verdict}"
        paired = result.get("paired")
        if paired and paired["rounds"] > 1:
            noise = "; within noise" if paired["low"] <= 1.0 <= paired["high"] else ""
            line += (f" (round by round: median {paired['median']:.2f}, 95% interval {paired['low']:.2f}-"
                     f"{paired['high']:.2f} over {paired['rounds']} rounds{noise})")
        if "wall_s" in result.get("pandas", {}):
            line += f"; pandas + sklearn / nll: {result['pandas']['wall_s'] / result['nll']['wall_s']:.1f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="no 10M-row shapes, 1 round")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds per shape (default {QUICK_ROUNDS} for the 2M "
                        f"shapes, {BIG_ROUNDS} for the 10M shapes, else {ROUNDS}; 1 with --quick; given, it holds "
                        "for every shape)")
    parser.add_argument("--only", help="comma-separated shapes: " + ", ".join([*SHAPES, STARTUP]))
    parser.add_argument("--no-pandas", action="store_true", help="skip the pandas + sklearn run (15 s)")
    parser.add_argument("--skip", default="", help="comma-separated commands to leave out: duckdb, polars, floor "
                        "(Polars takes minutes on 200k x 1000 here)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    shapes = args.only.split(",") if args.only else [STARTUP, *(s for s in SHAPES if not (args.quick and s in BIG))]
    unknown = [s for s in shapes if s not in SHAPES and s != STARTUP]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}")
    import compileall

    # Byte-compiled, as a pip install leaves it: else (PYTHONDONTWRITEBYTECODE) every run compiles nllcli.
    compileall.compile_dir(str(HERE.parent / "nllcli"), quiet=1)
    cache = Path(os.environ.get("NLL_BENCH_DIR") or Path.home() / ".cache" / "nll-bench").expanduser() / "engines"
    ensure_data(cache, [s for s in shapes if s != STARTUP])
    plan = (f"{rounds} round(s)" if args.rounds or args.quick else
            f"{QUICK_ROUNDS} rounds for the 2M shapes, {ROUNDS} for 200k x 1000, {BIG_ROUNDS} for 10M")
    print(f"nll vs DuckDB vs Polars: {os.cpu_count()} CPUs, Python {platform.python_version()}, {plan}")
    results = {}
    if STARTUP in shapes:
        print(f"running {STARTUP} ...", flush=True)
        results[STARTUP] = bench_startup(cache)
        show_startup(results[STARTUP])
    for shape in (s for s in shapes if s != STARTUP):
        rows, classes, _ = SHAPES[shape]
        print(f"running {shape} ...", flush=True)
        results[shape] = bench_shape(data_path(cache, shape), classes,
                                     rounds if args.rounds or args.quick else
                                     BIG_ROUNDS if shape in BIG else QUICK_ROUNDS if shape in QUICK else rounds,
                                     with_pandas=shape == "csv_2m_10" and not args.no_pandas,
                                     skip=frozenset(filter(None, args.skip.split(","))))
        show(shape, results[shape])
    out = cache / "last_engines_run.json"
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
                               "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        sys.exit(0)
    if sys.argv[1:2] == ["--run"]:
        print(json.dumps(RUNNERS[sys.argv[2]](sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    sys.exit(main())
