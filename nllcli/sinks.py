"""Where scored rows and files go: the --per-sample writer, atomic files, and the checks that an
output can be written and is never one of the inputs.

A sink receives each scored batch (engine.run(job, sink)); per_sample_sink() is the one of
--per-sample. Files are written under a temporary name and renamed when complete (AtomicFile).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UsageError, environment_fault

if TYPE_CHECKING:
    from .columns import Layout
    from .engine import Scored
    from .plan import Job


@contextlib.contextmanager
def per_sample_sink(job: Job, per_sample) -> Iterator[Callable[[Scored], None] | None]:
    """The sink writing --per-sample rows (None without --per-sample): the file is committed when
    the block ends well and removed on any failure."""
    if per_sample is None:
        yield None
        return
    writer = PerSampleWriter.open(per_sample)
    try:
        yield lambda scored: writer.write(per_sample_columns(job, scored))
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def per_sample_columns(job: Job, scored: Scored) -> dict[str, Any]:
    """Columns of the --per-sample output for one batch: key (or 0-based row), label, predicted,
    p_true and the losses in the report's units."""
    columns: dict[str, Any] = sample_ids(scored, job.layout)
    if scored.labels is not None:
        names = job.layout.class_array
        columns["label"] = names.take(scored.labels)
        columns["predicted"] = names.take(scored.predicted())
        columns["p_true"] = scored.p_true
    for name, array in scored.values.items():
        columns[name] = array / job.settings.unit_scale
    return columns


def sample_ids(scored: Scored, layout: Layout) -> dict[str, Any]:
    """The key column of a batch's rows, or their 0-based positions as `row`."""
    if layout.key:
        return {layout.key: scored.chunk.batch.column(layout.key)}
    return {"row": scored.index_of(np.arange(scored.rows))}  # rows of the input (--ignore-label leaves gaps)


def check_per_sample_target(per_sample, *inputs) -> None:
    """--per-sample must never replace one of the inputs (same device and inode, directories
    expanded, standard input included)."""
    if per_sample is None or str(per_sample) == "-":
        return
    refuse_input_as_output(str(per_sample), "--per-sample", inputs)


@contextlib.contextmanager
def reported_as(path: str):
    """Turn an operating-system fault (full disk, permission, closed stream) into an OutputError naming
    ``path``. A closed pipe (`| head`) stays a BrokenPipeError: the reader chose to stop."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        fault = environment_fault(exc, path)
        if fault is None:
            raise
        raise fault from exc


class PerSampleWriter:
    """Per-sample rows streamed to CSV or Parquet.

    A file is written through an AtomicFile, renamed into place by commit(); abort() removes it, so
    an error never leaves a partial file nor touches an existing one. '-' streams CSV to standard
    output. A fault of the operating system (full disk, permission) is an OutputError naming the file.
    """

    def __init__(self, target: str):
        self.target = target
        self.format = "parquet" if target.lower().endswith((".parquet", ".pq")) else "csv"
        self._writer: Any = None
        self._sink = None
        self._file: AtomicFile | None = None

    @classmethod
    def open(cls, target) -> "PerSampleWriter":
        target = str(target)
        if target != "-":
            device = os.path.exists(target) and not os.path.isfile(target) and not os.path.isdir(target)
            if not device and not target.lower().endswith((".csv", ".parquet", ".pq")):  # /dev/null, a FIFO: CSV
                raise UsageError(f"--per-sample {target}: name a .csv or .parquet file, or - for stdout")
            check_destination(target, "--per-sample")
        return cls(target)

    @property
    def _shown_name(self) -> str:
        return "standard output" if self.target == "-" else self.target

    def _start(self, schema) -> Any:
        """Open the file (or stdout) and return the writer of its format."""
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if self.target == "-":
            self._sink = pa.PythonFile(sys.stdout.buffer, mode="w")
        else:
            self._file = AtomicFile(Path(self.target))
            self._sink = pa.OSFile(str(self._file.temp), "w")
        if self.format == "parquet":
            return pq.ParquetWriter(self._sink, schema)
        return pacsv.CSVWriter(self._sink, schema, write_options=pacsv.WriteOptions(quoting_style="needed"))

    def write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa

        batch = pa.RecordBatch.from_pydict({k: _arrow(v) for k, v in columns.items()})
        with reported_as(self._shown_name):
            if self._writer is None:
                self._writer = self._start(batch.schema)
            self._writer.write_batch(batch)

    def commit(self) -> None:
        with reported_as(self._shown_name):
            self._close()
            if self._file is not None:
                self._file.commit()
            elif self.target == "-":
                sys.stdout.flush()

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # the run already failed; its own error is the one to report
            pass
        finally:
            if self._file is not None:
                self._file.abort()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        sink, self._sink = self._sink, None
        if sink is not None and self.target != "-":
            sink.close()
        elif sink is not None:
            sink.flush()


def check_destination(target: str, option: str) -> None:
    """Refuse early an output whose folder is missing or that is a directory."""
    folder = Path(target).resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{option} {target}: {folder} is not a folder" if folder.exists() else
                         f"{option} {target}: folder {folder} does not exist")
    if Path(target).is_dir():
        raise UsageError(f"{option} {target}: is a directory")


def refuse_input_as_output(target, option: str, inputs) -> None:
    """Raise a UsageError if ``target`` is one of ``inputs`` (the same device and inode): a file
    named directly, a file inside an input directory, or the file behind standard input."""
    from .readers import expand_inputs

    try:
        wanted = os.stat(target)
    except OSError:  # does not exist yet: it cannot be an input
        return
    if not stat.S_ISREG(wanted.st_mode):  # /dev/null, a FIFO, a terminal: written, never replaced
        return
    paths = [str(p) for x in inputs if x is not None
             for p in (x if isinstance(x, (list, tuple)) else [x]) if isinstance(p, (str, Path))]
    for path in expand_inputs([p for p in paths if p != "-" and os.path.isdir(p)]) + paths:
        try:
            found = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
        except (OSError, ValueError, AttributeError):
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            where = "standard input" if path == "-" else path
            raise UsageError(f"{option} {target}: that is an input file ({where}); write the output elsewhere")


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it by commit().

    Symbolic links are followed: the temporary file is made in the folder of the file the link
    points to, and renamed over that file (the link stays). It is private (0600) until commit()
    gives it the mode a new file would get, or that of the file it replaces. abort() removes it,
    and so does a failed commit, so a failed run never leaves half a file behind. A destination
    that exists and is not a regular file (/dev/null, /dev/full, a FIFO) is written directly.
    Faults of the operating system are OutputErrors naming ``path``.
    """

    def __init__(self, path: Path, suffix: str = ".tmp"):
        self.path = Path(path)
        self.final = Path(os.path.realpath(self.path))
        with reported_as(str(self.path)):
            self.direct = self.final.exists() and not self.final.is_file()
            if self.direct:
                self.temp = self.final
                return
            self.mode = _file_mode(self.final)
            import tempfile

            fd, temp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=suffix, dir=self.final.parent)
            os.close(fd)
            self.temp = Path(temp)

    def commit(self) -> None:
        if self.direct:
            return
        try:
            with reported_as(str(self.path)):
                os.chmod(self.temp, self.mode)
                os.replace(self.temp, self.final)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self.direct:
            with contextlib.suppress(OSError):
                self.temp.unlink(missing_ok=True)


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _arrow(values):
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(values, pa.string())
    return pa.array(values)


def write_copy(target: Path, batches, *, fmt: str, delimiter: str = ",", compressed: bool = False,
               metadata: dict | None = None) -> None:
    """Write record batches to ``target`` as CSV (with the delimiter, gzipped if asked) or Parquet
    (with the schema metadata given), through an AtomicFile: complete or not there at all."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    file = AtomicFile(Path(target))
    writer: Any = None
    try:
        with reported_as(str(target)):
            with pa.OSFile(str(file.temp), "w") as raw:
                sink = pa.CompressedOutputStream(raw, "gzip") if compressed and fmt == "csv" else raw
                for batch in batches:
                    if writer is None:
                        schema = batch.schema.with_metadata(metadata) if metadata else batch.schema
                        writer = (pq.ParquetWriter(sink, schema) if fmt == "parquet" else pacsv.CSVWriter(
                            sink, batch.schema, write_options=pacsv.WriteOptions(delimiter=delimiter,
                                                                                 quoting_style="needed")))
                    writer.write_batch(batch)
                if writer is not None:
                    writer.close()
                    writer = None
                if sink is not raw:
                    sink.close()
        file.commit()
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        file.abort()
        raise
