"""Per-batch token kernel and the per-document state it folds into (pure numpy, no I/O).

A batch is a `TokenBatch`: per token its document code (an index into the state's documents),
log-probability ``ll`` (NaN for a placeholder), byte length (-1 when unknown), whether it is
scored (the mask: 1 / true is scored, as loss masks are) and its text's whitespace features.

For document d over its scored, non-placeholder tokens t:

    nll_sum[d] = sum_t -ll_t          tokens[d] = #t          bytes[d] = sum_t bytes_t

and words[d] = len(re.split(r"\\s+", text_d)) as lm-evaluation-harness counts them
(lm_eval/api/task.py, count_words), with text_d the concatenation of those tokens' text in
file order. re.split gives one more piece than there are whitespace runs, so the count merges
across batches from each piece's runs and whether it starts and ends with whitespace.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

# Python's \s for str patterns is str.isspace(); the same set spelled for RE2 (pyarrow's regex engine).
WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
PLACEHOLDER_BELOW = -9999.0  # OpenAI's sentinel: a log-probability at or below it is no measurement


def re2_class(chars: str) -> str:
    """A RE2 character class matching exactly ``chars``."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


WHITESPACE_RUN = re2_class(WHITESPACE) + "+"


@dataclass
class TextFeatures:
    """Per token: whitespace runs inside it, and whether it is empty, starts or ends with whitespace."""

    runs: np.ndarray  # int64
    empty: np.ndarray  # bool
    starts_space: np.ndarray  # bool
    ends_space: np.ndarray  # bool


@dataclass
class TokenBatch:
    """The columns of one batch of tokens, already validated (see the module docstring)."""

    doc: np.ndarray  # int64 codes into DocState
    ll: np.ndarray  # float64, NaN: a placeholder
    nbytes: np.ndarray  # int64, -1: unknown
    scored: np.ndarray  # bool (the mask)
    text: TextFeatures | None  # None: no token text


def is_placeholder(ll: np.ndarray) -> np.ndarray:
    """Null, NaN, -inf and values at or below -9999 are placeholders, not log-probabilities."""
    return ~(ll > PLACEHOLDER_BELOW)


def text_features(text) -> TextFeatures:
    """Whitespace features of a pyarrow string array (nulls read as empty)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.fill_null(text.cast(pa.large_string()) if text.type != pa.large_string() else text, "")
    runs = pc.count_substring_regex(text, WHITESPACE_RUN).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = (pc.utf8_length(text).to_numpy(zero_copy_only=False) == 0)
    starts = pc.match_substring_regex(text, "^" + re2_class(WHITESPACE)).to_numpy(zero_copy_only=False)
    ends = pc.match_substring_regex(text, re2_class(WHITESPACE) + "$").to_numpy(zero_copy_only=False)
    return TextFeatures(runs, empty, starts.astype(bool), ends.astype(bool))


_COLUMNS = ("tokens", "masked", "placeholder", "nll_sum", "bytes", "bytes_unknown", "runs", "has_text",
            "starts_space", "ends_space")


class DocState:
    """Per-document running sums, keyed by document id in first-seen order; adds with `+`.

    Memory is O(documents): one dict entry and a few numbers per document.
    """

    def __init__(self) -> None:
        self.index: dict = {}  # doc id -> position
        self.ids: list = []
        self.group_of: list = []  # per document: its group key (a tuple), or None
        self.n = 0
        self._cap = 0
        self.tokens = np.zeros(0, np.int64)
        self.masked = np.zeros(0, np.int64)
        self.placeholder = np.zeros(0, np.int64)
        self.nll_sum = np.zeros(0, np.float64)
        self.bytes = np.zeros(0, np.int64)
        self.bytes_unknown = np.zeros(0, bool)
        self.runs = np.zeros(0, np.int64)
        self.has_text = np.zeros(0, bool)  # some scored token with non-empty text seen
        self.starts_space = np.zeros(0, bool)
        self.ends_space = np.zeros(0, bool)

    def codes(self, ids, groups=None) -> np.ndarray:
        """Positions of ``ids`` (a list of distinct ids of one batch), new documents appended."""
        out = np.empty(len(ids), np.int64)
        for i, doc in enumerate(ids):
            pos = self.index.get(doc)
            if pos is None:
                pos = self.index[doc] = len(self.ids)
                self.ids.append(doc)
                self.group_of.append(groups[i] if groups is not None else None)
            out[i] = pos
        self._grow(len(self.ids))
        return out

    def _grow(self, n: int) -> None:
        if n > self._cap:
            cap = max(n, 2 * self._cap, 1024)
            for name in _COLUMNS:
                old = getattr(self, name)
                new = np.zeros(cap, old.dtype)
                new[:len(old)] = old
                setattr(self, name, new)
            self._cap = cap
        self.n = n

    def add(self, batch: TokenBatch) -> None:
        """Fold one batch in (documents already coded by codes())."""
        n = self.n
        counted = batch.scored & ~is_placeholder(batch.ll)
        self.masked[:n] += np.bincount(batch.doc, weights=~batch.scored, minlength=n).astype(np.int64)
        self.placeholder[:n] += np.bincount(batch.doc, weights=batch.scored & ~counted,
                                            minlength=n).astype(np.int64)
        doc = batch.doc[counted]
        self.tokens[:n] += np.bincount(doc, minlength=n)
        self.nll_sum[:n] += np.bincount(doc, weights=-batch.ll[counted], minlength=n)
        nbytes = batch.nbytes[counted]
        unknown = nbytes < 0
        self.bytes[:n] += np.bincount(doc, weights=np.where(unknown, 0, nbytes), minlength=n).astype(np.int64)
        self.bytes_unknown[np.unique(doc[unknown])] = True
        if batch.text is not None:
            self._add_text(doc, batch.text, counted)

    def _add_text(self, doc: np.ndarray, text: TextFeatures, counted: np.ndarray) -> None:
        keep = ~text.empty[counted]
        doc = doc[keep]
        if not len(doc):
            return
        runs = text.runs[counted][keep]
        starts = text.starts_space[counted][keep]
        ends = text.ends_space[counted][keep]
        order = np.argsort(doc, kind="stable")  # file order within each document
        doc, runs, starts, ends = doc[order], runs[order], starts[order], ends[order]
        first = np.ones(len(doc), bool)
        first[1:] = doc[1:] != doc[:-1]
        last = np.ones(len(doc), bool)
        last[:-1] = first[1:]
        # A run of whitespace split over two adjacent tokens is one run.
        joined = np.zeros(len(doc), np.int64)
        joined[1:] = (~first[1:] & ends[:-1] & starts[1:])
        piece_docs = doc[first]
        piece_runs = np.bincount(doc, weights=runs - joined, minlength=self.n)[piece_docs].astype(np.int64)
        # ... and so is one split between the batch before and this one.
        seam = self.has_text[piece_docs] & self.ends_space[piece_docs] & starts[first]
        self.runs[piece_docs] += piece_runs - seam
        self.starts_space[piece_docs] = np.where(self.has_text[piece_docs], self.starts_space[piece_docs],
                                                 starts[first])
        self.ends_space[doc[last]] = ends[last]
        self.has_text[piece_docs] = True

    def drop_first(self, count: int) -> None:
        """Forget the first ``count`` documents (finished and folded elsewhere); the others keep their order."""
        if count <= 0:
            return
        keep = self.n - count
        self.ids, self.group_of = self.ids[count:], self.group_of[count:]
        self.index = {doc: i for i, doc in enumerate(self.ids)}
        for name in _COLUMNS:
            column = getattr(self, name)
            column[:keep] = column[count:self.n]
            column[keep:self.n] = 0
        self.n = keep

    @property
    def words(self) -> np.ndarray:
        """Per document: len(re.split(r'\\s+', text)), which is 1 for an empty text."""
        return self.runs[:self.n] + 1

    def __add__(self, other: "DocState") -> "DocState":
        """Documents of ``self`` then those of ``other``; a document in both is continued by ``other``."""
        out = DocState()
        for state in (self, other):
            codes = out.codes(state.ids, state.group_of)
            n = out.n
            for name in ("tokens", "masked", "placeholder", "nll_sum", "bytes"):
                getattr(out, name)[:n] += np.bincount(codes, weights=getattr(state, name)[:state.n],
                                                      minlength=n).astype(getattr(out, name).dtype)
            out.bytes_unknown[codes] |= state.bytes_unknown[:state.n]
            has = state.has_text[:state.n]
            seam = out.has_text[codes] & out.ends_space[codes] & state.starts_space[:state.n] & has
            out.runs[codes] += state.runs[:state.n] - seam
            out.starts_space[codes] = np.where(out.has_text[codes], out.starts_space[codes],
                                               state.starts_space[:state.n])
            out.ends_space[codes] = np.where(has, state.ends_space[:state.n], out.ends_space[codes])
            out.has_text[codes] |= has
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-document columns, trimmed to the documents seen."""
        n = self.n
        return {"tokens": self.tokens[:n], "masked": self.masked[:n], "placeholder": self.placeholder[:n],
                "nll_sum": self.nll_sum[:n], "bytes": self.bytes[:n], "bytes_unknown": self.bytes_unknown[:n],
                "words": self.words}
