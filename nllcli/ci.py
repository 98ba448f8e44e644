"""Where a report goes besides standard output: `--report FILE` files, and GitHub Actions.

`--report FILE` (repeatable) writes the report in the format FILE's suffix names (render.REPORT_SUFFIXES),
each through an AtomicFile: an existing file is replaced only by a complete one. The files are
checked before any row is read (known suffix, a folder that exists, never an input, never twice).

Under GitHub Actions (GITHUB_ACTIONS=true), a failed gate is also an `::error` workflow command on
standard error (an annotation on the run) and the Markdown report is appended to the file named by
GITHUB_STEP_SUMMARY (the job summary). Elsewhere, or with `--no-ci-integration`, nothing of this happens.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .sinks import AtomicFile, check_destination, refuse_input_as_output, reported_as

if TYPE_CHECKING:
    from .report import Report


def report_targets(paths: Sequence[str], inputs: Sequence[object], others: Sequence[str | None] = ()
                   ) -> list[tuple[str, str]]:
    """(path, format) of each `--report` path; a UsageError for an unknown suffix, a missing folder,
    an input file, a path given twice or one that is also another output (``others``: --per-sample)."""
    from .render import REPORT_SUFFIXES

    targets = []
    seen: dict[str, str] = {os.path.realpath(o): o for o in others if o and o != "-"}
    for path in paths:
        path = str(path)
        suffix = Path(path).suffix.lower()
        if suffix not in REPORT_SUFFIXES:
            known = ", ".join(f"{s} ({f})" for s, f in REPORT_SUFFIXES.items())
            raise UsageError(f"--report {path}: unknown suffix {suffix or '(none)'!r}; use one of {known}")
        check_destination(path, "--report")
        refuse_input_as_output(path, "--report", inputs)
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"--report {path}: written twice in one run (also {seen[real]})")
        seen[real] = path
        targets.append((path, REPORT_SUFFIXES[suffix]))
    return targets


def write_report_files(report: Report, targets: Sequence[tuple[str, str]]) -> None:
    """Write the report to each (path, format): every text is rendered first, then each file is
    written under a temporary name and renamed over the old one."""
    from .render import RENDERERS

    texts = []
    for path, fmt in targets:
        buffer = io.StringIO()
        RENDERERS[fmt](report, buffer)
        texts.append((path, buffer.getvalue()))
    for path, text in texts:
        target = AtomicFile(Path(path))
        try:
            with reported_as(path):
                with open(target.temp, "w", encoding="utf-8", newline="\n") as stream:
                    stream.write(text)
            target.commit()
        except BaseException:
            target.abort()
            raise


def github_actions(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a GitHub Actions job (GitHub sets GITHUB_ACTIONS=true there)."""
    return (os.environ if environ is None else environ).get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's runner decodes it: %, CR and LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (title=...): also ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error_annotations(report: Report) -> list[str]:
    """One `::error title=...::message` line per failed gate (and a --fail-if-worse regression)."""
    from .errors import visible
    from .formats import gate_results

    return [f"::error title={escape_property(visible(f'nll {report.command}: {result.name} failed'))}::"
            f"{escape_data(visible(result.message))}" for result in gate_results(report) if not result.passed]


def github_integration(report: Report, environ: Mapping[str, str] | None = None) -> list[str]:
    """Under GitHub Actions: the annotations on stderr and the Markdown report appended to the job
    summary. Returns warnings to show (a summary file that cannot be written does not change the
    exit code: the gates decide it)."""
    environ = os.environ if environ is None else environ
    if not github_actions(environ):
        return []
    lines = error_annotations(report)
    if lines:
        try:
            sys.stderr.write("".join(line + "\n" for line in lines))
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # a closed stderr: no one to tell
            pass
    summary = environ.get("GITHUB_STEP_SUMMARY", "")
    if not summary:
        return []
    from .formats import FORMATS

    text, notes = _within_summary_limit(FORMATS["markdown"].render(report))
    try:
        with open(summary, "a", encoding="utf-8", newline="\n") as stream:  # O_APPEND: one write, never replaced
            stream.write("\n" + text)
    except OSError as exc:
        return [f"GITHUB_STEP_SUMMARY {summary}: {exc.strerror or exc}; the job summary was not written"]
    return notes


SUMMARY_LIMIT = 1024 * 1024  # GitHub refuses a step's job summary above 1 MiB


def _within_summary_limit(text: str) -> tuple[str, list[str]]:
    """The Markdown report, cut at a line boundary (with a note saying so) if it is over GitHub's limit."""
    data = text.encode("utf-8")
    if len(data) + 1 <= SUMMARY_LIMIT:
        return text, []
    note = ("\n\n*The report is longer than GitHub's 1 MiB job summary limit and is cut here; "
            "write it whole with --report FILE.md.*\n")
    head = data[:SUMMARY_LIMIT - len(note.encode()) - 1].decode("utf-8", errors="ignore")
    head = head[:head.rfind("\n") + 1]
    return head + note, [f"the Markdown report is {len(data):,} bytes, over GitHub's 1 MiB job summary limit: "
                         "the job summary has its first part (--report FILE.md writes it whole)"]
