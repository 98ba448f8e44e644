"""compare's gates on the change new - base of any metric (--max-increase, --max-decrease,
--min-increase, --min-decrease; absolute or X% of the base value), what they test (--gate-on), the
intervals they use (compare's for paired metrics, Poisson replicate differences for the others), and
--bootstrap poisson."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nllcli import bootstrap as B
from nllcli import comparison as C
from nllcli.errors import UsageError
from nllcli.report import Gate

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
A = SAMPLES / "robot_tools.csv"  # nll 0.405
B_FILE = SAMPLES / "robot_tools_model_b.csv"  # nll 0.365: better than A


# -- semantics ---------------------------------------------------------------------------------


def gate(text: str, bound: str, base: float, on: str = "value", interval=None) -> Gate:
    return Gate.parse(text, bound, on).with_result(base, interval, 0.95)


@pytest.mark.parametrize("text, bound, base, new, passes", [
    ("nll=0.01", "max_increase", 0.4, 0.405, True),
    ("nll=0.01", "max_increase", 0.4, 0.42, False),
    ("nll=2%", "max_increase", 0.4, 0.407, True),  # limit +0.008
    ("nll=2%", "max_increase", 0.4, 0.409, False),
    ("accuracy=0.01", "max_decrease", 0.9, 0.895, True),
    ("accuracy=0.01", "max_decrease", 0.9, 0.885, False),
    ("accuracy=0.01", "min_increase", 0.9, 0.915, True),
    ("accuracy=0.01", "min_increase", 0.9, 0.905, False),
    ("nll=1%", "min_decrease", 0.4, 0.39, True),  # limit -0.004
    ("nll=1%", "min_decrease", 0.4, 0.398, False),
    ("nll=0", "max_increase", 0.4, 0.4, True),  # at the limit passes
    ("nll=-0.01", "max_increase", 0.4, 0.395, False),  # a negative maximum increase: must improve by 0.01
    ("nll=5%", "max_increase", -2.0, -1.95, True),  # relative to |base|
    ("nll=0.01", "max_increase", 0.4, math.nan, False),  # an undefined value never passes
])
def test_change_gates_on_the_value(text, bound, base, new, passes):
    assert gate(text, bound, base).passes(new) is passes


@pytest.mark.parametrize("on, interval, passes", [
    ("interval", (0.005, 0.03), True),  # part of the interval is within: not a clear breach
    ("interval", (0.012, 0.03), False),  # the whole interval is above +0.01
    ("upper", (0.005, 0.03), False),
    ("upper", (0.0, 0.01), True),
    ("lower", (0.005, 0.03), True),
    ("lower", (0.011, 0.03), False),
    ("upper", None, False),  # no interval to test
    ("interval", (math.nan, math.nan), False),
])
def test_change_gates_on_the_interval(on, interval, passes):
    g = gate("nll=0.01", "max_increase", 0.4, on, interval)
    assert g.passes(0.42) is passes  # change +0.02


def test_minimum_change_on_the_whole_interval():
    g = gate("accuracy=0.01", "min_increase", 0.9, "interval", (-0.01, 0.02))
    assert g.passes(0.905)  # change +0.005, but the interval reaches +0.01
    assert not gate("accuracy=0.01", "min_increase", 0.9, "interval", (-0.01, 0.008)).passes(0.905)
    assert gate("accuracy=0.01", "min_increase", 0.9, "interval", (-0.01, 0.008)).passes(0.915)  # the value


def test_parse():
    g = Gate.parse(" nll = 2% ", "max_increase")
    assert (g.metric, g.threshold, g.relative, g.on) == ("nll", 0.02, True, "value")
    assert Gate.parse("ECE=-0.5", "min_decrease", "upper").threshold == -0.5
    for bad in ("nll=abc%", "nll=", "nll=inf", "=2%", "nll=2%%"):
        with pytest.raises(UsageError, match="--max-increase"):
            Gate.parse(bad, "max_increase")
    with pytest.raises(UsageError, match="--max 'nll=2%'"):
        Gate.parse("nll=2%", "max")  # a percentage needs a base value


def test_messages_say_value_interval_and_limit():
    g = gate("nll=2%", "max_increase", 0.4, "upper", (0.001, 0.02))
    text = g.describe(0.41)
    assert text.startswith("gate failed: nll change = +0.01 (base 0.4, new 0.41), 95% interval [0.001, 0.02]")
    assert text.endswith("its upper bound is above the limit +0.008 (0.02 x base)")
    assert g.condition == "upper bound of the nll change <= +2% of base (+0.008)"


# -- compare end to end ---------------------------------------------------------------------------------


def test_fail_if_worse_is_max_increase_of_nll_on_the_interval(run):
    """A (the worse model) as NEW, nll +0.040 with a 90 % interval of [+0.0073, +0.071]: the two
    options agree on every threshold."""
    codes = []
    for threshold in ("0", "0.005", "0.01", "0.03", "0.06"):
        worse = run("compare", B_FILE, A, "--fail-if-worse", threshold, "--resamples", "500", "--confidence", "0.9")
        gate_ = run("compare", B_FILE, A, "--max-increase", f"nll={threshold}", "--gate-on", "interval",
                    "--resamples", "500", "--confidence", "0.9")
        assert worse.exit_code == gate_.exit_code, (threshold, worse.stderr, gate_.stderr)
        codes.append(gate_.exit_code)
    assert codes == [1, 1, 0, 0, 0]


def test_json_gate_entries(run_json):
    code, data, err = run_json("compare", B_FILE, A, "--max-increase", "nll=1%", "--max-decrease", "accuracy=0.05",
                               "--gate-on", "interval", "--resamples", "500", "--confidence", "0.9")
    assert code == 1, err
    nll_row = next(r for r in data["comparison"] if r["metric"] == "nll")
    nll_gate, accuracy_gate = data["gates"]
    assert nll_gate["bound"] == "max_increase" and nll_gate["relative"] and nll_gate["threshold"] == 0.01
    assert nll_gate["base"] == pytest.approx(nll_row["base"], rel=1e-12)
    assert nll_gate["value"] == pytest.approx(nll_row["new"], rel=1e-12)
    assert nll_gate["change"] == pytest.approx(nll_row["delta"], rel=1e-9)
    assert nll_gate["limit"] == pytest.approx(0.01 * nll_row["base"], rel=1e-12)
    assert nll_gate["interval"] == nll_row["ci"] and nll_gate["on"] == "interval" and not nll_gate["passed"]
    assert accuracy_gate["passed"] and accuracy_gate["limit"] == -0.05
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("nll: gate failed: nll change = +0.0398")
    assert "the whole interval is above the limit" in lines[0]


def test_table_lists_change_gates(run):
    result = run("compare", A, B_FILE, "--max-increase", "nll=0.01", "--min-decrease", "brier=0.05")
    assert result.exit_code == 1
    assert "gate nll change <= +0.01: ok" in result.stdout
    assert "gate brier change <= -0.05: FAILED" in result.stdout


def ece_by_hand(frame: pd.DataFrame, weights: np.ndarray, bins: int = 15) -> float:
    q = frame[["p_wrench", "p_screwdriver", "p_hammer"]].to_numpy()
    labels = frame["label"].map({"wrench": 0, "screwdriver": 1, "hammer": 2}).to_numpy()
    confidence, correct = q.max(axis=1), q.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    w = np.bincount(which, weights, bins)
    gap = np.abs(np.bincount(which, weights * correct, bins) - np.bincount(which, weights * confidence, bins))
    return float(gap[w > 0].sum() / w.sum())


def test_ece_change_interval_is_the_paired_poisson_difference(run_json, tmp_path):
    """ECE is not a mean of per-row values: its change's interval comes from replicates of both
    runs under the same Poisson weights, seeded by the id key, so shuffling NEW changes nothing."""
    base, new = pd.read_csv(A), pd.read_csv(B_FILE)
    shuffled = tmp_path / "new_shuffled.csv"
    new.sample(frac=1.0, random_state=3).to_csv(shuffled)  # with pandas' index column, as people write it
    args = ("--max-increase", "ece=0.001", "--gate-on", "upper", "--resamples", "200", "--seed", "7")
    code, data, err = run_json("compare", A, B_FILE, *args)
    assert code == 1, err
    low, high = data["gates"][0]["interval"]
    p = B.poisson_weights(B.key_ids(base["id"].tolist()), 200, 7)
    by_id = new.set_index("id").loc[base["id"]].reset_index()
    deltas = [ece_by_hand(by_id, p[:, r]) - ece_by_hand(base, p[:, r]) for r in range(200)]
    assert [low, high] == pytest.approx(list(np.quantile(deltas, [0.025, 0.975])), rel=1e-9)
    assert data["gates"][0]["change"] == pytest.approx(ece_by_hand(new, np.ones(1000)) -
                                                       ece_by_hand(base, np.ones(1000)), rel=1e-9)
    code, again, err = run_json("compare", A, shuffled, *args)
    assert code == 1, err
    assert again["gates"][0]["interval"] == pytest.approx([low, high], rel=1e-12)


def test_change_gates_on_metrics_compare_does_not_pair(run_json):
    code, data, err = run_json("compare", A, B_FILE, "--max-increase", "mce=0", "--max-decrease", "perplexity=0",
                               "--min-decrease", "cross_entropy=0.01", "--gate-on", "interval", "--resamples", "200")
    assert code == 1, err  # perplexity fell: its maximum decrease of 0 is clearly broken
    mce, perplexity, cross_entropy = data["gates"]
    assert mce["passed"] and mce["change"] < 0  # MCE fell
    assert not perplexity["passed"] and perplexity["interval"][1] < 0 and "perplexity change" in err
    assert cross_entropy["passed"] and cross_entropy["change"] < -0.01  # hard labels: the nll, which fell by 0.04
    assert cross_entropy["interval"][0] < cross_entropy["change"] < cross_entropy["interval"][1]


def test_score_gates_with_gate_on_in_compare(run_json):
    """--max / --min test the new model; with --gate-on upper, on its own interval."""
    code, data, err = run_json("compare", A, B_FILE, "--max", "nll=0.4", "--gate-on", "upper", "--resamples", "300")
    assert code == 1 and "its upper bound is above the maximum 0.4" in err
    assert data["gates"][0]["interval"] == data["intervals"]["nll"]


def test_poisson_bootstrap_in_compare(run_json):
    code, data, err = run_json("compare", A, B_FILE, "--bootstrap", "poisson", "--resamples", "300", "--by", "camera")
    assert code == 0, err
    assert data["bootstrap"] == "poisson" and all(r["bootstrap"] == "poisson" for r in data["comparison"])
    base, new = pd.read_csv(A), pd.read_csv(B_FILE)
    cols = ["p_wrench", "p_screwdriver", "p_hammer"]
    labels = base["label"].map({"wrench": 0, "screwdriver": 1, "hammer": 2}).to_numpy()
    rows = np.arange(len(base))
    eps = np.finfo(float).eps
    delta = (np.log(np.clip(base[cols].to_numpy()[rows, labels], eps, 1 - eps))
             - np.log(np.clip(new[cols].to_numpy()[rows, labels], eps, 1 - eps)))
    ref = C.poisson_bootstrap({"nll": delta}, np.ones(len(base)), 300, 0.95, 0, B.position_ids(0, len(base)))
    assert data["comparison"][0]["ci"] == pytest.approx(list(ref["nll"]), rel=1e-9)
    top = next(g for g in data["groups"] if g["by"]["camera"] == "top")
    members = np.flatnonzero(new["camera"].to_numpy() == "top")
    ref_top = C.poisson_bootstrap({"nll": delta[members]}, np.ones(len(members)), 300, 0.95, 0,
                                  members.astype(np.uint64))
    assert top["comparison"][0]["ci"] == pytest.approx(list(ref_top["nll"]), rel=1e-9)
    code, rows_data, _ = run_json("compare", A, B_FILE, "--resamples", "300")
    assert rows_data["bootstrap"] == "rows" and rows_data["comparison"][0]["ci"] != data["comparison"][0]["ci"]


@pytest.mark.parametrize("args, fragment", [
    (["--bootstrap", "jackknife"], "--bootstrap"),
    (["--max-increase", "loss=1"], "unknown metric"),
    (["--max-increase", "nll=x"], "--max-increase 'nll=x'"),
    (["--min-decrease", "nll"], "--min-decrease 'nll'"),
    (["--max-increase", "nll=1", "--gate-on", "sometimes"], "--gate-on"),
])
def test_usage_errors_exit_2(run, args, fragment):
    result = run("compare", A, B_FILE, *args)
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


def test_ci_formats_show_the_change_and_its_limit():
    """Markdown, JUnit and the annotations share formats.gate_results: a change gate shows the change,
    the interval of the change and the limit on it (not the new model's value)."""
    from nllcli import compare
    from nllcli.formats import gate_results

    report = compare(str(B_FILE), str(A), max_increase=["nll=1%"], min_increase=["accuracy=0.01"], gate_on="upper",
                     resamples=300)
    nll, accuracy = gate_results(report)
    row = report.comparison[0]
    assert nll.name == "--max-increase nll=1% --gate-on upper" and not nll.passed
    assert nll.value == pytest.approx(row["delta"]) and nll.interval == row["ci"]
    assert nll.message.startswith(f"the upper end of the nll change interval, {row['ci'][1]:+.6g}, is above the "
                                  f"limit {0.01 * row['base']:+.6g} (base {row['base']:.6g}; new {row['new']:.6g}")
    assert accuracy.passed == (report.comparison[1]["ci"][1] >= 0.01)
