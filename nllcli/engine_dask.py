"""The Dask engine: a job's rows cut into partitions, each scored on a worker into a State by the
local engine's own Scorer, the States added in a tree (FAN_IN at a time).

Partitions are files, runs of Parquet row groups and byte ranges of plain CSV files, each about
``partition_bytes``. A CSV file is cut at line ends after its header; one that is compressed, or
where a quote could hide a line end inside a value, is a single partition. Every partition knows
the position of its rows in its file (for error messages) and in the whole input (worst rows,
per-sample rows): Parquet from its metadata, CSV from a first pass on the workers that counts the
rows of each range. Standard input and in-memory tables are read by the client and sent in batches.

Targets pair with the predictions in the same file (--target-prefix), by position when both
inputs cut into partitions of the same rows, or by key through a hash join: both sides are split
by a stable hash of the key into buckets, each bucket matched on a worker (keys missing or
repeated are collected, then reported as pairing.KeyIndex would), and each prediction partition
then receives its target rows. A worker holds one partition, or one bucket, at a time.

Workers need nllcli installed, at the client's version (checked on connecting): tasks refer to its
functions by name, as any Dask library does, rather than shipping the package's code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import EXIT_INPUT, InputError, NllError, UsageError
from .plan import Job
from .summary import State

PARTITION_BYTES = 64 << 20  # bytes of input a partition holds, about
FAN_IN = 8  # States added by one task of the reduction tree
MAX_BUCKETS = 64  # hash buckets of a join by key: a bucket holds 1/64 of the targets, at most
CONNECT_TIMEOUT = "10s"
SILENT = 100  # the log level of a cluster nll starts: above CRITICAL (its errors reach the user as nll's one line)
INSTALL = "pip install 'nllcli[dask]'"


@dataclass(frozen=True)
class DaskOptions:
    """Where to run: a scheduler's address, a scheduler file, or a LocalCluster of ``workers``."""

    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int | None = None
    partition_bytes: int = PARTITION_BYTES

    @classmethod
    def of(cls, *, scheduler=None, scheduler_file=None, workers=None, partition_size=None) -> "DaskOptions":
        """Checked options (the address from DASK_SCHEDULER_ADDRESS when none is given)."""
        if scheduler and scheduler_file:
            raise UsageError("--scheduler and --scheduler-file name the same thing: give one")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        if workers is not None and (scheduler or scheduler_file):
            raise UsageError("--workers starts a local cluster; with --scheduler the cluster has its own workers")
        if not scheduler and not scheduler_file and workers is None:
            scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        size = PARTITION_BYTES if partition_size is None else parse_size(partition_size)
        return cls(scheduler, scheduler_file, workers, size)


def parse_size(text: int | str) -> int:
    """Bytes from 67108864, '64MB', '64MiB', '1G' (powers of 1024, as Dask's blocksize)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
        if not match:
            raise UsageError(f"--partition-size {text}: give bytes, as 64MB or 1GB")
        value = int(float(match.group(1)) * 1024 ** "_kmgt".index(match.group(2).lower() or "_"))
    if value < 1:
        raise UsageError(f"--partition-size {text}: must be at least 1 byte")
    return value


# -- the cluster -----------------------------------------------------------------------------


@contextlib.contextmanager
def dask_client(options: DaskOptions) -> Iterator[Any]:
    """A distributed Client: connected to the scheduler named, or to a LocalCluster of worker
    processes started here, in a scratch folder of its own, and closed (and removed) on the way out."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # read when distributed is first imported
    try:
        import distributed
    except ImportError as exc:
        raise UsageError(f"--engine dask needs Dask: {INSTALL}") from exc
    if options.scheduler or options.scheduler_file:
        where = options.scheduler or f"the scheduler of {options.scheduler_file}"
        if options.scheduler_file and not os.path.isfile(options.scheduler_file):
            raise UsageError(f"--scheduler-file {options.scheduler_file}: no such file")
        try:
            client = distributed.Client(options.scheduler, scheduler_file=options.scheduler_file,
                                        timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {where}: {_first_line(exc)}") from exc
        try:
            _check_workers(client, where)
            yield client
        finally:
            client.close()
        return
    scratch = tempfile.mkdtemp(prefix="nll-dask-")
    cluster: Any = None
    local_client: Any = None
    try:
        with _workers_ignore_ctrl_c():
            cluster = distributed.LocalCluster(n_workers=options.workers or os.cpu_count() or 1,
                                               threads_per_worker=1, processes=True, host="127.0.0.1",
                                               dashboard_address="127.0.0.1:0", local_directory=scratch,
                                               silence_logs=SILENT)
        local_client = distributed.Client(cluster, timeout=CONNECT_TIMEOUT, set_as_default=False)
        _check_workers(local_client, "the local cluster")
        yield local_client
    finally:
        if local_client is not None:
            local_client.close()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT blocked (a mask they inherit): Ctrl-C on a terminal
    reaches the whole process group, and each worker would print a traceback. Here the signal
    waits until the cluster is up, then nll stops on it and closes the cluster, which ends them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _check_workers(client, where: str) -> None:
    """At least one worker, each importing this version of nllcli."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise UsageError(f"no Dask worker joined {where} within {CONNECT_TIMEOUT}") from exc
    try:
        versions = client.run(worker_version)
    except Exception as exc:  # the worker could not even unpickle the function: nllcli is not installed there
        raise UsageError(f"the Dask workers of {where} cannot import nllcli ({_first_line(exc)}): "
                         f"install it on every worker ({INSTALL})") from exc
    other = sorted({v for v in versions.values() if v != __version__})
    if other:
        raise UsageError(f"the Dask workers of {where} run nllcli {', '.join(other)}, this is {__version__}: "
                         "install the same version everywhere")


def worker_version() -> str:
    return __version__


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- errors that travel ------------------------------------------------------------------------


class WorkerError(NllError):
    """An NllError raised on a worker, sent back as its text and exit code (InputError's own
    arguments do not survive pickling)."""

    def __init__(self, text: str, exit_code: int = EXIT_INPUT):
        super().__init__(text)
        self.exit_code = exit_code


def _on_worker(task: Callable) -> Callable:
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except WorkerError:
            raise
        except NllError as exc:
            raise WorkerError(str(exc), exc.exit_code) from None

    return run


class _RangeUnreadable(Exception):
    """A CSV byte range failed to read on its own: it is read again within its whole file."""


# -- partitions ------------------------------------------------------------------------------


@dataclass
class Piece:
    """One partition of an input: a file, row groups [start, stop), bytes [start, stop) of a CSV
    file, or a batch the client read (standard input, a table)."""

    source: Any  # readers.Source (portable), or None for a batch
    kind: str  # "file", "row_groups", "bytes" or "batch"
    start: int = 0
    stop: int = 0
    header_end: int = 0  # bytes of the header line, for "bytes"
    first_row: int = 1  # 1-based row in its file of its first row
    first_index: int = 0  # 0-based position of its first row in the whole input
    rows: int = -1  # -1 until counted
    size: int = 0  # bytes, for progress
    batch: Any = None
    name: str = ""


def read_piece(piece: Piece, columns: list[str], types, whole_file: bool = False) -> Iterator:
    """The Chunks of a partition, numbered by their rows in the file. A byte range that does not
    read on its own raises _RangeUnreadable, unless ``whole_file``: then its file is read from the
    start (the one reader of the local engine, which names the true row of an error) and the
    partition's rows are kept."""
    from .readers import Chunk, csv_range_batches, parquet_row_groups, portable

    if piece.kind == "batch":
        yield Chunk(piece.batch, piece.name, piece.first_row)
        return
    source = portable(piece.source)  # a fresh copy: a Source keeps its open file
    row = piece.first_row
    if piece.kind == "row_groups":
        for batch in parquet_row_groups(source, range(piece.start, piece.stop), columns, types):
            yield Chunk(batch, source.name, row)
            row += batch.num_rows
    elif piece.kind == "bytes" and not whole_file:
        import pyarrow as pa

        batches = csv_range_batches(source, piece.header_end, piece.start, piece.stop, columns, types)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, UnicodeDecodeError, InputError) as exc:
                raise _RangeUnreadable(str(exc)) from exc
            if batch is None:
                break
            yield Chunk(batch, source.name, row)
            row += batch.num_rows
        if row - piece.first_row != piece.rows:
            raise _RangeUnreadable(f"{row - piece.first_row} rows read, {piece.rows} counted")
    else:
        end = piece.first_row + piece.rows if piece.kind == "bytes" else None
        for chunk in source.batches(columns, types):
            n = chunk.batch.num_rows
            if end is not None:
                low, high = max(chunk.first_row, piece.first_row), min(chunk.first_row + n, end)
                if high > low:
                    yield Chunk(chunk.batch.slice(low - chunk.first_row, high - low), source.name, low)
                if chunk.first_row + n >= end:
                    return
            else:
                yield chunk
        if end is not None:
            raise RuntimeError(f"{source.name}: fewer rows than counted in bytes {piece.start}..{piece.stop}")


def _retrying(work: Callable[[bool], Any]) -> Any:
    """work(whole_file=False), or work(whole_file=True) when a byte range did not read on its own."""
    try:
        return work(False)
    except _RangeUnreadable:
        return work(True)


@_on_worker
def count_range(source, start: int, stop: int) -> int | None:
    """Rows in bytes [start, stop) of a plain CSV file; None when they cannot be counted by lines."""
    from .readers import csv_range_rows, read_byte_range

    return csv_range_rows(read_byte_range(source, start, stop))


@_on_worker
def count_file(source) -> int:
    """Rows of a whole file, parsed (a compressed or quoted CSV file)."""
    import pyarrow as pa

    from .readers import portable

    first = source.schema.names[0]
    return sum(c.batch.num_rows for c in portable(source).batches([first], {first: pa.string()}))


def plan_pieces(client, sources: list, partition_bytes: int, split: bool = True) -> list[Piece]:
    """The partitions of one input's files, rows counted (on the workers, for CSV) and numbered.
    ``split`` False: files and runs of Parquet row groups only (to pair rows by position)."""
    from .readers import csv_cuts, csv_header_end, portable

    per_file: list[list[Piece]] = []
    for source in sources:
        shipped = portable(source)
        if source.format == "parquet":
            per_file.append(_row_group_pieces(source, shipped, partition_bytes if split else None))
            continue
        header_end = csv_header_end(source) if split else None
        if header_end is None:
            per_file.append([Piece(shipped, "file", size=source.size or 0)])
            continue
        cuts = csv_cuts(source, header_end, partition_bytes)
        per_file.append([Piece(shipped, "bytes", a, b, header_end, size=b - a) for a, b in zip(cuts[:-1], cuts[1:])])
    counts = [[client.submit(count_range, p.source, p.start, p.stop, pure=False) if p.kind == "bytes" else None
               for p in pieces] for pieces in per_file]
    for pieces, futures in zip(per_file, counts):
        for piece, future in zip(pieces, futures):
            if future is not None:
                piece.rows = -2 if (n := future.result()) is None else n
    for i, pieces in enumerate(per_file):
        if any(p.rows == -2 for p in pieces):  # a quote somewhere: the file is one partition
            per_file[i] = [Piece(pieces[0].source, "file", size=pieces[0].source.size or 0)]
    whole = [(pieces[0], client.submit(count_file, pieces[0].source, pure=False))
             for pieces in per_file if pieces[0].kind == "file" and pieces[0].rows < 0]
    for piece, future in whole:
        piece.rows = future.result()
    index, out = 0, []
    for pieces in per_file:
        row = 1
        for piece in pieces:
            piece.first_row, piece.first_index = row, index
            row += piece.rows
            index += piece.rows
            out.append(piece)
    return out


def _row_group_pieces(source, shipped, partition_bytes: int | None) -> list[Piece]:
    """Runs of consecutive row groups of about partition_bytes (None, or a wide file: the whole file)."""
    from .readers import WIDE_COLUMNS

    groups = source.group_rows or []
    if partition_bytes is None or len(source.schema) > WIDE_COLUMNS or not groups:
        return [Piece(shipped, "file", rows=source.num_rows or sum(groups), size=source.size or 0)]
    metadata = source._parquet_file().metadata
    sizes = [metadata.row_group(i).total_byte_size for i in range(len(groups))]
    pieces, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        held += size
        if held >= partition_bytes or i == len(sizes) - 1:
            pieces.append(Piece(shipped, "row_groups", start, i + 1, rows=sum(groups[start:i + 1]), size=held))
            start, held = i + 1, 0
    return pieces


# -- scoring on the workers ------------------------------------------------------------------


@_on_worker
def score_piece(job: Job, piece: Piece, targets: Any = None, part: str | None = None, batch=None) -> State:
    """The State of one partition, scored by the local engine's Scorer; its per-sample rows written
    to the Parquet file ``part``. ``targets``: None, ("position", target piece, target layout),
    ("chunk", target batch, target layout, its first row) or ("key", [(positions, target rows) or
    None, ...]). ``batch``: the rows of a "batch" partition, sent apart."""
    if batch is not None:
        piece = dataclasses.replace(piece, batch=batch)
    return _retrying(lambda whole_file: _score_piece(job, piece, targets, part, whole_file))


def _score_piece(job: Job, piece: Piece, targets, part: str | None, whole_file: bool) -> State:
    from .engine import Partition, Scorer
    from .pairing import align_by_position
    from .readers import Chunk
    from .sinks import PerSampleWriter, per_sample_columns

    scorer = Scorer(job)
    layout = job.layout
    chunks = read_piece(piece, layout.columns, layout.types(job.sources[0].schema), whole_file)
    if targets is None:
        pairs: Iterator = ((c, None) for c in chunks)
    elif targets[0] == "key":
        matrix = np.full((piece.rows, len(layout.class_names)), np.nan)
        for matched in targets[1]:
            if matched is not None:
                matrix[matched[0]] = matched[1]
        pairs = ((c, matrix[c.first_row - piece.first_row:][:c.batch.num_rows]) for c in chunks)
    else:
        t_layout = targets[2]
        t_chunks = (iter([Chunk(targets[1], job.target_sources[0].name, targets[3])])
                    if targets[0] == "chunk" else
                    read_piece(targets[1], t_layout.columns, t_layout.types(job.target_sources[0].schema), whole_file))
        pairs = ((c, scorer.targets_of(t, t_layout))
                 for c, t in align_by_position(chunks, t_chunks, job.sources[0].name, job.target_sources[0].name))
    writer = PerSampleWriter.open(part) if part is not None else None
    state = State()
    try:
        for chunk, target_rows in pairs:
            scored = scorer.score(Partition(chunk, piece.first_index + chunk.first_row - piece.first_row, target_rows))
            state += scorer.state_of(scored)
            if writer is not None:
                writer.write(per_sample_columns(job, scored))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.commit()
    return state


def add_states(*states: State) -> State:
    total = State()
    for state in states:
        total = total + state
    return total


def _tree_sum(client, futures: list) -> Any:
    """The sum of States held by ``futures``, FAN_IN at a time, as a future (None: no partition)."""
    while len(futures) > 1:
        futures = [client.submit(add_states, *futures[i:i + FAN_IN], pure=False)
                   for i in range(0, len(futures), FAN_IN)]
    return futures[0] if futures else None


# -- pairing by key --------------------------------------------------------------------------


def bucket_of(keys, buckets: int) -> np.ndarray:
    """A stable bucket for each key: the same in every process and run (pandas' SipHash of the text)."""
    import pandas as pd
    import pyarrow as pa

    text = keys.cast(pa.string()).to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(text, categorize=False) % np.uint64(buckets)).astype(np.int64)


@_on_worker
def split_keys(job: Job, piece: Piece, buckets: int, t_layout=None, batch=None) -> list:
    """The keys of a partition split by bucket: per bucket (keys, positions in the partition,
    positions in the input) and, on the targets side (``t_layout`` given), the validated target rows."""
    if batch is not None:
        piece = dataclasses.replace(piece, batch=batch)
    return _retrying(lambda whole_file: _split_keys(job, piece, buckets, t_layout, whole_file))


def _split_keys(job: Job, piece: Piece, buckets: int, t_layout, whole_file: bool) -> list:
    import pyarrow as pa

    from .engine import Scorer

    types: dict
    if t_layout is None:
        key = job.pair_key or ""
        all_types = job.layout.types(job.sources[0].schema)
        columns, types = [key], {key: all_types[key]} if key in all_types else {}
    else:
        key = t_layout.key or ""
        columns, types = t_layout.columns, t_layout.types(job.target_sources[0].schema)
    scorer = Scorer(job)
    keys, rows = [], []
    for chunk in read_piece(piece, columns, types, whole_file):
        keys.append(chunk.batch.column(key))
        if t_layout is not None:
            rows.append(scorer.targets_of(chunk, t_layout))
    all_keys = pa.concat_arrays([k.combine_chunks() if isinstance(k, pa.ChunkedArray) else k for k in keys]) \
        if keys else pa.array([], pa.string())
    matrix = np.concatenate(rows) if rows else np.zeros((0, len(job.layout.class_names)))
    bucket = bucket_of(all_keys, buckets)
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    out = []
    for b in range(buckets):
        local = order[bounds[b]:bounds[b + 1]]
        taken = pa.array(local, pa.int64())
        out.append((all_keys.take(taken), local, piece.first_index + local,
                    matrix[local] if t_layout is not None else None))
    return out


@_on_worker
def join_bucket(pred_parts: list, target_parts: list) -> tuple:
    """Match the keys of one bucket: (KeyProblems, {partition number: (positions, target rows)})."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .columns import integers
    from .pairing import KeyProblems

    def concat(arrays, empty):
        return pa.concat_arrays(arrays) if arrays else empty

    t_keys = concat([t[0] for t in target_parts], pa.array([], pa.string()))
    t_index = np.concatenate([t[2] for t in target_parts]) if target_parts else np.zeros(0, np.int64)
    t_rows = np.concatenate([t[3] for t in target_parts]) if target_parts else None
    counts = pc.value_counts(t_keys)
    duplicated = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values")
    if len(duplicated):
        first = integers(pc.index_in(duplicated, value_set=t_keys), fill=0)
        return KeyProblems(duplicated_targets=sorted(zip(t_index[first].tolist(), duplicated.to_pylist()))[:5]), {}
    p_keys = concat([p[1] for p in pred_parts], pa.array([], t_keys.type))
    p_part = np.concatenate([np.full(len(p[1]), p[0]) for p in pred_parts]) if pred_parts else np.zeros(0, np.int64)
    p_local = np.concatenate([p[2] for p in pred_parts]) if pred_parts else np.zeros(0, np.int64)
    p_index = np.concatenate([p[3] for p in pred_parts]) if pred_parts else np.zeros(0, np.int64)
    rows = integers(pc.index_in(p_keys, value_set=t_keys), fill=-1)
    absent = np.flatnonzero(rows < 0)
    problems = KeyProblems()
    if absent.size:
        first = absent[np.argsort(p_index[absent], kind="stable")[:5]]
        problems.missing = int(absent.size)
        problems.missing_examples = list(zip(p_index[first].tolist(), p_keys.take(pa.array(first)).to_pylist()))
        return problems, {}
    used = np.bincount(rows, minlength=len(t_keys))

    def examples(found):
        found = found[np.argsort(t_index[found], kind="stable")[:5]]
        return list(zip(t_index[found].tolist(), t_keys.take(pa.array(found)).to_pylist()))

    repeated, unused = np.flatnonzero(used > 1), np.flatnonzero(used == 0)
    problems.repeated = examples(repeated)
    problems.unused, problems.unused_examples = int(unused.size), examples(unused)
    if repeated.size or unused.size:
        return problems, {}
    assert t_rows is not None or not rows.size
    matched = {}
    for part in np.unique(p_part).tolist():
        mine = np.flatnonzero(p_part == part)
        matched[part] = (p_local[mine], t_rows[rows[mine]] if t_rows is not None else None)
    return problems, matched


def _matched_of(bucket_result: tuple, part: int) -> tuple | None:
    return bucket_result[1].get(part)


def _key_targets(client, job: Job, job_future, pieces: list[Piece], t_pieces: list[Piece], t_layout) -> list:
    """For each prediction partition, the futures of its (positions, target rows) from every bucket;
    keys missing or repeated raise, as the local engine's KeyIndex would."""
    from .pairing import KeyProblems

    buckets = min(MAX_BUCKETS, max(1, len(pieces), len(t_pieces)))
    p_split = [client.submit(split_keys, job_future, _without_batch(p), buckets, None, p.batch, pure=False)
               for p in pieces]
    t_split = [client.submit(split_keys, job_future, _without_batch(t), buckets, t_layout, t.batch, pure=False)
               for t in t_pieces]

    _first_error([*t_split, *p_split])
    joined = []
    for b in range(buckets):
        preds = [client.submit(_bucket_side, f, b, part, pure=False) for part, f in enumerate(p_split)]
        targets = [client.submit(_bucket_side, f, b, pure=False) for f in t_split]
        joined.append(client.submit(join_bucket, preds, targets, pure=False))
    problems = functools.reduce(lambda a, b: a + b, client.gather([client.submit(_problems_of, j, pure=False)
                                                                   for j in joined]), KeyProblems())
    problems.check(job.sources[0].name, job.target_sources[0].name, t_layout.key or job.pair_key or "")
    return [[client.submit(_matched_of, j, part, pure=False) for j in joined] for part in range(len(pieces))]


def _bucket_side(split: list, bucket: int, part: int | None = None) -> tuple:
    """One bucket of split_keys' result: (keys, positions, input positions, target rows) of the
    targets, or (partition number, keys, positions, input positions) of the predictions."""
    keys, local, index, rows = split[bucket]
    return (keys, local, index, rows) if part is None else (part, keys, local, index)


def _problems_of(bucket_result: tuple):
    return bucket_result[0]


def _first_error(futures: list) -> None:
    """Wait for ``futures``; raise the error of the first one that failed, in input order (the
    error the local engine, reading in that order, would meet first)."""
    for future in futures:
        if future.exception() is not None:
            future.result()


# -- the run ---------------------------------------------------------------------------------


def run_dask(job: Job, options: DaskOptions, per_sample: str | Path | None = None, progress=None,
             client=None) -> State:
    """The State of a job, scored on a Dask cluster: the same numbers as engine.run(job).

    ``per_sample``: a directory, written as part-00000.parquet, ... (one per partition with rows)
    into a temporary sibling directory renamed when every part is written. ``client``: an existing
    distributed Client (else one is made from ``options``).
    """
    from .engine import check_state

    target = _per_sample_directory(per_sample)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(dask_client(options))
        scratch = None
        if target is not None:
            scratch = target.parent / f".{target.name}.nll-{uuid.uuid4().hex[:8]}"
            scratch.mkdir()
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        state = _run(client, job, options, scratch, progress)
        check_state(job, state)
        if scratch is not None and target is not None:
            try:
                os.rename(scratch, target)  # replaces an empty directory, atomically
            except OSError as exc:
                raise UsageError(f"--per-sample {target}: cannot put the parts in place: {exc.strerror}") from exc
    return state


def _per_sample_directory(per_sample) -> Path | None:
    if per_sample is None:
        return None
    text = str(per_sample)
    if text == "-" or text.lower().endswith(".csv"):
        raise UsageError(f"--per-sample {text}: with --engine dask, name a directory: it receives one Parquet "
                         "file per partition")
    target = Path(text)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--per-sample {text}: exists and is not an empty directory; name a new one "
                         "(nll never replaces files it did not write)")
    if not target.resolve().parent.is_dir():
        raise UsageError(f"--per-sample {text}: folder {target.resolve().parent} does not exist")
    return target


def _run(client, job: Job, options: DaskOptions, scratch: Path | None, progress) -> State:
    from .columns import target_layout

    layout = job.layout
    name = job.sources[0].name
    job_future = client.scatter(_portable_job(job), broadcast=True, hash=False)
    t_layout = None
    if job.target_sources:
        ts = job.target_sources[0]
        t_layout = target_layout(ts.schema, ts.name, layout.class_names, name, probs=job.target_probs,
                                 key=job.pair_key, explicit=job.explicit_classes)
    by_position = bool(job.target_sources) and not job.pair_key
    targets: list = []
    if by_position and any(s.path is None for s in [*job.sources, *job.target_sources]):
        pieces, targets = _streamed_pairs(client, job, t_layout)
    else:
        pieces = _pieces(client, job.sources, layout, options, split=not by_position)
        if job.target_sources and by_position:
            t_pieces = _pieces(client, job.target_sources, t_layout, options, split=False)
            targets = [("position", t, t_layout) for t in _aligned(job, pieces, t_pieces)]
        elif job.target_sources:
            t_pieces = _pieces(client, job.target_sources, t_layout, options)
            targets = [("key", matched) for matched in _key_targets(client, job, job_future, pieces, t_pieces,
                                                                    t_layout)]
    futures = []
    for i, piece in enumerate(pieces):
        part = str(scratch / f"part-{i:05d}.parquet") if scratch is not None else None
        futures.append(client.submit(score_piece, job_future, _without_batch(piece),
                                     targets[i] if targets else None, part, piece.batch, pure=False))
    total = _tree_sum(client, futures)
    if progress is not None:
        from distributed import as_completed

        rows = size = 0
        sizes = {f.key: (p.rows, p.size) for f, p in zip(futures, pieces)}
        for done in as_completed(futures, loop=client.loop):
            r, s = sizes[done.key]
            rows, size = rows + r, size + s
            progress(rows, size)
    _first_error(futures)
    return total.result() if total is not None else State()


def _pieces(client, sources: list, layout, options: DaskOptions, split: bool = True) -> list[Piece]:
    """The partitions of one input: its files' (planned by plan_pieces), or the batches the client
    reads from standard input or a table, each sent to a worker as it is read (Piece.batch: a future)."""
    if sources[0].path is not None:
        return plan_pieces(client, sources, options.partition_bytes, split)
    pieces, index = [], 0
    for chunk in sources[0].batches(layout.columns, layout.types(sources[0].schema)):
        n = chunk.batch.num_rows
        pieces.append(Piece(None, "batch", first_row=chunk.first_row, first_index=index, rows=n, name=chunk.source,
                            size=chunk.batch.nbytes, batch=client.scatter(chunk.batch, hash=False)))
        index += n
    return pieces


def _without_batch(piece: Piece) -> Piece:
    """The piece as a task receives it: its batch (a future) goes as an argument of its own, which
    Dask replaces by the rows; a future inside a dataclass would travel as a future."""
    return dataclasses.replace(piece, batch=None)


def _portable_job(job: Job) -> Job:
    """The job as the workers receive it: its sources without open files."""
    from .readers import portable

    def ship(sources):
        return [portable(s) if s.path is not None else dataclasses.replace(s, _stdin=None, _table=None,
                                                                           _parquet=None, _parquet_buffer=None,
                                                                           _raw=None, sample=None)
                for s in sources]

    return dataclasses.replace(job, sources=ship(job.sources), target_sources=ship(job.target_sources))


def _aligned(job: Job, pieces: list[Piece], t_pieces: list[Piece]) -> list[Piece]:
    """Target partitions holding the same rows as the prediction partitions, to pair by position."""
    from .pairing import count_mismatch

    total, t_total = sum(p.rows for p in pieces), sum(t.rows for t in t_pieces)
    if total != t_total:
        raise count_mismatch(job.sources[0].name, total, job.target_sources[0].name, t_total)
    if [p.rows for p in pieces] != [t.rows for t in t_pieces]:
        raise UsageError(f"--engine dask pairs rows by position only when both inputs have the same rows in "
                         f"each file and row group ({job.sources[0].name}: {len(pieces)} partitions, "
                         f"{job.target_sources[0].name}: {len(t_pieces)}); pair them by an id column with --key")
    return t_pieces


def _streamed_pairs(client, job: Job, t_layout) -> tuple[list[Piece], list]:
    """Both inputs read by the client (one of them a stream), paired by position batch by batch and
    sent to the workers as they are read."""
    from .pairing import align_by_position

    source, ts = job.sources[0], job.target_sources[0]
    pieces, targets, index = [], [], 0
    stream = source.batches(job.layout.columns, job.layout.types(source.schema))
    t_stream = ts.batches(t_layout.columns, t_layout.types(ts.schema))
    for chunk, t_chunk in align_by_position(stream, t_stream, source.name, ts.name):
        n = chunk.batch.num_rows
        pieces.append(Piece(None, "batch", first_row=chunk.first_row, first_index=index, rows=n, name=chunk.source,
                            size=chunk.batch.nbytes, batch=client.scatter(chunk.batch, hash=False)))
        targets.append(("chunk", client.scatter(t_chunk.batch, hash=False), t_layout, t_chunk.first_row))
        index += n
    return pieces, targets
