"""The reference commands nll is compared with, each run as its own fresh process.

    python benchmarks/_baselines.py csv-floor [--no-label] FILE...   stream-parse, nothing else
    python benchmarks/_baselines.py parquet-floor FILE               pyarrow.parquet.read_table
    python benchmarks/_baselines.py pandas-sklearn FILE              read_csv + sklearn log_loss
    python benchmarks/_baselines.py pandas-numpy FILE                read_csv + numpy one-liner

Each prints one JSON line. Imports happen inside the chosen function, so every command pays
for exactly the libraries it uses, as a user's script would.
"""

import json
import sys

K = 10
P_COLS = [f"p_{k}" for k in range(K)]


def csv_floor(paths: list[str], label: bool = True) -> dict:
    """Parse every file with Arrow's streaming CSV reader (default read options), typed as the
    score needs them, and drop each batch. Several files are read one after the other."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rows = 0
    for path in paths:
        schema = pcsv.open_csv(path).schema  # the label as pyarrow infers it: int64, or text for names
        columns = (["label"] if label else []) + [c for c in schema.names if c.startswith("p_")]
        types = {c: schema.field(c).type if c == "label" else pa.float64() for c in columns}
        convert = pcsv.ConvertOptions(include_columns=columns, column_types=types)
        for batch in pcsv.open_csv(path, convert_options=convert):
            rows += batch.num_rows
    return {"rows": rows}


def parquet_floor(path: str) -> dict:
    import pyarrow.parquet as pq

    return {"rows": pq.read_table(path, columns=["label", *P_COLS]).num_rows}


def _read_pandas(path: str):
    import pandas as pd

    df = pd.read_csv(path)
    columns = [c for c in df.columns if c.startswith("p_")]
    return df["label"].to_numpy(), df[columns].to_numpy(), [c[2:] for c in columns]


def pandas_sklearn(path: str) -> dict:
    from sklearn.metrics import log_loss

    y, P, classes = _read_pandas(path)
    labels = classes if y.dtype.kind in "OUT" else range(K)  # class names sort like their columns here
    return {"nll": float(log_loss(y, P, labels=labels))}


def pandas_numpy(path: str) -> dict:
    import numpy as np

    y, P, _ = _read_pandas(path)
    eps = np.finfo(P.dtype).eps
    return {"nll": float(-np.log(np.clip(P[np.arange(len(y)), y], eps, 1 - eps)).mean())}


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "csv-floor":
        label = "--no-label" not in args
        result = csv_floor([a for a in args if a != "--no-label"], label)
    else:
        result = {"parquet-floor": parquet_floor, "pandas-sklearn": pandas_sklearn,
                  "pandas-numpy": pandas_numpy}[command](*args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
