"""The Poisson bootstrap: per-row resample weights that depend only on (seed, row id, resample).

A resample of n rows drawn with replacement gives each row a multinomial count; for large n the
counts are independent Poisson(1) draws (the Poisson bootstrap). Drawing them from a
counter-based generator, a 64-bit mix of (seed, row id, resample), makes the weight of a row the
same wherever and in whatever order it is scored: replicate sums of partitions scored apart add up
to the replicate sums of the whole input, exactly like the point sums.

    h      = mix(mix(row_id XOR mix(seed)) + j * GOLDEN)      (j = resample // 2, splitmix64)
    u      = the low (resample 2j) or high (resample 2j + 1) 32 bits of h, uniform on [0, 2^32)
    weight = k such that F(k - 1) <= u / 2^32 < F(k),  F the Poisson(1) CDF

Row ids are uint64: the global 0-based position of a row (``position_ids``) or a hash of its key
(``key_ids``: FNV-1a 64 of the UTF-8 bytes of the key's text, then splitmix64; not
Python's salted hash()), so that the same rows get the same weights in two files paired by key.

The Dask engine calls ``poisson_weights(row_ids, resamples, seed)`` per partition.
"""

from __future__ import annotations

import math
import sys

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


def _poisson_thresholds(top: int = 24) -> np.ndarray:
    """The Poisson(1) CDF F(0), F(1), ..., as 32-bit integer thresholds (weights above `top` never occur)."""
    cdf, term = [], math.exp(-1.0)
    total = 0.0
    for k in range(top):
        total += term
        cdf.append(total)
        term /= k + 1
    return np.minimum(np.floor(np.array(cdf) * 2.0 ** 32), 2.0 ** 32 - 1).astype(np.uint64)


POISSON_THRESHOLDS = _poisson_thresholds()


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (a bijection that spreads every input bit)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


def position_ids(first: int, n: int) -> np.ndarray:
    """Row ids of n rows starting at 0-based global position ``first``."""
    return np.arange(first, first + n, dtype=np.uint64)


def key_ids(keys) -> np.ndarray:
    """Stable uint64 row ids of key values: a pyarrow array, a numpy array or a list of str / int.

    A key hashes the UTF-8 bytes of its text (FNV-1a 64, then mixed), so the integer 7 and the
    string "7" get the same id, as they pair; a missing key hashes like the empty string. The same
    key always gets the same id, in any process.
    """
    import pyarrow as pa

    array = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary.take(array.indices)
    strings = array.cast(pa.large_string()).fill_null("")
    _, offset_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(lengths) else 0
    padded = np.zeros((len(lengths), width), dtype=np.uint8)  # bytes past a key's end are masked below
    if width:
        columns = np.arange(width)
        inside = columns[None, :] < lengths[:, None]
        padded[inside] = data[offsets[0]:offsets[-1]]
    return mix(_fnv(padded, lengths))


def _fnv(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each row's first ``lengths[i]`` bytes of ``data`` (n, width), then the length."""
    h = np.full(len(data), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(data.shape[1]):
            inside = lengths > j
            h = np.where(inside, (h ^ data[:, j].astype(np.uint64)) * _FNV_PRIME, h)
        return h ^ lengths.astype(np.uint64)


def poisson_weights(row_ids: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(n, resamples) float64 Poisson(1) weights: entry (i, r) depends only on (seed, row_ids[i], r).

    Memory is n x resamples x 8 bytes: callers take rows in blocks of ``block_size(resamples)``.
    """
    ids = np.asarray(row_ids, dtype=np.uint64)
    base = mix(ids ^ mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    pairs = (resamples + 1) // 2
    with np.errstate(over="ignore"):
        h = mix(base[:, None] + np.arange(pairs, dtype=np.uint64)[None, :] * GOLDEN)
    if sys.byteorder == "little":  # resample 2j: the low half of h, 2j + 1: the high half
        u = h.view(np.uint32)[:, :resamples]
    else:
        u = np.empty((len(ids), 2 * pairs), dtype=np.uint32)
        u[:, 0::2], u[:, 1::2] = h & _LOW32, h >> _S32
        u = u[:, :resamples]
    weights = _TABLE[u >> np.uint32(32 - _TABLE_BITS)]  # exact except in the few buckets a threshold cuts
    cut = np.flatnonzero(weights == _CUT)
    out = weights.astype(np.float64)
    if cut.size:
        out.flat[cut] = np.searchsorted(POISSON_THRESHOLDS, u.flat[cut].astype(np.uint64), side="right")
    return out


def _lookup_table(bits: int) -> np.ndarray:
    """The weight of every u whose top ``bits`` bits are b, or _CUT when a threshold falls inside b."""
    low = np.arange(2 ** bits, dtype=np.uint64) << np.uint64(32 - bits)
    high = low + np.uint64(2 ** (32 - bits) - 1)
    first = np.searchsorted(POISSON_THRESHOLDS, low, side="right")
    last = np.searchsorted(POISSON_THRESHOLDS, high, side="right")
    return np.where(first == last, first, _CUT).astype(np.uint8)


_TABLE_BITS, _CUT = 20, 255
_TABLE = _lookup_table(_TABLE_BITS)


BLOCK_VALUES = 1 << 21  # rows x resamples per block of weights: 16 MiB of float64


def block_size(resamples: int) -> int:
    """Rows per block, so that a block's (rows, resamples) weights stay within BLOCK_VALUES."""
    return max(1, BLOCK_VALUES // max(resamples, 1))


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1 - c)/2 and (1 + c)/2 quantiles of the replicate values (numpy's linear rule), NaN
    replicates left out: (nan, nan) when every one is NaN. An infinite replicate stays infinite (a
    quantile next to it is that infinity, where numpy's interpolation would give NaN)."""
    values = np.sort(np.asarray(replicates, dtype=np.float64))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    return _quantile(values, tail), _quantile(values, 1.0 - tail)


def _quantile(ordered: np.ndarray, p: float) -> float:
    position = p * (len(ordered) - 1)
    below, above = int(math.floor(position)), int(math.ceil(position))
    a, b = float(ordered[below]), float(ordered[above])
    if below == above or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return b if math.isinf(b) else a
    return a + (b - a) * (position - below)
