"""Distributions against distributions: `nll score` with soft targets and `nll kl P Q`.

Soft targets come from another file (--targets, paired by key or by position), from columns of the
same file (--target-prefix) or from smoothed hard labels (--label-smoothing). The metrics are
cross_entropy H(t, q), entropy H(t) and kl KL(t || q), with CE = H + KL.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (add_broken_metric, arrow_table, assert_input_error, loads_strict, one_line, parquet_bytes, table_text,
                     write_csv)

EPS = float(np.finfo(np.float64).eps)

# P (reference) by key, and Q (model) in another order: pairing by key matters.
P_HEADER = ["id", "a", "b", "c"]
P_ROWS = [("k1", 0.5, 0.5, 0.0), ("k2", 0.2, 0.3, 0.5), ("k3", 0.0, 0.0, 1.0), ("k4", 0.1, 0.8, 0.1)]
Q_HEADER = ["id", "label", "p_a", "p_b", "p_c"]
Q_ROWS = [("k3", "c", 0.1, 0.1, 0.8), ("k1", "a", 0.4, 0.4, 0.2), ("k4", "b", 0.3, 0.6, 0.1),
          ("k2", "c", 0.2, 0.2, 0.6)]
P_BY_KEY = {r[0]: r[1:] for r in P_ROWS}
Q_BY_KEY = {r[0]: r[2:] for r in Q_ROWS}
KEYS = ["k1", "k2", "k3", "k4"]


# -- maths, written out plainly -------------------------------------------------------------


def cross_entropy(p, q):
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q) if pi > 0)


def entropy(p):
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def js(p, q):
    m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
    return (kl(p, m) + kl(q, m)) / 2


def clip(p, eps=EPS):
    return [min(max(v, eps), 1 - eps) for v in p]


def mean(values):
    values = list(values)
    return sum(values) / len(values)


EXPECTED = {
    "cross_entropy": mean(cross_entropy(P_BY_KEY[k], Q_BY_KEY[k]) for k in KEYS),
    "entropy": mean(entropy(P_BY_KEY[k]) for k in KEYS),
    "kl": mean(kl(P_BY_KEY[k], Q_BY_KEY[k]) for k in KEYS),
}


# -- helpers --------------------------------------------------------------------------------


















def assert_metrics(data, expected, scale=1.0, rel=1e-12):
    for name, value in expected.items():
        assert data["metrics"][name] == pytest.approx(value / scale, rel=rel), name
    m = data["metrics"]
    assert m["cross_entropy"] == pytest.approx(m["entropy"] + m["kl"], rel=1e-9)



@pytest.fixture
def p_file(tmp_path):
    return write_csv(tmp_path / "p.csv", P_HEADER, P_ROWS)


@pytest.fixture
def q_file(tmp_path):
    return write_csv(tmp_path / "q.csv", Q_HEADER, Q_ROWS)


# -- score --targets --------------------------------------------------------------------------


def test_targets_paired_by_key(run_json, p_file, q_file):
    code, data, err = run_json("score", q_file, "--targets", p_file)
    assert code == 0, err
    assert data["command"] == "score"
    assert data["inputs"] == {"preds": [str(q_file)], "targets": [str(p_file)]}
    assert data["rows"] == 4
    assert data["classes"] == ["a", "b", "c"]
    assert_metrics(data, EXPECTED)
    assert data["metrics"]["nll"] == pytest.approx(EXPECTED["cross_entropy"], rel=1e-12)
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(EXPECTED["cross_entropy"]), rel=1e-12)
    # the label column still gives accuracy: argmax c, a, b, c against labels c, a, b, c
    assert data["metrics"]["accuracy"] == 1.0


def test_targets_without_label_column(run_json, tmp_path, p_file):
    q = write_csv(tmp_path / "q.csv", ["id", "p_a", "p_b", "p_c"], [(r[0], *r[2:]) for r in Q_ROWS])
    code, data, err = run_json("score", q, "--targets", p_file)
    assert code == 0, err
    assert_metrics(data, EXPECTED)
    assert "accuracy" not in data["metrics"] or data["metrics"]["accuracy"] is None
    assert data["per_class"] == []


def test_targets_paired_by_position(run_json, tmp_path):
    p = write_csv(tmp_path / "p.csv", P_HEADER[1:], [P_BY_KEY[k] for k in KEYS])
    q = write_csv(tmp_path / "q.csv", Q_HEADER[2:], [Q_BY_KEY[k] for k in KEYS])
    code, data, err = run_json("score", q, "--targets", p)
    assert code == 0, err
    assert_metrics(data, EXPECTED)


def test_targets_position_pairing_when_only_one_file_has_id(run_json, tmp_path):
    p = write_csv(tmp_path / "p.csv", P_HEADER[1:], [P_BY_KEY[k] for k in KEYS])
    q = write_csv(tmp_path / "q.csv", ["id", "p_a", "p_b", "p_c"], [(k, *Q_BY_KEY[k]) for k in KEYS])
    code, data, err = run_json("score", q, "--targets", p)
    assert code == 0, err
    assert_metrics(data, EXPECTED)


def test_targets_paired_by_explicit_key(run_json, tmp_path):
    p = write_csv(tmp_path / "p.csv", ["shot", "a", "b", "c"], P_ROWS)
    q = write_csv(tmp_path / "q.csv", ["shot", "p_a", "p_b", "p_c"], [(r[0], *r[2:]) for r in Q_ROWS])
    code, data, err = run_json("score", q, "--targets", p, "--key", "shot")
    assert code == 0, err
    assert_metrics(data, EXPECTED)


def test_targets_with_numeric_keys_in_parquet(run_json, tmp_path):
    p_table = arrow_table(P_HEADER, [(int(r[0][1:]), *r[1:]) for r in P_ROWS])
    p = tmp_path / "p.parquet"
    pq.write_table(p_table, p)
    q = write_csv(tmp_path / "q.csv", Q_HEADER, [(r[0][1:], *r[1:]) for r in Q_ROWS])
    code, data, err = run_json("score", q, "--targets", p)
    assert code == 0, err
    assert_metrics(data, EXPECTED)


def test_targets_per_sample(run, p_file, q_file):
    import pandas as pd

    result = run("score", q_file, "--targets", p_file, "--per-sample", "-", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert_metrics(loads_strict(result.stderr), EXPECTED)
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame.columns) == ["id", "label", "predicted", "p_true", "cross_entropy", "entropy", "kl"]
    assert frame["id"].tolist() == [r[0] for r in Q_ROWS]  # in the order of the predictions
    for record in frame.to_dict("records"):
        p, q = P_BY_KEY[record["id"]], Q_BY_KEY[record["id"]]
        assert record["cross_entropy"] == pytest.approx(cross_entropy(p, q), rel=1e-12)
        assert record["entropy"] == pytest.approx(entropy(p), abs=1e-15)
        assert record["kl"] == pytest.approx(kl(p, q), rel=1e-12, abs=1e-15)
        assert record["p_true"] == pytest.approx(q["abc".index(record["label"])], rel=1e-12)


@pytest.mark.parametrize("command", ["score", "kl"])
def test_per_sample_entropy_of_one_hot_rows_is_written_as_zero(run, p_file, q_file, command):
    args = ["score", q_file, "--targets", p_file] if command == "score" else ["kl", p_file, q_file]
    result = run(*args, "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    row_k3 = next(line for line in result.stdout.splitlines() if line.startswith('"k3"'))
    entropy_text = row_k3.split(",")[-2]
    assert float(entropy_text) == 0.0
    assert entropy_text == "0", f"entropy written as {entropy_text!r} in {row_k3!r}"  # not "-0"


def test_sample_files_against_numpy(run_json, samples):
    import pandas as pd

    code, data, err = run_json("score", samples / "robot_tools.csv", "--targets",
                           samples / "robot_tools_annotators.csv")
    assert code == 0, err
    classes = ["wrench", "screwdriver", "hammer"]
    preds = pd.read_csv(samples / "robot_tools.csv")
    targets = pd.read_csv(samples / "robot_tools_annotators.csv").set_index("id").loc[preds["id"]]
    q = np.clip(preds[[f"p_{c}" for c in classes]].to_numpy(), EPS, 1 - EPS)
    t = targets[classes].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t_log_t = np.where(t > 0, t * np.log(np.where(t > 0, t, 1)), 0.0)
    ce = -(np.where(t > 0, t * np.log(q), 0.0)).sum(1)
    h = -t_log_t.sum(1)
    assert data["rows"] == 1000
    assert data["metrics"]["cross_entropy"] == pytest.approx(ce.mean(), rel=1e-9)
    assert data["metrics"]["entropy"] == pytest.approx(h.mean(), rel=1e-9)
    assert data["metrics"]["kl"] == pytest.approx((ce - h).mean(), rel=1e-9)
    assert data["metrics"]["accuracy"] == pytest.approx(0.899)


@pytest.mark.parametrize("base, units, scale", [("2", "bits", math.log(2)), ("10", "bans", math.log(10))])
def test_targets_base(run_json, p_file, q_file, base, units, scale):
    code, data, err = run_json("score", q_file, "--targets", p_file, "--base", base)
    assert code == 0, err
    assert data["units"] == units
    assert_metrics(data, EXPECTED, scale=scale)
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(EXPECTED["cross_entropy"]), rel=1e-12)


def test_targets_weighted(run_json, tmp_path, p_file):
    weights = {"k1": 1.0, "k2": 0.0, "k3": 2.0, "k4": 5.0}
    q = write_csv(tmp_path / "q.csv", [*Q_HEADER, "w"], [(*r, weights[r[0]]) for r in Q_ROWS])
    code, data, err = run_json("score", q, "--targets", p_file, "--weight", "w")
    assert code == 0, err
    total = sum(weights.values())
    expected = {name: sum(weights[k] * f(P_BY_KEY[k], Q_BY_KEY[k]) for k in KEYS) / total
                for name, f in (("cross_entropy", cross_entropy), ("kl", kl))}
    expected["entropy"] = sum(weights[k] * entropy(P_BY_KEY[k]) for k in KEYS) / total
    assert_metrics(data, expected)


def test_target_prefix(run_json, tmp_path):
    header = ["id", "p_a", "p_b", "p_c", "t_a", "t_b", "t_c"]
    rows = [(k, *Q_BY_KEY[k], *P_BY_KEY[k]) for k in KEYS]
    code, data, err = run_json("score", write_csv(tmp_path / "both.csv", header, rows), "--target-prefix", "t_")
    assert code == 0, err
    assert data["classes"] == ["a", "b", "c"]
    assert_metrics(data, EXPECTED)


def test_target_prefix_with_unprefixed_classes_in_other_order(run_json, tmp_path):
    header = ["id", "label", "c", "a", "b", "t_b", "t_c", "t_a"]
    labels = {"k1": "a", "k2": "c", "k3": "c", "k4": "b"}
    rows = [(k, labels[k], Q_BY_KEY[k][2], Q_BY_KEY[k][0], Q_BY_KEY[k][1],
             P_BY_KEY[k][1], P_BY_KEY[k][2], P_BY_KEY[k][0]) for k in KEYS]
    code, data, err = run_json("score", write_csv(tmp_path / "both.csv", header, rows), "--target-prefix", "t_")
    assert code == 0, err
    assert data["classes"] == ["c", "a", "b"]  # t_ columns are never classes
    assert_metrics(data, EXPECTED)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_label_smoothing(run_json, q_file, alpha):
    labels = {r[0]: "abc".index(r[1]) for r in Q_ROWS}
    targets = {k: [(1 - alpha) * (j == labels[k]) + alpha / 3 for j in range(3)] for k in KEYS}
    code, data, err = run_json("score", q_file, "--label-smoothing", alpha)
    assert code == 0, err
    expected = {"cross_entropy": mean(cross_entropy(targets[k], Q_BY_KEY[k]) for k in KEYS),
                "entropy": mean(entropy(targets[k]) for k in KEYS),
                "kl": mean(kl(targets[k], Q_BY_KEY[k]) for k in KEYS)}
    assert_metrics(data, expected)
    if alpha == 0.0:  # plain hard-label NLL
        hard = mean(-math.log(Q_BY_KEY[k][labels[k]]) for k in KEYS)
        assert data["metrics"]["nll"] == pytest.approx(hard, rel=1e-12)
    assert data["metrics"]["accuracy"] == 1.0


def test_soft_targets_reject_a_single_column(run, tmp_path):
    q = write_csv(tmp_path / "q.csv", ["id", "label", "p_dog"], [("k1", 1, 0.9)])
    result = run("score", q, "--label-smoothing", "0.1")
    assert result.exit_code == 2 and result.stdout == ""
    one_line(result.stderr)


def test_targets_gates(run, p_file, q_file):
    ok = run("score", q_file, "--targets", p_file, "--max", f"kl={EXPECTED['kl'] + 0.01}")
    assert ok.exit_code == 0, ok.stderr
    failed = run("score", q_file, "--targets", p_file, "--max", f"kl={EXPECTED['kl'] - 0.01}",
                 "--min", "entropy=10", "--format", "json")
    assert failed.exit_code == 1
    loads_strict(failed.stdout)
    lines = failed.stderr.splitlines()
    assert len(lines) == 2 and "kl" in lines[0] and "entropy" in lines[1]


# -- nll kl P Q -------------------------------------------------------------------------------


def test_kl_by_key(run_json, p_file, q_file):
    code, data, err = run_json("kl", p_file, q_file)
    assert code == 0, err
    assert data["command"] == "kl"
    assert data["inputs"] == {"p": [str(p_file)], "q": [str(q_file)]}
    assert data["rows"] == 4
    assert data["classes"] == ["a", "b", "c"]
    assert_metrics(data, EXPECTED)
    assert "nll" not in data["metrics"]
    assert "kl_reverse" not in data["metrics"] and "js" not in data["metrics"]
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(EXPECTED["cross_entropy"]), rel=1e-12)
    assert data["schema_version"] == 1 and data["units"] == "nats"


def test_kl_matches_classes_by_name_not_column_order(run_json, tmp_path, q_file):
    p = write_csv(tmp_path / "p.csv", ["c", "id", "b", "a"], [(r[3], r[0], r[2], r[1]) for r in P_ROWS])
    code, data, err = run_json("kl", p, q_file)
    assert code == 0, err
    assert data["classes"] == ["a", "b", "c"]
    assert_metrics(data, EXPECTED)


def test_kl_by_position(run_json, tmp_path):
    p = write_csv(tmp_path / "p.csv", P_HEADER[1:], [P_BY_KEY[k] for k in KEYS])
    q = write_csv(tmp_path / "q.csv", ["p_a", "p_b", "p_c"], [Q_BY_KEY[k] for k in KEYS])
    code, data, err = run_json("kl", p, q)
    assert code == 0, err
    assert_metrics(data, EXPECTED)


def test_kl_of_a_distribution_with_itself_is_zero(run_json, p_file):
    code, data, err = run_json("kl", p_file, p_file)
    assert code == 0, err
    assert data["metrics"]["kl"] == pytest.approx(0.0, abs=1e-15)
    assert data["metrics"]["cross_entropy"] == pytest.approx(EXPECTED["entropy"], rel=1e-12)


def test_kl_symmetric(run_json, tmp_path):
    # no zeros in P, so clipping plays no part in KL(Q || P)
    p_rows = [("k1", 0.5, 0.3, 0.2), ("k2", 0.2, 0.3, 0.5), ("k3", 0.05, 0.05, 0.9)]
    q_rows = [("k2", 0.1, 0.1, 0.8), ("k3", 0.3, 0.3, 0.4), ("k1", 0.6, 0.3, 0.1)]
    p = write_csv(tmp_path / "p.csv", P_HEADER, p_rows)
    q = write_csv(tmp_path / "q.csv", ["id", "p_a", "p_b", "p_c"], q_rows)
    code, data, err = run_json("kl", p, q, "--symmetric")
    assert code == 0, err
    pk, qk = {r[0]: r[1:] for r in p_rows}, {r[0]: r[1:] for r in q_rows}
    keys = sorted(pk)
    assert data["metrics"]["kl"] == pytest.approx(mean(kl(pk[k], qk[k]) for k in keys), rel=1e-12)
    assert data["metrics"]["kl_reverse"] == pytest.approx(mean(kl(qk[k], pk[k]) for k in keys), rel=1e-12)
    assert data["metrics"]["js"] == pytest.approx(mean(js(pk[k], qk[k]) for k in keys), rel=1e-12)
    assert 0 <= data["metrics"]["js"] <= math.log(2)


def test_kl_symmetric_with_zeros_is_finite(run_json, p_file, q_file):
    code, data, err = run_json("kl", p_file, q_file, "--symmetric")
    assert code == 0, err
    reverse = mean(kl(Q_BY_KEY[k], clip(P_BY_KEY[k])) for k in KEYS)
    assert data["metrics"]["kl_reverse"] == pytest.approx(reverse, rel=1e-9)
    assert data["metrics"]["js"] == pytest.approx(mean(js(P_BY_KEY[k], Q_BY_KEY[k]) for k in KEYS), rel=1e-12)


def test_kl_eps_zero_gives_null(run, tmp_path):
    p = write_csv(tmp_path / "p.csv", ["a", "b"], [(0.5, 0.5)])
    q = write_csv(tmp_path / "q.csv", ["a", "b"], [(1.0, 0.0)])
    result = run("kl", p, q, "--eps", "0", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = loads_strict(result.stdout)
    assert data["metrics"]["kl"] is None and data["metrics"]["cross_entropy"] is None
    assert data["metrics"]["entropy"] == pytest.approx(math.log(2))
    assert any(w.startswith("kl ") for w in data["warnings"])
    clipped = loads_strict(run("kl", p, q, "--format", "json").stdout)
    assert clipped["metrics"]["kl"] == pytest.approx(0.5 * math.log(0.5 / (1 - EPS)) + 0.5 * math.log(0.5 / EPS),
                                                     rel=1e-9)
    assert clipped["clipped"] == 2


def test_kl_logits(run_json, tmp_path):
    zp = [[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]
    zq = [[2.0, 2.0, 1.0], [-1.0, 4.0, 0.5]]
    p = write_csv(tmp_path / "p.csv", ["a", "b", "c"], zp)
    q = write_csv(tmp_path / "q.csv", ["a", "b", "c"], zq)
    code, data, err = run_json("kl", p, q, "--input", "logits")
    assert code == 0, err

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    expected = mean(kl(softmax(a), softmax(b)) for a, b in zip(zp, zq))
    assert data["metrics"]["kl"] == pytest.approx(expected, rel=1e-12)


def test_kl_base_2(run_json, p_file, q_file):
    code, data, err = run_json("kl", p_file, q_file, "--base", "2")
    assert code == 0, err
    assert data["units"] == "bits"
    assert_metrics(data, EXPECTED, scale=math.log(2))


def test_kl_parquet_list_columns(run_json, tmp_path):
    p = tmp_path / "p.parquet"
    q = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": KEYS, "probs": [list(P_BY_KEY[k]) for k in KEYS]}), p)
    pq.write_table(pa.table({"id": KEYS[::-1], "probs": [list(Q_BY_KEY[k]) for k in KEYS[::-1]]}), q)
    code, data, err = run_json("kl", p, q, "--probs", "probs")
    assert code == 0, err
    assert data["classes"] == ["0", "1", "2"]
    assert_metrics(data, EXPECTED)
    code, data, err = run_json("kl", p, q, "--probs", "probs", "--classes", "a,b,c")
    assert code == 0, err
    assert data["classes"] == ["a", "b", "c"]
    assert_metrics(data, EXPECTED)


@pytest.mark.parametrize("side", ["p", "q"])
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_kl_stdin_for_one_side(run_json, p_file, q_file, side, kind):
    header, rows = (P_HEADER, P_ROWS) if side == "p" else (Q_HEADER, Q_ROWS)
    stdin = table_text(header, rows) if kind == "csv" else parquet_bytes(arrow_table(header, rows))
    args = ["-", q_file] if side == "p" else [p_file, "-"]
    code, data, err = run_json("kl", *args, input=stdin)
    assert code == 0, err
    assert data["inputs"][side] == ["<stdin>"]
    assert_metrics(data, EXPECTED)


def test_kl_both_stdin_is_a_usage_error(run):
    # as for `nll score - -`: the message says why, rather than that stdin is empty
    result = run("kl", "-", "-", input=table_text(P_HEADER, P_ROWS))
    assert result.exit_code == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert "only once" in line, line


def test_targets_from_stdin(run_json, p_file, q_file):
    code, data, err = run_json("score", q_file, "--targets", "-", input=table_text(P_HEADER, P_ROWS))
    assert code == 0, err
    assert data["inputs"]["targets"] == ["<stdin>"]
    assert_metrics(data, EXPECTED)


@pytest.mark.parametrize("pairing", ["key", "position"])
def test_pairing_across_batch_boundaries(run_json, tmp_path, pairing):
    """Long files come in batches of different sizes on each side (CSV blocks, Parquet row groups):
    rows must still meet their own targets."""
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(3)
    n = 150_000
    q = np.round(rng.dirichlet([1.0, 1.0, 1.0], n), 6)
    q[:, 2] = 1.0 - q[:, 0] - q[:, 1]
    t = rng.dirichlet([2.0, 2.0, 2.0], n)
    y = rng.integers(0, 3, n)
    keys = np.array([f"s{i:06d}" for i in range(n)])
    preds = {"label": np.array(list("abc"))[y], "p_a": q[:, 0], "p_b": q[:, 1], "p_c": q[:, 2]}
    targets = {"a": t[:, 0], "b": t[:, 1], "c": t[:, 2]}
    if pairing == "key":
        order = rng.permutation(n)
        preds = {"id": keys, **preds}
        targets = {"id": keys[order], **{k: v[order] for k, v in targets.items()}}
    pacsv.write_csv(pa.table(preds), tmp_path / "preds.csv")
    pq.write_table(pa.table(targets), tmp_path / "targets.parquet", row_group_size=40_000)
    code, data, err = run_json("score", tmp_path / "preds.csv", "--targets", tmp_path / "targets.parquet")
    assert code == 0, err
    qc = np.clip(q, EPS, 1 - EPS)
    assert data["rows"] == n
    assert data["metrics"]["cross_entropy"] == pytest.approx(-(t * np.log(qc)).sum(1).mean(), rel=1e-9)
    assert data["metrics"]["entropy"] == pytest.approx(-(t * np.log(t)).sum(1).mean(), rel=1e-9)
    assert data["metrics"]["accuracy"] == pytest.approx((q.argmax(1) == y).mean())
    assert [row["rows"] for row in data["per_class"]] == np.bincount(y, minlength=3).tolist()


@pytest.mark.parametrize("target", ["-", "out.csv", "out.parquet"])
def test_kl_per_sample(run, p_file, q_file, tmp_path, target):
    import pandas as pd

    out = target if target == "-" else tmp_path / target
    result = run("kl", p_file, q_file, "--per-sample", out, "--symmetric", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = loads_strict(result.stderr if target == "-" else result.stdout)
    assert_metrics(report, EXPECTED)
    if target == "-":
        frame = pd.read_csv(io.StringIO(result.stdout))
    elif target.endswith(".csv"):
        frame = pd.read_csv(out)
    else:
        frame = pq.read_table(out).to_pandas()
    assert list(frame.columns) == ["id", "cross_entropy", "entropy", "kl", "kl_reverse", "js"]
    assert frame["id"].tolist() == [r[0] for r in Q_ROWS]
    for record in frame.to_dict("records"):
        p, q = P_BY_KEY[record["id"]], Q_BY_KEY[record["id"]]
        assert record["kl"] == pytest.approx(kl(p, q), rel=1e-12)
        assert record["cross_entropy"] == pytest.approx(cross_entropy(p, q), rel=1e-12)
        assert record["entropy"] == pytest.approx(entropy(p), abs=1e-15)
        assert record["js"] == pytest.approx(js(p, q), rel=1e-12)


def test_kl_per_sample_by_position_numbers_rows(run, tmp_path):
    p = write_csv(tmp_path / "p.csv", P_HEADER[1:], [P_BY_KEY[k] for k in KEYS])
    q = write_csv(tmp_path / "q.csv", ["p_a", "p_b", "p_c"], [Q_BY_KEY[k] for k in KEYS])
    result = run("kl", p, q, "--per-sample", "-")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].replace('"', "") == "row,cross_entropy,entropy,kl"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("gates, code, failed", [
    (["--max", "kl=0.05"], 1, ["kl"]),
    (["--max", "kl=10"], 0, []),
    (["--max", "kl=10", "--max", "cross_entropy=0.1"], 1, ["cross_entropy"]),
    (["--min", "entropy=0.1", "--max", "perplexity=100"], 0, []),
])
def test_kl_gates(run, p_file, q_file, gates, code, failed):
    result = run("kl", p_file, q_file, *gates, "--format", "json")
    assert result.exit_code == code, result.stderr
    data = loads_strict(result.stdout)
    assert_metrics(data, EXPECTED)
    lines = result.stderr.splitlines()
    assert len(lines) == len(failed)
    for line, metric in zip(lines, failed):
        assert line.startswith(f"nll: gate failed: {metric} = ")


def test_kl_gate_message(run, p_file, q_file):
    result = run("kl", p_file, q_file, "--max", "kl=0.05")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (f"nll: gate failed: kl = {EXPECTED['kl']:.6g} is above the maximum 0.05")


@pytest.mark.parametrize("gate", [["--max", "nll=1"], ["--min", "accuracy=0.5"], ["--max", "kl_reverse=1"],
                                  ["--max", "kl"], ["--max", "kl=x"]])
def test_kl_bad_gates(run, p_file, q_file, gate):
    result = run("kl", p_file, q_file, *gate)
    assert result.exit_code == 2 and result.stdout == ""
    assert gate[0] in one_line(result.stderr)


def test_kl_symmetric_gates(run, p_file, q_file):
    result = run("kl", p_file, q_file, "--symmetric", "--max", "js=0.0001", "--max", "kl_reverse=1e9")
    assert result.exit_code == 1
    assert "js" in one_line(result.stderr)


# -- pairing and distribution errors --------------------------------------------------------
# Each case builds the two files; the same case is checked for `score --targets` (preds = q)
# and `nll kl` (p, q).


def _files(tmp_path, p_header, p_rows, q_header, q_rows, p_name="p.csv", q_name="q.csv"):
    return write_csv(tmp_path / p_name, p_header, p_rows), write_csv(tmp_path / q_name, q_header, q_rows)


PAIRING_CASES = {
    # name: (p header, p rows, q header, q rows, extra options, fragments)
    "class sets differ": (["id", "a", "b", "d"], [(r[0], r[1], r[2], r[3]) for r in P_ROWS], Q_HEADER, Q_ROWS, [],
                          ["p.csv", "class sets differ", "'d'", "'c'"]),
    "fewer target rows by position": (["a", "b", "c"], [P_BY_KEY[k] for k in KEYS[:3]],
                                      ["p_a", "p_b", "p_c"], [Q_BY_KEY[k] for k in KEYS], [],
                                      ["row counts differ", "p.csv", "q.csv", "4 rows"]),
    "more target rows by position": (["a", "b", "c"], [P_BY_KEY[k] for k in KEYS],
                                     ["p_a", "p_b", "p_c"], [Q_BY_KEY[k] for k in KEYS[:3]], [],
                                     ["row counts differ", "p.csv", "q.csv", "4 rows", "3 rows"]),
    "duplicate keys in p": (P_HEADER, P_ROWS + [("k2", 0.2, 0.3, 0.5)], Q_HEADER, Q_ROWS, [],
                            ["p.csv", "'id'", "duplicate", "k2"]),
    "duplicate keys in q": (P_HEADER, P_ROWS, Q_HEADER, Q_ROWS + [("k4", "b", 0.3, 0.6, 0.1)], [],
                            ["q.csv", "'id'", "duplicate", "k4"]),
    "key only in p": (P_HEADER, P_ROWS + [("k9", 0.2, 0.3, 0.5)], Q_HEADER, Q_ROWS, [],
                      ["'id'", "k9", "no row in", "q.csv"]),
    "key only in q": (P_HEADER, P_ROWS, Q_HEADER, Q_ROWS + [("k7", "a", 0.3, 0.6, 0.1)], [],
                      ["'id'", "k7", "no row in", "p.csv"]),
    "key column missing in p": (P_HEADER[1:], [r[1:] for r in P_ROWS], Q_HEADER, Q_ROWS, ["--key", "id"],
                                ["p.csv", "'id'", "missing"]),
    "key column missing in q": (P_HEADER, P_ROWS, Q_HEADER[1:], [r[1:] for r in Q_ROWS], ["--key", "id"],
                                ["q.csv", "'id'", "missing"]),
    "target row off the sum": (P_HEADER, [("k1", 0.5, 0.5, 0.0), ("k2", 0.2, 0.3, 0.4), ("k3", 0, 0, 1),
                                          ("k4", 0.1, 0.8, 0.1)], Q_HEADER, Q_ROWS, [],
                               ["p.csv", "sum to 1", "row 2"]),
    "negative target": (P_HEADER, [("k1", 0.5, 0.5, 0.0), ("k2", 0.2, 0.3, 0.5), ("k3", -0.1, 0.1, 1),
                                   ("k4", 0.1, 0.8, 0.1)], Q_HEADER, Q_ROWS, [],
                        ["p.csv", "'a'", "negative", "row 3"]),
    "NaN target": (P_HEADER, [("k1", 0.5, 0.5, 0.0), ("k2", 0.2, 0.3, 0.5), ("k3", 0, 0, 1),
                              ("k4", 0.1, 0.8, "nan")], Q_HEADER, Q_ROWS, [], ["p.csv", "'c'", "row 4"]),
    "bad prediction": (P_HEADER, P_ROWS, Q_HEADER, [("k3", "c", 0.1, 0.1, 0.8), ("k1", "a", 0.4, 0.4, 0.3),
                                                    ("k4", "b", 0.3, 0.6, 0.1), ("k2", "c", 0.2, 0.2, 0.6)],
                       [], ["q.csv", "sum to 1", "row 2"]),
    "target file missing": (None, None, Q_HEADER, Q_ROWS, [], ["p.csv", "no such file"]),
}


def _build(tmp_path, case):
    p_header, p_rows, q_header, q_rows, options, fragments = PAIRING_CASES[case]
    p = tmp_path / "p.csv"
    if p_header is not None:
        write_csv(p, p_header, p_rows)
    q = write_csv(tmp_path / "q.csv", q_header, q_rows)
    return p, q, options, fragments


@pytest.mark.parametrize("case", list(PAIRING_CASES), ids=list(PAIRING_CASES))
@pytest.mark.parametrize("command", ["kl", "score"])
def test_pairing_errors(run, tmp_path, case, command):
    p, q, options, fragments = _build(tmp_path, case)
    args = ["kl", p, q] if command == "kl" else ["score", q, "--targets", p]
    assert_input_error(run(*args, *options), *fragments)
    # a per-sample file is neither created nor, if it exists, touched
    fresh = tmp_path / "fresh.csv"
    assert_input_error(run(*args, *options, "--per-sample", fresh), *fragments)
    assert not fresh.exists()
    kept = tmp_path / "kept.parquet"
    kept.write_bytes(b"precious")
    before = sorted(os.listdir(tmp_path))
    assert_input_error(run(*args, *options, "--per-sample", kept), *fragments)
    assert kept.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("case", list(PAIRING_CASES), ids=list(PAIRING_CASES))
def test_pairing_errors_with_per_sample_on_stdout(run, tmp_path, case):
    """Pairing errors are known once every row is read: the exit code is still 2 with one line,
    even after per-sample rows were streamed to stdout (same code path for score)."""
    p, q, options, fragments = _build(tmp_path, case)
    result = run("kl", p, q, *options, "--per-sample", "-")
    assert_input_error(result, *fragments, streamed=True)
    assert result.stdout == "" or "cross_entropy" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("p_rows, q_rows", [(3, 4), (4, 3)])
def test_position_mismatch_gives_both_row_counts(run, tmp_path, p_rows, q_rows):
    p = write_csv(tmp_path / "p.csv", ["a", "b", "c"], [P_BY_KEY[k] for k in KEYS[:p_rows]])
    q = write_csv(tmp_path / "q.csv", ["p_a", "p_b", "p_c"], [Q_BY_KEY[k] for k in KEYS[:q_rows]])
    line = assert_input_error(run("kl", p, q), "row counts differ")
    assert f"{q_rows} rows here" in line
    assert f"{p_rows} rows in {p}" in line


def test_target_prefix_without_columns(run, q_file):
    assert_input_error(run("score", q_file, "--target-prefix", "t_"), "q.csv", "t_")


def test_label_smoothing_needs_labels(run, tmp_path):
    q = write_csv(tmp_path / "q.csv", ["id", "p_a", "p_b"], [("k1", 0.5, 0.5)])
    assert_input_error(run("score", q, "--label-smoothing", "0.1"), "q.csv", "no label column")


@pytest.mark.parametrize("alpha", ["-0.1", "1.5"])
def test_label_smoothing_out_of_range(run, q_file, alpha):
    result = run("score", q_file, "--label-smoothing", alpha)
    assert result.exit_code == 2 and result.stdout == ""
    assert "--label-smoothing" in one_line(result.stderr)


def test_kl_needs_several_columns(run, tmp_path):
    p = write_csv(tmp_path / "p.csv", ["id", "p_a"], [("k1", 0.5)])
    q = write_csv(tmp_path / "q.csv", ["id", "p_a"], [("k1", 0.5)])
    assert_input_error(run("kl", p, q), "q.csv")


def test_kl_empty_and_header_only(run, tmp_path, p_file):
    (tmp_path / "empty.csv").write_text("")
    assert_input_error(run("kl", p_file, tmp_path / "empty.csv"), "empty.csv", "empty")
    (tmp_path / "header.csv").write_text("id,p_a,p_b,p_c\n")
    (tmp_path / "p_header.csv").write_text("id,a,b,c\n")
    assert_input_error(run("kl", tmp_path / "p_header.csv", tmp_path / "header.csv"), "no data rows")


@pytest.mark.parametrize("stage", ["batch", "report"])
def test_kl_internal_error(run, p_file, q_file, monkeypatch, stage):
    add_broken_metric(monkeypatch, stage, command="kl")
    result = run("kl", p_file, q_file, "--per-sample", p_file.parent / "out.csv")
    assert result.exit_code == 3 and result.stdout == ""
    assert "--debug" in one_line(result.stderr)
    assert not (p_file.parent / "out.csv").exists()
    debug = run("kl", p_file, q_file, "--debug")
    assert debug.exit_code == 3
    assert "Traceback" in debug.stderr and "kaboom" in debug.stderr
