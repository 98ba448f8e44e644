"""State + State is exact: rows split into partitions at random, scored apart and merged in any
order, give every metric, group, worst row and calibration bin of the whole run (1e-12)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from nllcli.engine import Partition, Scorer, run, score_partition
from nllcli.plan import plan_kl, plan_score
from nllcli.readers import Chunk
from nllcli.report import build_report
from nllcli.summary import State

CLASSES = ["a", "b", "c", "d"]


def predictions(rng, n: int, soft_columns: bool = False) -> pa.Table:
    logits = rng.normal(0, 2, (n, len(CLASSES)))
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    q[rng.random(n) < 0.02, 0] = 0.0  # a few clipped probabilities
    q /= q.sum(axis=1, keepdims=True)
    data = {"id": [f"r{i}" for i in range(n)], "label": rng.choice(CLASSES, n),
            "camera": rng.choice(["left", "right", "top"], n), "site": rng.choice(["x", "y"], n),
            "w": rng.choice([0.0, 0.5, 1.0, 2.0], n)}
    data.update({f"p_{c}": q[:, j] for j, c in enumerate(CLASSES)})
    if soft_columns:
        t = rng.dirichlet(np.ones(len(CLASSES)), n)
        data.update({f"t_{c}": t[:, j] for j, c in enumerate(CLASSES)})
    return pa.table(data)


def whole_batch(job) -> pa.RecordBatch:
    source = job.sources[0]
    batches = [c.batch for c in source.batches(job.layout.columns, job.layout.types(source.schema))]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def random_cuts(rng, n: int) -> list[int]:
    count = int(rng.integers(1, 12))
    return [0, *sorted(set(rng.integers(1, n, count).tolist())), n]


def merged_state(job, batch: pa.RecordBatch, rng, targets: np.ndarray | None = None) -> State:
    """Score the rows in random slices, in a random order, each a State of its own; add them up."""
    cuts = random_cuts(rng, batch.num_rows)
    states = []
    for start, end in zip(cuts[:-1], cuts[1:]):
        chunk = Chunk(batch.slice(start, end - start), job.sources[0].name, start + 1)
        states.append(score_partition(job, Partition(chunk, start, None if targets is None else targets[start:end])))
    total = State()
    for i in rng.permutation(len(states)):
        total = total + states[i]
    return total


def assert_same(a, b, path="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("options", [
    {},
    {"weight": "w", "by": ["camera"], "worst": 7},
    {"by": ["camera", "site"], "worst": 3, "bins": 7, "label_smoothing": 0.1},
    {"target_prefix": "t_", "by": ["site"], "worst": 5, "weight": "w"},
], ids=["labels", "weighted-groups-worst", "smoothing-two-groups", "soft-targets"])
def test_partitions_merge_into_the_whole_run(seed, options):
    rng = np.random.default_rng(seed)
    table = predictions(rng, int(rng.integers(2, 400)), soft_columns="target_prefix" in options)
    job = plan_score(table, **options)
    whole = build_report(job, run(job)).to_dict()
    merged = build_report(job, merged_state(job, whole_batch(job), rng)).to_dict()
    assert_same(merged, whole)
    assert merged["rows"] == table.num_rows


@pytest.mark.parametrize("seed", range(6))
def test_kl_partitions_with_their_targets(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 300))
    p = rng.dirichlet(np.ones(3), n)
    q = rng.dirichlet(np.ones(3), n)
    job = plan_kl(pa.table({c: p[:, j] for j, c in enumerate("abc")}),
                  pa.table({c: q[:, j] for j, c in enumerate("abc")}), symmetric=True)
    whole = build_report(job, run(job)).to_dict()
    merged = build_report(job, merged_state(job, whole_batch(job), rng, targets=p)).to_dict()
    assert_same(merged, whole)


def test_state_addition_is_associative_and_has_an_identity():
    rng = np.random.default_rng(7)
    table = predictions(rng, 90)
    job = plan_score(table, by=["camera"], worst=4)
    batch = whole_batch(job)
    parts = [score_partition(job, Partition(Chunk(batch.slice(s, 30), "t", s + 1), s)) for s in (0, 30, 60)]
    left = build_report(job, (parts[0] + parts[1]) + parts[2]).to_dict()
    right = build_report(job, parts[0] + (parts[1] + parts[2])).to_dict()
    assert_same(left, right)
    assert_same(build_report(job, State() + parts[0] + State()).to_dict(), build_report(job, parts[0]).to_dict())


def test_worst_rows_carry_their_position_in_the_input():
    rng = np.random.default_rng(3)
    table = predictions(rng, 50)
    job = plan_score(table, worst=50)
    batch = whole_batch(job)
    late = score_partition(job, Partition(Chunk(batch.slice(40, 10), "t", 41), 40))
    assert sorted(e["index"] for e in late.worst.entries) == list(range(40, 50))
    scored = Scorer(job).score(Partition(Chunk(batch.slice(40, 10), "t", 41), 40))
    assert scored.first_index == 40


def test_a_state_travels_between_processes():
    """A State is plain data: pickled (as an engine shipping partitions elsewhere would), it merges the same."""
    import pickle

    rng = np.random.default_rng(5)
    job = plan_score(predictions(rng, 120), by=["camera"], worst=3, weight="w")
    batch = whole_batch(job)
    parts = [score_partition(job, Partition(Chunk(batch.slice(s, 40), "t", s + 1), s)) for s in (0, 40, 80)]
    shipped = [pickle.loads(pickle.dumps(p)) for p in parts]
    assert_same(build_report(job, shipped[0] + shipped[1] + shipped[2]).to_dict(),
                build_report(job, run(job)).to_dict())
