"""Read CSV, TSV, gzip'd CSV, Parquet, standard input or many files as bounded-size Arrow batches.

Every source is read twice at most: once for its header (column names and the types pyarrow
infers from the first block, used to pick the class columns), then streamed with only the needed
columns and explicit types, so a column that looks integral in its first block cannot break the
read later. Standard input is streamed too; only Parquet on stdin is copied to a temporary file
first (its index sits at the end of the file).

Memory and time stay bounded whatever the bytes: the header sample is read in pieces and stops at
a NUL byte (binary), at HEADER_LIMIT bytes without a line end, or at a row longer than ROW_LIMIT.
CSV blocks are 1 MiB, larger for wide rows (sized from the longest row of the sample; a file is
read again with a larger block if a later row does not fit, up to ROW_LIMIT). Parquet batches hold
at most PARQUET_BATCH_VALUES values, so wide files come in fewer rows per batch.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import os
import queue
import re
import shutil
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .columns import PACKED, WIDE_COLUMNS, floats, integers, packed_field
from .errors import InputError, UsageError

STDIN = "-"
CSV_BLOCK_BYTES = 1 << 20  # the block for ordinary rows (benchmarked)
HEADER_LIMIT = 16 << 20  # the longest header line read (about a million class names)
ROW_LIMIT = 64 << 20  # the longest data row read, and the largest CSV block
ROWS_PER_BLOCK = 16  # a block for wide rows holds at least this many of the longest sampled row
SAMPLE_ROWS = 2  # data rows the header sample holds at least (types, block size), when there are any
# Rows per batch: about 0.5 ms of Python a batch, whatever its size. Chosen when two threads scored
# (then 49,152 scored 10M Parquet rows 4% sooner than 32,768, for 16-20 MB more peak; 65,536 cost
# 55 MB more, the kernels' temporaries); scored in one thread (engine.scoring_threads), 65,536 to
# 131,072 measured no better on 2M x 10 Parquet and 2M x 2 CSV.
PARQUET_BATCH_ROWS = 49152
# Values (rows x columns) per Parquet batch: wide files, fewer rows. 400k x 100 in row groups of
# 100,000 (streamed): 12% sooner and 321 MB peak instead of 695 than with 2^22 (33 MB batches).
PARQUET_BATCH_VALUES = 1 << 20
PARQUET_READ_BYTES = 1 << 20  # a column chunk's bytes read at a time
PARQUET_GROUP_BYTES = 32 << 20  # row groups read at once while their values take at most this (else streamed)
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz", ".gz")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# The byte range of a plain CSV file one thread parses at once. Against 2 MiB: 10M x 10 in 5-8%
# less time, peak 172 MB instead of 130; 1,000 columns in 22% less (pyarrow's work for each column
# of each range), 190 MB instead of 155. 8 MiB: 5% less again at 1,000 columns, for 300 MB.
CSV_RANGE_BYTES = 4 << 20
WIDE_BLOCK_BYTES = 8 << 20  # CSV bytes read at once on the wide path (more for a longer row)
WIDE_SLICE = 4096  # Parquet class columns read at once on the wide path
WIDE_GROUP_BYTES = 256 << 20  # a Parquet row group whose class matrix is larger streams as before
_WIDE_INDEX_LOCK = threading.Lock()  # held while a wide Parquet row group is read (see _wide_parquet_batches)


@dataclass(eq=False)
class Chunk:
    """One batch of rows and where it came from (for messages: file name and 1-based first row)."""

    batch: pa.RecordBatch
    source: str
    first_row: int
    bytes_read: int = 0  # of the source file so far, for progress


@dataclass(eq=False)
class Source:
    """One input file (or standard input) of a known format with its header."""

    name: str
    path: Path | None
    format: str  # "csv", "parquet" or "table" (in memory)
    schema: pa.Schema
    delimiter: str = ","
    compressed: bool = False
    size: int | None = None
    num_rows: int | None = None  # known up front for Parquet
    group_rows: list[int] | None = None  # Parquet: the rows of each row group
    block_size: int = CSV_BLOCK_BYTES  # CSV: grows with the row width
    _stdin: io.RawIOBase | None = field(default=None, repr=False)
    _parquet_buffer: pa.Buffer | None = field(default=None, repr=False)
    _parquet: object = field(default=None, repr=False)  # the open ParquetFile: its index is read once
    _table: pa.Table | None = field(default=None, repr=False)
    _raw: pa.NativeFile | None = field(default=None, repr=False)
    _head: bytes = field(default=b"", repr=False)  # a stream's first bytes, for error messages
    column_names: list[str] | None = None  # a header line read differently (numpy's '# a,b,c')
    sample: pa.Table | None = field(default=None, repr=False)  # the first rows, as header inference saw them
    remote: Any = field(default=None, repr=False)  # a remote.RemoteFile (s3://, http://...): opened through it
    _range_end: int | None = field(default=None, repr=False)  # parallel CSV: the end of the range being read

    @property
    def rereadable(self) -> bool:
        """A file that can be read again (a local or remote path, not a stream)."""
        return self.path is not None or self.remote is not None

    @property
    def threads(self) -> bool:
        """Whether Arrow's threads may read it: not through Python (a stream, an fsspec file)."""
        return self._stdin is None and self.remote is None

    def head(self, rows: int = 1000) -> pa.Table:
        """The first rows: the sample header inference parsed (CSV), or the first batch (Parquet)."""
        if self.sample is None and self._table is not None:
            self.sample = self._table.slice(0, rows)
        elif self.sample is None:
            # A wide file's sample leaves out its floating-point columns (class values, never labels).
            columns = None if len(self.schema) <= WIDE_COLUMNS else [
                f.name for f in self.schema if not pa.types.is_floating(f.type)]
            try:
                first = next(self._parquet_file().iter_batches(batch_size=rows, columns=columns), None)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(self.name, f"cannot read Parquet: {_first_line(str(exc))}") from exc
            self.sample = pa.Table.from_batches([first]) if first is not None else self.schema.empty_table()
            self._forget_wide_index()
        return self.sample

    def _forget_wide_index(self) -> None:
        """A wide Parquet file's index (500 MB at 200,000 columns) is not kept between reads, so
        that two such files (``nll kl P Q``) do not hold both at once."""
        if len(self.schema) > WIDE_COLUMNS and self._parquet is not None:
            self._parquet = None
            _release_freed_memory()

    @classmethod
    def from_table(cls, data, name: str = "<table>") -> "Source":
        """An in-memory pandas DataFrame or pyarrow Table (for the Python API)."""
        if not isinstance(data, pa.Table):
            try:
                data = pa.Table.from_pandas(data, preserve_index=False)
            except (TypeError, AttributeError, pa.ArrowException) as exc:
                raise UsageError(f"cannot read {type(data).__name__}: pass a path, a DataFrame or a pyarrow "
                                 "Table") from exc
        return cls(name, None, "table", data.schema, _table=data)

    def reads_on_every_core(self, types: dict[str, pa.DataType]) -> bool:
        """Whether batches() keeps parse_threads() threads busy: a CSV file parsed in byte ranges,
        a Parquet file's columns decoded side by side (not a CSV file read in one stream)."""
        if self.format == "parquet":
            return self.threads
        packed = getattr(types, "packed", None)
        return self.format == "csv" and not (packed and self._contiguous(packed)) and self._splittable()

    def batches(self, columns: list[str], types: dict[str, pa.DataType]) -> Iterator[Chunk]:
        """Stream the given columns, cast to the given types, in bounded-size batches."""
        row = 1
        packed = getattr(types, "packed", None)
        if packed and self.format == "csv" and self._contiguous(packed):
            stream = self._wide_csv_batches(columns, types, packed)
        elif packed and self.format == "parquet" and self._groups_fit(len(packed)):
            stream = self._wide_parquet_batches(columns, types, packed)
        elif self.format == "csv" and self._splittable():
            stream = self._parallel_csv_batches(columns, types)
        elif self.format == "csv":
            stream = self._csv_batches(columns, types)
        elif self.format == "parquet":
            stream = self._parquet_batches(columns, types)
        elif self._table is not None:
            stream = (_cast(b, types, self.name) for b in self._table.select(columns).to_batches(PARQUET_BATCH_ROWS))
        else:
            raise ValueError(f"{self.name}: a {self.format} source without its data")
        for batch in stream:
            if batch.num_rows:
                yield Chunk(batch, self.name, row, self._bytes_read(row + batch.num_rows - 1))
                row += batch.num_rows

    def _bytes_read(self, rows: int) -> int:
        if self._range_end is not None:
            return self._range_end
        if self._raw is not None:
            return self._raw.tell()
        if self.size and self.num_rows:
            return int(self.size * min(1.0, rows / self.num_rows))
        return 0

    # -- CSV -------------------------------------------------------------------------------

    def _csv_options(self, columns=None, types=None, use_threads=True, check_utf8=True):
        read = pacsv.ReadOptions(block_size=self.block_size, use_threads=use_threads,
                                 column_names=self.column_names, skip_rows=1 if self.column_names else 0)
        parse = pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True)
        convert = pacsv.ConvertOptions(include_columns=columns, column_types=types, check_utf8=check_utf8,
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
        return dict(read_options=read, parse_options=parse, convert_options=convert)

    def _open_raw(self):
        if self._stdin is not None:
            stream = self._stdin
            self._stdin = None  # standard input can be streamed only once
            return stream
        if self._raw is not None:  # read again: with a larger block, or to locate an error
            self._raw.close()
        try:
            self._raw = self.remote.arrow_file() if self.remote is not None else pa.OSFile(str(self.path), "r")
        except OSError as exc:
            raise os_error(self.name, exc) from exc
        return pa.CompressedInputStream(self._raw, "gzip") if self.compressed else self._raw

    def _csv_batches(self, columns, types) -> Iterator[pa.RecordBatch]:
        """The batches of the file; a row too long for the block makes a file be read again with
        a block 4 times larger (up to ROW_LIMIT), skipping the rows already given."""
        done = 0
        # A Python stream is read on this thread only: Arrow's own threads must not call
        # back into Python (they could still be doing so when the interpreter exits).
        use_threads = self.threads
        while True:
            skip = done
            try:
                reader = pacsv.open_csv(self._open_raw(), **self._csv_options(columns, types, use_threads))
                for batch in reader:
                    if skip:
                        batch, skip = batch.slice(min(skip, batch.num_rows)), max(0, skip - batch.num_rows)
                    if batch.num_rows:
                        done += batch.num_rows
                        yield batch
                return
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
                if not _straddles(exc):
                    raise self._csv_error(exc) from exc
                if not self.rereadable or self.block_size >= ROW_LIMIT:
                    raise self._row_too_long(done + 1) from exc
                self.block_size = min(ROW_LIMIT, self.block_size * 4)

    # -- plain CSV parsed on every core ---------------------------------------------------

    def _splittable(self) -> bool:
        """A local, uncompressed file large enough to be parsed in byte ranges on several cores."""
        return (self.path is not None and self.remote is None and self._stdin is None and not self.compressed
                and (self.size or 0) >= 2 * CSV_RANGE_BYTES and parse_threads() > 1)

    def _parallel_csv_batches(self, columns, types) -> Iterator[pa.RecordBatch]:
        """The batches of the file, its data cut at line ends into ranges of about CSV_RANGE_BYTES
        parsed by parse_threads() threads at once (pyarrow parses without the GIL), given in order.

        A range holding a quote (a field may hold a line end, so the next cut may be inside it),
        or failing to parse, hands the rest to the one-stream reader, which skips the rows already
        given: quoted files, and every error message and row number, are exactly those of one stream.
        """
        from concurrent.futures import ThreadPoolExecutor

        header_end = csv_header_end(self)
        if header_end is None:
            yield from self._csv_batches(columns, types)
            return
        options = self._csv_options(columns, self._narrow_text(types), use_threads=False)
        # No null, true or false spellings: pyarrow then builds no lookup tables for each column of
        # each range (a tenth of the CPU at 1,000 columns). A missing value fails its range, and
        # the one-stream reader, with the usual options, reads the rest of the file as ever.
        convert = options["convert_options"]
        convert.null_values, convert.true_values, convert.false_values = [], [], []
        try:  # the header's names as pyarrow reads them: the ranges are parsed without it
            names = self.column_names or pacsv.read_csv(
                pa.py_buffer(read_byte_range(self, 0, header_end)), parse_options=options["parse_options"],
                read_options=pacsv.ReadOptions(block_size=header_end + 1, use_threads=False)).column_names
        except (pa.ArrowInvalid, UnicodeDecodeError):
            names = None
        if not names:
            yield from self._csv_batches(columns, types)
            return
        cuts = csv_cuts(self, header_end, CSV_RANGE_BYTES)

        def parse(start: int, stop: int) -> pa.Table | None:
            data = read_byte_range(self, start, stop)
            if holds_quote(data):
                return None
            # An ordinary range in one block: one chunk per column, no copy to join them. A range
            # this long holds a long row: the file's block, so a row past ROW_LIMIT fails as in one stream.
            block = len(data) + 1 if len(data) <= min(2 * CSV_RANGE_BYTES, ROW_LIMIT) else self.block_size
            read = pacsv.ReadOptions(column_names=names, block_size=block, use_threads=False)
            try:
                return pacsv.read_csv(pa.py_buffer(data), **{**options, "read_options": read})
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
                return None

        done = 0
        workers = parse_threads()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="nll-csv")
        try:
            ranges = iter(zip(cuts, cuts[1:]))
            pending = [(stop, pool.submit(parse, start, stop)) for start, stop in itertools.islice(ranges, workers + 1)]
            while pending:
                stop, future = pending.pop(0)
                table = future.result()
                if table is None:
                    break
                following = next(ranges, None)
                if following is not None:
                    pending.append((following[1], pool.submit(parse, *following)))
                self._range_end = stop
                for batch in equal_slices(table.combine_chunks().to_batches()):
                    done += batch.num_rows
                    yield batch
                del table
            else:
                return
        finally:
            self._range_end = None
            pool.shutdown(wait=True, cancel_futures=True)
        stream = self._csv_batches(columns, types)
        for batch in stream:  # the rest in one stream: a quoted field, or an error to report
            if done:
                batch, done = batch.slice(min(done, batch.num_rows)), max(0, done - batch.num_rows)
            if batch.num_rows:
                yield batch

    def _narrow_text(self, types: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
        """``types`` with each of its ``plain_text`` columns (the label) read as plain text when
        every value of the sample has one width of at most 8 bytes, which columns.FixedWidthCodes
        matches in a third of the time pyarrow's dictionary encoding takes; else as it was."""
        plain = [c for c in getattr(types, "plain_text", ()) if self.sample is not None
                 and c in self.sample.column_names and _one_narrow_width(self.sample.column(c))]
        if not plain:
            return types
        narrowed = dict(types)
        narrowed.update((c, pa.string()) for c in plain)
        return narrowed

    # -- wide CSV: the class fields parsed as one column ------------------------------------

    def _contiguous(self, packed: list[str]) -> bool:
        """The class columns fill a run of adjacent columns of the file (in any order)."""
        position = {n: i for i, n in enumerate(self.schema.names)}
        if any(c not in position for c in packed):
            return False
        where = [position[c] for c in packed]
        return max(where) - min(where) + 1 == len(set(where)) == len(packed)

    def _wide_csv_batches(self, columns, types, packed: list[str]) -> Iterator[pa.RecordBatch]:
        """The batches with the class columns as one PACKED column.

        Each block of whole rows is parsed twice: by pyarrow for the other columns (it also checks
        every row's width), and for the class fields, cut out of each row and written one a line,
        by pyarrow again as a single float64 column: the values follow the rules of the ordinary
        path, and pyarrow keeps no state for each of 200,000 columns (about 10 KB each).
        """
        names = self.schema.names
        position = {n: i for i, n in enumerate(names)}
        where = np.array([position[c] for c in packed])
        first, last = int(where.min()), int(where.max())
        order = where - first
        in_order = bool(np.array_equal(order, np.arange(len(order))))
        packed_set = set(packed)
        others = [c for c in columns if c not in packed_set]
        # pyarrow reads one column at least: it counts the rows and checks their width.
        wanted = others or [names[first]]
        generated = [f"f{position[c]}" for c in wanted]
        read = pacsv.ReadOptions(use_threads=self.threads, autogenerate_column_names=True)
        parse = pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True)
        convert = pacsv.ConvertOptions(include_columns=generated, check_utf8=True,
                                       column_types={g: types.get(c, pa.string()) for g, c in zip(generated, wanted)},
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
        schema = pa.schema([*(pa.field(c, pa.null()) for c in others), packed_field(packed)])
        row = 1
        for block in self._row_blocks():
            read.block_size = len(block) + 1  # one block: no row straddles two
            try:
                table = pacsv.read_csv(pa.py_buffer(block), read_options=read, parse_options=parse,
                                       convert_options=convert)
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
                raise self._csv_error(exc) from exc
            matrix = self._class_fields(block, table.num_rows, first, last, row)
            if not in_order:
                matrix = matrix[:, order]
            offset = 0
            for part in table.to_batches():
                n = part.num_rows
                values = pa.array(matrix[offset:offset + n].reshape(-1))
                arrays = [part.column(g) for g in generated[:len(others)]]
                fields = [schema.field(c).with_type(a.type) for c, a in zip(others, arrays)]
                yield pa.RecordBatch.from_arrays([*arrays, pa.FixedSizeListArray.from_arrays(values, len(packed))],
                                                 schema=pa.schema([*fields, schema.field(PACKED)]))
                offset += n
            row += table.num_rows

    def _row_blocks(self) -> Iterator[bytes]:
        """The data rows in blocks of whole rows of about ``block_size`` bytes (the header left out).

        A row longer than the block makes that block longer (up to ROW_LIMIT): the file is never
        read twice, so this works on standard input too.
        """
        stream = self._open_raw()
        carry, header, rows = b"", True, 0
        size = min(self.block_size, WIDE_BLOCK_BYTES)
        try:
            while True:
                piece = bytes(stream.read(size))
                data = carry + piece if carry else piece
                if not piece:
                    if not header and data.strip():
                        yield data  # the last row, without a line end
                    return
                ends, _ = _row_ends(data, False)
                if header and ends.size:
                    carry, header = data[int(ends[0]) + 1:], False
                    continue
                if not ends.size:
                    if len(data) > (HEADER_LIMIT if header else ROW_LIMIT):
                        raise InputError(self.name, f"row longer than {_mib(ROW_LIMIT)}", rows=[rows + 1])
                    carry = data
                    continue
                cut = int(ends[-1]) + 1
                carry = data[cut:]
                rows += ends.size
                yield data[:cut]
        except OSError as exc:
            raise self._csv_error(exc) from exc

    def _class_fields(self, block: bytes, rows: int, first: int, last: int, first_row: int) -> np.ndarray:
        """The (rows, last - first + 1) float64 matrix of the fields first..last of each row."""
        width = len(self.schema.names)
        text = self._cut_fields(block, rows, first, last, width)
        if text is None:  # lines pyarrow counts another way (a lone \r): Python's csv module
            text = self._quoted_fields(block, rows, first, last)
        span = last - first + 1
        read = pacsv.ReadOptions(column_names=["v"], use_threads=self.threads)
        parse = pacsv.ParseOptions(delimiter=self.delimiter, ignore_empty_lines=False, newlines_in_values=True)
        try:
            column = pacsv.read_csv(pa.py_buffer(text), read_options=read, parse_options=parse,
                                    convert_options=pacsv.ConvertOptions(column_types={"v": pa.float64()}))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._class_field_error(text, read, parse, span, first, first_row, exc) from exc
        values = column.column(0)
        if len(values) != rows * span:
            raise InputError(self.name, f"cannot read CSV: {len(values)} class values in rows "
                                        f"{first_row}..{first_row + rows - 1}, expected {rows * span}")
        return np.concatenate([floats(chunk) for chunk in values.chunks]).reshape(rows, span) if rows else \
            np.empty((0, span))

    def _cut_fields(self, block: bytes, rows: int, first: int, last: int, width: int) -> bytes | None:
        """Fields first..last of each row, one a line (quoted fields stay quoted); None if the
        lines found are not the rows pyarrow found (line ends other than \\n and \\r\\n)."""
        if not block.endswith(b"\n"):
            block += b"\n"
        codes = np.frombuffer(block, np.uint8)
        ends, _ = _row_ends(block, False)
        starts = np.concatenate(([0], ends[:-1] + 1))
        crlf = codes[np.maximum(ends - 1, 0)] == ord("\r")
        stops = ends - crlf
        kept = stops > starts  # blank lines are not rows
        starts, stops = starts[kept], stops[kept]
        delimiters = np.flatnonzero(codes == ord(self.delimiter))
        quotes = np.flatnonzero(codes == ord('"'))
        if quotes.size:  # a delimiter between quotes is text
            delimiters = delimiters[np.searchsorted(quotes, delimiters) % 2 == 0]
        if (starts.size != rows or delimiters.size != rows * (width - 1)
                or np.count_nonzero(codes == ord("\r")) != np.count_nonzero(crlf)):
            return None
        fields = delimiters.reshape(rows, width - 1)
        begin = starts if first == 0 else fields[:, first - 1] + 1
        end = stops if last == width - 1 else fields[:, last]  # the byte after the last class field
        text = codes.copy()
        text[delimiters] = ord("\n")
        text[end] = ord("\n")
        keep = np.zeros(len(codes) + 1, np.int8)  # 1 from each row's first class byte to its end
        keep[begin] += 1
        keep[end + 1] -= 1
        return text[np.cumsum(keep[:-1], dtype=np.int8).view(bool)].tobytes()

    def _quoted_fields(self, block: bytes, rows: int, first: int, last: int) -> bytes:
        """Fields first..last of each row, one a line, written again as CSV (quoted where needed)."""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.delimiter, lineterminator="\n")
        text = io.TextIOWrapper(io.BytesIO(block), encoding="utf-8", errors="replace", newline="")
        count = 0
        for record in csv.reader(text, delimiter=self.delimiter):
            if record:
                writer.writerows([value] for value in record[first:last + 1])
                count += 1
        if count != rows:
            raise InputError(self.name, f"cannot read CSV: {count} rows found in a block where pyarrow found {rows}")
        return out.getvalue().encode()

    def _class_field_error(self, text: bytes, read, parse, span: int, first: int, first_row: int,
                           exc: Exception) -> InputError:
        """The first bad class value of a block: its column, and the rows where that column is bad."""
        import pyarrow.compute as pc

        try:
            strings = pacsv.read_csv(pa.py_buffer(text), read_options=read, parse_options=parse,
                                     convert_options=pacsv.ConvertOptions(column_types={"v": pa.string()}))
            strings = strings.column(0).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return InputError(self.name, f"cannot read CSV: {_first_line(str(exc))}")
        ok = pc.match_substring_regex(strings, "(?i)^" + _NUMERIC.pattern + "$")
        bad = integers(pc.indices_nonzero(pc.invert(ok.fill_null(True))), fill=0)
        if not bad.size:
            return InputError(self.name, f"cannot read CSV: {_first_line(str(exc))}")
        column = int(bad[0]) % span
        name = self.schema.names[first + column]
        in_block = (first_row + bad[bad % span == column] // span).tolist()
        # A file is searched to its end for that column's bad rows (pyarrow reads that column only).
        rows = (self._rows_not_numeric(name) if self.rereadable else None) or in_block[:5]
        return InputError(self.name, f"non-numeric value {strings[int(bad[0])].as_py()!r}", column=name, rows=rows)

    def _row_too_long(self, row: int) -> InputError:
        if not self.rereadable:  # a stream cannot be read again with a larger block
            return InputError(self.name, f"row longer than the {_mib(self.block_size)} block chosen from the "
                                         "first rows of a stream", rows=[row],
                              hint=f"give the file by its path: rows up to {_mib(ROW_LIMIT)} are read")
        return InputError(self.name, f"row longer than {_mib(ROW_LIMIT)}", rows=[row])

    def _csv_error(self, exc: Exception) -> InputError:
        """Turn a pyarrow CSV error into one line naming the column and first rows where known."""
        message = _first_line(str(exc))
        conversion = re.match(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+): "
                              r"invalid value '(.*)'", message)
        if conversion:
            names = self.schema.names or self._header()
            number = int(conversion.group(1))  # pyarrow counts every column of the file
            column = names[number] if number < len(names) else f"#{number + 1}"
            rows = self._rows_not_numeric(column)
            return InputError(self.name, f"non-numeric value {conversion.group(3)!r}", column=column,
                              rows=rows)
        if "Expected" in message and "columns" in message:
            rows = self._rows_with_wrong_width()
            detail = re.sub(r"^CSV parse error: (Row #\d+: )?", "", message)
            return InputError(self.name, f"malformed CSV: {detail.split(':')[0]}", rows=rows)
        if isinstance(exc, (OSError, UnicodeDecodeError)) and "gzip" in message.lower():
            return InputError(self.name, f"cannot decompress: {message}")
        if isinstance(exc, OSError) and exc.errno is not None:
            return os_error(self.name, exc)
        if "UTF8" in message or "UTF-8" in message:
            return InputError(self.name, "text is not valid UTF-8 (re-save the file as UTF-8)")
        return InputError(self.name, f"cannot read CSV: {message}")

    def _rows_not_numeric(self, column: str, limit: int = 5) -> list[int] | None:
        """Error path only: the first data rows whose ``column`` is not a number."""
        if self.rereadable:  # pyarrow reads the one column as text: fast on big files
            try:
                import pyarrow.compute as pc

                options = self._csv_options([column], {column: pa.string()}, check_utf8=False)
                found, row = [], 1
                for batch in pacsv.open_csv(self._open_raw(), **options):
                    ok = pc.match_substring_regex(batch.column(0), "(?i)^" + _NUMERIC.pattern + "$")
                    found += [row + i for i in pc.indices_nonzero(pc.invert(ok)).to_pylist()[:limit]]
                    row += batch.num_rows
                    if len(found) >= limit:
                        break
                return found[:limit] or None
            except (pa.ArrowException, OSError):
                pass  # a file broken in another way too: the slow search below copes
        header = self._header()
        index = header.index(column) if column in header else -1
        return self._first_rows(lambda record: len(record) > index >= 0 and not _NUMERIC.fullmatch(record[index]))

    def _rows_with_wrong_width(self) -> list[int] | None:
        width = len(self._header())
        return self._first_rows(lambda record: len(record) != width)

    def _header(self) -> list[str]:
        return next(self._records(), [])

    def _records(self) -> Iterator[list[str]]:
        """Error path only: the header, then the data rows, as lists of fields.

        Python's csv module reads the file again (bytes that are not UTF-8 replaced, so a bad
        byte cannot hide the row); a stream is searched in the sample read for its header.
        Blank lines are not rows, as for pyarrow. A broken file simply ends early.
        """
        import gzip

        try:
            raw: IO[bytes]
            if self.remote is not None:
                remote_file = self.remote.python_file()
                raw = gzip.GzipFile(fileobj=remote_file) if self.compressed else remote_file  # type: ignore[assignment]
            elif self.path is not None:
                raw = gzip.open(self.path, "rb") if self.compressed else open(self.path, "rb")  # type: ignore[assignment]
            else:
                raw = io.BytesIO(self._head)
            with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="") as text:
                yield from (r for r in csv.reader(text, delimiter=self.delimiter) if r)
        except (OSError, EOFError, csv.Error):
            return

    def _first_rows(self, is_bad, limit: int = 5) -> list[int] | None:
        """Error path only: the first 1-based data rows for which ``is_bad(fields)`` holds."""
        records = self._records()
        next(records, None)  # the header
        bad = (number for number, record in enumerate(records, start=1) if is_bad(record))
        return list(itertools.islice(bad, limit)) or None

    # -- Parquet ---------------------------------------------------------------------------

    def _parquet_file(self, dictionary: Sequence[str] = ()):
        """The file's ParquetFile; ``dictionary``: text columns to read dictionary-encoded (the
        labels and groups, as the CSV reader gives them), from the file's own dictionary pages."""
        import pyarrow.parquet as pq  # imported only for Parquet input: it costs start-up time

        parquet: Any = self._parquet
        if parquet is None:  # its index costs about 2.5 KB a column: read once, kept unless wide
            # pre_buffer would read whole row groups ahead; without it memory stays flat as files grow.
            # A column chunk is read in pieces of PARQUET_READ_BYTES, not whole, as its pages are decoded.
            parquet = self._parquet = pq.ParquetFile(self._parquet_source(), pre_buffer=False,
                                                     buffer_size=PARQUET_READ_BYTES)
        if not dictionary:
            return parquet
        return pq.ParquetFile(self._parquet_source(), pre_buffer=False, buffer_size=PARQUET_READ_BYTES,
                              metadata=parquet.metadata, read_dictionary=list(dictionary))

    def _parquet_source(self):
        if self._parquet_buffer is not None:
            return pa.BufferReader(self._parquet_buffer)
        return self.remote.arrow_file() if self.remote is not None else str(self.path)

    def _parquet_batches(self, columns, types) -> Iterator[pa.RecordBatch]:
        yield from parquet_row_groups(self, None, columns, types)

    def _groups_fit(self, width: int) -> bool:
        """Every row group's class matrix fits in WIDE_GROUP_BYTES: the wide path reads a group at a time."""
        return self.group_rows is not None and max(self.group_rows, default=0) * width * 8 <= WIDE_GROUP_BYTES

    def _wide_parquet_batches(self, columns, types, packed: list[str]) -> Iterator[pa.RecordBatch]:
        """The batches with the class columns as one PACKED column, each row group's class matrix
        read WIDE_SLICE columns at a time (pyarrow keeps about 10 KB of state for each column read).

        The file's index is opened for the first row group and dropped after the last one is read;
        reading a group holds _WIDE_INDEX_LOCK, so two files read side by side (P and Q) do not
        hold their indexes at once when each has a single row group.
        """
        packed_set = set(packed)
        others = [c for c in columns if c not in packed_set]
        rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_VALUES // len(packed)))
        parquet = None
        try:
            groups = self.group_rows or []
            for group, group_rows in enumerate(groups):
                with _WIDE_INDEX_LOCK:
                    parquet = parquet or self._parquet_file()
                    self._forget_wide_index()
                    matrix, rest = self._wide_group(parquet, group, group_rows, packed, others, types)
                    if group == len(groups) - 1:
                        parquet = None  # all read: the index goes before the last batches are used
                        _release_freed_memory()
                for offset in range(0, group_rows, rows):
                    values = pa.array(matrix[offset:offset + rows].reshape(-1))
                    arrays = [rest.column(c).slice(offset, rows) for c in others]
                    fields = [pa.field(c, a.type) for c, a in zip(others, arrays)]
                    yield pa.RecordBatch.from_arrays(
                        [*arrays, pa.FixedSizeListArray.from_arrays(values, len(packed))],
                        schema=pa.schema([*fields, packed_field(packed)]))
        except (pa.ArrowException, OSError) as exc:
            raise InputError(self.name, f"cannot read Parquet: {_first_line(str(exc))}") from exc

    def _wide_group(self, parquet, group: int, group_rows: int, packed: list[str], others: list[str], types):
        """One row group: its (rows, K) class matrix and a batch of the other columns."""
        matrix = np.empty((group_rows, len(packed)))
        for start in range(0, len(packed) if group_rows else 0, WIDE_SLICE):
            part = _one_batch(parquet.read_row_group(group, columns=packed[start:start + WIDE_SLICE]))
            if any(t != pa.float64() for t in set(part.schema.types)):
                try:  # float32 or integers: one cast for the slice
                    part = part.cast(pa.schema([pa.field(n, pa.float64()) for n in part.schema.names]))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    part = _cast(part, types, self.name)  # to name the column that cannot be cast
            matrix[:, start:start + part.num_columns] = part.to_tensor(null_to_nan=True).to_numpy()
        rest = _cast(_one_batch(parquet.read_row_group(group, columns=others)), types, self.name) if others else None
        return matrix, rest

    def _values_per_row(self, parquet, columns: list[str]) -> int:
        """Values a row holds in ``columns``: one per plain column, a list column's mean length in
        the first row group (a list of 200,000 probabilities is 200,000 values)."""
        nested = {c for c in columns if pa.types.is_nested(self.schema.field(c).type)}
        count = len(columns) - len(nested)
        meta = parquet.metadata
        if nested and meta.num_row_groups and meta.row_group(0).num_rows:
            group = meta.row_group(0)
            for j in range(group.num_columns):
                chunk = group.column(j)
                if chunk.path_in_schema.split(".")[0] in nested:
                    count += -(-chunk.num_values // group.num_rows)
        return max(1, count)


def _cast(batch: pa.RecordBatch, types: dict[str, pa.DataType], source: str) -> pa.RecordBatch:
    """Cast Parquet columns to the types asked for (float32 -> float64, categories -> text)."""
    arrays = []
    for name, array in zip(batch.schema.names, batch.columns):
        if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or (
                pa.types.is_dictionary(array.type) and pa.types.is_string(array.type.value_type)):
            try:  # Parquet does not promise valid UTF-8 text
                array.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise InputError(source, "text is not valid UTF-8", column=name) from exc
        wanted = types.get(name)
        if wanted is not None and array.type != wanted:
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            try:
                if pa.types.is_dictionary(wanted):
                    array = array.cast(wanted.value_type).dictionary_encode()
                else:
                    array = array.cast(wanted)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(source, f"cannot use {array.type} values as {wanted}", column=name) from exc
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _release_freed_memory() -> None:
    """Give the memory freed by a dropped Parquet index back to the system (glibc only).

    Each reader thread allocates from its own malloc arena, so an index freed in one thread is
    not reused by the next file's index read in another: without this, two 200,000-column files
    read one after the other hold 500 MB each.
    """
    import ctypes
    import gc

    gc.collect()  # a ParquetFile may sit in a reference cycle
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: memory is simply kept


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """A table's columns as one record batch."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], names=table.column_names)


def _one_narrow_width(column: pa.ChunkedArray, rows: int = 1000) -> bool:
    """The first values of a sample's column are all text (or numbers) of one width of 1 to 8 bytes."""
    values = column.slice(0, rows).to_pylist()
    if not values or any(v is None for v in values):
        return False
    widths = {len(str(v).encode("utf-8")) for v in values}
    return len(widths) == 1 and 0 < widths.pop() <= 8


def _straddles(exc: Exception) -> bool:
    """pyarrow's error for a row that does not fit in one block."""
    return "straddling" in str(exc)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def os_error(name: str, exc: OSError, doing: str = "") -> InputError:
    """An operating-system fault as one line: the path and the reason ('permission denied')."""
    reason = (exc.strerror or str(exc)).rstrip(".")
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory"
    reason = doing + reason[:1].lower() + reason[1:]
    if isinstance(exc, PermissionError) and name != STDIN and not name.startswith("<"):
        folder = _unenterable_folder(Path(name))
        if folder is not None:
            reason += f" (cannot enter folder {str(folder)!r})"
    return InputError(name, reason)


def _unenterable_folder(path: Path) -> Path | None:
    """The folder on ``path`` (as given) whose entries cannot be looked up, if that is why it failed."""
    parts = path.parts
    for depth in range(1, len(parts)):
        try:
            os.stat(Path(*parts[: depth + 1]))
        except PermissionError:
            return Path(*parts[:depth])
        except OSError:
            return None
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


class _Replay(io.RawIOBase):
    """A read-only stream that gives back an already-read prefix, then the rest of a stream."""

    def __init__(self, prefix: bytes, rest):
        self._prefix, self._rest = memoryview(prefix), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Fill the whole buffer unless the input ends: pyarrow's CSV reader needs every block
        but the last to hold complete rows, so a short read would split a row."""
        n = min(len(buffer), len(self._prefix))
        buffer[:n] = self._prefix[:n]
        self._prefix = self._prefix[n:]
        while n < len(buffer):
            data = self._rest.read(len(buffer) - n)
            if not data:
                break
            buffer[n : n + len(data)] = data
            n += len(data)
        return n


# -- opening ---------------------------------------------------------------------------------


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Paths as given, with each directory replaced by the data files below it (sorted).

    A folder or file below it that cannot be read is an error, never skipped.
    """
    expanded: list[str] = []
    for raw in paths:
        if raw != STDIN and _is_dir(raw):
            found = sorted(_data_files(Path(raw), set()))
            if not found:
                raise InputError(raw, "directory holds no .csv, .tsv or .parquet files")
            expanded.extend(found)
        else:
            expanded.append(raw)
    if expanded.count(STDIN) > 1:
        raise UsageError("standard input (-) can be read only once")
    return expanded


def _is_dir(raw: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(raw).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False  # opening it says what is wrong
    except OSError as exc:
        raise os_error(raw, exc) from exc


def _data_files(folder: Path, seen: set[tuple[int, int]]) -> Iterator[str]:
    """The data files below ``folder``, following links to folders once each.

    Hidden and underscore entries (.ipynb_checkpoints, _temporary, _SUCCESS) are not data.
    """
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        raise os_error(str(folder), exc, doing="cannot list folder: ") from exc
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        path = folder / entry.name
        try:
            if entry.is_dir():
                yield from _data_files(path, seen)
            elif entry.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
                if not entry.is_file() and entry.is_symlink():
                    raise InputError(str(path), "broken symbolic link")
                yield str(path)
        except OSError as exc:
            raise os_error(str(path), exc) from exc


def open_source(raw: str, storage_options: dict | None = None) -> Source:
    """Open one path (or '-', or a URL) and read its header. Raises InputError with the file name."""
    if raw == STDIN:
        return _open_stdin()
    from . import remote

    if remote.is_url(raw):
        return _open_remote(remote.RemoteFile.open(raw, storage_options))
    path = Path(raw)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise InputError(raw, "is a directory")
        if not stat.S_ISREG(info.st_mode):  # a pipe, <(command), a device: one pass only
            return _open_stream(open(path, "rb"), raw)
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise os_error(raw, exc) from exc
    if info.st_size == 0:
        raise InputError(raw, "file is empty")
    lower = path.name.lower()
    if magic == PARQUET_MAGIC or lower.endswith(PARQUET_SUFFIXES):
        source = Source(raw, path, "parquet", pa.schema([]), size=info.st_size)
        source.schema = _parquet_schema(source)
        return source
    compressed = magic[:2] == GZIP_MAGIC
    delimiter = "\t" if lower.endswith((".tsv", ".tsv.gz")) else None
    source = Source(raw, path, "csv", pa.schema([]), compressed=compressed, size=info.st_size)
    try:
        stream = pa.input_stream(str(path), compression="gzip" if compressed else None)
    except OSError as exc:
        raise os_error(raw, exc) from exc
    with stream:
        head, source.block_size = _read_head(stream, raw)
    return _with_header(source, head, delimiter)


def _open_remote(file) -> Source:
    """A remote file (a remote.RemoteFile): its format from its first bytes or name, its header read
    through the file system; the file is opened again for each pass, like a local one."""
    name = file.name
    magic = file.read(4)
    if not magic:
        raise InputError(name, "file is empty")
    lower = name.lower()
    if magic == PARQUET_MAGIC or lower.endswith(PARQUET_SUFFIXES):
        source = Source(name, None, "parquet", pa.schema([]), size=file.size, remote=file)
        source.schema = _parquet_schema(source)
        return source
    compressed = magic[:2] == GZIP_MAGIC
    delimiter = "\t" if lower.endswith((".tsv", ".tsv.gz")) else None
    source = Source(name, None, "csv", pa.schema([]), compressed=compressed, size=file.size, remote=file)
    stream = file.arrow_file()
    with stream:
        head, source.block_size = _read_head(pa.CompressedInputStream(stream, "gzip") if compressed else stream, name)
    return _with_header(source, head, delimiter)


def _open_stdin() -> Source:
    return _open_stream(sys.stdin.buffer, "<stdin>")


def _open_stream(stream, name: str) -> Source:
    """A source read once from a stream (stdin, a pipe): CSV is streamed, Parquet spooled to a
    temporary file (its index sits at the end), which is memory-mapped and already deleted."""
    try:
        head = stream.read(4)
        if head == PARQUET_MAGIC:
            import tempfile

            with tempfile.NamedTemporaryFile(prefix="nll-stdin-", suffix=".parquet") as spool:
                spool.write(head)
                shutil.copyfileobj(stream, spool, CSV_BLOCK_BYTES)
                spool.flush()
                data = pa.memory_map(spool.name).read_buffer()  # stays valid once the file is gone
    except OSError as exc:
        raise os_error(name, exc) from exc
    if head == PARQUET_MAGIC:
        source = Source(name, None, "parquet", pa.schema([]), size=data.size, _parquet_buffer=data)
        source.schema = _parquet_schema(source)
        return source
    if not head:
        raise InputError(name, "no input (the stream is empty)")
    raw = _Replay(head, stream)
    if head[:2] == GZIP_MAGIC:
        raw = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "gzip")
    prefix, block_size = _read_head(raw, name)
    replay = _Replay(prefix, raw)
    source = Source(name, None, "csv", pa.schema([]), block_size=block_size, _stdin=replay)
    # The sample searched for bad rows: whole lines only, unless it is all there is.
    source._head = prefix if len(prefix) < CSV_BLOCK_BYTES else prefix[: prefix.rfind(b"\n") + 1]
    return _with_header(source, prefix, None)


def _read_head(stream, name: str) -> tuple[bytes, int]:
    """The first bytes of a text stream, to type the columns from, and the block its rows need.

    At least CSV_BLOCK_BYTES (or all there is), then on until the header and SAMPLE_ROWS data
    rows are in. Stops at a NUL byte (a binary file: the caller refuses it); a header longer
    than HEADER_LIMIT or a row longer than ROW_LIMIT is an error. The block holds
    ROWS_PER_BLOCK of the longest line seen, in powers of 2 from CSV_BLOCK_BYTES to ROW_LIMIT.
    """
    pieces: list[bytes] = []
    size = rows = last_end = longest = 0  # rows: complete lines, the header included
    in_quotes = False
    try:
        while True:
            piece = bytes(stream.read(CSV_BLOCK_BYTES))
            if not piece:
                break
            ends, in_quotes = _row_ends(piece, in_quotes)
            if ends.size:
                ends += size + 1
                longest = max(longest, int(ends[0]) - last_end, int(np.diff(ends).max(initial=0)))
                rows, last_end = rows + ends.size, int(ends[-1])
            pieces.append(piece)
            size += len(piece)
            if b"\x00" in piece or (size >= CSV_BLOCK_BYTES and rows > SAMPLE_ROWS):
                break
            if not rows and size > HEADER_LIMIT:
                raise InputError(name, f"header line longer than {_mib(HEADER_LIMIT)} (no line end found)")
            if rows and size - last_end > ROW_LIMIT:
                raise InputError(name, f"row longer than {_mib(ROW_LIMIT)}", rows=[rows])
    except OSError as exc:
        if exc.errno is not None:
            raise os_error(name, exc) from exc
        raise InputError(name, f"cannot decompress: {_first_line(str(exc))}") from exc
    longest = max(longest, size - last_end)
    block = CSV_BLOCK_BYTES
    while block < ROW_LIMIT and block < ROWS_PER_BLOCK * longest:
        block *= 2
    return b"".join(pieces), block


def _row_ends(data: bytes, in_quotes: bool) -> tuple[np.ndarray, bool]:
    """Offsets of the line ends in ``data`` that end a row (not inside double quotes), and whether
    ``data`` ends inside quotes; ``in_quotes`` says whether it starts inside them."""
    codes = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(codes == ord("\n"))
    quotes = np.flatnonzero(codes == ord('"'))
    if not quotes.size and not in_quotes:
        return newlines, False
    outside = (np.searchsorted(quotes, newlines) + in_quotes) % 2 == 0
    return newlines[outside], bool((quotes.size + in_quotes) % 2)


def _with_header(source: Source, head: bytes, delimiter: str | None) -> Source:
    if not head.strip():
        raise InputError(source.name, "file is empty")
    if b"\x00" in head:
        raise InputError(source.name, "looks like a binary file, not CSV or Parquet")
    first_line = head.split(b"\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if first_line.count(b"\t") > first_line.count(b",") else ","
    source.delimiter = delimiter
    # Infer types from the first rows only; a cut last line is dropped.
    complete = head if head.endswith(b"\n") else head[: head.rfind(b"\n") + 1] or head
    if first_line.startswith(b"# "):  # numpy.savetxt(..., header=...) writes '# a,b,c': the header
        names = next(csv.reader([first_line[2:].decode("utf-8", "replace").rstrip("\r")], delimiter=delimiter))
        source.column_names = names
    if first_line.count(delimiter.encode()) >= WIDE_COLUMNS:
        return _wide_header(source, complete)
    try:
        table = pacsv.read_csv(io.BytesIO(complete), **source._csv_options())
        source.sample = table
        source.schema = _numeric_like(table)
        _ = source.schema.names  # column names that are not UTF-8 fail here, not later
    except UnicodeDecodeError as exc:
        raise InputError(source.name, "text is not valid UTF-8 (re-save the file as UTF-8)") from exc
    except pa.ArrowInvalid as exc:
        raise source._csv_error(exc) from exc
    return source


# pyarrow's default null values: missing, whatever the column's type.
_NULLS = frozenset(pacsv.ConvertOptions().null_values)  # what pyarrow reads as missing
_INTEGER = re.compile(r"[-+]?\d{1,18}")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|infinity|nan)", re.IGNORECASE)


def _wide_header(source: Source, complete: bytes) -> Source:
    """Header inference for a file of more than WIDE_COLUMNS columns without pyarrow typing them
    all (1.8 GB at 200,000 columns): a column whose sampled values are all integers or all numbers
    is typed here (int64, float64, null when all are missing); pyarrow types the others."""
    try:
        text = complete.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(source.name, "text is not valid UTF-8 (re-save the file as UTF-8)") from exc
    records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=source.delimiter) if r]
    names, rows = source.column_names or records[0], records[1:]
    wrong = [i for i, r in enumerate(rows, start=1) if len(r) != len(names)]
    if wrong:
        got = len(rows[wrong[0] - 1])
        raise InputError(source.name, f"malformed CSV: Expected {len(names)} columns, got {got}", rows=wrong)
    typed: dict[str, pa.DataType] = {}
    for name, values in zip(names, zip(*rows) if rows else [()] * len(names)):
        present = [v for v in values if v not in _NULLS]
        if not present:
            typed[name] = pa.null()
        elif all(_INTEGER.fullmatch(v) for v in present):
            typed[name] = pa.int64()
        elif all(_FLOAT.fullmatch(v) for v in present):
            typed[name] = pa.float64()
    others = [n for n in names if n not in typed]
    try:
        table = pacsv.read_csv(io.BytesIO(complete), **source._csv_options(others)) if others else None
    except pa.ArrowInvalid as exc:
        raise source._csv_error(exc) from exc
    inferred = _numeric_like(table) if table is not None else pa.schema([])
    source.schema = pa.schema([pa.field(n, typed[n]) if n in typed else inferred.field(n) for n in names])
    # The sample holds the columns a label may be found in: text, and integers when they are few.
    integral = [n for n in names if typed.get(n) == pa.int64()]
    sample = {n: table.column(n) for n in others} if table is not None else {}
    if len(integral) <= WIDE_COLUMNS:
        position = {n: j for j, n in enumerate(names)}
        for n in integral:
            sample[n] = pa.array([None if r[position[n]] in _NULLS else int(r[position[n]]) for r in rows], pa.int64())
    source.sample = pa.table({n: sample[n] for n in names if n in sample})
    return source


NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
# Numbers written another way: a decimal comma, or a spreadsheet's error value.
BROKEN_NUMBER = r"^\s*([-+]?\d*,\d+|#(DIV/0!|VALUE!|REF!|NAME\?|NUM!|NULL!|N/A))\s*$"
# What pyarrow parses as a float64, or as a missing value.
_NUMERIC = re.compile(r"\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|infinity|nan)"
                      r"|#N/A(\s*N/A)?|#NA|N/A|NA|NULL|-?1\.#(IND|QNAN))?\s*", re.IGNORECASE)


def _numeric_like(table: pa.Table, sample: int = 1000) -> pa.Schema:
    """The inferred schema, with text columns of numbers and broken numbers typed float64.

    A text column is numeric when more than half of its non-empty sampled values are numbers or
    numbers written another way (``0,5``, ``#DIV/0!``, ``#VALUE!``): it is a numeric column with
    bad values, to be reported at their rows when read as numbers, never silently left out.
    Up to ``sample`` values are checked (in Python: pyarrow.compute costs start-up time).
    """
    number, broken = re.compile(NUMBER), re.compile(BROKEN_NUMBER, re.IGNORECASE)
    fields = []
    for field_, column in zip(table.schema, table.columns):
        if pa.types.is_string(field_.type) and len(column) > 0:
            values = [v for v in column.slice(0, sample).to_pylist() if v is not None and v.strip()]
            if values and sum(1 for v in values if number.match(v) or broken.match(v)) * 2 > len(values):
                field_ = field_.with_type(pa.float64())
        fields.append(field_)
    return pa.schema(fields)


def _parquet_schema(source: Source) -> pa.Schema:
    try:
        parquet = source._parquet_file()
        source.num_rows = parquet.metadata.num_rows
        source.group_rows = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        source.schema = parquet.schema_arrow
        source._forget_wide_index()
        return source.schema
    except (pa.ArrowException, OSError) as exc:
        raise InputError(source.name, f"not a readable Parquet file: {_first_line(str(exc))}") from exc


def open_sources(paths: Iterable[str], storage_options: dict | None = None) -> list[Source]:
    """Open several inputs that together form one dataset: their columns must agree. URLs are
    expanded by remote.resolve (globs, prefixes)."""
    from . import remote

    expanded = [url for p in expand_inputs(paths)
                for url in (remote.resolve(p, storage_options)[1] if remote.is_url(p) else [p])]
    sources = [open_source(p, storage_options) for p in expanded]
    first = sources[0]
    for other in sources[1:]:
        if set(other.schema.names) != set(first.schema.names):
            missing = sorted(set(first.schema.names) - set(other.schema.names))
            extra = sorted(set(other.schema.names) - set(first.schema.names))
            raise InputError(other.name, f"columns differ from {first.name}: missing {missing}, extra {extra}")
    return sources


def chunks(sources: list[Source], columns: list[str], types: dict[str, pa.DataType]) -> "Prefetch":
    """All batches of all sources, parsed one step ahead in a thread while the caller computes."""
    return Prefetch(chunk for source in sources for chunk in source.batches(columns, types))


class Prefetch:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    pyarrow parses with the GIL released, so parsing the next batch overlaps with numpy work on
    this one. Errors are raised in the consumer. close() (or leaving a ``with`` block) stops and
    joins the thread, which must not outlive an error: the interpreter would abort at exit with
    a thread still inside pyarrow.
    """

    _DONE = object()

    def __init__(self, items: Iterator, depth: int = 2):
        self._items = items
        self._buffer: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="nll-reader", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._buffer.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def _work(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
            self._put((self._DONE, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((self._DONE, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item, error = self._buffer.get()
        if item is self._DONE:
            self._stop.set()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Interrupted (Ctrl-C, SIGTERM, SIGHUP): the thread may be blocked reading a pipe that
        # sends nothing more, so it gets a second to stop; the process is leaving anyway.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(timeout=1.0 if interrupted else None)




# -- partitions of one file, read apart (the Dask engine) ------------------------------------


def portable(source: Source) -> Source:
    """A copy of a file's Source that pickles (no open file, Parquet index or sample), to read a
    partition of the file in another process."""
    import dataclasses

    if not source.rereadable:
        raise ValueError(f"{source.name}: only a file's source can be read elsewhere")
    return dataclasses.replace(source, _stdin=None, _parquet=None, _raw=None, _parquet_buffer=None, _table=None,
                               sample=None, _head=b"")


def parquet_row_groups(source: Source, groups: range | None, columns: list[str],
                       types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    """The batches of row groups ``groups`` (None: all) of a Parquet file, cast to ``types``, of
    PARQUET_BATCH_ROWS rows (fewer for wide rows) whatever the row groups (the last one shorter).

    Runs of row groups of at most PARQUET_GROUP_BYTES are read at once and sliced (a third of the
    CPU time of streaming them in batches); a larger group is streamed. Text columns wanted as
    dictionaries are read so from the file's dictionary pages, not encoded again.
    """
    try:
        text = {f.name for f in source.schema if pa.types.is_string(f.type)}
        dictionary = [c for c in columns if c in text and pa.types.is_dictionary(types.get(c, pa.null()))]
        parquet = source._parquet_file(dictionary)
        values = source._values_per_row(parquet, columns)
        rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_VALUES // values))
        carry = None  # the last rows read, fewer than a batch: given with the next ones
        for run, fits in _group_runs(parquet.metadata, groups, values * 8):
            if not fits:
                read: Iterable[pa.RecordBatch] = parquet.iter_batches(batch_size=rows, row_groups=run, columns=columns,
                                                                      use_threads=source.threads)
            else:
                read = [_one_batch(parquet.read_row_groups(run, columns=columns, use_threads=source.threads))]
            for batch in read:
                batch = _cast(batch, types, source.name)
                if carry is not None:
                    head = _one_batch(pa.Table.from_batches([carry, batch.slice(0, rows - carry.num_rows)]))
                    batch, carry = batch.slice(rows - carry.num_rows), None
                    if head.num_rows < rows:
                        carry = head
                        continue
                    yield head
                whole = batch.num_rows - batch.num_rows % rows
                for start in range(0, whole, rows):
                    yield batch.slice(start, rows)
                if whole < batch.num_rows:
                    carry = batch.slice(whole)
            del read
        if carry is not None:
            yield carry
    except (pa.ArrowException, OSError) as exc:
        raise InputError(source.name, f"cannot read Parquet: {_first_line(str(exc))}") from exc


def equal_slices(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Each batch cut into equal slices (views) of at most PARQUET_BATCH_ROWS rows and at most
    PARQUET_BATCH_VALUES values: a CSV range is parsed whole, scored in parts (a 4 MiB range of
    10 classes holds 37,000 rows: two of 18,500, whose temporaries take half the memory)."""
    for batch in batches:
        rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_VALUES // max(1, batch.num_columns)))
        parts = -(-batch.num_rows // rows)
        if parts <= 1:
            yield batch
            continue
        size = -(-batch.num_rows // parts)
        for start in range(0, batch.num_rows, size):
            yield batch.slice(start, size)


def _group_runs(metadata, groups: range | None, row_bytes: int) -> Iterator[tuple[list[int], bool]]:
    """Consecutive row groups in runs of at most PARQUET_GROUP_BYTES, and whether the run fits
    (a larger group comes alone, not fitting: it is streamed)."""
    run: list[int] = []
    size = 0
    for group in range(metadata.num_row_groups) if groups is None else groups:
        group_bytes = metadata.row_group(group).num_rows * row_bytes
        if run and size + group_bytes > PARQUET_GROUP_BYTES:
            yield run, size <= PARQUET_GROUP_BYTES
            run, size = [], 0
        run.append(group)
        size += group_bytes
    if run:
        yield run, size <= PARQUET_GROUP_BYTES


def parse_threads() -> int:
    """Threads that parse a plain CSV file's byte ranges at once: the cores this process may use
    (NLL_THREADS sets it; 1 parses in one stream)."""
    configured = os.environ.get("NLL_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def csv_header_end(source: Source) -> int | None:
    """Bytes of a plain CSV file's header line (its newline included); None when the file cannot be
    cut at line ends: compressed, not a regular file, no line end, or a quote open at the header's end."""
    if not source.rereadable or source.compressed or source.format != "csv":
        return None
    try:
        with _ranged_file(source) as handle:
            head = b""
            while b"\n" not in head and len(head) < HEADER_LIMIT:
                block = handle.read(CSV_BLOCK_BYTES)
                if not block:
                    return None
                head += block
    except OSError as exc:
        raise os_error(source.name, exc) from exc
    end = head.find(b"\n")
    if end < 0 or head[:end].count(b'"') % 2:
        return None
    return end + 1


def csv_cuts(source: Source, start: int, target: int) -> list[int]:
    """Byte offsets cutting a CSV file's data (from ``start``) into ranges of about ``target``
    bytes, each at a line end: [start, ..., size]."""
    size = source.size if source.size is not None else os.path.getsize(str(source.path))
    cuts = [start]
    try:
        with _ranged_file(source) as handle:
            while cuts[-1] + target < size:
                handle.seek(cuts[-1] + target)
                scanned = cuts[-1] + target
                step = 1 << 12  # a row's worth first (10M rows: 275 cuts in 0.6 ms instead of 4-6), then more
                while True:
                    block = handle.read(step)
                    step = 1 << 16
                    if not block:
                        cuts.append(size)
                        return cuts
                    found = block.find(b"\n")
                    if found >= 0:
                        cuts.append(scanned + found + 1)
                        break
                    scanned += len(block)
    except OSError as exc:
        raise os_error(source.name, exc) from exc
    if cuts[-1] < size:
        cuts.append(size)
    return cuts


def holds_quote(data: bytes) -> bool:
    """Whether the bytes hold a double quote, found by libc's memchr where there is one: ctypes
    releases the GIL for the call, where `in` holds it (0.3 ms a 4 MiB range, which the scoring
    thread would spend waiting)."""
    memchr = _memchr()
    return b'"' in data if memchr is None else memchr(data, 34, len(data)) is not None


@functools.lru_cache(maxsize=1)
def _memchr():
    try:
        import ctypes

        memchr = ctypes.CDLL(None).memchr
    except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows)
        return None
    memchr.restype = ctypes.c_void_p
    memchr.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t)
    return memchr


def read_byte_range(source: Source, start: int, stop: int) -> bytes:
    try:
        with _ranged_file(source) as handle:
            handle.seek(start)
            return handle.read(stop - start)
    except OSError as exc:
        raise os_error(source.name, exc) from exc


def _ranged_file(source: Source):
    """The file's bytes to seek and read in ranges: a local file, or a remote one fetching exactly
    the bytes read (one ranged request per read, no read-ahead)."""
    if source.remote is not None:
        return source.remote.python_file(read_ahead=False)
    return open(str(source.path), "rb")


def csv_range_rows(data: bytes) -> int | None:
    """Data rows in bytes cut at line ends, as pyarrow counts them (blank lines are no rows); None
    when the bytes may hold a row that spans lines (a quote) or a lone carriage return."""
    if holds_quote(data) or data.count(b"\r") != data.count(b"\r\n"):
        return None
    if not data:
        return 0
    view = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(view == 10)
    starts = np.r_[0, ends + 1]
    lengths = np.r_[ends, len(view)] - starts
    blank = (lengths == 0) | ((lengths == 1) & (view[np.minimum(starts, len(view) - 1)] == 13))
    return int(np.count_nonzero(~blank))


def csv_range_batches(source: Source, header_end: int, start: int, stop: int, columns: list[str],
                      types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    """The batches of the rows in bytes [start, stop) of a plain CSV file (cut at line ends), read
    with the file's header line and options. A failure is left to the caller, which reads the
    whole file again to name the true row."""
    data = read_byte_range(source, 0, header_end) + read_byte_range(source, start, stop)
    reader = pacsv.open_csv(pa.BufferReader(data), **source._csv_options(columns, types))
    for batch in reader:
        if batch.num_rows:
            yield batch
