"""`nll tokens`: the long table and the JSON Lines layouts against a plain numpy reference and
lm-evaluation-harness's formulas (written here from their definitions), placeholders and masks,
per-document output, groups, gates, errors, and `--compare` with its bootstrap over documents."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nllcli.errors import InputError
from nllcli.tokens import compare_tokens, readers, tokens
from nllcli.tokens.kernel import DocState, TokenBatch, text_features

from helpers import assert_input_error, loads_strict

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"
PIECES = ["a", "bc", " ", "  ", "\n", "de", "\u3000", "\xa0x", "é", "y ", " z", "", "\t\t", "\u2028", "ü\x85"]
METRICS = ("nll", "perplexity", "doc_nll", "doc_perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def random_tokens(seed: int, docs: int = 30, placeholders: bool = True, masks: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(docs):
        domain = ["news", "code", "wiki"][d % 3]
        for _ in range(int(rng.integers(1, 40))):
            ll = -float(rng.exponential(3.0))
            if placeholders and rng.random() < 0.03:
                ll = float(rng.choice([-9999.0, -np.inf, np.nan]))
            rows.append({"doc_id": f"d{d}", "token": str(rng.choice(PIECES)), "logprob": ll,
                         "mask": int(rng.random() > 0.15) if masks else 1, "domain": domain})
    return pd.DataFrame(rows)


def reference(frame: pd.DataFrame) -> dict:
    """Plain Python: per document the scored, non-placeholder tokens; lm-eval's formulas on top."""
    docs: dict[str, dict] = {}
    for row in frame.itertuples():
        doc = docs.setdefault(row.doc_id, {"ll": [], "text": ""})
        ll = row.logprob
        if row.mask == 1 and not (math.isnan(ll) or ll <= -9999):
            doc["ll"].append(ll)
            doc["text"] += row.token
    # lm_eval/api/metrics.py
    def weighted_mean(items):
        a, b = zip(*items)
        return sum(a) / sum(b)

    def weighted_perplexity(items):
        return math.exp(-weighted_mean(items))

    def bits_per_byte(items):
        return -weighted_mean(items) / math.log(2)

    lls = [sum(d["ll"]) for d in docs.values()]
    counted = [d for d in docs.values() if d["ll"]]
    tokens_ = [len(d["ll"]) for d in docs.values()]
    byte_items = [(sum(d["ll"]), len(d["text"].encode("utf-8"))) for d in docs.values()]
    word_items = [(sum(d["ll"]), len(re.split(r"\s+", d["text"]))) for d in counted]
    return {"nll": -sum(lls) / sum(tokens_), "perplexity": math.exp(-sum(lls) / sum(tokens_)),
            "doc_nll": float(np.mean([-sum(d["ll"]) / len(d["ll"]) for d in counted])),
            "doc_perplexity": float(np.mean([math.exp(-sum(d["ll"]) / len(d["ll"])) for d in counted])),
            "bits_per_byte": bits_per_byte(byte_items), "byte_perplexity": weighted_perplexity(byte_items),
            "word_perplexity": weighted_perplexity(word_items), "tokens": sum(tokens_), "documents": len(docs),
            "words": [len(re.split(r"\s+", d["text"])) for d in docs.values()]}


def assert_close(report, expected, rel=1e-10):
    for name in METRICS:
        assert report.metrics[name] == pytest.approx(expected[name], rel=rel), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_table_matches_the_numpy_reference_and_lm_eval_formulas(tmp_path, seed):
    frame = random_tokens(seed)
    path = tmp_path / "tokens.csv"
    frame.to_csv(path)  # with its index, as pandas writes it
    report = tokens(path)
    expected = reference(frame)
    assert_close(report, expected)
    assert report.tokens == expected["tokens"] and report.documents == expected["documents"]
    assert report.masked == int((frame["mask"] == 0).sum())
    scored = frame["mask"] == 1
    assert report.placeholder == int((scored & ~(frame["logprob"] > -9999)).sum())


def test_parquet_and_jsonl_tables_read_like_csv(tmp_path):
    frame = random_tokens(3)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    expected = reference(frame)
    assert_close(tokens(tmp_path / "t.parquet"), expected)
    assert_close(tokens(tmp_path / "t.jsonl"), expected)
    assert_close(tokens(frame), expected)  # a DataFrame from Python


def test_word_counts_merge_across_batches_exactly():
    """words = len(re.split(r'\\s+', text)) of each document's concatenated text, whatever the cut."""
    import pyarrow as pa

    rng = np.random.default_rng(7)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        doc_ids = np.sort(rng.integers(0, 4, n))
        pieces = [str(rng.choice(PIECES)) for _ in range(n)]
        whole = DocState()
        cuts = sorted(set(rng.integers(0, n + 1, 3).tolist()) | {0, n})
        parts = []
        for start, stop in zip(cuts[:-1], cuts[1:]):
            part = DocState()
            for state in (whole, part):
                codes = state.codes([f"d{i}" for i in dict.fromkeys(doc_ids[start:stop].tolist())])
                lookup = {f"d{i}": c for i, c in zip(dict.fromkeys(doc_ids[start:stop].tolist()), codes)}
                state.add(TokenBatch(np.array([lookup[f"d{i}"] for i in doc_ids[start:stop]], np.int64),
                                     np.full(stop - start, -1.0), np.ones(stop - start, np.int64),
                                     np.ones(stop - start, bool), text_features(pa.array(pieces[start:stop]))))
            parts.append(part)
        merged = parts[0]
        for part in parts[1:]:
            merged = merged + part
        for state in (whole, merged):
            for doc, words in zip(state.ids, state.words, strict=True):
                text = "".join(p for p, i in zip(pieces, doc_ids) if f"d{i}" == doc)
                assert words == len(re.split(r"\s+", text)), (doc, text)
            assert state.arrays()["tokens"].tolist() == [int(np.sum(doc_ids == int(d[1:]))) for d in state.ids]


def _chat_line(doc, part):
    content = [{"token": t, "logprob": None if math.isnan(lp) else lp if math.isfinite(lp) else -9999.0,
                "bytes": list(t.encode()), "top_logprobs": []} for t, lp in zip(part["token"], part["logprob"])]
    return {"id": doc, "object": "chat.completion", "choices": [{"index": 0, "logprobs": {"content": content}}]}


def layouts(tmp_path: Path, frame: pd.DataFrame) -> dict[str, Path]:
    """The same tokens in every layout (no masks: the JSON layouts carry none)."""
    out = {"chat": tmp_path / "chat.jsonl", "batch": tmp_path / "batch.jsonl",
           "completions": tmp_path / "completions.jsonl", "vllm": tmp_path / "vllm.jsonl"}
    with open(out["chat"], "w") as chat, open(out["batch"], "w") as batch, \
            open(out["completions"], "w") as legacy, open(out["vllm"], "w") as vllm:
        for doc, part in frame.groupby("doc_id", sort=False):
            line = _chat_line(doc, part)
            chat.write(json.dumps(line) + "\n")
            batch.write(json.dumps({"custom_id": doc, "response": {"status_code": 200, "body": line}}) + "\n")
            values = [None if math.isnan(v) else v for v in part["logprob"]]
            legacy.write(json.dumps({"id": doc, "choices": [{"index": 0, "text": "", "logprobs": {
                "tokens": ["<s>", *part["token"]], "token_logprobs": [None, *values]}}]}) + "\n")
            ids = list(range(100, 101 + len(part)))
            positions = [None] + [{str(i): {"logprob": v, "rank": 1, "decoded_token": t}, "7": {"logprob": -50.0}}
                                  for i, v, t in zip(ids[1:], values, part["token"])]
            vllm.write(json.dumps({"request_id": doc, "prompt_token_ids": ids, "prompt_logprobs": positions}) + "\n")
    return out


@pytest.mark.parametrize("small_batches", [False, True])
def test_every_layout_round_trips_to_the_long_table(tmp_path, monkeypatch, small_batches):
    if small_batches:
        monkeypatch.setattr(readers, "BATCH_TOKENS", 7)  # documents straddle batches
    frame = random_tokens(4, masks=False)
    frame.loc[frame["logprob"] == -np.inf, "logprob"] = -9999.0
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = tokens(tmp_path / "t.csv")
    for name, path in layouts(tmp_path, frame).items():
        report = tokens(path)
        assert report.layout == ("chat" if name == "batch" else name)
        for metric in METRICS:
            assert report.metrics[metric] == pytest.approx(table.metrics[metric], rel=1e-12), (name, metric)
        assert (report.tokens, report.documents, report.placeholder) == (table.tokens, table.documents,
                                                                        table.placeholder)
        assert report.masked == (table.documents if name in ("completions", "vllm") else 0)  # the first position


def test_lm_eval_samples_give_the_harness_numbers(tmp_path):
    frame = random_tokens(5, placeholders=False, masks=False)
    expected = reference(frame)
    path = tmp_path / "samples_wikitext_2024-05-01T10-00-00.jsonl"
    with open(path, "w") as out:
        for i, (_, part) in enumerate(frame.groupby("doc_id", sort=False)):
            text, ll = "".join(part["token"]), float(part["logprob"].sum())
            sample = {"doc_id": i, "doc": {"page": text}, "target": text, "arguments": [[text]],
                      "resps": [[ll]], "filtered_resps": [ll]}
            if i % 2:  # the counts the harness saved win over the target text
                sample.update(word_perplexity=[ll, len(re.split(r"\s+", text))],
                              byte_perplexity=[ll, len(text.encode())], bits_per_byte=[ll, len(text.encode())])
            out.write(json.dumps(sample) + "\n")
    report = tokens(path)
    assert report.layout == "lm-eval" and report.tokens is None
    for name in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert report.metrics[name] == pytest.approx(expected[name], rel=1e-12)
    assert math.isnan(report.metrics["nll"]) and any("token count" in w for w in report.warnings)


def test_lm_eval_multiple_choice_is_refused(tmp_path):
    path = tmp_path / "samples_hellaswag.jsonl"
    path.write_text(json.dumps({"doc_id": 0, "resps": [[[-1.0, False]], [[-2.0, False]]]}) + "\n")
    with pytest.raises(Exception, match="several responses"):
        tokens(path)


def test_json_report_names_and_placeholders(tmp_path, run):
    path = tmp_path / "t.csv"
    path.write_text("doc_id,logprob\na,-1.0\na,-9999\na,\nb,-2.0\nb,-inf\n")
    result = run("tokens", path, "--format", "json", "--base", "2")
    assert result.exit_code == 0, result.stderr
    data = loads_strict(result.stdout)
    assert data["schema_version"] == 1 and data["command"] == "tokens" and data["units"] == "bits"
    assert (data["tokens"], data["documents"], data["masked"], data["placeholder"]) == (2, 2, 0, 3)
    assert data["metrics"]["nll"] == pytest.approx(1.5 / math.log(2), rel=1e-12)
    assert data["metrics"]["perplexity"] == pytest.approx(math.exp(1.5), rel=1e-12)
    assert data["metrics"]["doc_perplexity"] == pytest.approx((math.e + math.e ** 2) / 2, rel=1e-12)
    for name in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        assert data["metrics"][name] is None
    assert any("placeholder" in w for w in data["warnings"])
    assert any(w.startswith("word_perplexity") for w in data["warnings"])


def test_bytes_column_and_groups_and_worst(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("doc,lp,n_bytes,task\nx,-1,2,a\nx,-3,2,a\ny,-0.5,1,b\nz,-2,4,b\n")
    report = tokens(path, logprob="lp", by=["task"], worst=2)
    assert report.metrics["bits_per_byte"] == pytest.approx(6.5 / (9 * math.log(2)), rel=1e-12)
    assert [g["by"]["task"] for g in report.groups] == ["a", "b"]  # worst nll first
    assert report.groups[1]["metrics"]["nll"] == pytest.approx(1.25, rel=1e-12)
    assert [w["doc"] for w in report.worst] == ["x", "z"]


def test_per_doc_file_is_written_atomically(tmp_path):
    frame = random_tokens(6)
    frame.to_csv(tmp_path / "t.csv", index=False)
    report = tokens(tmp_path / "t.csv", per_doc=tmp_path / "docs.parquet", by=["domain"])
    docs = pd.read_parquet(tmp_path / "docs.parquet")
    assert len(docs) == report.documents
    assert list(docs.columns[:2]) == ["doc", "domain"]
    expected = reference(frame)
    assert docs["words"].tolist() == expected["words"]
    totals = frame[(frame["mask"] == 1) & (frame["logprob"] > -9999)].groupby("doc_id", sort=False)["logprob"]
    assert np.allclose(docs["nll"].dropna().to_numpy(), -totals.mean().to_numpy(), rtol=1e-12)
    (tmp_path / "keep.csv").write_text("old\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("doc_id,logprob\na,0.5\n")
    with pytest.raises(InputError, match="above 0"):
        tokens(bad, per_doc=tmp_path / "keep.csv")
    assert (tmp_path / "keep.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("body, fragments", [
    ("doc_id,logprob\na,-1\na,0.25\nb,3\n", ["t.csv", "column 'logprob'", "above 0", "rows 2, 3"]),
    ("doc_id,logprob\na,-1\n,-2\n", ["column 'doc_id'", "document id is missing", "row 2"]),
    ("doc_id,logprob,mask\na,-1,1\na,-1,2\n", ["column 'mask'", "row 2"]),
    ("doc_id,logprob,task\na,-1,x\na,-1,y\n", ["column 'task'", "constant within a document", "row 2"]),
    ("doc_id,nll\na,1\n", ["no log-probability column", "'nll' looks like a loss"]),
])
def test_bad_input_is_one_line_naming_file_column_rows(tmp_path, run, body, fragments):
    path = tmp_path / "t.csv"
    path.write_text(body)
    extra = ["--by", "task"] if "task" in body else []
    assert_input_error(run("tokens", path, *extra), *fragments)


def test_gates_exit_1_and_usage_errors_exit_2(tmp_path, run):
    path = tmp_path / "t.csv"
    path.write_text("doc_id,logprob\na,-1\nb,-2\n")
    assert run("tokens", path, "--max", "perplexity=100").exit_code == 0
    failed = run("tokens", path, "--max", "perplexity=2")
    assert failed.exit_code == 1 and "gate failed: perplexity" in failed.stderr
    assert run("tokens", path, "--max", "accuracy=1").exit_code == 2
    assert run("tokens", path, "--fail-if-worse", "0").exit_code == 2
    assert run("tokens", path, "--per-doc", path).exit_code == 2


def test_compare_pairs_documents_and_bootstraps_over_them(tmp_path, run):
    from nllcli.comparison import bootstrap

    base = random_tokens(8, placeholders=False, masks=False)
    new = base.copy()
    rng = np.random.default_rng(1)
    new["logprob"] = np.minimum(base["logprob"] + rng.normal(0.3, 0.5, len(base)), 0.0)  # better on average
    base.to_csv(tmp_path / "base.csv", index=False)
    new.sample(frac=1.0, random_state=0).to_csv(tmp_path / "new.csv", index=False)  # rows in any order
    report = compare_tokens(tmp_path / "base.csv", tmp_path / "new.csv", resamples=500, seed=3)
    nll = report.comparison[0]
    assert nll["delta"] == pytest.approx(reference(new)["nll"] - reference(base)["nll"], rel=1e-10)
    sums = base.groupby("doc_id", sort=False).agg(t=("logprob", "size"), b=("logprob", "sum"))
    sums["n"] = new.groupby("doc_id")["logprob"].sum()
    deltas = (-(sums["n"] - sums["b"]) / sums["t"]).to_numpy()
    low, high = bootstrap({"nll": deltas}, sums["t"].to_numpy(float), 500, 0.95, 3)["nll"]
    assert nll["ci"] == pytest.approx([low, high], rel=1e-12)
    assert high < 0
    worse = run("tokens", "--compare", tmp_path / "new.csv", tmp_path / "base.csv", "--fail-if-worse", "0")
    assert worse.exit_code == 1 and "nll got worse" in worse.stderr
    base[base["doc_id"] != "d3"].to_csv(tmp_path / "fewer.csv", index=False)
    assert_input_error(run("tokens", "--compare", tmp_path / "fewer.csv", tmp_path / "new.csv"), "'d3'")


def test_samples_walk_through(run):
    csv = tokens(SAMPLES / "tokens_trigram.csv")
    chat = tokens(SAMPLES / "tokens_trigram_chat.jsonl")
    for name in METRICS:
        assert chat.metrics[name] == pytest.approx(csv.metrics[name], rel=1e-9)
    assert (csv.tokens, csv.documents) == (435, 12)
    result = run("tokens", "--compare", SAMPLES / "tokens_bigram.csv", SAMPLES / "tokens_trigram.csv")
    assert result.exit_code == 0 and "bits_per_byte" in result.stdout


def test_json_lines_ids_written_as_numbers_and_boolean_masks(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"doc_id": 1, "logprob": -1.5, "mask": true, "token": "a"}\n'
                    '{"doc_id": 2, "logprob": null, "mask": false, "token": " b"}\n'
                    '{"doc_id": 2, "logprob": -0.5, "mask": true, "token": " b"}\n')
    report = tokens(path)
    assert (report.tokens, report.documents, report.masked, report.placeholder) == (2, 2, 1, 0)
    assert (report.bytes, report.words) == (3, 3)  # " b": 2 bytes, re.split gives ['', 'b']


def test_a_document_of_placeholders_only_is_counted_and_left_out(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("doc_id,token,logprob\na,x,-1\nb,y,-9999\nb,z,\n")
    report = tokens(path)
    assert (report.documents, report.empty_documents, report.placeholder) == (2, 1, 2)
    assert report.metrics["doc_nll"] == pytest.approx(1.0) and report.metrics["bits_per_byte"] == pytest.approx(
        1 / math.log(2))


def test_table_and_per_doc_stdout_show_data_as_text(tmp_path, run):
    path = tmp_path / "t.csv"
    path.write_text('doc_id,token,logprob,task\n"\x1b[31mred\nid",[bold]x[/bold],-1.5,<b>t</b>\nb,y,-2,$x$\n')
    result = run("tokens", path, "--worst", "2", "--by", "task")
    assert result.exit_code == 0, result.stderr
    assert "\\x1b[31mred\\nid" in result.stdout and "\x1b" not in result.stdout
    assert "<b>t</b>" in result.stdout and "$x$" in result.stdout
    per_doc = run("tokens", path, "--per-doc", "-")
    assert per_doc.exit_code == 0
    assert pd.read_csv(io.StringIO(per_doc.stdout))["tokens"].tolist() == [1, 1]
    assert "perplexity" in per_doc.stderr  # the report moves to stderr


def test_compare_across_tokenizers_judges_bits_per_byte(tmp_path):
    base = tmp_path / "base.csv"
    new = tmp_path / "new.csv"
    base.write_text("doc_id,token,logprob\na,ab,-2\na,cd,-2\nb,ef,-3\n")
    new.write_text("doc_id,token,logprob\na,abcd,-3\nb,e,-1\nb,f,-1\n")  # other tokens, same texts
    report = compare_tokens(base, new, resamples=200, fail_if_worse=0.0)
    nll, bpb = report.comparison
    assert math.isnan(nll["ci"][0]) and any("different token counts" in w for w in report.warnings)
    assert bpb["delta"] == pytest.approx((5 - 7) / (6 * math.log(2)), rel=1e-12)
    assert report.regression is None  # bits per byte improved
    data = report.to_dict()
    assert data["comparison"][0]["ci"] == [None, None] and data["base"]["tokens"] == 3


def test_a_real_process_piped_into_head_exits_0():
    root = Path(__file__).resolve().parent.parent
    command = (f"{sys.executable} -m nllcli tokens {SAMPLES / 'tokens_trigram.csv'} --worst 12 | head -1; "
               "exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("nll tokens:") and done.stderr == ""


def test_help_ends_with_examples_that_run_in_sample_data(run, tmp_path):
    import shlex
    import shutil

    from nllcli.cli import TOKENS_EXAMPLES

    text = run("tokens", "--help").stdout
    assert text.rstrip().splitlines()[-1].strip() == TOKENS_EXAMPLES[-1]
    assert all(line == line.rstrip() for line in text.splitlines())
    folder = tmp_path / "sample_data"
    shutil.copytree(SAMPLES, folder)
    root = Path(__file__).resolve().parent.parent
    for example in TOKENS_EXAMPLES:
        args = shlex.split(example)
        done = subprocess.run([sys.executable, "-m", "nllcli", *args[1:]], capture_output=True, text=True,
                              cwd=folder, env={**os.environ, "PYTHONPATH": str(root)})
        assert done.returncode == 0, (example, done.stderr)
        assert "error" not in done.stderr


def test_csv_read_in_many_small_blocks_gives_the_same_numbers(tmp_path, monkeypatch):
    """Documents straddle CSV batches: the sums, words and bytes merge exactly."""
    from nllcli import readers as table_readers

    frame = random_tokens(9)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    whole = tokens(path)
    monkeypatch.setattr(table_readers, "CSV_BLOCK_BYTES", 512)
    small = tokens(path)
    assert_close(small, reference(frame), rel=1e-10)
    assert (small.tokens, small.words, small.bytes) == (whole.tokens, whole.words, whole.bytes)


def test_json_lines_gzip_several_choices_and_a_bounded_line(tmp_path, monkeypatch):
    import gzip

    line = {"id": "cmpl-1", "choices": [
        {"index": 0, "logprobs": {"tokens": ["a", " b"], "token_logprobs": [-1.0, -2.0]}},
        {"index": 1, "logprobs": {"tokens": ["c"], "token_logprobs": [-4.0]}}]}
    path = tmp_path / "legacy.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write(json.dumps(line) + "\n")
    report = tokens(path, worst=2)
    assert report.layout == "completions" and report.documents == 2
    assert [w["doc"] for w in report.worst] == ["cmpl-1/1", "cmpl-1/0"]
    assert report.metrics["nll"] == pytest.approx(7 / 3)  # the first token is scored: it is not null
    monkeypatch.setattr(readers, "LINE_LIMIT", 64)
    with pytest.raises(InputError, match="line 1 is longer than"):
        tokens(path)


def test_nll_compare_on_token_files_is_tokens_compare(tmp_path, run):
    frame = random_tokens(10, masks=False, placeholders=False)
    files = layouts(tmp_path, frame)
    result = run("compare", files["chat"], files["batch"], "--format", "json", "--fail-if-worse", "0")
    assert result.exit_code == 0, result.stderr
    data = loads_strict(result.stdout)
    assert data["command"] == "tokens compare" and data["comparison"][0]["delta"] == 0.0
    assert run("compare", files["chat"], files["batch"], "--label", "y").exit_code == 2


@pytest.mark.parametrize("name", ["chat", "completions", "vllm", "long"])
def test_json_lines_on_standard_input_is_detected_as_for_files(tmp_path, run, name):
    """`nll tokens -` peeks at the first bytes of stdin: JSON Lines of any layout, not a CSV table."""
    frame = random_tokens(12, masks=False, placeholders=False)
    files = layouts(tmp_path, frame)
    files["long"] = tmp_path / "long.jsonl"
    frame.to_json(files["long"], orient="records", lines=True)
    expected = loads_strict(run("tokens", files[name], "--format", "json").stdout)
    piped = run("tokens", "-", "--format", "json", input=files[name].read_bytes())
    assert piped.exit_code == 0, piped.stderr
    data = loads_strict(piped.stdout)
    assert data["format_in"] == expected["format_in"] == ("table" if name == "long" else name)
    assert data["metrics"] == pytest.approx(expected["metrics"], rel=1e-12)
    assert data["tokens"] == expected["tokens"] and data["documents"] == expected["documents"]


def test_a_real_pipe_of_gzipped_chat_lines_and_of_parquet(tmp_path):
    import gzip

    frame = random_tokens(13, masks=False, placeholders=False)
    chat = layouts(tmp_path, frame)["chat"]
    frame.to_parquet(tmp_path / "t.parquet")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    results = []
    for payload in (gzip.compress(chat.read_bytes()), (tmp_path / "t.parquet").read_bytes(), chat.read_bytes()):
        done = subprocess.run([sys.executable, "-m", "nllcli", "tokens", "-", "--format", "json"], input=payload,
                              capture_output=True, env=env)
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert [r["format_in"] for r in results] == ["chat", "table", "chat"]
    for r in results[1:]:
        assert r["metrics"]["nll"] == pytest.approx(results[0]["metrics"]["nll"], rel=1e-12)
