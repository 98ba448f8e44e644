"""Prediction files written the way people write them, from models trained on scikit-learn's
bundled data sets (iris, wine, digits, breast cancer), with the numbers scikit-learn gives.

    python tests/realworld/make_files.py OUT_DIR           # write the files and OUT_DIR/manifest.json
    python tests/realworld/make_files.py OUT_DIR --score   # also run `nll score FILE` on each, print the tally

Each manifest entry: file, the options a user must give (only --input logits, or --ignore for
what no rule can know), rows, classes, and scikit-learn's log_loss and accuracy_score.
Writers: pandas (index kept or not, CSV, TSV, gzip, Parquet), numpy.savetxt, pyarrow, polars
(skipped when it is not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import softmax
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


# Every file write_all() makes, in order; the last three need polars.
FILES = [
    "iris_pandas_index.csv",
    "iris_pandas_noindex.csv",
    "iris_species.csv",
    "iris_species_index.csv",
    "iris_y_pred.csv",
    "iris_index.parquet",
    "iris_named_index.parquet",
    "iris_reset_index.csv",
    "iris_unnamed_0.csv",
    "iris_pandas_index.tsv",
    "iris_pandas_index.csv.gz",
    "iris_named_index.csv",
    "digits_pandas_index.csv",
    "digits_y_pred.csv",
    "digits_prediction.parquet",
    "digits_list.parquet",
    "digits_savetxt.csv",
    "digits_savetxt_no_comment.csv",
    "digits_logits.csv",
    "digits_p_prefix.csv",
    "wine_cultivar.csv",
    "wine_float_label.csv",
    "wine_truth.csv",
    "cancer_p_benign.csv",
    "cancer_p_malignant.parquet",
    "cancer_proba_index.csv",
    "cancer_two_columns.csv",
    "wine_polars.csv",
    "wine_polars.parquet",
    "iris_polars.csv",
]
POLARS_FILES = FILES[-3:]


def fitted(loader):
    """(test-set DataFrame index, true class indices, probabilities, logits, class names)."""
    data = loader()
    x = pd.DataFrame(data.data)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.4, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    return (x_test.index, np.asarray(y_test), model.predict_proba(x_test), model.decision_function(x_test),
            [str(n) for n in data.target_names])


def expected(y, probs, **extra) -> dict:
    """scikit-learn's log loss and accuracy of class indices ``y`` against (n, K) probabilities."""
    k = probs.shape[1]
    return {"rows": len(y), "classes": k, "nll": float(log_loss(y, probs, labels=list(range(k)))),
            "accuracy": float(accuracy_score(y, probs.argmax(axis=1))), **extra}


def write_all(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    layouts: list[dict] = []

    def add(file, y, probs, args=(), **extra):
        assert file == FILES[len(layouts)], file  # FILES lists them all, for pytest's parameters
        layouts.append({"file": file, "args": list(args), **expected(y, probs, **extra)})

    # iris: class names as columns, labels as names
    index, y, p, _, names = fitted(datasets.load_iris)
    frame = pd.DataFrame(p, columns=names, index=index)
    label_names = np.array(names)[y]
    frame.assign(label=label_names).to_csv(out / "iris_pandas_index.csv")
    add("iris_pandas_index.csv", y, p)
    frame.assign(label=label_names).to_csv(out / "iris_pandas_noindex.csv", index=False)
    add("iris_pandas_noindex.csv", y, p)
    frame.assign(species=label_names).to_csv(out / "iris_species.csv", index=False)
    add("iris_species.csv", y, p)
    frame.assign(species=label_names).to_csv(out / "iris_species_index.csv")
    add("iris_species_index.csv", y, p)
    frame.assign(label=label_names, y_pred=np.array(names)[p.argmax(1)]).to_csv(out / "iris_y_pred.csv")
    add("iris_y_pred.csv", y, p)
    frame.assign(label=label_names).to_parquet(out / "iris_index.parquet")  # __index_level_0__
    add("iris_index.parquet", y, p)
    frame.assign(label=label_names).rename_axis("sample").to_parquet(out / "iris_named_index.parquet")
    add("iris_named_index.parquet", y, p)
    frame.assign(label=label_names).reset_index().to_csv(out / "iris_reset_index.csv", index=False)
    add("iris_reset_index.csv", y, p)
    pd.read_csv(out / "iris_pandas_index.csv").to_csv(out / "iris_unnamed_0.csv")  # read back, saved again
    add("iris_unnamed_0.csv", y, p)
    frame.assign(label=label_names).to_csv(out / "iris_pandas_index.tsv", sep="\t")
    add("iris_pandas_index.tsv", y, p)
    frame.assign(label=label_names).to_csv(out / "iris_pandas_index.csv.gz")
    add("iris_pandas_index.csv.gz", y, p)
    frame.assign(label=label_names).rename_axis("sample").to_csv(out / "iris_named_index.csv")
    add("iris_named_index.csv", y, p, args=["--ignore", "sample"])

    # digits: integer class names, integer labels
    index, y, p, logits, _ = fitted(datasets.load_digits)
    classes = [str(c) for c in range(10)]
    frame = pd.DataFrame(p, columns=classes, index=index)
    frame.assign(target=y).to_csv(out / "digits_pandas_index.csv")
    add("digits_pandas_index.csv", y, p)
    frame.assign(target=y, y_pred=p.argmax(1)).to_csv(out / "digits_y_pred.csv", index=False)
    add("digits_y_pred.csv", y, p)
    frame.assign(label=y, prediction=p.argmax(1)).to_parquet(out / "digits_prediction.parquet")
    add("digits_prediction.parquet", y, p)
    pq.write_table(pa.table({"probs": pa.array(list(p), pa.list_(pa.float64())), "label": y}),
                   out / "digits_list.parquet")
    add("digits_list.parquet", y, p)
    np.savetxt(out / "digits_savetxt.csv", np.column_stack([y, p]), delimiter=",",
               header="label," + ",".join(classes))
    add("digits_savetxt.csv", y, p)
    np.savetxt(out / "digits_savetxt_no_comment.csv", np.column_stack([y, p]), delimiter=",",
               header="label," + ",".join(classes), comments="")
    add("digits_savetxt_no_comment.csv", y, p)
    pd.DataFrame(logits, columns=classes, index=index).assign(y=y).to_csv(out / "digits_logits.csv")
    add("digits_logits.csv", y, softmax(logits, axis=1), args=["--input", "logits"])
    frame.add_prefix("p_").assign(y=y).to_csv(out / "digits_p_prefix.csv")
    add("digits_p_prefix.csv", y, p)

    # wine: class names class_0.. as columns; labels by name, as floats, in an unnamed column
    index, y, p, _, names = fitted(datasets.load_wine)
    frame = pd.DataFrame(p, columns=names, index=index)
    frame.assign(cultivar=np.array(names)[y]).to_csv(out / "wine_cultivar.csv")
    add("wine_cultivar.csv", y, p)
    pd.DataFrame(p, columns=["0", "1", "2"]).assign(y=y.astype(float)).to_csv(out / "wine_float_label.csv",
                                                                                index=False)
    add("wine_float_label.csv", y, p)
    frame.add_prefix("p_").assign(truth=np.array(names)[y]).to_csv(out / "wine_truth.csv", index=False)
    add("wine_truth.csv", y, p)

    # breast cancer: binary; sklearn's classes are 0 = malignant, 1 = benign
    index, y, p, _, names = fitted(datasets.load_breast_cancer)
    diagnosis = np.array(names)[y]
    pd.DataFrame({"p_benign": p[:, 1], "diagnosis": diagnosis}, index=index).to_csv(out / "cancer_p_benign.csv")
    add("cancer_p_benign.csv", y, p)
    pd.DataFrame({"p_malignant": p[:, 0], "diagnosis": diagnosis}, index=index).to_parquet(
        out / "cancer_p_malignant.parquet")
    add("cancer_p_malignant.parquet", 1 - y, p[:, ::-1])
    pd.DataFrame({"proba": p[:, 1], "target": y}, index=index).to_csv(out / "cancer_proba_index.csv")
    add("cancer_proba_index.csv", y, p)
    pd.DataFrame(p, columns=names, index=index).assign(diagnosis=diagnosis).to_csv(out / "cancer_two_columns.csv")
    add("cancer_two_columns.csv", y, p)

    try:
        import polars as pl
    except ImportError:  # polars is optional: its layouts are left out
        return _save(out, layouts)
    index, y, p, _, names = fitted(datasets.load_wine)
    polars_frame = pl.DataFrame({name: p[:, j] for j, name in enumerate(names)}).with_columns(
        cultivar=pl.Series(np.array(names)[y]))
    polars_frame.write_csv(out / "wine_polars.csv")
    add("wine_polars.csv", y, p)
    polars_frame.write_parquet(out / "wine_polars.parquet")
    add("wine_polars.parquet", y, p)
    index, y, p, _, names = fitted(datasets.load_iris)
    pl.DataFrame({"species": np.array(names)[y], **{f"p_{n}": p[:, j] for j, n in enumerate(names)}}).write_csv(
        out / "iris_polars.csv")
    add("iris_polars.csv", y, p)
    return _save(out, layouts)


def _save(out: Path, layouts: list[dict]) -> list[dict]:
    (out / "manifest.json").write_text(json.dumps(layouts, indent=1))
    return layouts


def relative_error(got, want: float) -> float:
    return abs(got - want) / abs(want) if isinstance(got, float) else float("inf")


def score_all(out: Path, layouts: list[dict]) -> int:
    """Run the bare `nll score FILE` (plus the manifest's options) on each file; print one line each."""
    right = 0
    for entry in layouts:
        command = [sys.executable, "-m", "nllcli", "score", str(out / entry["file"]), *entry["args"],
                   "--format", "json"]
        done = subprocess.run(command, capture_output=True, text=True)
        verdict = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
        if done.returncode == 0:
            report = json.loads(done.stdout)
            error = max(relative_error(report["metrics"]["nll"], entry["nll"]),
                        relative_error(report["metrics"].get("accuracy"), entry["accuracy"]))
            ok = error <= 1e-10 and report["classes"].__len__() == entry["classes"]
            right += ok
            verdict = "right" if ok else f"WRONG: nll {report['metrics']['nll']:.6f} (sklearn {entry['nll']:.6f}), " \
                                         f"{len(report['classes'])} classes (want {entry['classes']})"
        print(f"{entry['file']:32} {verdict[:150]}")
    print(f"{right} of {len(layouts)} layouts read right")
    return right


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    folder = Path(sys.argv[1])
    written = write_all(folder)
    if "--score" in sys.argv[2:]:
        score_all(folder, written)
