"""State files: --save-state writes a run's State as versioned JSON; `nll merge` of the shards'
states gives the report of one run over all shards (every number to 1e-12), and refuses states
that do not belong together."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import nllcli
from helpers import assert_input_error, loads_strict
from nllcli import statefile
from nllcli.errors import InputError, UsageError
from nllcli.summary import LOSS_EDGES, State, Summary, Worst
from test_partitions import assert_same, predictions

OPTIONS = {
    "labels": {},
    "weighted-groups-worst": {"weight": "w", "by": ["camera"], "worst": 7},
    "two-groups-bins-smoothing": {"by": ["camera", "site"], "worst": 3, "bins": 7, "label_smoothing": 0.1,
                                  "base": "2", "top_k": 2},
    "soft-targets": {"target_prefix": "t_", "by": ["site"], "worst": 5, "weight": "w"},
}


def write_shards(tmp_path, table: pa.Table, count: int, rng) -> list[str]:
    """The table cut at random into ``count`` CSV shards written by pandas (with its index column)."""
    frame = table.to_pandas()
    cuts = [0, *sorted(rng.choice(np.arange(1, len(frame)), count - 1, replace=False).tolist()), len(frame)]
    paths = []
    for i, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        path = tmp_path / f"shard-{i:02d}.csv"
        frame.iloc[start:end].to_csv(path)
        paths.append(str(path))
    return paths


def without_inputs(report) -> dict:
    data = report.to_dict()
    data.pop("inputs")
    return data


@pytest.mark.parametrize("count", [1, 2, 7])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_merged_shards_equal_one_run_over_all_of_them(tmp_path, count, name):
    rng = np.random.default_rng(count * 31 + len(name))
    options = OPTIONS[name]
    table = predictions(rng, 600, soft_columns="target_prefix" in options)
    shards = write_shards(tmp_path, table, count, rng)
    states = []
    for i, shard in enumerate(shards):
        states.append(str(tmp_path / f"s{i:02d}.nllstate"))
        nllcli.score(shard, save_state=states[-1], **options)
    gates = {"max": ["nll=0.01"], "min": ["accuracy=0.1"]}
    whole = nllcli.score(shards, **options, **gates)
    merged = nllcli.merge(states, **gates)
    assert_same(merged.to_dict(), whole.to_dict())
    assert merged.inputs == {"preds": shards}
    assert [g.metric for g in merged.failed_gates] == ["nll"]

    order = rng.permutation(count)  # shuffled: the same as one run over the shards in that order
    shuffled = nllcli.merge([states[i] for i in order])
    assert_same(without_inputs(shuffled), without_inputs(nllcli.score([shards[i] for i in order], **options)))
    for metric, value in whole.metrics.items():
        assert shuffled.metrics[metric] == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_tree_merge_equals_a_flat_merge(tmp_path):
    rng = np.random.default_rng(5)
    shards = write_shards(tmp_path, predictions(rng, 500), 6, rng)
    states = [str(tmp_path / f"s{i}.nllstate") for i in range(6)]
    for shard, state in zip(shards, states):
        nllcli.score(shard, save_state=state, by=["camera"], worst=4)
    left, right = tmp_path / "left.nllstate", tmp_path / "right.nllstate"
    nllcli.merge(states[:3], save_state=left)
    nllcli.merge(states[3:], save_state=right)
    assert_same(nllcli.merge([left, right]).to_dict(), nllcli.score(shards, by=["camera"], worst=4).to_dict())


def test_kl_states_merge(tmp_path):
    rng = np.random.default_rng(8)
    p, q = rng.dirichlet(np.ones(3), 300), rng.dirichlet(np.ones(3), 300)
    files = []
    for name, values in (("p", p), ("q", q)):
        for i, rows in enumerate((slice(0, 120), slice(120, 300))):
            path = tmp_path / f"{name}{i}.parquet"
            pd.DataFrame(values[rows], columns=list("abc")).to_parquet(path)
            files.append(str(path))
    for i in range(2):
        nllcli.kl(files[i], files[2 + i], symmetric=True, save_state=tmp_path / f"k{i}.nllstate")
    merged = nllcli.merge(tmp_path / "k*.nllstate")
    assert_same(merged.to_dict(), nllcli.kl(files[:2], files[2:], symmetric=True).to_dict())


def test_float64_round_trips_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    names, k, bins = ("nll", "brier"), 3, 5
    special = np.array([0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, np.inf, np.nan,
                        0.1, 1 / 3, np.nextafter(1.0, 2.0)])

    def floats(*shape):
        values = rng.standard_normal(shape) * 10.0 ** rng.integers(-300, 300, shape)
        flat = values.reshape(-1)
        flat[: min(len(flat), len(special))] = special[: len(flat)]
        return values

    summary = Summary(names, k, 7, float(floats(1)[0]), floats(2), 0.1 + 0.2, np.array([1, 2, 4]), floats(k),
                      floats(k, 2), floats(k), 3, 1, float("inf"), 2, 1e-310, floats(bins), floats(bins),
                      floats(bins), floats(len(LOSS_EDGES)))
    saved = statefile.SavedState(_job(bins=bins), State(summary, {("x",): summary}, Worst(2, [
        {"index": 0, "loss": float("inf"), "p_true": 0.0, "label": "a"}, {"index": 5, "loss": 1 / 7}])))
    saved.job.layout.groups = ["g"]
    saved.job.worst = 2
    path = tmp_path / "bits.nllstate"
    statefile.save_state(saved, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = statefile.load_state(path)
    for got in (loaded.state.overall, loaded.state.groups[("x",)]):
        for field in ("sums", "class_weight", "class_sums", "class_correct", "bin_weight", "bin_confidence",
                      "bin_correct", "loss_histogram"):
            assert getattr(got, field).tobytes() == getattr(summary, field).tobytes(), field
        assert np.array_equal(got.class_rows, summary.class_rows) and got.class_rows.dtype == np.int64
        assert (got.weight, got.correct, got.zero_loss, got.reverse_zero_loss) == (
            summary.weight, summary.correct, summary.zero_loss, summary.reverse_zero_loss)
    assert loaded.state.worst.entries == saved.state.worst.entries


def _job(bins=15):
    from nllcli.plan import plan_score

    table = pa.table({"label": ["a", "b"], "a": [0.5, 0.2], "b": [0.25, 0.6], "c": [0.25, 0.2]})
    job = plan_score(table, bins=bins)
    job.sources = [statefile.SavedInput("x.csv")]
    job.layout.notes = []
    return job


def test_the_format_is_documented_json(tmp_path):
    path = tmp_path / "run.nllstate"
    nllcli.score("sample_data/robot_tools.csv", save_state=path, by=["camera"], worst=2)
    doc = loads_strict(path.read_text())
    assert doc["format"] == "nllstate" and doc["format_version"] == statefile.FORMAT_VERSION
    assert doc["command"] == "score" and doc["inputs"] == {"preds": ["sample_data/robot_tools.csv"]}
    assert doc["agree"]["bins"] == 15 and doc["agree"]["classes"] == ["wrench", "screwdriver", "hammer"]
    assert doc["fingerprint"] == statefile.fingerprint(doc["agree"])
    assert {len(g[0]) for g in doc["state"]["groups"]} == {1} and len(doc["state"]["worst"]["entries"]) == 2


def test_the_sample_state_is_the_state_of_the_sample(samples):
    merged = nllcli.merge(samples / "robot_tools.nllstate")
    assert merged.inputs == {"preds": ["robot_tools.csv"]}
    assert_same(without_inputs(merged), without_inputs(nllcli.score(str(samples / "robot_tools.csv"))))


@pytest.fixture
def two_states(tmp_path):
    rng = np.random.default_rng(3)
    shards = write_shards(tmp_path, predictions(rng, 200), 2, rng)
    return tmp_path, shards


@pytest.mark.parametrize("option, said", [
    ({"bins": 20}, "different bins (--bins) (20 in"),
    ({"base": "2"}, "different units (--base) ('2' in"),
    ({"eps": 1e-9}, "different --eps (1e-09 in"),
    ({"classes": "a,b,c"}, "different classes ("),
    ({"by": ["camera"]}, "different groups (--by) ([\"camera\"] in"),
    ({"worst": 3}, "different --worst (3 in"),
    ({"label_smoothing": 0.1}, "different --label-smoothing (0.1 in"),
])
def test_states_that_do_not_belong_together_are_refused(run, two_states, option, said):
    folder, shards = two_states
    nllcli.score(shards[0], save_state=folder / "a.nllstate")
    if "classes" in option:  # the same file without class d
        frame = pd.read_csv(shards[1], index_col=0)
        frame = frame[frame.label != "d"].drop(columns="p_d")
        kept = ["p_a", "p_b", "p_c"]
        frame[kept] = frame[kept].div(frame[kept].sum(axis=1), axis=0)
        frame.to_csv(shards[1])
    nllcli.score(shards[1], save_state=folder / "b.nllstate", **option)
    result = run("merge", folder / "a.nllstate", folder / "b.nllstate")
    line = assert_input_error(result, f"cannot merge {folder / 'b.nllstate'} into {folder / 'a.nllstate'}: ", said)
    assert str(folder / "a.nllstate") in line


def test_not_a_state_and_other_versions_are_refused(run, tmp_path):
    nllcli.score("sample_data/robot_tools.csv", save_state=tmp_path / "good.nllstate")
    doc = json.loads((tmp_path / "good.nllstate").read_text())
    cases = {
        "v2.nllstate": ({**doc, "format_version": 2}, "state format version 2, this nll"),
        "edited.nllstate": ({**doc, "agree": {**doc["agree"], "bins": 10}}, "fingerprint does not match"),
        "csv.nllstate": ("id,label\n1,a\n", "not an nll state file (not JSON"),
        "other.nllstate": ({"format": "something"}, "not an nll state file"),
        "short.nllstate": ({**doc, "state": {**doc["state"], "overall": {**doc["state"]["overall"],
                                                                           "sums": [1.0]}}}, "overall.sums has shape"),
    }
    for name, (content, said) in cases.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        assert_input_error(run("merge", tmp_path / "good.nllstate", tmp_path / name), str(tmp_path / name), said)
    assert_input_error(run("merge", tmp_path / "missing.nllstate"), "missing.nllstate: no such file")
    assert_input_error(run("merge", tmp_path / "none-*.nllstate"), "no file matches this pattern")
    assert_input_error(run("merge", tmp_path / "good.nllstate", tmp_path / "good.nllstate"), "given twice")


def test_merge_command_prints_the_score_report_and_applies_gates(run, tmp_path):
    rng = np.random.default_rng(4)
    shards = write_shards(tmp_path, predictions(rng, 300), 3, rng)
    folder = tmp_path / "states"
    folder.mkdir()
    for i, shard in enumerate(shards):
        assert run("score", shard, "--by", "camera", "--save-state", folder / f"{i}.nllstate", "-q").exit_code == 0
    merged = run("merge", folder, "--format", "json", "--max", "nll=0.01")
    whole = run("score", *shards, "--by", "camera", "--format", "json", "--max", "nll=0.01")
    assert merged.exit_code == whole.exit_code == 1
    assert merged.stderr == whole.stderr
    assert_same(loads_strict(merged.stdout), loads_strict(whole.stdout))
    table = run("merge", str(folder / "*.nllstate"))
    assert table.exit_code == 0 and table.stdout == run("score", *shards, "--by", "camera").stdout
    saved = tmp_path / "all.nllstate"
    assert run("merge", folder, "--save-state", saved).exit_code == 0
    assert_same(loads_strict(run("merge", saved, "-f", "json").stdout),
                loads_strict(run("merge", folder, "-f", "json").stdout))


def test_save_state_is_atomic_and_never_an_input(run, tmp_path):
    target = tmp_path / "run.nllstate"
    target.write_text("old")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,p_a,p_b\na,0.5,0.5\nb,0.5,x\n")
    assert run("score", bad, "--save-state", target).exit_code == 2
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "run.nllstate"]
    assert_input_error(run("score", bad, "--save-state", bad), "--save-state", "that is an input file")
    assert bad.read_text().startswith("label")
    assert_input_error(run("score", "sample_data/robot_tools.csv", "--save-state", tmp_path / "no" / "x.nllstate"),
                       "does not exist")
    nllcli.score("sample_data/robot_tools.csv", save_state=target)
    assert_input_error(run("merge", target, "--save-state", target), "that is an input file")


def test_merge_is_streamed_over_a_thousand_state_files(tmp_path, monkeypatch):
    one = tmp_path / "one.nllstate"
    nllcli.score("sample_data/robot_tools.csv", save_state=one, by=["camera"], worst=3)
    folder = tmp_path / "many"
    folder.mkdir()
    text = one.read_text()
    for i in range(1000):
        (folder / f"part-{i:04d}.nllstate").write_text(text)
    alive: list[weakref.ref] = []
    most = 0
    real = statefile.load_state

    def counting(path, **kwargs):
        nonlocal most
        most = max(most, sum(ref() is not None for ref in alive))
        saved = real(path, **kwargs)
        alive.append(weakref.ref(saved))
        return saved

    monkeypatch.setattr(statefile, "load_state", counting)
    merged = nllcli.merge(folder)
    single = nllcli.merge(one)
    assert merged.rows == 1000 * single.rows
    for metric, value in single.metrics.items():
        if metric == "ece_l2_debiased":  # its bias correction shrinks with the number of rows
            assert merged.metrics[metric] >= value
            continue
        assert merged.metrics[metric] == pytest.approx(value, rel=1e-12), metric
    assert most <= 1  # the state before the one being read, at most: never all of them
    assert merged.worst[0]["row"] == single.worst[0]["row"]  # ties keep the earliest row


def test_state_files_on_s3(s3_bucket, tmp_path):
    rng = np.random.default_rng(6)
    shards = write_shards(tmp_path, predictions(rng, 200), 2, rng)
    for i, shard in enumerate(shards):
        nllcli.score(shard, save_state=s3_bucket.url(f"states/{i}.nllstate"), storage_options=s3_bucket.options)
    assert json.loads(s3_bucket.get("states/0.nllstate"))["format"] == "nllstate"
    merged = nllcli.merge(s3_bucket.url("states/*.nllstate"), storage_options=s3_bucket.options)
    assert_same(merged.to_dict(), nllcli.score(shards).to_dict())


def test_python_api_loads_and_adds_states(tmp_path):
    a, b = tmp_path / "a.nllstate", tmp_path / "b.nllstate"
    nllcli.score("sample_data/robot_tools.csv", save_state=a)
    nllcli.score("sample_data/robot_tools.parquet", save_state=b)
    total = nllcli.load_state(a) + nllcli.load_state(b)
    assert total.state.rows == 2000
    nllcli.save_state(total, tmp_path / "ab.nllstate")
    assert nllcli.merge(tmp_path / "ab.nllstate").rows == 2000
    with pytest.raises(InputError):
        nllcli.load_state(tmp_path / "nothing.nllstate")
    with pytest.raises(UsageError):
        nllcli.merge([])
