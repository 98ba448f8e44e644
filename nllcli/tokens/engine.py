"""Read a token file's batches, validate them and fold them into a DocState (no maths of the report here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, UsageError
from . import readers
from .accumulate import Accumulator, SeenIds
from .kernel import DocState, TokenBatch, is_placeholder, text_features

MISSING_GROUP = None


@dataclass
class Run:
    """What a run read: the per-document state and facts about the input.

    Streaming (``accumulator`` given), a document is finished when the next one starts: it is folded
    into the accumulator and forgotten, so ``state`` holds only the open document. Without one (and
    after interleaved input, see run()), ``state`` keeps every document.
    """

    state: DocState
    layouts: list[str]
    inputs: list[str]
    groups: list[str]
    tokens_known: bool = True
    text_known: bool = True
    rows: int = 0
    columns: dict = field(default_factory=dict)
    accumulator: Accumulator | None = None
    streaming: bool = False
    seen: SeenIds = field(default_factory=SeenIds)
    interleaved: str | None = None  # why the input could not be streamed (a document id seen again)

    def finish(self) -> None:
        """Fold the documents still in ``state`` into the accumulator (the end of the input)."""
        if self.accumulator is not None:
            self._flush(self.state.n)

    def _flush(self, count: int) -> None:
        if count <= 0 or self.accumulator is None:
            return
        state = self.state
        ids = state.ids[:count]
        self.accumulator.tokens_known, self.accumulator.text_known = self.tokens_known, self.text_known
        self.accumulator.add(ids, state.group_of[:count], {k: v[:count] for k, v in state.arrays().items()})
        if self.streaming:
            self.seen.add(id_hashes(ids))
        state.drop_first(count)


class Interleaved(Exception):
    """A document's tokens are not contiguous: its id is seen again after another document."""

    def __init__(self, source: str, row: int, doc) -> None:
        super().__init__(f"document {doc!r} continues at data row {row:,} after other documents")
        self.source, self.row, self.doc = source, row, doc


def batches(paths: Sequence[str], layout: str | None, *, doc: str | None = None, logprob: str | None = None,
            bytes: str | None = None, mask: str | None = None, text: str | None = None,
            by: Sequence[str] = ()) -> tuple[list[str], Iterator[readers.RawBatch]]:
    """The layout of each file (detected unless given) and every batch of all of them, in order."""
    from .table import read_table

    if layout is not None and layout not in readers.LAYOUTS:
        raise UsageError(f"--format-in {layout!r}: choose one of {', '.join(readers.LAYOUTS)}")
    layouts = [layout or (readers.detect(p) if isinstance(p, str) else "table") for p in paths]
    if len(set(layouts)) > 1:
        raise UsageError(f"the files hold different layouts ({', '.join(sorted(set(layouts)))}): score them apart")
    kind = layouts[0]
    table_options = dict(doc=doc, logprob=logprob, bytes=bytes, mask=mask, text=text, by=by)
    if kind != "table":
        given = [f"--{k}" for k, v in table_options.items() if v]
        if given:
            raise UsageError(f"{' '.join(given)}: column options apply to long tables, not to {kind} files")

    def stream() -> Iterator[readers.RawBatch]:
        if kind == "table":
            yield from read_table(list(paths), **table_options)
        elif kind == "lm-eval":
            for path in paths:
                yield from readers.read_lm_eval(path, readers.task_of(path) if len(paths) > 1 else None)
        else:
            read = {"chat": readers.read_chat, "completions": readers.read_completions, "vllm": readers.read_vllm}[kind]
            for path in paths:
                yield from read(path)

    return layouts, stream()


def run(paths: Sequence[str], *, layout: str | None = None, by: Sequence[str] = (),
        progress: Callable[[int, int], None] | None = None,
        accumulator: Callable[[], Accumulator] | None = None, stream: bool = True, **columns) -> Run:
    """Stream every batch of ``paths`` into one DocState, or with ``accumulator`` (a factory) into it.

    With an accumulator each document is folded as soon as the next one starts (memory O(1) in the
    documents but for 8 bytes of hash each, to detect interleaving). When a document id is seen again
    after it ended, the files are read again keeping every document (a warning says so); standard
    input cannot be read again, so there it is an error that suggests sorting by document. With
    ``stream`` False the accumulator gets every document at the end.
    """
    if isinstance(paths, str):
        paths = [paths]
    from ..readers import expand_inputs

    if all(isinstance(p, str) and p != "-" for p in paths):
        paths = expand_inputs(paths)
    try:
        return _read(paths, layout, by, progress, accumulator, stream and accumulator is not None, columns)
    except Interleaved as error:
        if any(isinstance(p, str) and p == "-" for p in paths):
            raise InputError(error.source, f"{error}: nll tokens streams standard input one document at a time, "
                             "so each document's tokens must be contiguous (sort by the document id first, or "
                             "save the input to a file, which is read again keeping every document)",
                             rows=[error.row]) from None
        out = _read(paths, layout, by, progress, accumulator, False, columns)
        out.interleaved = f"{error.source}: {error}"
        return out


def _read(paths, layout, by, progress, accumulator, streaming: bool, columns: dict) -> Run:
    from ..readers import Prefetch

    layouts, stream = batches(paths, layout, by=by, **columns)
    out = Run(DocState(), layouts, [p if isinstance(p, str) else "<table>" for p in paths], list(by),
              accumulator=accumulator() if accumulator is not None else None, streaming=streaming)
    with Prefetch(stream) as parsed:  # the next batch is parsed in a thread while this one is folded
        for raw in parsed:
            fold(out, raw)
            if out.streaming:
                out._flush(out.state.n - 1)  # every document but the last one is finished
            if progress is not None:
                progress(out.rows, 0)
    out.finish()
    return out


def id_hashes(ids: list) -> np.ndarray:
    """Python's 64-bit hash of each document id: stable within the process, all the seen-set needs
    (the bootstrap's key_ids is stable across processes, but its module builds a 1M-entry table)."""
    return np.fromiter((hash(i) for i in ids), np.int64, len(ids)).view(np.uint64)


def _check_contiguous(out: Run, raw: readers.RawBatch, local: np.ndarray, ids: list) -> None:
    """Streaming: each document's tokens in one run, the open one (if any) first, none finished before."""
    starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]]) if len(local) else np.zeros(0, np.int64)
    run_docs = local[starts]
    if len(starts) > len(ids):
        first = np.zeros(len(ids), bool)
        for position, code in zip(starts, run_docs):
            if first[code]:
                raise Interleaved(raw.source, int(raw.rows[position]), ids[code])
            first[code] = True
    for position, code in zip(starts[1:], run_docs[1:]):
        if ids[code] in out.state.index:
            raise Interleaved(raw.source, int(raw.rows[position]), ids[code])
    seen = out.seen.seen(id_hashes(ids))
    if seen.any():
        code = int(np.flatnonzero(seen)[0])
        raise Interleaved(raw.source, int(raw.rows[starts[code]]), ids[code])


def _rows(raw: readers.RawBatch, bad: np.ndarray) -> list[int]:
    return raw.rows[np.flatnonzero(bad)[:5]].tolist()


def _scored(raw: readers.RawBatch) -> np.ndarray:
    """The mask as booleans: 1 / true is scored, 0 / false is not; anything else is an error."""
    import pyarrow as pa

    n = len(raw.ll)
    scored = np.ones(n, bool)
    if raw.mask is not None:
        column = raw.columns.get("mask")
        if raw.mask.null_count:
            bad = raw.mask.is_null().to_numpy(zero_copy_only=False)
            raise InputError(raw.source, "the mask is missing", column, rows=_rows(raw, bad), total=int(bad.sum()))
        if pa.types.is_boolean(raw.mask.type):
            scored = raw.mask.to_numpy(zero_copy_only=False).astype(bool)
        else:
            values = raw.mask.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = (values != 0) & (values != 1)
            if bad.any():
                raise InputError(raw.source, "a mask holds 1 / true (scored) or 0 / false (not scored)", column,
                                 rows=_rows(raw, bad), total=int(bad.sum()))
            scored = values == 1
    if raw.structural is not None:
        scored &= ~raw.structural
    return scored


def _group_keys(raw: readers.RawBatch, first: np.ndarray) -> list[tuple] | None:
    """The --by values of the tokens at positions ``first`` (as tuples)."""
    if not raw.groups:
        return None
    values = [raw.groups[c].take(first).to_pylist() for c in raw.groups]
    return list(zip(*values))


def _check_groups(raw: readers.RawBatch, doc_codes: np.ndarray, local: np.ndarray, state: DocState) -> None:
    """Every token of a document has the document's --by values (those of its first token)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not raw.groups:
        return
    for column_index, column in enumerate(raw.groups):
        values = raw.groups[column]
        expected = pa.array([state.group_of[c][column_index] for c in doc_codes], values.type)
        wanted = expected.take(pa.array(local))
        differs = pc.fill_null(pc.not_equal(values, wanted), True)
        both_null = pc.and_(values.is_null(), wanted.is_null())
        bad = pc.and_(differs, pc.invert(both_null)).to_numpy(zero_copy_only=False)
        if bad.any():
            raise InputError(raw.source, "a document's tokens have different values (a --by column must be "
                             "constant within a document)", column, rows=_rows(raw, bad), total=int(bad.sum()))


def fold(out: Run, raw: readers.RawBatch) -> None:
    """Validate one batch and add it to the run's state."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(raw.ll)
    out.rows += n
    out.columns = raw.columns
    out.tokens_known &= raw.tokens_known
    out.text_known &= raw.text is not None if raw.words is None else bool((raw.words >= 0).all())
    doc_column = raw.columns.get("doc")
    missing = pc.or_kleene(raw.doc.is_null(), pc.equal(raw.doc.cast(pa.string()), ""))
    if pc.any(missing).as_py():
        bad = pc.fill_null(missing, True).to_numpy(zero_copy_only=False)
        raise InputError(raw.source, "the document id is missing", doc_column, rows=_rows(raw, bad),
                         total=int(bad.sum()))
    scored = _scored(raw)
    positive = scored & (raw.ll > 0)
    if positive.any():
        raise InputError(raw.source, "a log-probability is above 0 (a loss column? log-probabilities are <= 0)",
                         raw.columns.get("logprob"), rows=_rows(raw, positive), total=int(positive.sum()))
    encoded = pc.dictionary_encode(raw.doc if isinstance(raw.doc, pa.Array) else raw.doc.combine_chunks())
    local = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ids = encoded.dictionary.to_pylist()
    if out.streaming:
        _check_contiguous(out, raw, local, ids)
    first = np.full(len(ids), n, np.int64)
    np.minimum.at(first, local, np.arange(n))
    keys = _group_keys(raw, first)
    doc_codes = out.state.codes(ids, keys)
    _check_groups(raw, doc_codes, local, out.state)
    codes = doc_codes[local]
    nbytes = raw.nbytes if raw.nbytes is not None else np.full(n, -1, np.int64)
    text = text_features(raw.text) if raw.text is not None and raw.words is None else None
    out.state.add(TokenBatch(codes, raw.ll, nbytes, scored, text))
    if raw.words is not None:
        counted = scored & ~is_placeholder(raw.ll) & (raw.words >= 0)
        np.add.at(out.state.runs, codes[counted], raw.words[counted] - 1)
        out.state.has_text[codes[counted]] = True
