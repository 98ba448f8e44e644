"""Benchmark `nll tokens` on a 10M-token long table against a pandas groupby of the same file.

    python benchmarks/bench_tokens.py                     10,000,000 tokens (20,000 documents of 500)
    python benchmarks/bench_tokens.py --quick             1,000,000 tokens
    python benchmarks/bench_tokens.py --doc-tokens 10     10,000,000 tokens in 1,000,000 documents
    python benchmarks/bench_tokens.py --interval          with --interval (2000 resamples over documents)

The CSV (``doc_id``, ``token``, ``logprob``; about 250 MB) is generated once from a fixed seed into
$NLL_BENCH_DIR (default ~/.cache/nll-bench). Each command runs in a fresh process under
_measure.py, which reports its wall time and its own peak RSS; the ratio is taken in the same run.
The pandas baseline reads the whole table and groups it by document (token-weighted and
per-document perplexity, bits per byte); nll also counts words and streams in bounded batches.
The two runs must agree to 1e-9 relative, else the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NLL = [sys.executable, "-m", "nllcli"]  # the package importable here (PYTHONPATH wins over an installed one)
SEED = 14
DOC_TOKENS = 500
VOCAB = [" the", " of", "ing", " a", "tion", "\n", " and", "s", ",", " model", "é", " x", " перплексия", "."]

BASELINE = r"""
import json, math, sys
import numpy as np, pandas as pd
frame = pd.read_csv(sys.argv[1], keep_default_na=False, dtype={"doc_id": str, "token": str})
frame["nbytes"] = frame["token"].str.encode("utf-8").str.len()
docs = frame.groupby("doc_id", sort=False).agg(ll=("logprob", "sum"), n=("logprob", "size"), b=("nbytes", "sum"))
total, tokens = -docs["ll"].sum(), docs["n"].sum()
doc_perplexity = float(np.exp(-docs["ll"] / docs["n"]).mean())
print(json.dumps({"perplexity": math.exp(total / tokens), "doc_perplexity": doc_perplexity,
                  "bits_per_byte": total / (docs["b"].sum() * math.log(2)), "tokens": int(tokens)}))
"""


def generate(path: Path, tokens: int, doc_tokens: int = DOC_TOKENS) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(SEED)
    vocab = np.array(VOCAB)
    temp = path.with_suffix(".tmp")
    chunk = 1_000_000
    with pcsv.CSVWriter(str(temp), pa.schema([("doc_id", pa.string()), ("token", pa.string()),
                                               ("logprob", pa.float64())])) as writer:
        for start in range(0, tokens, chunk):
            n = min(chunk, tokens - start)
            docs = (np.arange(start, start + n) // doc_tokens).astype(str)
            writer.write_table(pa.table({"doc_id": np.char.add("doc", docs),
                                         "token": vocab[rng.integers(0, len(vocab), n)],
                                         "logprob": -rng.exponential(2.5, n).round(6)}))
    os.replace(temp, path)


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "_measure.py"), "--timeout", "900", "--", *cmd],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result.get("returncode") != 0:
        raise SystemExit(f"{cmd[0]} failed: {result.get('stderr', '')[-2000:]}")
    result["json"] = json.loads(result["stdout"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--doc-tokens", type=int, default=DOC_TOKENS, help="tokens per document")
    parser.add_argument("--interval", action="store_true", help="nll tokens --interval (the bootstrap)")
    args = parser.parse_args()
    tokens = 1_000_000 if args.quick else 10_000_000
    cache = Path(os.environ.get("NLL_BENCH_DIR", Path.home() / ".cache" / "nll-bench"))
    cache.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.doc_tokens == DOC_TOKENS else f"_{args.doc_tokens}"
    path = cache / f"tokens_{tokens // 1_000_000}m{suffix}.csv"
    if not path.exists():
        generate(path, tokens, args.doc_tokens)
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    interval = ["--interval"] if args.interval else []
    nll = measure([*NLL, "tokens", str(path), "--format", "json", "--quiet", *interval])
    pandas = measure([sys.executable, "-c", BASELINE, str(path)])
    a, b = nll["json"], pandas["json"]
    agree = a["tokens"] == b["tokens"] and all(
        abs(a["metrics"][m] - b[m]) <= 1e-9 * abs(b[m]) for m in ("perplexity", "doc_perplexity", "bits_per_byte"))
    size = path.stat().st_size / 1e6
    print(f"nll tokens{' --interval' if args.interval else ''}, {tokens:,} tokens ({size:.0f} MB CSV, "
          f"{tokens // args.doc_tokens:,} documents)")
    for name, run in (("nll tokens", nll), ("pandas groupby", pandas)):
        print(f"  {name:15} {run['wall_s']:7.2f} s  peak RSS {run['maxrss_kb'] / 1024:7.0f} MiB")
    print(f"  ratio (pandas / nll): time {pandas['wall_s'] / nll['wall_s']:.2f}x, "
          f"memory {pandas['maxrss_kb'] / nll['maxrss_kb']:.1f}x; results agree to 1e-9: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
