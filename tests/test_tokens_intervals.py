"""`nll tokens --interval`: a Poisson bootstrap over documents, seeded by a hash of the document id.

Checked against a direct numpy computation from bootstrap.poisson_weights, for coverage by
simulation, for independence from file order, batching and interleaving, per --by group, with
gates on a bound, and in every format; and the streaming engine's bounded state."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from helpers import loads_strict
from nllcli.bootstrap import key_ids, percentile_interval, poisson_weights
from nllcli.tokens import engine, readers, tokens
from nllcli.tokens.report import METRICS


def documents(seed: int, docs: int = 60, mean_tokens: int = 12) -> pd.DataFrame:
    """A long table, one document after another: per token a log-probability and a byte length."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(mean_tokens, docs)
    hardness = rng.gamma(4.0, 0.5, docs)  # each document's mean NLL per token
    doc = np.repeat(np.arange(docs), sizes)
    return pd.DataFrame({
        "doc_id": [f"doc-{d}" for d in doc],
        "token": rng.choice(["a", " b", "cd ", "é", " ", "ef"], len(doc)),
        "logprob": -rng.exponential(hardness[doc]),
        "bytes": 1 + rng.poisson(3, len(doc)),
        "domain": np.where(doc % 3 == 0, "news", np.where(doc % 3 == 1, "code", "wiki")),
    })


def numpy_intervals(frame: pd.DataFrame, resamples: int, seed: int, confidence: float = 0.95) -> dict:
    """Replicate sums of S, T, B per document straight from poisson_weights; percentile intervals."""
    grouped = frame.groupby("doc_id", sort=False)
    ids = list(grouped.groups)
    s = -grouped["logprob"].sum().loc[ids].to_numpy()
    t = grouped.size().loc[ids].to_numpy().astype(float)
    b = grouped["bytes"].sum().loc[ids].to_numpy().astype(float)
    w = poisson_weights(key_ids(ids), resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = {"nll": (w.T @ s) / (w.T @ t), "bits_per_byte": (w.T @ s) / ((w.T @ b) * math.log(2)),
                "perplexity": np.exp((w.T @ s) / (w.T @ t)), "byte_perplexity": np.exp((w.T @ s) / (w.T @ b)),
                "doc_nll": (w.T @ (s / t)) / w.sum(axis=0), "doc_perplexity": (w.T @ np.exp(s / t)) / w.sum(axis=0)}
    return {name: percentile_interval(values, confidence) for name, values in reps.items()}


def test_intervals_match_a_direct_bootstrap_over_documents(tmp_path):
    frame = documents(1)
    frame.to_csv(tmp_path / "t.csv")  # with pandas' index, as people write them
    report = tokens(tmp_path / "t.csv", bytes="bytes", interval=True, resamples=400, seed=7)
    expected = numpy_intervals(frame, 400, 7)
    for name, (low, high) in expected.items():
        assert report.intervals[name] == pytest.approx([low, high], rel=1e-10), name
    for name in METRICS:
        if name == "word_perplexity":
            continue
        low, high = report.intervals[name]
        assert low < report.metrics[name] < high, name
    assert report.bootstrap == {"confidence": 0.95, "resamples": 400, "seed": 7, "method": "poisson",
                                "unit": "documents"}


def test_coverage_by_simulation_is_nominal_for_nll_and_bits_per_byte():
    """300 samples of 150 documents from one population: the 95% intervals of the token-weighted nll
    and of bits_per_byte hold the population value in 93 to 97% of them."""
    rng = np.random.default_rng(2026)
    docs, trials, mean_tokens = 150, 300, 8
    true_nll = 2.0  # E[hardness] of gamma(4, 0.5), independent of the length: E[S] / E[T] = E[hardness]
    true_bpb = true_nll / (4.0 * math.log(2))  # 4 bytes a token on average
    hits = {"nll": 0, "bits_per_byte": 0}
    for _ in range(trials):
        sizes = 1 + rng.poisson(mean_tokens - 1, docs)
        hardness = rng.gamma(4.0, 0.5, docs)
        doc = np.repeat(np.arange(docs), sizes)
        table = pd.DataFrame({"doc_id": doc, "logprob": -rng.exponential(hardness[doc]),
                              "bytes": 1 + rng.poisson(3, len(doc))})
        report = tokens(table, bytes="bytes", interval=True, resamples=400, seed=int(rng.integers(1 << 31)))
        hits["nll"] += report.intervals["nll"][0] <= true_nll <= report.intervals["nll"][1]
        low, high = report.intervals["bits_per_byte"]
        hits["bits_per_byte"] += low <= true_bpb <= high
    for name, hit in hits.items():
        assert abs(hit / trials - 0.95) <= 0.02, (name, hit / trials)


def test_shuffled_documents_rebatched_or_interleaved_give_the_same_intervals(tmp_path, monkeypatch):
    frame = documents(3)
    frame.to_csv(tmp_path / "t.csv", index=False)
    options = dict(bytes="bytes", by=["domain"], interval=True, resamples=300, seed=3)
    whole = tokens(tmp_path / "t.csv", **options)
    order = np.random.default_rng(0).permutation(frame["doc_id"].unique())
    shuffled = pd.concat([frame[frame["doc_id"] == d] for d in order])
    shuffled.to_parquet(tmp_path / "shuffled.parquet")
    rank = frame.groupby("doc_id", sort=False).cumcount().to_numpy()  # round robin: each document's order kept
    interleaved = frame.iloc[np.argsort(rank, kind="stable")]
    interleaved.to_csv(tmp_path / "interleaved.csv", index=False)
    monkeypatch.setattr(readers, "BATCH_TOKENS", 5)
    from nllcli import readers as table_readers

    monkeypatch.setattr(table_readers, "CSV_BLOCK_BYTES", 256)  # documents straddle batches
    for path in ("shuffled.parquet", "interleaved.csv"):
        other = tokens(tmp_path / path, **options)
        for name in METRICS:
            assert other.metrics[name] == pytest.approx(whole.metrics[name], rel=1e-12), (path, name)
            assert other.intervals[name] == pytest.approx(whole.intervals[name], rel=1e-10), (path, name)
        by_domain = {g["by"]["domain"]: g for g in whole.groups}
        for group in other.groups:
            expected = by_domain[group["by"]["domain"]]
            assert group["documents"] == expected["documents"]
            for name in METRICS:
                assert group["intervals"][name] == pytest.approx(expected["intervals"][name], rel=1e-10)
    assert any("interleaved" in w for w in other.warnings)  # the last one: read twice, and said so
    assert not any("interleaved" in w for w in whole.warnings)


def test_a_group_interval_is_the_interval_of_the_group_alone(tmp_path):
    """The weight of a document depends only on its id: a group's replicates are its own run's."""
    frame = documents(5)
    frame.to_csv(tmp_path / "all.csv", index=False)
    report = tokens(tmp_path / "all.csv", bytes="bytes", by=["domain"], interval=True, resamples=200, seed=1)
    for group in report.groups:
        alone = frame[frame["domain"] == group["by"]["domain"]]
        alone.to_csv(tmp_path / "one.csv", index=False)
        single = tokens(tmp_path / "one.csv", bytes="bytes", interval=True, resamples=200, seed=1)
        for name in METRICS:
            assert group["intervals"][name] == pytest.approx(single.intervals[name], rel=1e-10)


def test_cli_interval_json_table_and_gates_on_a_bound(tmp_path, run):
    frame = documents(2)
    frame.to_csv(tmp_path / "t.csv", index=False)
    path = tmp_path / "t.csv"
    result = run("tokens", path, "--bytes", "bytes", "--interval", "--by", "domain", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = loads_strict(result.stdout)
    assert set(data["intervals"]) == set(METRICS)
    assert (data["confidence"], data["resamples"], data["seed"], data["bootstrap"]) == (0.95, 2000, 0, "poisson")
    assert all(set(g["intervals"]) == set(METRICS) for g in data["groups"])
    nll = data["metrics"]["nll"]
    low, high = data["intervals"]["nll"]
    # the value passes a limit between it and the upper bound; the upper bound does not
    limit = (nll + high) / 2
    assert run("tokens", path, "--max", f"nll={limit}").exit_code == 0
    gated = run("tokens", path, "--bytes", "bytes", "--max", f"nll={limit}", "--gate-on", "upper", "--format", "json")
    assert gated.exit_code == 1
    gate = loads_strict(gated.stdout)["gates"][0]
    assert (gate["on"], gate["passed"]) == ("upper", False) and gate["interval"] == pytest.approx([low, high])
    assert "its upper bound is above the maximum" in gated.stderr and "Traceback" not in gated.stderr
    # --gate-on interval fails only when the whole interval is past the limit
    assert run("tokens", path, "--max", f"nll={(low + nll) / 2}", "--gate-on", "interval").exit_code == 0
    assert run("tokens", path, "--max", f"nll={low * 0.99}", "--gate-on", "interval").exit_code == 1
    assert run("tokens", path, "--max", f"nll={(low + nll) / 2}", "--gate-on", "lower").exit_code == 0
    assert run("tokens", path, "--max", f"nll={low * 0.99}", "--gate-on", "lower").exit_code == 1
    table = run("tokens", path, "--interval", "--confidence", "0.9", "--by", "domain")
    assert table.exit_code == 0 and "90% interval" in table.stdout
    assert f"[{low:.6f}" not in table.stdout  # 90%, not the 95% interval
    markdown = run("tokens", path, "--interval", "--format", "markdown")
    assert "95% interval" in markdown.stdout
    for bad, message in ((["--gate-on", "sideways"], "--gate-on"), (["--confidence", "1.5"], "--confidence"),
                         (["--resamples", "0"], "--resamples")):
        result = run("tokens", path, "--interval", *bad)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    compare = run("tokens", "--compare", path, path, "--interval")
    assert compare.exit_code == 2 and "--interval" in compare.stderr


def test_without_interval_the_report_has_none(tmp_path, run):
    documents(4).to_csv(tmp_path / "t.csv", index=False)
    data = json.loads(run("tokens", tmp_path / "t.csv", "--format", "json").stdout)
    assert data["intervals"] is None and data["bootstrap"] is None
    assert "% interval" not in run("tokens", tmp_path / "t.csv").stdout


def test_an_undefined_metric_has_a_null_interval_with_a_warning(tmp_path, run):
    frame = documents(6).drop(columns=["bytes", "token"])  # no bytes nor text: bits_per_byte undefined
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = loads_strict(run("tokens", tmp_path / "t.csv", "--interval", "--format", "json").stdout)
    assert data["intervals"]["bits_per_byte"] == [None, None] and data["metrics"]["bits_per_byte"] is None
    assert data["intervals"]["nll"][0] is not None
    assert any("bits_per_byte" in w for w in data["warnings"])


def test_streaming_keeps_only_the_open_document(tmp_path, monkeypatch):
    """Contiguous documents are folded as the next one starts: the per-document state stays at the
    size of a batch's documents however many documents the input holds."""
    from nllcli.tokens.report import accumulator

    frame = documents(8, docs=3000, mean_tokens=3)
    frame.to_csv(tmp_path / "t.csv", index=False)
    from nllcli import readers as table_readers

    monkeypatch.setattr(table_readers, "CSV_BLOCK_BYTES", 4096)
    largest = []
    fold = engine.fold

    def watch(out, raw):
        fold(out, raw)
        largest.append(out.state.n)

    monkeypatch.setattr(engine, "fold", watch)
    run = engine.run([str(tmp_path / "t.csv")], bytes="bytes", accumulator=lambda: accumulator(worst=3))
    assert run.accumulator is not None and run.accumulator.total.count("documents") == 3000
    assert len(largest) > 20 and max(largest) < 300 and run.state.n == 0
    assert len(run.accumulator.worst_ids) == 3
    streamed = tokens(tmp_path / "t.csv", bytes="bytes", worst=3)
    monkeypatch.setattr(engine, "fold", fold)
    whole = tokens(frame, bytes="bytes", worst=3)  # one batch: the same numbers and the same worst documents
    assert streamed.metrics == pytest.approx(whole.metrics, rel=1e-12)
    assert [w["doc"] for w in streamed.worst] == [w["doc"] for w in whole.worst]


def test_interleaved_standard_input_is_refused_with_a_hint(tmp_path, run):
    frame = documents(9, docs=6)
    interleaved = frame.iloc[np.argsort(frame.groupby("doc_id").cumcount().to_numpy(), kind="stable")]
    result = run("tokens", "-", input=interleaved.to_csv(index=False))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "contiguous" in result.stderr and "sort" in result.stderr and "row" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    ordered = run("tokens", "-", "--format", "json", input=frame.to_csv(index=False))
    assert ordered.exit_code == 0 and loads_strict(ordered.stdout)["documents"] == 6


def test_an_overflowing_document_perplexity_gives_an_infinite_bound_with_a_warning(tmp_path, run):
    (tmp_path / "t.csv").write_text("doc_id,logprob\na,-800\nb,-1\nb,-2\nc,-0.5\nd,-1.5\n")
    data = loads_strict(run("tokens", tmp_path / "t.csv", "--interval", "--resamples", "200",
                            "--format", "json").stdout)
    low, high = data["intervals"]["doc_perplexity"]
    assert low == pytest.approx(math.exp(0.5)) and high is None  # inf: written as null
    assert "the interval of doc_perplexity is infinite; written as null" in data["warnings"]
    assert data["intervals"]["doc_nll"][1] > data["intervals"]["doc_nll"][0]  # finite, not NaN


def test_per_doc_rows_are_the_same_streamed_interleaved_or_on_stdout(tmp_path, run, monkeypatch):
    from nllcli import readers as table_readers

    monkeypatch.setattr(table_readers, "CSV_BLOCK_BYTES", 512)  # many batches: rows streamed in pieces
    frame = documents(11, docs=80).drop(columns=["token"])  # no text: a null byte length stays unknown
    frame["bytes"] = frame["bytes"].astype("Int64")
    frame.loc[frame["doc_id"] == "doc-5", "bytes"] = None  # one document of unknown length: a null
    frame.to_csv(tmp_path / "t.csv", index=False)
    rank = frame.groupby("doc_id", sort=False).cumcount().to_numpy()
    frame.iloc[np.argsort(rank, kind="stable")].to_csv(tmp_path / "mixed.csv", index=False)
    for name in ("t", "mixed"):
        assert run("tokens", tmp_path / f"{name}.csv", "--bytes", "bytes", "--by", "domain", "--per-doc",
                   tmp_path / f"{name}.parquet").exit_code == 0
    out = run("tokens", tmp_path / "t.csv", "--bytes", "bytes", "--by", "domain", "--per-doc", "-")
    streamed = pd.read_parquet(tmp_path / "t.parquet")
    assert len(streamed) == 80 and streamed["bytes"].isna().sum() == 1
    stdout = pd.read_csv(io.StringIO(out.stdout))
    mixed = pd.read_parquet(tmp_path / "mixed.parquet").set_index("doc").loc[streamed["doc"]].reset_index()
    for other in (stdout, mixed):
        assert other["doc"].tolist() == streamed["doc"].tolist()
        assert other["tokens"].tolist() == streamed["tokens"].tolist()
        assert np.allclose(other["nll"], streamed["nll"], rtol=1e-12)
