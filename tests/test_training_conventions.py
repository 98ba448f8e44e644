"""Files written by training code: --ignore-label (torch's ignore_index) and --class-weight /
--class-weight-file (torch's weighted mean), with parity against torch.nn.functional.cross_entropy.

The torch figures were computed once with torch 2.13.0 (CPU, float64) in a scratch environment
and are written here: torch is not needed to run these tests. The script:

    z = torch.tensor(LOGITS, dtype=torch.float64); y = torch.tensor(LABELS)
    F.cross_entropy(z, y, ignore_index=-100)                                  # TORCH_IGNORE
    F.cross_entropy(z[keep], y[keep], weight=torch.tensor(WEIGHT))            # TORCH_WEIGHT
    F.cross_entropy(z, y, weight=w, ignore_index=-100)                        # the same
    F.cross_entropy(z, y.where(y != -100, 1), weight=w, ignore_index=0)       # TORCH_IGNORE_CLASS_0
    F.cross_entropy(z, y, ignore_index=-100, reduction="none")                # TORCH_PER_ROW
    (F.cross_entropy(z, y, weight=w, ignore_index=-100, reduction="none") * S).sum()
        / (w[y] * S)[y != -100].sum()                                         # TORCH_SAMPLE_TIMES_CLASS
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import nllcli
from helpers import assert_input_error, loads_strict
from nllcli import compare

LOGITS = [[-1.9828, 0.6014, -4.7408, 3.4894], [1.5957, -0.7301, -0.7799, 0.7596], [-0.6692, -0.5648, 1.8002, 1.2868],
          [-0.1603, -0.2137, 0.4023, -1.535], [-1.0094, 1.3707, -0.3262, -3.4361], [-1.1932, 1.6416, -0.5807, -0.3718],
          [1.6046, 4.5615, -1.783, 3.3705], [-3.075, 0.4374, -2.9238, 3.3786], [2.0848, 2.8443, -2.2138, 1.7114],
          [-1.2975, -1.1435, 1.2663, 2.1918], [0.5111, -1.57, -2.0645, 3.6108], [1.4849, 1.7993, 5.4587, -2.0397]]
LABELS = [1, 2, -100, 1, 1, 1, 2, -100, -100, 1, 0, 2]
WEIGHT = [2.0, 0.5, 1.0, 3.0]
S = [1.0, 2.0, 0.5, 1.5, 0.0, 1.0, 2.5, 1.0, 1.0, 0.25, 3.0, 1.0]
TORCH_IGNORE = 2.367845555068981
TORCH_WEIGHT = 2.6881814081896933
TORCH_IGNORE_CLASS_0 = 2.4453362975237876
TORCH_PER_ROW = [2.9464160076086072, 2.860530065984806, 0.0, 1.428670411711412, 0.24995374012396207,
                 0.2628439589277258, 6.650257754023072, 0.0, 0.0, 3.7154194957153335, 3.1524023728453936,
                 0.04411618868051612]
TORCH_SAMPLE_TIMES_CLASS = 3.323050106302528


def logits_frame(labels=LABELS, **columns) -> pd.DataFrame:
    df = pd.DataFrame(LOGITS, columns=["c0", "c1", "c2", "c3"])
    df.insert(0, "label", labels)
    for name, values in columns.items():
        df[name] = values
    return df


def score(df, **options):
    return nllcli.score(df, input="logits", classes="c0,c1,c2,c3", **options)


# -- --ignore-label -----------------------------------------------------------------------------


def test_ignore_label_matches_torch_ignore_index():
    report = score(logits_frame(), ignore_label=-100)
    assert report.metrics["nll"] == pytest.approx(TORCH_IGNORE, rel=1e-12)
    assert report.rows == 9 and report.ignored == 3
    data = report.to_dict()
    assert data["ignored"] == 3 and data["ignore_label"] == "-100"
    assert any("3 rows with the label -100 dropped" in w for w in data["warnings"])


def test_ignored_rows_keep_their_row_numbers(tmp_path):
    """Per-sample rows, worst rows and error messages name the rows of the file, gaps included."""
    path = tmp_path / "losses.csv"
    report = score(logits_frame(), ignore_label="-100", per_sample=path, worst=3)
    rows = pd.read_csv(path)
    assert rows["row"].tolist() == [i for i, y in enumerate(LABELS) if y != -100]
    np.testing.assert_allclose(rows["nll"], [x for x, y in zip(TORCH_PER_ROW, LABELS) if y != -100], rtol=1e-12)
    assert [w["row"] for w in report.worst] == [6, 9, 10]  # the three largest of TORCH_PER_ROW
    bad = logits_frame()
    bad.loc[9, "c1"] = np.nan  # row 10 of the file (1-based), after two dropped rows
    with pytest.raises(nllcli.InputError, match="row 10"):
        score(bad, ignore_label=-100)
    bad = logits_frame(labels=[*LABELS[:10], 7, LABELS[11]])  # an unknown label on row 11
    with pytest.raises(nllcli.InputError, match="row 11"):
        score(bad, ignore_label=-100)


def test_ignore_label_forms(tmp_path):
    float_labels = [float(y) for y in LABELS]  # pandas writes -100.0 when a column has NaN or floats
    assert score(logits_frame(float_labels), ignore_label="-100").metrics["nll"] == pytest.approx(TORCH_IGNORE,
                                                                                                  rel=1e-12)
    # a class itself, as torch's ignore_index=0 can be
    labels = [1 if y == -100 else y for y in LABELS]
    report = score(logits_frame(labels), ignore_label="0", class_weight=WEIGHT)
    assert report.metrics["nll"] == pytest.approx(TORCH_IGNORE_CLASS_0, rel=1e-12)
    assert report.ignored == 1
    # class names, and a text label
    named = logits_frame([("pad" if y == -100 else "abcd"[y]) for y in LABELS])
    named.columns = ["label", "a", "b", "c", "d"]
    report = nllcli.score(named, input="logits", ignore_label="pad")
    assert report.metrics["nll"] == pytest.approx(TORCH_IGNORE, rel=1e-12) and report.ignored == 3


def test_ignore_label_errors(run, tmp_path):
    path = tmp_path / "p.csv"
    logits_frame([-100] * 12).to_csv(path)  # pandas' index column too
    assert_input_error(run("score", path, "--input", "logits", "--classes", "c0,c1,c2,c3", "--ignore-label", "-100"),
                       "every row has the label '-100'", "label")
    logits_frame().to_csv(path, index=False)
    assert_input_error(run("score", path, "--input", "logits", "--classes", "c0,c1,c2,c3"),
                       "labels not among the classes", "-100", "rows 3, 8, 9")
    soft = pd.DataFrame(LOGITS, columns=["c0", "c1", "c2", "c3"])
    with pytest.raises(nllcli.UsageError, match="needs a label"):
        nllcli.score(soft.assign(id=range(12)), targets=soft.assign(id=range(12)), input="logits", ignore_label=-100,
                     target_probs=None, classes="c0,c1,c2,c3", renormalize=True)


# -- class weights ------------------------------------------------------------------------------


def test_class_weights_match_torch_weight():
    keep = [i for i, y in enumerate(LABELS) if y != -100]
    df = logits_frame().iloc[keep]
    for spec in ("c0=2,c1=0.5,c3=3", WEIGHT, {"c0": 2, "c1": 0.5, "c2": 1, "c3": 3}, "2,0.5,1,3", "0=2,1=0.5,3=3"):
        report = score(df, class_weight=spec)
        assert report.metrics["nll"] == pytest.approx(TORCH_WEIGHT, rel=1e-12), spec
        assert report.to_dict()["class_weights"] == dict(zip(["c0", "c1", "c2", "c3"], WEIGHT))
        assert report.weighted


def test_class_weights_with_ignore_index_and_sample_weights():
    assert score(logits_frame(), class_weight=WEIGHT, ignore_label=-100).metrics["nll"] == pytest.approx(
        TORCH_WEIGHT, rel=1e-12)
    report = score(logits_frame(s=S), class_weight=WEIGHT, ignore_label=-100, weight="s")
    assert report.metrics["nll"] == pytest.approx(TORCH_SAMPLE_TIMES_CLASS, rel=1e-12)
    # every metric takes the product weight: accuracy is the weighted share of hits
    z = np.array(LOGITS)
    y = np.array(LABELS)
    keep = y != -100
    w = np.array(S)[keep] * np.array(WEIGHT)[y[keep]]
    hits = z[keep].argmax(axis=1) == y[keep]
    assert report.metrics["accuracy"] == pytest.approx(np.sum(w * hits) / w.sum(), rel=1e-12)


def test_class_weight_files(tmp_path):
    keep = [i for i, y in enumerate(LABELS) if y != -100]
    df = logits_frame().iloc[keep]
    as_json = tmp_path / "w.json"
    as_json.write_text(json.dumps({"c0": 2, "c1": 0.5, "c3": 3}))
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(WEIGHT))
    as_csv = tmp_path / "w.csv"
    pd.DataFrame({"class": ["c0", "c1", "c2", "c3"], "weight": WEIGHT}).to_csv(as_csv)  # with pandas' index
    for path in (as_json, as_list, as_csv):
        assert score(df, class_weight_file=path).metrics["nll"] == pytest.approx(TORCH_WEIGHT, rel=1e-12), path


def test_class_weight_errors(run, tmp_path):
    path = tmp_path / "p.csv"
    logits_frame().to_csv(path, index=False)
    base = ("score", path, "--input", "logits", "--classes", "c0,c1,c2,c3", "--ignore-label", "-100")
    assert_input_error(run(*base, "--class-weight", "c9=2"), "'c9' is not a class")
    assert_input_error(run(*base, "--class-weight", "c0=-1"), "must be finite and >= 0")
    assert_input_error(run(*base, "--class-weight", "c0=x"), "is not a number")
    assert_input_error(run(*base, "--class-weight", "1,2"), "2 weights for 4 classes")
    assert_input_error(run(*base, "--class-weight", "c0=1,c0=2"), "given twice")
    assert_input_error(run(*base, "--class-weight", "0,0,0,0"), "weights sum to 0")
    bad = tmp_path / "bad.csv"
    bad.write_text("class,weight\nc0,2\nc1,oops\n")
    assert_input_error(run(*base, "--class-weight-file", bad), "bad.csv", "weight", "row 2")
    bad.write_text("name,w\nc0,2\n")
    assert_input_error(run(*base, "--class-weight-file", bad), "columns class and weight")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\"c0\": \"2\"}")
    assert_input_error(run(*base, "--class-weight-file", bad_json), "is not a number")
    assert_input_error(run(*base, "--class-weight-file", tmp_path / "missing.json"), "missing.json")
    assert_input_error(run(*base, "--class-weight", "c0=2", "--class-weight-file", bad_json), "give one of them")
    assert_input_error(run("score", path, "--input", "logits", "--classes", "c0,c1,c2,c3", "--label-smoothing",
                           "0.1", "--class-weight", "c0=2", "--ignore-label", "-100"), "hard-label mean")


def test_cli_json_gate_and_compare(run_json, tmp_path):
    path = tmp_path / "p.csv"
    logits_frame().to_csv(path)  # pandas' index
    code, data, err = run_json("score", path, "--input", "logits", "--classes", "c0,c1,c2,c3", "--ignore-label",
                               "-100", "--class-weight", "c0=2,c1=0.5,c3=3", "--max", "nll=2.5")
    assert code == 1 and "gate failed: nll" in err
    assert data["metrics"]["nll"] == pytest.approx(TORCH_WEIGHT, rel=1e-12)
    assert data["ignored"] == 3 and data["rows"] == 9
    new = logits_frame()
    new[["c0", "c1", "c2", "c3"]] *= 0.5
    report = compare(logits_frame(), new, input="logits", classes="c0,c1,c2,c3", ignore_label=-100,
                     class_weight=WEIGHT, resamples=100)
    assert report.comparison[0]["base"] == pytest.approx(TORCH_WEIGHT, rel=1e-12)
    assert report.ignored == 3


def test_subprocess_table_note(nll_exe, tmp_path):
    import subprocess

    path = tmp_path / "p.csv"
    logits_frame().to_csv(path, index=False)
    result = subprocess.run([*nll_exe, "score", str(path), "--input", "logits", "--classes", "c0,c1,c2,c3",
                             "--ignore-label", "-100", "-f", "json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert loads_strict(result.stdout)["metrics"]["nll"] == pytest.approx(TORCH_IGNORE, rel=1e-12)


def test_ignored_rows_drop_their_targets_and_groups_too():
    """Targets paired by position and --by groups follow the rows kept."""
    rng = np.random.default_rng(3)
    t = rng.dirichlet(np.ones(4), 12)
    targets = pd.DataFrame(t, columns=["c0", "c1", "c2", "c3"])
    df = logits_frame(camera=list("xyxyxyxyxyxy"))
    report = score(df, targets=targets, ignore_label=-100, by=["camera"])
    keep = [i for i, y in enumerate(LABELS) if y != -100]
    expected = score(df.iloc[keep].reset_index(drop=True), targets=targets.iloc[keep].reset_index(drop=True),
                     by=["camera"])
    assert report.ignored == 3 and report.rows == 9
    for name in ("cross_entropy", "kl", "brier", "classwise_ece", "brier_reliability"):
        assert report.metrics[name] == pytest.approx(expected.metrics[name], rel=1e-12), name
    assert [g["rows"] for g in report.groups] == [g["rows"] for g in expected.groups]
