"""Benchmark nll against its parse floors and against what users do today (see README.md).

    python benchmarks/bench.py            everything: 2M and 10M rows, 3 repeats
    python benchmarks/bench.py --quick    no 10M files, 1 repeat
    python benchmarks/bench.py --dask     only the Dask step (bench_dask.py: 10M rows, 1M with --quick)

Data is cached in $NLL_BENCH_DIR (default ~/.cache/nll-bench) and only generated when missing.
Every measured command runs in a fresh process under _measure.py, which reports its wall time
and its own peak RSS. Results go to stdout and to last_run.json in the cache directory. Exit
status is 0 whatever the targets say; non-zero only if the harness or a reference command breaks.
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
from dataclasses import dataclass, field
from pathlib import Path

import _datagen

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
NLL = str(Path(sys.executable).parent / "nll")
TIMEOUT_S = 900
STARTUP_REPEATS = 5
ROWS_2M = 2_000_000


# -- what is measured ------------------------------------------------------------------------


@dataclass
class Bench:
    key: str
    group: str
    label: str
    cmd: list[str]
    expect: dict  # keys the command's JSON stdout must have (value None: any value); {} = none
    reference: str | None = None  # key of the row this one is compared with
    repeats: int = 3
    nll_row: bool = False  # a failure here is nll's, not the harness's
    result: dict = field(default_factory=dict)


def _nll(*args: str) -> list[str]:
    return [NLL, *args]


def _baseline(*args: str) -> list[str]:
    return [PYTHON, str(HERE / "_baselines.py"), *args]


def plan(cache: Path, repeats: int, with_10m: bool) -> list[Bench]:
    d = {p.name: str(p) for p in cache.iterdir()}
    js = ("--format", "json", "--quiet")
    nll_score = {"metrics": {"nll": None}}
    score = "score, 2M rows x 10 classes, integer labels"
    names = "score, the same rows with class names as labels (label class_3, columns p_class_*)"
    benches = [
        Bench("csv_floor", score, "CSV parse floor (pyarrow open_csv)",
              _baseline("csv-floor", d["preds_2m.csv"]), {"rows": ROWS_2M}),
        Bench("score_csv", score, "nll score preds_2m.csv", _nll("score", d["preds_2m.csv"], *js),
              nll_score, "csv_floor", nll_row=True),
        Bench("parquet_floor", score, "Parquet floor (pyarrow read_table)",
              _baseline("parquet-floor", d["preds_2m.parquet"]), {"rows": ROWS_2M}),
        Bench("score_parquet", score, "nll score preds_2m.parquet",
              _nll("score", d["preds_2m.parquet"], *js), nll_score, "parquet_floor", nll_row=True),
        Bench("pandas_sklearn", score, "pandas.read_csv + sklearn log_loss",
              _baseline("pandas-sklearn", d["preds_2m.csv"]), {"nll": None}, "csv_floor"),
        Bench("pandas_numpy", score, "pandas.read_csv + numpy one-liner",
              _baseline("pandas-numpy", d["preds_2m.csv"]), {"nll": None}, "csv_floor"),
        Bench("csv_floor_names", names, "CSV parse floor (pyarrow open_csv)",
              _baseline("csv-floor", d["preds_2m_names.csv"]), {"rows": ROWS_2M}),
        Bench("score_csv_names", names, "nll score preds_2m_names.csv", _nll("score", d["preds_2m_names.csv"], *js),
              nll_score, "csv_floor_names", nll_row=True),
        Bench("pandas_sklearn_names", names, "pandas.read_csv + sklearn log_loss",
              _baseline("pandas-sklearn", d["preds_2m_names.csv"]), {"nll": None}, "csv_floor_names"),
        Bench("kl_floor", "KL, 2 x 2M rows", "KL floor (open_csv p then q, one process)",
              _baseline("csv-floor", "--no-label", d["p_2m.csv"], d["q_2m.csv"]), {"rows": 2 * ROWS_2M}),
        Bench("kl", "KL, 2 x 2M rows", "nll kl p_2m.csv q_2m.csv",
              _nll("kl", d["p_2m.csv"], d["q_2m.csv"], *js), {}, "kl_floor", nll_row=True),
    ]
    if with_10m:
        benches += [
            Bench("score_csv_10m", "memory, 10M rows", "nll score preds_10m.csv",
                  _nll("score", d["preds_10m.csv"], *js), nll_score, "score_csv", nll_row=True),
            Bench("score_parquet_10m", "memory, 10M rows", "nll score preds_10m.parquet",
                  _nll("score", d["preds_10m.parquet"], *js), nll_score, "score_parquet", nll_row=True),
        ]
    if "states_1000" in d:
        benches.append(Bench("merge_1000", "sharded jobs", "nll merge states_1000/ (1,000 state files, 10 classes, "
                             "8 groups, worst 10)", _nll("merge", d["states_1000"], "--quiet"), {}, nll_row=True))
    startup = f"start-up, median of {STARTUP_REPEATS}"
    benches += [
        Bench("python_bare", startup, "python -c pass", [PYTHON, "-c", "pass"], {}),
        Bench("python_imports", startup, "python -c 'import numpy, pyarrow.csv, pandas'",
              [PYTHON, "-c", "import numpy, pyarrow.csv, pandas"], {}),
        Bench("version", startup, "nll --version", _nll("--version"), {}, "python_bare", nll_row=True),
        Bench("score_tiny", startup, "nll score preds_10rows.csv", _nll("score", d["preds_10rows.csv"], *js),
              nll_score, "python_bare", nll_row=True),
    ]
    for b in benches:
        b.repeats = STARTUP_REPEATS if b.group == startup else repeats
    return benches


# Targets: (text, row a, row b or None, metric, op, limit); the value is a / b (or a alone).
TARGETS = [
    ("nll score CSV wall <= 1.25 x CSV parse floor", "score_csv", "csv_floor", "wall_s", "<=", 1.25),
    ("nll score CSV >= 6 x faster than pandas + sklearn", "pandas_sklearn", "score_csv", "wall_s", ">=", 6.0),
    ("nll score CSV, class-name labels: wall <= 1.25 x its parse floor", "score_csv_names", "csv_floor_names",
     "wall_s", "<=", 1.25),
    ("nll score CSV, class-name labels: >= 6 x faster than pandas + sklearn", "pandas_sklearn_names",
     "score_csv_names", "wall_s", ">=", 6.0),
    ("nll score Parquet wall <= 1.3 x read_table floor", "score_parquet", "parquet_floor", "wall_s", "<=", 1.3),
    ("nll kl wall <= 1.2 x KL floor", "kl", "kl_floor", "wall_s", "<=", 1.2),
    ("nll score CSV peak RSS at 2M <= 300 MB", "score_csv", None, "rss_mb", "<=", 300.0),
    ("nll score Parquet peak RSS at 2M <= 300 MB", "score_parquet", None, "rss_mb", "<=", 300.0),
    ("nll score CSV peak RSS at 10M <= 1.2 x 2M", "score_csv_10m", "score_csv", "rss_mb", "<=", 1.2),
    ("nll score Parquet peak RSS at 10M <= 1.2 x 2M", "score_parquet_10m", "score_parquet", "rss_mb", "<=", 1.2),
    ("nll --version <= 0.35 s", "version", None, "wall_s", "<=", 0.35),
    ("nll score on 10 rows <= 0.8 s", "score_tiny", None, "wall_s", "<=", 0.8),
]


# -- running ---------------------------------------------------------------------------------


def _missing(expect: dict, got) -> str | None:
    """The first expected key path absent from ``got``, e.g. 'metrics.nll', or None."""
    for key, sub in expect.items():
        if not isinstance(got, dict) or key not in got:
            return key
        if isinstance(sub, dict):
            deeper = _missing(sub, got[key])
            if deeper:
                return f"{key}.{deeper}"
        elif sub is not None and got[key] != sub:
            return f"{key} == {sub} (got {got[key]!r})"
    return None


def _check(run: dict, expect: dict) -> str | None:
    """Why a run does not count, or None if it succeeded and printed what was expected."""
    if run.get("error"):
        return run["error"]
    if run["returncode"] != 0:
        tail = run["stderr"].strip().splitlines()[-3:]
        return f"exit {run['returncode']}: " + " | ".join(tail)
    if not expect:
        return None
    try:
        output = json.loads(run["stdout"])
    except json.JSONDecodeError:
        return f"stdout is not JSON: {run['stdout'][:120]!r}"
    missing = _missing(expect, output)
    return f"JSON output lacks {missing}" if missing else None


def measure(bench: Bench) -> dict:
    """One untimed warm-up run, then ``bench.repeats`` timed ones: median wall, max peak RSS,
    or the first error (a command that fails is not run again)."""
    runs, stdout = [], ""
    for attempt in range(bench.repeats + 1):
        wrapper = [PYTHON, str(HERE / "_measure.py"), "--timeout", str(TIMEOUT_S), "--", *bench.cmd]
        run = json.loads(subprocess.run(wrapper, check=True, capture_output=True, text=True).stdout)
        error = _check(run, bench.expect)
        if error:
            return {"ok": False, "error": error, "runs": runs}
        if attempt == 0:
            continue
        runs.append({"wall_s": round(run["wall_s"], 4), "rss_mb": round(run["maxrss_kb"] / 1024, 1)})
        stdout = run["stdout"]
    walls = [r["wall_s"] for r in runs]
    return {"ok": True, "wall_s": statistics.median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
            "rss_mb": max(r["rss_mb"] for r in runs), "runs": runs, "output": _json_or_text(stdout)}


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:200]


def warm_page_cache(benches: list[Bench], cache: Path) -> None:
    """Read each data file the commands use once, so that all timed runs read from memory."""
    for arg in sorted({arg for b in benches for arg in b.cmd if arg.startswith(str(cache))}):
        top = Path(arg)
        for path in sorted(top.iterdir()) if top.is_dir() else [top]:  # a folder: states_1000/
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


# -- reporting -------------------------------------------------------------------------------


def _value(rows: dict[str, Bench], a: str, b: str | None, metric: str) -> float | None:
    ra, rb = rows.get(a), rows.get(b) if b else None
    if not (ra and ra.result.get("ok")) or (b and not (rb and rb.result.get("ok"))):
        return None
    return ra.result[metric] / rb.result[metric] if b else ra.result[metric]


def evaluate_targets(rows: dict[str, Bench]) -> list[dict]:
    out = []
    for text, a, b, metric, op, limit in TARGETS:
        if a not in rows or (b and b not in rows):
            status, value = "SKIP", None
        else:
            value = _value(rows, a, b, metric)
            passed = value is not None and (value <= limit if op == "<=" else value >= limit)
            status = "PASS" if passed else "FAIL"
        out.append({"target": text, "status": status, "value": value, "limit": limit, "op": op})
    return out


def _comparison(bench: Bench, rows: dict[str, Bench]) -> str:
    ref = rows.get(bench.reference) if bench.reference else None
    if not (ref and ref.result.get("ok")):
        return ""
    wall = bench.result["wall_s"] / ref.result["wall_s"]
    if bench.key.endswith("_10m"):
        rss = bench.result["rss_mb"] / ref.result["rss_mb"]
        return f"vs 2M: RSS x{rss:.2f}, wall x{wall:.2f}"
    text = f"wall x{wall:.2f} of {ref.label.split(' (')[0]}"
    baseline = rows.get(bench.key.replace("score_csv", "pandas_sklearn")) if bench.key.startswith("score_csv") else None
    if baseline is not None and not bench.key.endswith("_10m") and baseline.result.get("ok"):
        text += f"; {baseline.result['wall_s'] / bench.result['wall_s']:.1f}x faster than pandas+sklearn"
    return text


def print_report(benches: list[Bench], targets: list[dict], header: str) -> None:
    rows = {b.key: b for b in benches}
    print(f"\n{header}\n")
    print(f"{'':47} {'wall s':>7} {'(min-max)':>13} {'peak RSS':>9}")
    print(f"{'command':47} {'median':>7} {'':>13} {'MB (max)':>9}  compared with")
    group = None
    for b in benches:
        if b.group != group:
            group = b.group
            print(f"-- {group}")
        r = b.result
        if not r.get("ok"):
            print(f"  {b.label:45} FAILED: {r.get('error', 'not run')[:200]}")
            continue
        spread = f"({r['wall_min_s']:.2f}-{r['wall_max_s']:.2f})" if len(r["runs"]) > 1 else ""
        print(f"  {b.label:45} {r['wall_s']:7.3f} {spread:>13} {r['rss_mb']:9.1f}  {_comparison(b, rows)}")
    values = []
    for key in ("score_csv", "score_parquet", "score_csv_10m", "score_parquet_10m", "pandas_sklearn", "pandas_numpy"):
        out = rows[key].result.get("output") if key in rows and rows[key].result.get("ok") else None
        nll = out.get("metrics", out).get("nll") if isinstance(out, dict) else None
        if nll is not None:
            values.append(f"{key} {nll:.8f}")
    if values:
        print("\nmean NLL reported: " + ", ".join(values))
    print("\ntargets:")
    for t in targets:
        value = t["value"]
        shown = "" if value is None else f"  (measured {value:.{1 if value >= 10 else 3}f}, limit {t['limit']:g})"
        print(f"  {t['status']:4}  {t['target']}{shown}")


def ensure_state_files(folder: Path, count: int = 1000, rows: int = 200, regen: bool = False) -> float:
    """``count`` state files of distinct shards (``rows`` rows, 10 classes, a group column,
    --worst 10), written in-process once; the seconds it took (0 when cached)."""
    if folder.is_dir() and len(list(folder.glob("*.nllstate"))) == count and not regen:
        return 0.0
    import numpy as np
    import pyarrow as pa

    import nllcli

    start = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        p = rng.dirichlet(np.ones(10), rows)
        table = pa.table({"id": np.arange(i * rows, (i + 1) * rows), "label": rng.integers(0, 10, rows),
                          "site": rng.choice([f"s{j}" for j in range(8)], rows),
                          **{f"p_{k}": p[:, k] for k in range(10)}})
        nllcli.score(table, by=["site"], worst=10, save_state=partial / f"shard-{i:04d}.nllstate")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    partial.rename(folder)
    return round(time.perf_counter() - start, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 10M-row files and use 1 repeat")
    parser.add_argument("--repeats", type=int, help="repeats per command (default 3, or 1 with --quick)")
    parser.add_argument("--regen", action="store_true", help="regenerate the data even if cached")
    parser.add_argument("--dask", action="store_true", help="only the Dask step: local engine vs a 2-worker "
                        "LocalCluster on 20 Parquet files")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask step")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    cache = Path(os.environ.get("NLL_BENCH_DIR") or Path.home() / ".cache" / "nll-bench").expanduser()
    if args.dask:
        return _dask_step(cache, args.quick)

    start = time.perf_counter()
    generation = _datagen.ensure(cache, with_10m=not args.quick, regen=args.regen)
    generation["states_1000"] = ensure_state_files(cache / "states_1000", regen=args.regen)
    benches = plan(cache, repeats, with_10m=not args.quick)
    warm_page_cache(benches, cache)
    for b in benches:
        print(f"running {b.label} x{b.repeats} ...", flush=True)
        b.result = measure(b)
    targets = evaluate_targets({b.key: b for b in benches})

    header = (f"nll benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{repeats} repeat(s), data in {cache}")
    print_report(benches, targets, header)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "repeats": repeats,
        "cpus": os.cpu_count(), "python": platform.python_version(), "nll": NLL, "cache": str(cache),
        "generation_s": generation, "total_s": round(time.perf_counter() - start, 1),
        "results": {b.key: {"label": b.label, "cmd": b.cmd, "reference": b.reference, **b.result} for b in benches},
        "targets": targets,
    }
    (cache / "last_run.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {cache / 'last_run.json'}")
    if not args.no_dask:
        _dask_step(cache, args.quick)
    broken = [b.label for b in benches if not b.nll_row and not b.result.get("ok")]
    if broken:
        print(f"harness problem: reference command(s) failed: {', '.join(broken)}", file=sys.stderr)
        return 2
    return 0


def _dask_step(cache: Path, quick: bool) -> int:
    """Local engine vs a 2-worker LocalCluster (bench_dask.py); results in last_dask_run.json."""
    import bench_dask

    cache.mkdir(parents=True, exist_ok=True)
    result = bench_dask.run(cache, 1_000_000 if quick else 10_000_000)
    bench_dask.show(result)
    (cache / "last_dask_run.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nDask results written to {cache / 'last_dask_run.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
