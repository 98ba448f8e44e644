"""Token log-probability files as bounded batches of (doc id, logprob, bytes, mask, text, groups).

One small reader per layout; each streams (a batch holds at most BATCH_TOKENS tokens of nested
JSON, or one Arrow batch of a table) and computes nothing:

- ``table``: one row per token (CSV, TSV, Parquet, JSON Lines), columns found by roles.py;
- ``chat``: OpenAI chat completions, ``choices[].logprobs.content[]`` (``logprob``, ``bytes``,
  ``token``), also inside a Batch API line (``custom_id``, ``response.body``);
- ``completions``: the legacy layout, ``choices[].logprobs.token_logprobs`` and ``tokens``;
- ``vllm``: ``prompt_logprobs`` (a list per prompt position of {token id: {logprob, rank,
  decoded_token}}) with ``prompt_token_ids`` naming the chosen token;
- ``lm-eval``: lm-evaluation-harness ``samples_*.jsonl`` (``doc_id``, ``resps`` /
  ``filtered_resps``): one log-likelihood per document, its word and byte counts from the
  sample's ``word_perplexity`` / ``bits_per_byte`` pairs, else from its ``target`` text.

The first prompt position of ``completions`` (echoed) and ``vllm`` has no log-probability by
construction: it counts as masked, not as a placeholder.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

BATCH_TOKENS = 65536
LAYOUTS = ("table", "chat", "completions", "vllm", "lm-eval")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
LINE_LIMIT = 256 << 20  # the longest JSON line read (a response with a very long prompt)


@dataclass
class RawBatch:
    """One batch of tokens as read. ``rows``: each token's 1-based data row (a line for JSON Lines)."""

    source: str
    doc: Any  # pyarrow array of document ids (strings)
    ll: np.ndarray  # float64, NaN where null
    rows: np.ndarray  # int64
    nbytes: np.ndarray | None = None  # int64, -1 where null; None: no byte column
    mask: Any = None  # pyarrow array (bool or numeric), None: every token scored
    text: Any = None  # pyarrow string array or None
    groups: dict = field(default_factory=dict)  # column -> pyarrow array
    words: np.ndarray | None = None  # per row: a word count given by the file (lm-eval)
    structural: np.ndarray | None = None  # bool: a position with no log-probability by construction
    tokens_known: bool = True
    columns: dict = field(default_factory=dict)  # role -> the column (or JSON path) it came from


def is_json(path: str) -> bool:
    return path.lower().endswith(JSON_SUFFIXES)


class _HeadThenRest(io.RawIOBase):
    """The peeked head of standard input again, then the rest of it. A read stops at the end of the
    head, so a reader of the first line only (detect) never takes bytes past it."""

    def __init__(self, head: bytes, rest) -> None:
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


# standard input's head (whitespace, then a JSON line) and the rest, with the stream they were read from
_stdin_peek: tuple[Any, bytes, Any] | None = None


def _stdin_head() -> tuple[bytes, Any]:
    """Peek at standard input once per process: leading whitespace and, when the first byte after it
    is '{', the first line (JSON Lines); gunzipped first when it starts with gzip's magic bytes."""
    global _stdin_peek
    import sys

    raw = sys.stdin.buffer
    if _stdin_peek is None or _stdin_peek[0] is not raw:  # a new standard input (a test's CliRunner)
        try:
            magic = raw.read(2) or b""
            stream: Any = io.BufferedReader(_HeadThenRest(magic, raw))
            if magic == b"\x1f\x8b":
                stream = gzip.GzipFile(fileobj=stream, mode="rb")
            head = b""
            while len(head) < (1 << 20):
                byte = stream.read(1)
                head += byte
                if not byte or not byte.isspace():
                    break
            if head.endswith(b"{"):
                head += stream.readline(LINE_LIMIT + 1)
        except (OSError, EOFError) as exc:
            raise InputError("-", f"cannot read standard input ({exc})") from None
        _stdin_peek = (raw, head, stream)
    return _stdin_peek[1], _stdin_peek[2]


def stdin_is_json() -> bool:
    """Does standard input hold JSON Lines (its first non-blank byte is '{')?"""
    return _stdin_head()[0].lstrip().startswith(b"{")


def open_text(path: str):
    """A binary stream of a file ('-': standard input, peeked at by detect() and replayed), gunzipped
    when it is gzip'd."""
    if path == "-":
        head, rest = _stdin_head()
        return io.BufferedReader(_HeadThenRest(head, rest))
    try:
        handle = open(path, "rb")
        if handle.read(2) == b"\x1f\x8b":
            handle.seek(0)
            return gzip.open(handle, "rb")
        handle.seek(0)
        return handle
    except OSError as exc:
        from ..readers import os_error

        raise os_error(path, exc) from exc


def json_lines(path: str) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed object) of each non-empty line; a bad line is an InputError."""
    with open_text(path) as handle:
        number = 0
        while True:
            line = handle.readline(LINE_LIMIT + 1)  # bounded: a file without line ends is not read whole
            number += 1
            if not line:
                return
            if len(line) > LINE_LIMIT:
                raise InputError(path, f"line {number} is longer than {LINE_LIMIT >> 20} MiB")
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(path, f"line {number} is not JSON ({exc})") from None


def first_object(path: str) -> object:
    for _, obj in json_lines(path):
        return obj
    raise InputError(path, "no JSON line in the file")


class _Builder:
    """Python lists of tokens, handed out as RawBatches of BATCH_TOKENS."""

    def __init__(self, source: str, columns: dict, with_words: bool = False, tokens_known: bool = True):
        self.source, self.columns, self.with_words, self.tokens_known = source, columns, with_words, tokens_known
        self._clear()

    def _clear(self) -> None:
        self.doc: list = []
        self.ll: list = []
        self.rows: list = []
        self.nbytes: list = []
        self.text: list = []
        self.structural: list = []
        self.words: list = []

    def add(self, doc: str, ll, row: int, text: str | None, nbytes: int | None = None,
            structural: bool = False, words: int | None = None) -> None:
        self.doc.append(doc)
        self.ll.append(math.nan if ll is None else ll)
        self.rows.append(row)
        self.text.append(text)
        self.nbytes.append(-1 if nbytes is None else nbytes)
        self.structural.append(structural)
        self.words.append(-1 if words is None else words)

    def full(self) -> bool:
        return len(self.doc) >= BATCH_TOKENS

    def take(self) -> RawBatch | None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.doc:
            return None
        try:
            ll = np.array(self.ll, dtype=np.float64)
        except (TypeError, ValueError):
            bad = [r for r, v in zip(self.rows, self.ll) if not isinstance(v, (int, float)) or isinstance(v, bool)]
            raise InputError(self.source, "log-probabilities must be numbers", self.columns["logprob"],
                             rows=bad) from None
        text = pa.array(self.text, pa.string())
        nbytes = np.array(self.nbytes, dtype=np.int64)
        utf8 = pc.binary_length(pc.fill_null(text, "")).to_numpy(zero_copy_only=False)
        nbytes = np.where(nbytes < 0, utf8, nbytes).astype(np.int64)
        batch = RawBatch(self.source, pa.array(self.doc, pa.string()), ll, np.array(self.rows, np.int64),
                         nbytes=nbytes, text=text, structural=np.array(self.structural, bool),
                         words=np.array(self.words, np.int64) if self.with_words else None,
                         tokens_known=self.tokens_known, columns=self.columns)
        self._clear()
        return batch


def _doc_id(obj: dict, number: int, *names: str) -> str:
    for name in names:
        value = obj.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return f"line {number}"


def _choices(path: str, number: int, obj) -> tuple[dict, str, list]:
    """The completion object of a line (a Batch API line wraps it) and its id and choices."""
    if not isinstance(obj, dict):
        raise InputError(path, f"line {number} is not a JSON object")
    body = obj
    response = obj.get("response")
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        body = response["body"]
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise InputError(path, f"line {number}: no choices[] (not a completion response)")
    return body, _doc_id(obj, number, "custom_id", "id") if obj is not body else _doc_id(body, number, "id"), choices


def _choice_id(doc: str, choices: list, choice: dict, k: int) -> str:
    return doc if len(choices) == 1 else f"{doc}/{choice.get('index', k)}"


def read_chat(path: str) -> Iterator[RawBatch]:
    """OpenAI chat completions: one document per choice, its tokens ``logprobs.content[]``."""
    column = "choices[].logprobs.content[].logprob"
    out = _Builder(path, {"logprob": column, "doc": "id", "bytes": "bytes", "text": "token"})
    for number, obj in json_lines(path):
        body, doc, choices = _choices(path, number, obj)
        for k, choice in enumerate(choices):
            content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
            if not isinstance(content, list):
                raise InputError(path, "no logprobs.content[] (request the completion with logprobs: true)",
                                 "choices[].logprobs", rows=[number])
            name = _choice_id(doc, choices, choice, k)
            for entry in content:
                raw_bytes = entry.get("bytes")
                out.add(name, entry.get("logprob"), number, entry.get("token"),
                        len(raw_bytes) if isinstance(raw_bytes, list) else None)
                if out.full():
                    yield out.take()  # type: ignore[misc]
    last = out.take()
    if last is not None:
        yield last


def read_completions(path: str) -> Iterator[RawBatch]:
    """Legacy completions: ``logprobs.tokens`` and ``token_logprobs``; an echoed prompt's first token is null."""
    column = "choices[].logprobs.token_logprobs"
    out = _Builder(path, {"logprob": column, "doc": "id", "text": "choices[].logprobs.tokens"})
    for number, obj in json_lines(path):
        body, doc, choices = _choices(path, number, obj)
        for k, choice in enumerate(choices):
            logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
            values = (logprobs or {}).get("token_logprobs")
            tokens = (logprobs or {}).get("tokens")
            if not isinstance(values, list):
                raise InputError(path, "no logprobs.token_logprobs (request with logprobs set)", column,
                                 rows=[number])
            if not isinstance(tokens, list) or len(tokens) != len(values):
                raise InputError(path, "logprobs.tokens and token_logprobs differ in length",
                                 "choices[].logprobs.tokens", rows=[number])
            name = _choice_id(doc, choices, choice, k)
            for i, (token, value) in enumerate(zip(tokens, values)):
                out.add(name, value, number, token, structural=i == 0 and value is None)
                if out.full():
                    yield out.take()  # type: ignore[misc]
    last = out.take()
    if last is not None:
        yield last


def read_vllm(path: str) -> Iterator[RawBatch]:
    """vLLM ``prompt_logprobs``: at position i the entry of token ``prompt_token_ids[i]``; position 0 is null."""
    column = "prompt_logprobs"
    out = _Builder(path, {"logprob": column, "doc": "request_id", "text": "decoded_token"})
    for number, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise InputError(path, f"line {number} is not a JSON object")
        holder = obj if "prompt_logprobs" in obj else next(
            (c for c in obj.get("choices") or [] if isinstance(c, dict) and "prompt_logprobs" in c), None)
        if holder is None:
            raise InputError(path, "no prompt_logprobs (run vLLM with prompt_logprobs set)", column, rows=[number])
        positions = holder.get("prompt_logprobs")
        ids = holder.get("prompt_token_ids", obj.get("prompt_token_ids"))
        if not isinstance(positions, list):
            raise InputError(path, "prompt_logprobs is not a list", column, rows=[number])
        if not isinstance(ids, list) or len(ids) != len(positions):
            raise InputError(path, "prompt_token_ids is missing or differs in length from prompt_logprobs "
                             "(it names the prompt's token at each position)", "prompt_token_ids", rows=[number])
        doc = _doc_id(obj, number, "request_id", "id")
        for i, (token_id, entry) in enumerate(zip(ids, positions)):
            if entry is None:
                out.add(doc, None, number, None, structural=i == 0)
                continue
            chosen = entry.get(str(token_id)) if isinstance(entry, dict) else None
            if chosen is None:
                raise InputError(path, f"position {i}: the prompt's token {token_id} is not among the "
                                 "logprobs given", column, rows=[number])
            if isinstance(chosen, dict):
                out.add(doc, chosen.get("logprob"), number, chosen.get("decoded_token"))
            else:  # older outputs: {token id: logprob}
                out.add(doc, chosen, number, None)
            if out.full():
                yield out.take()  # type: ignore[misc]
    last = out.take()
    if last is not None:
        yield last


_SAMPLES_NAME = re.compile(r"samples_(.+?)(_\d{4}-\d{2}-\d{2}T.*)?\.jsonl?(\.gz)?$")


def task_of(path: str) -> str | None:
    """The task of an lm-evaluation-harness samples file, from its name samples_<task>_<date>.jsonl."""
    match = _SAMPLES_NAME.search(Path(path).name)
    return match.group(1) if match else None


def _one_loglikelihood(value):
    """A sample's response as a number: [[ll]] (rolling), [[ll, is_greedy]] or [ll, is_greedy]."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], bool):
        value = value[0]
    if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
        return "several"
    return value


def _pair_count(sample: dict, metric: str) -> int | None:
    pair = sample.get(metric)
    if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], int) and not isinstance(pair[1], bool):
        return pair[1]
    return None


def read_lm_eval(path: str, prefix: str | None = None) -> Iterator[RawBatch]:
    """lm-evaluation-harness samples: one log-likelihood per document (token counts are not saved)."""
    column = "filtered_resps"
    out = _Builder(path, {"logprob": column, "doc": "doc_id", "text": "target", "bytes": "bits_per_byte"},
                   with_words=True, tokens_known=False)
    for number, sample in json_lines(path):
        if not isinstance(sample, dict) or "doc_id" not in sample:
            raise InputError(path, "not an lm-evaluation-harness sample (no doc_id)", rows=[number])
        response = sample.get("filtered_resps", sample.get("resps"))
        value = _one_loglikelihood(response)
        if value == "several":
            raise InputError(path, "several responses per document (a multiple-choice task?): only "
                             "loglikelihood_rolling and single loglikelihood samples hold a text's log-likelihood",
                             column, rows=[number])
        target = sample.get("target")
        text = target if isinstance(target, str) else None
        nbytes = _pair_count(sample, "bits_per_byte") or _pair_count(sample, "byte_perplexity")
        words = _pair_count(sample, "word_perplexity")
        if words is None and text is not None:
            words = len(re.split(r"\s+", text))
        doc = f"{prefix}:{sample['doc_id']}" if prefix else str(sample["doc_id"])
        out.add(doc, value, number, text, nbytes, words=words)
        if out.full():
            yield out.take()  # type: ignore[misc]
    last = out.take()
    if last is not None:
        yield last


def detect(path: str) -> str:
    """The layout of a file: a table unless it is JSON Lines of completions, vLLM or lm-eval samples."""
    if path == "-" and not stdin_is_json():  # a CSV or Parquet table, detected by readers.py
        return "table"
    if path != "-" and not is_json(path):
        return "table"
    obj = first_object(path)
    if not isinstance(obj, dict):
        raise InputError(path, "line 1 is not a JSON object")
    if "doc_id" in obj and ("resps" in obj or "filtered_resps" in obj):
        return "lm-eval"
    body = obj.get("response", {}).get("body", obj) if isinstance(obj.get("response"), dict) else obj
    choices = body.get("choices") if isinstance(body, dict) else None
    if "prompt_logprobs" in obj or (isinstance(choices, list) and choices and isinstance(choices[0], dict)
                                    and "prompt_logprobs" in choices[0]):
        return "vllm"
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        logprobs = choices[0].get("logprobs")
        if isinstance(logprobs, dict) and "content" in logprobs:
            return "chat"
        if isinstance(logprobs, dict) and "token_logprobs" in logprobs:
            return "completions"
        raise InputError(path, "completion responses without logprobs (request them with logprobs: true)",
                         "choices[].logprobs", rows=[1])
    return "table"
