"""Helpers shared by the CLI tests: small files, strict JSON, and the shape of an input error."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq


def _no_constants(name):
    raise ValueError(f"non-strict JSON constant {name}")


def loads_strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_no_constants)


def table_text(header, rows, sep=",") -> str:
    return "\n".join(sep.join(str(v) for v in row) for row in [header, *rows]) + "\n"


def write_csv(path, header, rows, sep=","):
    path.write_text(table_text(header, rows, sep))
    return path


def arrow_table(header, rows) -> pa.Table:
    return pa.table({name: list(column) for name, column in zip(header, zip(*rows))})


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def one_line(stderr: str) -> str:
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def assert_input_error(result, *fragments, streamed=False):
    """Exit 2, nothing on stdout, one line on stderr holding every fragment, no traceback.

    ``streamed``: an error that can only be known after every row was read, with per-sample rows
    streamed to stdout; the rows sent before it stay there (documented), the exit code says 2.
    """
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" or streamed
    line = one_line(result.stderr)
    assert "Traceback" not in result.stderr
    assert line.startswith("nll: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def broken_kernel(*args, **kwargs):
    raise RuntimeError("kaboom")


def add_broken_metric(monkeypatch, stage: str, command: str = "score") -> None:
    """Add to the public metric table a metric whose kernel (stage "batch") or whose finishing
    step (stage "report") has a bug: the way an internal error of ours meets the user."""
    from nllcli import metrics

    broken = (metrics.Metric("broken", (command,), finish=broken_kernel) if stage == "report" else
              metrics.Metric("broken", (command,), finish=lambda s, job: 0.0, quantity=broken_kernel))
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, broken))
