"""nll calibrate: the temperature kernel against references, its invariances, the job and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from helpers import assert_input_error, loads_strict
from nllcli import api, calibration
from nllcli.calibration import fit_rows, fit_temperature, temperature_terms

CLASSES = ["cat", "dog", "bird", "fish"]


def overconfident(n: int, k: int = 4, scale: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(u); returns (scale * u, labels): the right temperature is about scale."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.2, size=(n, k))
    p = np.exp(log_softmax(u, axis=1))
    labels = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return scale * u, labels


def reference_temperature(z, y, w=None) -> float:
    """The minimiser of the weighted mean NLL of softmax(z / T) over log T, by SciPy on the whole file."""
    w = np.ones(len(y)) if w is None else w

    def mean_nll(s):
        scaled = z / math.exp(s)
        return float(w @ (logsumexp(scaled, axis=1) - scaled[np.arange(len(y)), y]) / w.sum())

    result = minimize_scalar(mean_nll, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-13})
    return math.exp(result.x)


def frame(z, y, kind="logits", names=CLASSES[:4]):
    df = pd.DataFrame(z if kind == "logits" else np.exp(log_softmax(z, axis=1)), columns=names[: z.shape[1]])
    df["label"] = np.array(names)[y]
    return df


# -- the kernel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, scale", [(0, 2.5), (1, 0.4), (2, 1.0), (3, 7.0)])
def test_temperature_equals_a_scipy_reference(seed, scale):
    z, y = overconfident(3000, 5, scale, seed)
    fit = fit_temperature(*fit_rows(log_softmax(z, axis=1), y, None))
    assert fit.converged and fit.at_bound is None
    assert fit.temperature == pytest.approx(reference_temperature(z, y), rel=1e-6)
    assert fit.nll_after <= fit.nll_before


def test_weighted_fit_equals_the_weighted_reference_and_repeated_rows():
    z, y = overconfident(800, 3, 3.0, 7)
    w = np.random.default_rng(1).integers(0, 4, len(y)).astype(float)  # zeros included
    fit = fit_temperature(*fit_rows(log_softmax(z, axis=1), y, w))
    assert fit.temperature == pytest.approx(reference_temperature(z, y, w), rel=1e-6)
    repeated = np.repeat(np.arange(len(y)), w.astype(int))  # weight 3 = the row three times
    again = fit_temperature(*fit_rows(log_softmax(z[repeated], axis=1), y[repeated], None))
    assert again.temperature == pytest.approx(fit.temperature, rel=1e-9)
    assert fit.rows == np.count_nonzero(w)


def test_derivatives_match_finite_differences():
    z, y = overconfident(500, 4, 2.0, 3)
    zz, yy, ww = fit_rows(log_softmax(z, axis=1), y, None)
    for s in (-1.0, 0.0, 0.7, 2.0):
        f, d1, d2 = temperature_terms(zz, yy, ww, s)
        h = 1e-5
        fp, d1p, _ = temperature_terms(zz, yy, ww, s + h)
        fm, d1m, _ = temperature_terms(zz, yy, ww, s - h)
        assert d1 == pytest.approx((fp - fm) / (2 * h), rel=1e-6, abs=1e-9)
        assert d2 == pytest.approx((d1p - d1m) / (2 * h), rel=1e-5, abs=1e-8)


def test_a_calibrated_model_gets_t_near_1():
    z, y = overconfident(60_000, 4, 1.0, 11)  # labels drawn from softmax(z) itself
    fit = fit_temperature(*fit_rows(log_softmax(z, axis=1), y, None))
    assert abs(fit.temperature - 1.0) < 0.02  # the statistical error at this size is about 0.005


def test_shifting_rows_and_the_kind_of_values_change_nothing():
    z, y = overconfident(1000, 4, 2.0, 5)
    shift = np.random.default_rng(2).normal(0, 50, size=(len(y), 1))
    logits = fit_temperature(*fit_rows(log_softmax(z, axis=1), y, None)).temperature
    shifted = fit_temperature(*fit_rows(log_softmax(z + shift, axis=1), y, None)).temperature
    probs = fit_temperature(*fit_rows(np.log(np.exp(log_softmax(z, axis=1))), y, None)).temperature
    assert shifted == pytest.approx(logits, rel=1e-10)
    assert probs == pytest.approx(logits, rel=1e-8)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 20.0), st.integers(2, 6), st.integers(3, 200))
def test_nll_after_is_never_above_before(seed, scale, k, n):
    z, y = overconfident(n, k, scale, seed)
    fit = fit_temperature(*fit_rows(log_softmax(z, axis=1), y, None))
    assert fit.nll_after <= fit.nll_before + 1e-15
    assert fit.converged


def test_flat_rows_give_t_1_and_separable_rows_the_lower_bound():
    flat = fit_temperature(*fit_rows(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1]), None))
    assert flat.flat and flat.temperature == 1.0
    z = np.array([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    sure = fit_temperature(*fit_rows(log_softmax(z, axis=1), np.array([0, 1, 0]), None))
    assert sure.at_bound == "lower" and sure.temperature == calibration.TEMPERATURE_BOUNDS[0]


def test_a_zero_probability_on_the_true_class_carries_no_information():
    z, y = overconfident(400, 3, 2.0, 9)
    log_q = log_softmax(z, axis=1)
    with_zero = log_q.copy()
    with_zero[0] = [-np.inf, 0.0, -np.inf]
    y = y.copy()
    y[0] = 0
    fit = fit_temperature(*fit_rows(with_zero, y, None))
    assert fit.rows == 399
    assert fit.temperature == pytest.approx(reference_temperature(z[1:], y[1:]), rel=1e-6)


# -- the job: metrics through the score pipeline, files ------------------------------------------


def test_after_metrics_are_score_with_that_temperature(tmp_path):
    z, y = overconfident(1500, 4, 3.0, 4)
    frame(z, y).to_csv(tmp_path / "valid.csv")  # with pandas' index column
    result = api.calibrate(str(tmp_path / "valid.csv"), input="logits")
    t = result.temperature
    assert t == pytest.approx(reference_temperature(z, y), rel=1e-6)
    scored = api.score(str(tmp_path / "valid.csv"), input="logits", temperature=t)
    assert result.valid[1].metrics == scored.metrics
    nll = -log_softmax(z / t, axis=1)[np.arange(len(y)), y].mean()
    assert result.valid[1].metrics["nll"] == pytest.approx(nll, rel=1e-12)
    assert result.valid[1].metrics["nll"] < result.valid[0].metrics["nll"]
    assert result.valid[1].metrics["ece"] < result.valid[0].metrics["ece"]


def test_probabilities_are_scaled_through_their_logs(tmp_path):
    z, y = overconfident(1000, 3, 2.0, 6)
    frame(z, y, "probs").to_parquet(tmp_path / "valid.parquet")
    frame(z, y).to_csv(tmp_path / "logits.csv", index=False)
    from_probs = api.calibrate(str(tmp_path / "valid.parquet"))
    from_logits = api.calibrate(str(tmp_path / "logits.csv"), input="logits")
    assert from_probs.temperature == pytest.approx(from_logits.temperature, rel=1e-8)
    for name in ("nll", "brier", "ece", "accuracy"):
        assert from_probs.valid[1].metrics[name] == pytest.approx(from_logits.valid[1].metrics[name], rel=1e-8)


def test_score_temperature_on_probabilities_and_log_probs(tmp_path):
    z, y = overconfident(300, 3, 2.0, 8)
    q = np.exp(log_softmax(z, axis=1))
    frame(z, y, "probs").to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(np.log(q), columns=CLASSES[:3]).assign(label=np.array(CLASSES)[y]).to_csv(tmp_path / "lp.csv")
    expected = -log_softmax(np.log(q) / 1.7, axis=1)[np.arange(len(y)), y].mean()
    brier = ((np.exp(log_softmax(np.log(q) / 1.7, axis=1)) - np.eye(3)[y]) ** 2).sum(axis=1).mean()
    for path, kind in (("p.csv", "probs"), ("lp.csv", "log-probs")):
        report = api.score(str(tmp_path / path), input=kind, temperature=1.7)
        assert report.metrics["nll"] == pytest.approx(expected, rel=1e-10)
        assert report.metrics["brier"] == pytest.approx(brier, rel=1e-10)


def test_weights_are_honoured(tmp_path):
    z, y = overconfident(600, 3, 2.0, 12)
    w = np.random.default_rng(3).uniform(0, 3, len(y))
    frame(z, y).assign(w=w).to_csv(tmp_path / "v.csv", index=False)
    result = api.calibrate(str(tmp_path / "v.csv"), input="logits", weight="w")
    assert result.temperature == pytest.approx(reference_temperature(z, y, w), rel=1e-6)


def test_output_round_trips_csv_and_parquet(tmp_path):
    z, y = overconfident(700, 4, 2.5, 13)
    df = frame(z, y).assign(camera=np.where(y % 2, "top, left", 'say "hi"'))
    df.to_csv(tmp_path / "valid.csv")  # pandas' index, a comma and quotes in a text column
    df.to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "out"
    result = api.calibrate(str(tmp_path / "valid.csv"), apply=[str(tmp_path / "test.parquet")], input="logits",
                           output=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "valid.csv"]
    copy = pd.read_csv(out / "valid.csv")
    original = pd.read_csv(tmp_path / "valid.csv")
    assert list(copy.columns) == list(original.columns)
    assert copy["camera"].tolist() == original["camera"].tolist()
    np.testing.assert_allclose(copy[CLASSES].to_numpy(), z / result.temperature, rtol=1e-15)
    rescored = api.score(str(out / "valid.csv"), input="logits")
    assert rescored.metrics == pytest.approx(result.valid[1].metrics, rel=1e-12)
    parquet = pq.read_table(out / "test.parquet")
    assert parquet.schema.names == pq.read_table(tmp_path / "test.parquet").schema.names
    assert parquet.schema.metadata == pq.read_table(tmp_path / "test.parquet").schema.metadata  # pandas index
    assert api.score(str(out / "test.parquet"), input="logits").metrics == pytest.approx(
        result.tests[0][1].metrics, rel=1e-12)


def test_output_keeps_the_kind_binary_and_list_layouts(tmp_path):
    z, y = overconfident(400, 2, 3.0, 14)
    q = np.exp(log_softmax(z, axis=1))
    pd.DataFrame({"p": q[:, 1], "label": y}).to_csv(tmp_path / "binary.csv", index=False)
    pq.write_table(pa.table({"label": y.astype(str), "scores": list(np.log(q))}), tmp_path / "lists.parquet")
    binary = api.calibrate(str(tmp_path / "binary.csv"), output=str(tmp_path / "b"))
    copy = pd.read_csv(tmp_path / "b" / "binary.csv")
    assert list(copy.columns) == ["p", "label"]
    t = binary.temperature
    np.testing.assert_allclose(copy["p"], 1 / (1 + np.exp(-(z[:, 1] - z[:, 0]) / t)), rtol=1e-12)
    lists = api.calibrate(str(tmp_path / "lists.parquet"), input="log-probs", probs="scores",
                          output=str(tmp_path / "l"))
    assert lists.temperature == pytest.approx(t, rel=1e-8)
    written = np.array(pq.read_table(tmp_path / "l" / "lists.parquet")["scores"].to_pylist())
    # Each copy is written with its own fit's temperature (the two fits agree to 1e-8, not 1e-12).
    np.testing.assert_allclose(written, log_softmax(np.log(q) / lists.temperature, axis=1), rtol=1e-12, atol=1e-14)


def test_output_is_atomic_and_never_an_input(tmp_path, monkeypatch):
    z, y = overconfident(200, 3, 2.0, 15)
    frame(z, y).to_csv(tmp_path / "valid.csv", index=False)
    with pytest.raises(Exception, match="that is an input file"):
        api.calibrate(str(tmp_path / "valid.csv"), input="logits", output=str(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.csv").write_text("old\n")

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(calibration, "scaled_values", broken)
    with pytest.raises(RuntimeError):
        api.calibrate(str(tmp_path / "valid.csv"), input="logits", output=str(out))
    assert [p.name for p in out.iterdir()] == ["valid.csv"]  # no temporary file left
    assert (out / "valid.csv").read_text() == "old\n"


def test_save_and_load(tmp_path):
    z, y = overconfident(500, 3, 2.0, 16)
    frame(z, y).to_csv(tmp_path / "valid.csv", index=False)
    frame(*overconfident(300, 3, 2.0, 17)).to_csv(tmp_path / "test.csv", index=False)
    fitted = api.calibrate(str(tmp_path / "valid.csv"), input="logits", save=str(tmp_path / "t.json"))
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["schema_version"] == 1 and saved["method"] == "temperature"
    assert saved["temperature"] == fitted.temperature and saved["classes"] == CLASSES[:3]
    loaded = api.calibrate(str(tmp_path / "test.csv"), input="logits", load=str(tmp_path / "t.json"))
    assert loaded.source == "loaded" and loaded.fit is None and loaded.temperature == fitted.temperature
    given_t = api.calibrate(str(tmp_path / "test.csv"), input="logits", temperature=fitted.temperature)
    assert given_t.valid[1].metrics == loaded.valid[1].metrics


def test_sample_data_is_overconfident(samples):
    result = api.calibrate(str(samples / "robot_tools_val_logits.csv"), input="logits",
                           apply=[str(samples / "robot_tools_test_logits.csv")])
    assert 2.0 < result.temperature < 3.5
    for before, after in (result.valid, *result.tests):
        assert after.metrics["ece"] < before.metrics["ece"] / 2
        assert after.metrics["accuracy"] == before.metrics["accuracy"]


# -- the command line --------------------------------------------------------------------------


def test_cli_json(run_json, samples):
    code, data, stderr = run_json("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits",
                                  "--apply", samples / "robot_tools_test_logits.csv")
    assert code == 0, stderr
    assert data["schema_version"] == 1 and data["command"] == "calibrate" and data["method"] == "temperature"
    assert data["temperature"] > 1 and data["fit"]["converged"]
    assert set(data["before"]) == {"valid", "tests"} == set(data["after"])
    assert len(data["before"]["tests"]) == len(data["after"]["tests"]) == 1
    assert data["after"]["valid"]["metrics"]["ece"] < data["before"]["valid"]["metrics"]["ece"]
    assert data["inputs"]["tests"] == [[str(samples / "robot_tools_test_logits.csv")]]


def test_cli_table_and_gates(run, samples):
    valid = samples / "robot_tools_val_logits.csv"
    result = run("calibrate", valid, "--input", "logits")
    assert result.exit_code == 0, result.stderr
    assert "T = 2.7" in result.stdout and "ece" in result.stdout and "before" in result.stdout
    passed = run("calibrate", valid, "--input", "logits", "--max", "ece=0.1")
    assert passed.exit_code == 0
    failed = run("calibrate", valid, "--input", "logits", "--max", "ece=0.01")
    assert failed.exit_code == 1
    assert "gate failed: ece" in failed.stderr and "after calibration" in failed.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "0"], "--temperature 0: must be a positive"),
    (["--temperature", "2", "--load", "x.json"], "use one"),
    (["--max", "bogus=1"], "unknown metric"),
    (["--load", "missing.json"], "no such file"),
])
def test_cli_usage_errors(run, samples, args, fragment):
    assert_input_error(run("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits", *args),
                       fragment)


def test_cli_refuses_stdin_and_files_without_labels(run, samples, tmp_path):
    assert_input_error(run("calibrate", "-", input="a,b\n1,2\n"), "standard input")
    pd.DataFrame({"a": [0.5], "b": [0.5]}).to_csv(tmp_path / "nolabel.csv", index=False)
    assert_input_error(run("calibrate", tmp_path / "nolabel.csv"), "label")


def test_cli_bad_load_file(run, samples, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"kind": "nll-calibration", "schema_version": 1,
                                                 "method": "temperature", "temperature": -1}))
    assert_input_error(run("calibrate", samples / "robot_tools_val_logits.csv", "--input", "logits",
                           "--load", tmp_path / "t.json"), "not a positive number")


def test_score_temperature_option(run_json, samples):
    code, data, _ = run_json("score", samples / "robot_tools_test_logits.csv", "--input", "logits",
                             "--temperature", "2.5")
    df = pd.read_csv(samples / "robot_tools_test_logits.csv")
    z = df[["wrench", "screwdriver", "hammer"]].to_numpy()
    y = df["label"].map({"wrench": 0, "screwdriver": 1, "hammer": 2}).to_numpy()
    assert code == 0
    assert data["metrics"]["nll"] == pytest.approx(-log_softmax(z / 2.5, axis=1)[np.arange(len(y)), y].mean(),
                                                   rel=1e-12)


def test_subprocess_save_then_load(nll_exe, samples, tmp_path):
    saved = tmp_path / "t.json"
    fit = subprocess.run([*nll_exe, "calibrate", str(samples / "robot_tools_val_logits.csv"), "--input", "logits",
                          "--save", str(saved), "-f", "json"], capture_output=True, text=True, timeout=120)
    assert fit.returncode == 0, fit.stderr
    t = loads_strict(fit.stdout)["temperature"]
    out = tmp_path / "calibrated"
    applied = subprocess.run([*nll_exe, "calibrate", str(samples / "robot_tools_test_logits.csv"), "--input",
                              "logits", "--load", str(saved), "--output", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    assert f"T = {t:.6g}, loaded from" in applied.stdout
    assert Path(out / "robot_tools_test_logits.csv").exists()


# -- nll plot: the calibrated curve beside the original ----------------------------------------


def _axes_of(report, calibrated=None, temperature=None):
    from matplotlib.figure import Figure

    from nllcli import plot

    fig = Figure()
    plot._draw(fig, report, calibrated, temperature)
    return fig.axes


def test_plot_draws_the_calibrated_curve_and_a_log_scale_when_one_bin_dominates(samples):
    result = api.calibrate(str(samples / "digits_gbm_test_logits.csv"), input="logits")
    reliability, confidence, *_ = _axes_of(result.valid[0], result.valid[1], result.temperature)
    labels = [line.get_label() for line in reliability.get_lines()]
    assert f"after T = {result.temperature:.4g}" in labels
    assert "ECE" in reliability.get_title() and "after T" in reliability.get_title()
    assert confidence.get_yscale() == "log"  # 94% of the rows are in the top bin
    robot = api.score(str(samples / "robot_tools_test_logits.csv"), input="logits", temperature=2.5)
    assert _axes_of(robot)[1].get_yscale() == "linear"


def test_plot_calibrate_and_temperature(run, samples, tmp_path):
    valid = samples / "robot_tools_val_logits.csv"
    fitted = run("plot", valid, "--input", "logits", "--calibrate", "-o", tmp_path / "fit.png")
    assert fitted.exit_code == 0, fitted.stderr
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    given_t = run("plot", valid, "--input", "logits", "--temperature", "2.5", "-o", tmp_path / "t.svg")
    assert given_t.exit_code == 0, given_t.stderr
    assert "T = 2.5" in (tmp_path / "t.svg").read_text()
    assert_input_error(run("plot", valid, "--calibrate", "--temperature", "2", "-o", tmp_path / "x.png"), "use one")
    assert_input_error(run("plot", samples / "robot_tools.csv", "--calibrate", "--targets",
                           samples / "robot_tools_annotators.csv", "-o", tmp_path / "x.png"), "hard labels")
    assert not (tmp_path / "x.png").exists()


def test_help_states_the_memory_and_ends_with_examples(run):
    from nllcli.cli import EXAMPLES

    text = run("calibrate", "--help").stdout
    for noise in ("<bool>", "<str>", "<float>", "<list", "{VALID}"):
        assert noise not in text
    assert "Memory" in text and "--apply" in text and "--output" in text
    assert text.rstrip().splitlines()[-1].strip() == EXAMPLES["calibrate"][-1]
    assert "--temperature" in run("score", "--help").stdout and "--calibrate" in run("plot", "--help").stdout
    assert "--temperature" not in run("compare", "--help").stdout


# -- vector scaling --------------------------------------------------------------------------------


def _vector_objective(x, y, w, l2):
    """The penalised mean NLL of softmax(a * x + b) and its gradient, written independently for SciPy."""
    k = x.shape[1]

    def objective(theta):
        a, b = theta[:k], theta[k:]
        logits = x * a + b
        log_q = log_softmax(logits, axis=1)
        f = -(w * log_q[np.arange(len(y)), y]).sum() / w.sum()
        r = np.exp(log_q) - np.eye(k)[y]
        grad = np.concatenate([(w[:, None] * r * x).sum(0), (w[:, None] * r).sum(0)]) / w.sum()
        return f + 0.5 * l2 * (((a - 1) ** 2).sum() + (b ** 2).sum()), grad + l2 * np.concatenate([a - 1, b])

    return objective


def _vector_rows(z, y, w=None):
    return log_softmax(z, axis=1), y, np.ones(len(y)) if w is None else w


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_vector_scaling_equals_scipy_minimize(l2):
    from scipy.optimize import minimize

    z, y = overconfident(2000, 4, 2.0, 21)
    z[:, 2] *= 1.6  # one class more overconfident than the others
    w = np.random.default_rng(5).uniform(0.2, 2.0, len(y))
    x, y, w = _vector_rows(z, y, w)
    fit = calibration.fit_vector(x, y, w, l2=l2)
    reference = minimize(_vector_objective(x, y, w, l2), np.r_[np.ones(4), np.zeros(4)], jac=True, method="BFGS",
                         options={"gtol": 1e-12, "maxiter": 10_000})
    np.testing.assert_allclose(np.r_[fit.scale, fit.bias], reference.x, rtol=1e-6, atol=1e-8)
    f, _, _, _ = calibration.vector_terms(x, y, w, np.array(fit.scale), np.array(fit.bias), l2)
    assert f == pytest.approx(reference.fun, rel=1e-12)
    assert fit.converged and fit.nll_after < fit.nll_before


def test_vector_gradient_and_hessian_match_finite_differences():
    z, y = overconfident(300, 3, 2.0, 22)
    x, y, w = _vector_rows(z, y)
    a, b = np.array([0.6, 0.5, 0.9]), np.array([0.1, -0.2, 0.0])
    _, _, grad, hess = calibration.vector_terms(x, y, w, a, b, 1e-3)
    theta, h = np.r_[a, b], 1e-6
    for i in range(6):
        e = np.zeros(6)
        e[i] = h
        fp, _, gp, _ = calibration.vector_terms(x, y, w, (theta + e)[:3], (theta + e)[3:], 1e-3)
        fm, _, gm, _ = calibration.vector_terms(x, y, w, (theta - e)[:3], (theta - e)[3:], 1e-3)
        assert grad[i] == pytest.approx((fp - fm) / (2 * h), rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(hess[:, i], (gp - gm) / (2 * h), rtol=1e-5, atol=1e-8)


def test_vector_scaling_without_a_penalty_reaches_the_minimum():
    from scipy.optimize import minimize

    z, y = overconfident(1500, 3, 3.0, 23)
    x, y, w = _vector_rows(z, y)
    fit = calibration.fit_vector(x, y, w, l2=0.0)  # the biases' common shift is free: a singular Hessian
    reference = minimize(_vector_objective(x, y, w, 0.0), np.r_[np.ones(3), np.zeros(3)], jac=True,
                         method="BFGS", options={"gtol": 1e-12})
    assert fit.nll_after == pytest.approx(reference.fun, rel=1e-10)
    np.testing.assert_allclose(fit.scale, reference.x[:3], rtol=1e-5)


def test_vector_job_metrics_files_and_saved_map(tmp_path):
    z, y = overconfident(1200, 3, 2.0, 24)
    z[:, 0] += 1.5  # a biased class: vector scaling can move the predicted class
    frame(z, y).to_csv(tmp_path / "valid.csv", index=False)
    frame(*overconfident(500, 3, 2.0, 25)).to_csv(tmp_path / "test.csv", index=False)
    result = api.calibrate(str(tmp_path / "valid.csv"), apply=[str(tmp_path / "test.csv")], input="logits",
                           method="vector", save=str(tmp_path / "v.json"), output=str(tmp_path / "out"))
    a, b = np.array(result.scale), np.array(result.bias)
    log_q = log_softmax(log_softmax(z, axis=1) * a + b, axis=1)
    after = result.valid[1].metrics
    assert after["nll"] == pytest.approx(-log_q[np.arange(len(y)), y].mean(), rel=1e-12)
    assert after["accuracy"] == pytest.approx((log_q.argmax(axis=1) == y).mean(), abs=0)
    assert after["nll"] < result.valid[0].metrics["nll"]
    assert api.score(str(tmp_path / "out" / "valid.csv"), input="logits").metrics == pytest.approx(after, rel=1e-12)
    data = result.to_dict()
    assert data["method"] == "vector" and data["temperature"] is None and set(data["scale"]) == set(CLASSES[:3])
    loaded = api.calibrate(str(tmp_path / "test.csv"), input="logits", load=str(tmp_path / "v.json"))
    assert loaded.method == "vector" and loaded.valid[1].metrics == result.tests[0][1].metrics
    other = frame(z, y, names=["x", "y", "z", "w"])
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(Exception, match="fitted on classes"):
        api.calibrate(str(tmp_path / "other.csv"), input="logits", load=str(tmp_path / "v.json"))


def test_vector_cli(run_json, run, samples, tmp_path):
    valid = samples / "robot_tools_val_logits.csv"
    code, data, stderr = run_json("calibrate", valid, "--input", "logits", "--method", "vector", "--l2", "0.01")
    assert code == 0, stderr
    assert data["fit"]["l2"] == 0.01 and data["after"]["valid"]["metrics"]["ece"] < 0.05
    table = run("calibrate", valid, "--input", "logits", "--method", "vector")
    assert "vector scaling" in table.stdout and "scale" in table.stdout and "hammer" in table.stdout
    assert_input_error(run("calibrate", valid, "--method", "vector", "--temperature", "2"), "fits something else")
    assert_input_error(run("calibrate", valid, "--method", "vector", "--l2", "-1"), "--l2")
