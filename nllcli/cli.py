"""The `nll` command line: parse options, call the library, render, choose the exit code.

Exit codes: 0 ok, 1 a gate failed, 2 usage, input or environment error, 3 internal error,
130 interrupted, 129 / 143 ended by SIGHUP / SIGTERM.
"""

import copy
import functools
import os
import sys
import traceback
from enum import Enum
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ._version import __version__
from .errors import (
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SIGNAL_BASE,
    NllError,
    Terminated,
    environment_fault,
    visible,
    without_trailing_spaces,
)


def _plain_metavars(command, ctx) -> None:
    """--help without type noise: a flag shows no value, an option its metavar (FILE, COLUMN, N), an
    argument only its name (typer shows `<bool>`, `<str>`, `<list[str]>`), and the usage line names
    required arguments as `PREDS...` or `BASE NEW` rather than `{PREDS}...`."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            # Typer 0.29 and later: its hooks for the type column and the usage line.
            vars(param)["display_type_rich"] = lambda ctx: None
            if param.required:
                vars(param)["_usage_display_name"] = functools.partial(
                    lambda param: param.display_name_raw + ("..." if param.nargs != 1 else ""), param)
            # Typer 0.28 and earlier: the type's metavar and the argument's own make_metavar.
            if getattr(param, "type", None) is not None:
                plain_type = copy.copy(param.type)
                vars(plain_type)["get_metavar"] = lambda param, ctx=None: ""
                param.type = plain_type
                vars(param)["make_metavar"] = functools.partial(_argument_metavar, param)
        elif param.metavar is None and getattr(param, "is_flag", False):
            param.metavar = ""


def _argument_metavar(param, ctx=None, *, usage: bool = False) -> str:
    """An argument as the help shows it: PREDS, and PREDS... (or [PREDS]) on the usage line."""
    name = param.metavar or (param.name or "").upper()
    if usage and not param.required:
        return f"[{name}]"
    return name + ("..." if usage and param.nargs != 1 else "")


def _format_help(command, base, ctx, formatter) -> None:
    """Help without type noise; piped, without trailing spaces; ended quietly by a closed pipe
    (`nll score --help | head -1`), which Rich answers with SystemExit(1), the gate-failed code."""
    import io

    _plain_metavars(command, ctx)
    try:
        if sys.stdout.isatty():
            base.format_help(command, ctx, formatter)
            return
        real, sys.stdout = sys.stdout, io.StringIO()  # Rich prints the help to sys.stdout as it is then
        try:
            base.format_help(command, ctx, formatter)
        finally:
            captured, sys.stdout = sys.stdout.getvalue(), real
        real.write(without_trailing_spaces(captured))
        real.flush()
        _silence_stdout()  # Click echoes one more newline: a reader gone by then would make it exit 1
    except (SystemExit, BrokenPipeError):
        _silence_stdout()
        raise typer.Exit(0) from None


class PlainHelp(TyperCommand):
    """A command whose --help lists flags without type noise, examples at the end."""

    def format_help(self, ctx, formatter) -> None:
        _format_help(self, TyperCommand, ctx, formatter)


class OneLineErrors(TyperGroup):
    """Bad options get one line on stderr, like every other error of nll (not a usage box)."""

    def format_help(self, ctx, formatter) -> None:
        _format_help(self, TyperGroup, ctx, formatter)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except OSError as exc:  # writing the help or the version: a full disk, a closed stdout
            sys.exit(_stdout_fault(exc))
        except Exception as exc:  # Click's usage errors: they carry an exit code and a message
            exit_code = getattr(exc, "exit_code", None)
            if not hasattr(exc, "format_message") or not isinstance(exit_code, int):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # plain `nll`: the help, as usual
                return super().main(*args, standalone_mode=True, **kwargs)  # type: ignore[misc]
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _err(f"nll: error: {exc.format_message()}{hint}")
            sys.exit(exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="nll",
    cls=OneLineErrors,
    help="Score classifier prediction files: negative log-likelihood, cross-entropy, entropy and KL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class InputKind(str, Enum):
    probs = "probs"
    logits = "logits"
    log_probs = "log-probs"


class Base(str, Enum):
    e = "e"
    two = "2"
    ten = "10"


class BinsKind(str, Enum):
    width = "width"
    mass = "mass"


class Format(str, Enum):
    table = "table"
    json = "json"
    ndjson = "ndjson"
    markdown = "markdown"
    junit = "junit"
    openmetrics = "openmetrics"


# Options shared by the commands, declared once. Help texts are Rich markup: a literal [ is escaped as \[.
Label = Annotated[Optional[str], typer.Option("--label", metavar="COLUMN", help="The column of true labels.",
                                              show_default="first of label, y, y_true, target, true_label, class")]
Positive = Annotated[Optional[str], typer.Option("--positive", metavar="LABEL", help="The label of class 1 when a "
                                                 "single column holds P(class 1).")]
Classes = Annotated[Optional[str], typer.Option("--classes", metavar="NAMES", help="Class names in order, "
                                                "comma-separated, for columns NAME, p_NAME, prob_NAME or proba_NAME.")]
Probs = Annotated[Optional[str], typer.Option("--probs", metavar="COLUMN", help="A single list column holding "
                                              "each row's vector (Parquet list<double>).")]
Key = Annotated[Optional[str], typer.Option("--key", metavar="COLUMN", help="Column naming the rows, used to "
                                            "pair two files.", show_default="id, when present")]
Ignore = Annotated[Optional[list[str]], typer.Option("--ignore", metavar="COLUMN", help="A column that is "
                                                 "not a class (repeatable). Classes are the --classes columns, "
                                                 "else the p_* columns, else the numeric columns with no other "
                                                 "role (label, key, weight, --by, index, predicted label).")]
Input = Annotated[InputKind, typer.Option("--input", metavar="probs|logits|log-probs",
                                          help="What the class columns hold.")]
Eps = Annotated[float, typer.Option("--eps", metavar="X", help="Clip probabilities into \\[X, 1 - X]; 0 gives "
                                    "exact maths, where a zero on the true class costs an infinite loss.",
                                    show_default="float64 epsilon, 2.2e-16")]
Tol = Annotated[float, typer.Option("--tol", metavar="X", help="How far from 1 a row of probabilities may sum.")]
Renormalize = Annotated[bool, typer.Option("--renormalize", help="Divide each row by its sum instead of "
                                           "requiring it to sum to 1.")]
BaseOpt = Annotated[Base, typer.Option("--base", metavar="e|2|10", help="Logarithm base: e (nats), 2 (bits) "
                                       "or 10 (bans).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", metavar="table|json|ndjson|markdown|junit|openmetrics",
                                           help="A table (plain text when piped), a JSON report, the same report "
                                           "on one line, GitHub-flavoured Markdown, JUnit XML or OpenMetrics text.")]
PerSample = Annotated[Optional[str], typer.Option("--per-sample", metavar="FILE", help="Write one row per sample "
                                                  "to a .csv or .parquet file, or - for CSV on standard output.")]
Max = Annotated[Optional[list[str]], typer.Option("--max", metavar="METRIC=VALUE",
                                                  help="Exit 1 if METRIC is above VALUE (repeatable).")]
Min = Annotated[Optional[list[str]], typer.Option("--min", metavar="METRIC=VALUE",
                                                  help="Exit 1 if METRIC is below VALUE (repeatable).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Hide the progress bar.")]


class BootstrapKind(str, Enum):
    rows = "rows"
    poisson = "poisson"


class GateOn(str, Enum):  # members not named lower / upper: those are str methods
    on_value = "value"
    on_lower = "lower"
    on_upper = "upper"
    on_interval = "interval"


GateOnOpt = Annotated[GateOn, typer.Option("--gate-on", metavar="value|lower|upper|interval", help="What the "
                                           "gates test: the value, a bound of its interval, or interval (fail "
                                           "only when the whole interval is past the threshold).")]
Confidence = Annotated[float, typer.Option("--confidence", metavar="LEVEL", help="The level of the bootstrap "
                                           "intervals.")]
Resamples = Annotated[int, typer.Option("--resamples", metavar="N", help="How many bootstrap resamples to draw.")]
Seed = Annotated[int, typer.Option("--seed", metavar="N", help="The bootstrap seed, so that a run repeats exactly.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
ReportFile = Annotated[Optional[list[str]], typer.Option(
    "--report", metavar="FILE", help="Also write the report to FILE, in the format its suffix names: .json, .md "
    "(Markdown), .xml (JUnit), .prom or .txt (OpenMetrics); repeatable, written even when a gate fails.")]
NoCiIntegration = Annotated[bool, typer.Option("--no-ci-integration", help="Under GitHub Actions, do not annotate "
                                               "failed gates nor append the Markdown report to the job summary.")]
SaveState = Annotated[Optional[str], typer.Option("--save-state", metavar="FILE", help="Also write the run's "
                                                  "state to FILE (.nllstate, JSON) for `nll merge`.")]
StorageOption = Annotated[Optional[list[str]], typer.Option(
    "--storage-option", metavar="KEY=VALUE", help="An option of the s3://, gs://, az:// or http(s):// file "
    "system (repeatable; JSON values: anon=true, endpoint_url=http://...). Credentials come from the environment.")]


class Engine(str, Enum):
    local = "local"
    dask = "dask"


EngineOpt = Annotated[Engine, typer.Option("--engine", metavar="local|dask", help="Score in this process, or on "
                                           "a Dask cluster (pip install 'nllcli\\[dask]'): the same numbers.")]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", metavar="ADDRESS", help="The Dask scheduler, "
                                                  "as tcp://host:8786.",
                                                  show_default="$DASK_SCHEDULER_ADDRESS, else a local cluster")]
SchedulerFile = Annotated[Optional[str], typer.Option("--scheduler-file", metavar="FILE", help="The Dask "
                                                      "scheduler's JSON file (dask scheduler --scheduler-file).")]
Workers = Annotated[Optional[int], typer.Option("--workers", metavar="N", help="Worker processes of the local "
                                                "Dask cluster started for the run.", show_default="one per CPU")]
PartitionSize = Annotated[Optional[str], typer.Option("--partition-size", metavar="SIZE", help="Input bytes per "
                                                      "Dask partition: a Parquet run of row groups or a CSV byte "
                                                      "range.", show_default="64MB")]

# The common calls, shown at the end of each command's --help; each one runs as it is in sample_data/.
EXAMPLES = {
    "score": ["nll score robot_tools.csv",
              "nll score robot_tools.csv --by camera --worst 5",
              "nll score robot_tools_logits.csv --input logits --base 2",
              "nll score robot_tools.csv --targets robot_tools_annotators.csv",
              "nll score robot_tools.csv --per-sample losses.csv",
              "nll score robot_tools.csv --format json --max nll=0.5 --min accuracy=0.85",
              "nll score robot_tools.csv --max nll=0.5 --report nll.json --report nll.md --report nll-junit.xml"],
    "kl": ["nll kl robot_tools_annotators.csv robot_tools.csv",
           "nll kl robot_tools_annotators.csv robot_tools.csv --symmetric --format json"],
    "compare": ["nll compare robot_tools.csv robot_tools_model_b.csv",
                "nll compare robot_tools.csv robot_tools_model_b.csv --by camera --worst 5",
                "nll compare robot_tools.csv robot_tools_model_b.csv --fail-if-worse 0 -f json",
                "nll compare robot_tools.csv robot_tools_model_b.csv --fail-if-worse 0 --report compare.md"],
    "plot": ["nll plot robot_tools.csv -o robot_tools.png",
             "nll plot robot_tools.csv --targets robot_tools_annotators.csv -o soft.svg",
             "nll plot robot_tools_val_logits.csv --input logits --calibrate -o calibrated.png"],
}


def _epilog(command: str) -> str:
    return "Examples, in the sample_data folder:\n\n" + "\n".join(EXAMPLES[command])


EPS_DEFAULT = float.fromhex("0x1.0p-52")  # float64 machine epsilon, without importing numpy


def _err(message: str) -> None:
    """One line on stderr, whatever the message holds: a newline, an escape sequence or a bidi mark
    in a column or file name is shown escaped. A closed stderr swallows it (there is no one to tell)."""
    try:
        sys.stderr.write(visible(message.rstrip("\n")) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def _silence_stdout() -> None:
    """After a closed pipe (`| head`), send what is left to /dev/null so exit stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (tests)
        pass


def handle_errors(command):
    """Turn every way a command can end into its exit code and at most one line on stderr."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            command(*args, **kwargs)
            sys.stdout.flush()
        except typer.Exit:
            raise
        except NllError as exc:
            if debug:
                traceback.print_exc()
            _err(f"nll: error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("nll: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated as exc:
            _err(f"nll: terminated by {exc}")
            raise typer.Exit(EXIT_SIGNAL_BASE + exc.signum) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:
            fault = environment_fault(exc)
            if fault is None:
                _internal_error(exc, debug)
            if debug:
                traceback.print_exc()
            _err(f"nll: error: {fault}")
            raise typer.Exit(fault.exit_code) from None
        except Exception as exc:
            _internal_error(exc, debug)

    return wrapper


def _internal_error(exc: Exception, debug: bool):
    """A bug of ours: one line, the traceback only with --debug, exit 3."""
    if debug:
        traceback.print_exc()
    _err(f"nll: internal error: {type(exc).__name__}: {exc}; run with --debug for details")
    raise typer.Exit(EXIT_INTERNAL) from None


def _skip_pyarrow_pandas_check() -> None:
    """Spare the CLI pyarrow's import of pandas (about 0.4 s).

    pyarrow imports pandas the first time it converts any Python object, only to ask whether the
    object is a pandas one. The CLI never hands it pandas objects, so that first check is made to
    fail; pyarrow still imports pandas later if something really needs it.
    """
    if "pandas" in sys.modules:
        return

    class RefusePandas:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] == "pandas":
                raise ImportError("pandas is not needed here")

    sys.meta_path.insert(0, RefusePandas)
    try:
        import pyarrow

        try:
            _ = pyarrow.lib._pandas_api.have_pandas  # the check alone: pyarrow.scalar imports dateutil too
        except AttributeError:  # another pyarrow: any conversion of a Python object makes the check
            pyarrow.scalar(0)
    finally:
        sys.meta_path.remove(RefusePandas)


def _reuse_freed_memory() -> None:
    """Have glibc keep freed memory for the next batch instead of handing it back to the OS.

    Each batch allocates numpy arrays of about a megabyte. By default glibc maps and unmaps
    them every time, and the page faults that follow cost more than the arithmetic (measured
    here: the soft-target kernels ran 3.5x faster). Peak memory is unchanged; other C libraries
    simply skip this.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: heap, not mmap, below 32 MiB
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap
    except (OSError, AttributeError):
        pass


def _arrow_memory_pool() -> None:
    """Arrow's buffers from jemalloc where pyarrow has it, unless ARROW_DEFAULT_MEMORY_POOL chooses.

    Measured here on 2M rows x 10 classes: peak RSS 126-129 MB instead of 150-164 with mimalloc
    (pyarrow's default) for CSV, 162-164 instead of 188 for Parquet, in no more time. The
    variable is set too, before pyarrow's import (Linux wheels have jemalloc): Arrow's C++ code,
    the Parquet reader's buffers among them, takes its own default pool, not pyarrow's; with two
    allocators each kept its freed memory (a Parquet file streamed: 226 MB peak instead of 205).
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    if sys.platform == "linux" and "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    import pyarrow

    try:
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
    except NotImplementedError:  # a build without jemalloc
        pass


def _resume_garbage_collection() -> None:
    """Turn the cyclic garbage collector back on, paused by the `nll` entry point (nllcli.__main__)
    while the modules load, with what they built frozen: later collections never walk it.

    Importing typer, numpy and pyarrow builds only long-lived objects, yet collected them 60 times
    (9-15 ms a run, measured here); scoring makes no cycles (10M rows left 33 unreachable
    objects), but other paths may (fsspec's event loop), so the collector runs for the data. A
    process whose collector was never paused (a test calling the app) is left as it is.
    """
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _prepare_process() -> None:
    _arrow_memory_pool()  # first: before pyarrow's import
    _skip_pyarrow_pandas_check()
    _reuse_freed_memory()
    _resume_garbage_collection()


class _ProgressBar:
    """A transient Rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, quiet: bool, total_bytes: int | None):
        self.bar = None
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(TextColumn("{task.fields[rows]:,} rows"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(),
                            console=Console(file=sys.stderr), transient=True)
        self.task = self.bar.add_task("reading", total=total_bytes, rows=0)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self.update if self.bar is not None else None

    def update(self, rows: int, bytes_read: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=bytes_read, rows=rows)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _total_bytes(*paths_lists) -> int | None:
    """Bytes the progress bar counts towards: every input file, directories expanded."""
    from .readers import expand_inputs

    try:
        files = expand_inputs(p for paths in paths_lists for p in paths if p != "-")
        return sum(os.path.getsize(f) for f in files if os.path.isfile(f)) or None
    except (OSError, NllError):  # a bad path: the command itself will say so
        return None


def _finish(report, fmt: Format, per_sample: str | None, report_files: list[tuple[str, str]] | None = None,
            ci_integration: bool = True, write=None, gates_on: str = "") -> None:
    """Render the report (to stderr when per-sample rows own stdout), write the --report files, tell
    GitHub Actions (annotations, job summary) and apply the gates. ``write``: the report's writer
    (nll tokens: tokens.render.write_report; calibrate: render.write_calibration), render.write_report
    by default; ``gates_on``: what the gates tested, after each failed gate's message."""
    from .ci import github_integration, write_report_files
    from .render import write_report

    write_report_files(report, report_files or [])  # first: a reader that stops early (`| head`) still gets them
    (write or write_report)(report, fmt.value, sys.stderr if per_sample == "-" else sys.stdout)
    for warning in github_integration(report) if ci_integration else ():
        _err(f"nll: warning: {warning}")
    failed = report.failed_gates
    for gate in failed:
        _err(f"nll: {gate.describe(report.metrics.get(gate.metric))}{gates_on}")
    if report.regression:
        _err(f"nll: {report.regression}")
    if failed or report.regression:
        raise typer.Exit(EXIT_GATE)


@app.command(cls=PlainHelp, epilog=_epilog("score"))
@handle_errors
def score(
    preds: Annotated[list[str], typer.Argument(metavar="PREDS", help="Prediction files (.csv, .tsv, .csv.gz, "
                                               ".parquet), directories of them, or - for standard input.",
                                               show_default=False)],
    targets: Annotated[Optional[str], typer.Option(
        "--targets", metavar="FILE",
        help="A file of target distributions (soft labels), paired by --key or by position.")] = None,
    label: Label = None,
    classes: Classes = None,
    probs: Probs = None,
    key: Key = None,
    weight: Annotated[Optional[str], typer.Option("--weight", metavar="COLUMN",
                                                  help="A column of sample weights.")] = None,
    ignore: Ignore = None,
    positive: Positive = None,
    target_prefix: Annotated[Optional[str], typer.Option("--target-prefix", metavar="PREFIX", help="Targets in the "
                                                         "same file, as columns PREFIX<class>.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", metavar="A", help="Score against "
                                                             "(1 - A) * one-hot + A / K.")] = None,
    input: Input = InputKind.probs,
    eps: Eps = EPS_DEFAULT,
    tol: Tol = 1e-4,
    renormalize: Renormalize = False,
    base: BaseOpt = Base.e,
    bins: Annotated[int, typer.Option("--bins", metavar="N", help="Equal-width confidence bins for ECE and "
                                      "the reliability chart.")] = 15,
    top_k: Annotated[Optional[int], typer.Option("--top-k", metavar="K", help="Also top_k_accuracy: the share "
                                                 "of rows whose label is among the K likeliest classes.")] = None,
    by: Annotated[Optional[list[str]], typer.Option("--by", metavar="COLUMN", help="Every metric per value of "
                                                    "COLUMN (camera, site, day); repeat for combinations.")] = None,
    worst: Annotated[int, typer.Option("--worst", metavar="N", help="List the N samples with the largest "
                                       "loss.")] = 0,
    format: FormatOpt = Format.table,
    per_sample: PerSample = None,
    max: Max = None,
    min: Min = None,
    quiet: Quiet = False,
    debug: Debug = False,
    report_file: ReportFile = None,
    no_ci_integration: NoCiIntegration = False,
    bins_kind: Annotated[BinsKind, typer.Option("--bins-kind", metavar="width|mass", help="The bins of ece, mce, "
                                                "ece_l2 and the reliability chart: equal width or equal mass "
                                                "(ece_mass is always equal-mass).")] = BinsKind.width,
    ignore_label: Annotated[Optional[str], typer.Option("--ignore-label", metavar="VALUE", help="Drop and count "
                                                        "the rows whose label is VALUE (torch's ignore_index, "
                                                        "e.g. -100).")] = None,
    class_weight: Annotated[Optional[str], typer.Option("--class-weight", metavar="NAME=W,...", help="Weigh each "
                                                        "row by its label's weight, as torch's cross_entropy("
                                                        "weight=...): means are sum w*loss / sum w; classes not "
                                                        "named weigh 1; W,W,... gives one per class in order; "
                                                        "times --weight.")] = None,
    class_weight_file: Annotated[Optional[str], typer.Option("--class-weight-file", metavar="FILE", help="The "
                                                             "class weights as a JSON object (or list) or a CSV "
                                                             "file with columns class,weight.")] = None,
    save_state: SaveState = None,
    storage_option: StorageOption = None,
    engine: EngineOpt = Engine.local,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    workers: Workers = None,
    partition_size: PartitionSize = None,
    interval: Annotated[bool, typer.Option("--interval", help="A seeded Poisson bootstrap interval for every "
                                           "metric, overall and per group.")] = False,
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    seed: Seed = 0,
    gate_on: GateOnOpt = GateOn.on_value,
    temperature: Annotated[Optional[float], typer.Option("--temperature", metavar="T", help="Score softmax(z / T): "
                                                         "z the logits, log-probabilities or log p (a T from "
                                                         "nll calibrate).")] = None,
    multilabel: Annotated[bool, typer.Option("--multilabel", help="Each class column is an independent P(y = 1): "
                                             "binary cross-entropy per label; labels as 0/1 columns "
                                             "(--target-prefix) or a column listing each row's classes.")] = False,
    label_delimiter: Annotated[Optional[str], typer.Option("--label-delimiter", metavar="CHAR", help="What "
                                                           "separates the classes of a --multilabel label cell.",
                                                           show_default="any of , ; | in no class name")] = None,
) -> None:
    """Mean and per-sample NLL against hard labels, or cross-entropy, entropy and KL against soft targets.

    Also accuracy, the Brier score and calibration errors (ECE, MCE), overall, per class and per --by group.

    Exit codes: 0 ok, 1 a --max/--min gate failed, 2 usage, input or environment error, 3 a bug of nll.
    """
    from .ci import report_targets

    report_files = report_targets(report_file or (), [preds, targets], [per_sample])
    report = _score_report(preds, targets=targets, label=label, classes=classes, probs=probs, key=key,
                           weight=weight, ignore=ignore or (), positive=positive, input=input.value, eps=eps, tol=tol,
                           renormalize=renormalize, base=base.value, target_prefix=target_prefix,
                           label_smoothing=label_smoothing, bins=bins, top_k=top_k, by=by or (), worst=worst,
                           max=max or (), min=min or (), per_sample=per_sample, quiet=quiet,
                           bins_kind=bins_kind.value, ignore_label=ignore_label, class_weight=class_weight,
                           class_weight_file=class_weight_file, save_state=save_state,
                           storage_options=_storage_options(storage_option), engine=engine.value, scheduler=scheduler,
                           scheduler_file=scheduler_file, workers=workers, partition_size=partition_size,
                           interval=interval, confidence=confidence, resamples=resamples, seed=seed,
                           gate_on=gate_on.value,
                           temperature=temperature, multilabel=multilabel, label_delimiter=label_delimiter)
    _finish(report, format, per_sample, report_files, not no_ci_integration)


def _score_report(preds: list[str], *, targets: str | None, quiet: bool, **options):
    """Run api.score with a progress bar; the work shared by `score` and `plot`."""
    _prepare_process()
    from . import api

    with _ProgressBar(quiet, _total_bytes(preds, [targets] if targets else [])) as progress:
        return api.score(preds, targets=targets, progress=progress, **options)


def _plain(options: dict) -> dict:
    """Option values as the library takes them: enums as their text, absent lists as ()."""
    lists = ("by", "max", "min", "max_increase", "max_decrease", "min_increase", "min_decrease")
    plain = {k: (v.value if isinstance(v, Enum) else () if v is None and k in lists else v)
             for k, v in options.items() if k != "debug"}
    if "storage_option" in plain:
        plain["storage_options"] = _storage_options(plain.pop("storage_option") or None)
    return plain


def _storage_options(items: list[str] | None) -> dict | None:
    """--storage-option KEY=VALUE pairs as the library takes them (None without any)."""
    from .remote import parse_storage_options

    return parse_storage_options(items) or None


def _plot(output: str, **options) -> None:
    r"""Draw a reliability diagram, confidence and per-sample loss histograms and per-class NLL in one image.

    Takes the options of `nll score` and needs matplotlib (pip install 'nllcli\[plot]').
    """
    from .plot import write_plot
    from .sinks import refuse_input_as_output

    refuse_input_as_output(output, "--output", [options.get("preds"), options.get("targets")])
    write_plot(output)  # fails early, before reading, if matplotlib is missing or the suffix is wrong
    options = _plain(options)
    fit, temperature = options.pop("calibrate", False), options.get("temperature")
    if fit or temperature is not None:  # the original and the temperature-scaled file, side by side
        result = _calibration_for_plot(fit, **options)
        report = result.valid[0]
        write_plot(output, report, result.valid[1], result.temperature)
    else:
        report = _score_report(options.pop("preds"), **options)
        write_plot(output, report)
    for warning in report.all_warnings():  # a quiet note already says "note:"
        _err(f"nll: {warning}" if warning.startswith("note: ") else f"nll: warning: {warning}")
    _err(f"nll: wrote {output}")


def _calibration_for_plot(fit: bool, *, preds: list[str], temperature: float | None, quiet: bool, **options):
    """api.calibrate on the plotted file: T fitted on it (--calibrate) or given (--temperature)."""
    _prepare_process()
    from . import api
    from .errors import UsageError

    if fit and temperature is not None:
        raise UsageError("--calibrate fits T and --temperature gives it: use one")
    import inspect

    taken = set(inspect.signature(api.calibrate).parameters)
    defaults = _plain({p.name: p.default for p in inspect.signature(score).parameters.values()})
    unsupported = [f"--{name.replace('_', '-')}" for name in list(options) if name not in taken
                   and options.pop(name) not in (defaults.get(name), None, ())]
    if unsupported:
        raise UsageError(f"--calibrate and --temperature in nll plot take hard labels and the options of nll "
                         f"calibrate, not {', '.join(unsupported)}")
    return api.calibrate(preds if len(preds) != 1 else preds[0], temperature=temperature, **options)


def _compare(base_file: str, new_file: str, format: Format, quiet: bool, report_file: list[str] | None = None,
             no_ci_integration: bool = False, **options) -> None:
    """Did NEW get worse than BASE on the same samples? Paired deltas with bootstrap intervals.

    Rows pair by --key (default id, when both files have it), else by position; labels must agree.

    Takes the options of `nll score`; --by compares per group, --worst N lists the samples whose loss rose most.

    --fail-if-worse D exits 1 when the nll delta and its whole interval are above D; --max/--min gate NEW.

    --max-increase nll=2% (or ece=0.01; also --max-decrease, --min-increase, --min-decrease) gate the change of any
    metric; --gate-on tests the change, a bound of its interval, or the whole interval.
    """
    _prepare_process()
    from .ci import report_targets
    from .comparison import compare

    if _token_files(base_file, new_file):
        report_files = report_targets(report_file or (), [base_file, new_file])
        _compare_token_files(base_file, new_file, format, quiet, options, report_files, not no_ci_integration)
        return
    report_files = report_targets(report_file or (), [base_file, new_file, options.get("targets")])
    with _ProgressBar(quiet, _total_bytes([base_file, new_file])) as progress:
        report = compare(base_file, new_file, progress=progress, **_plain(options))
    _finish(report, format, None, report_files, not no_ci_integration)


def _derived_command(name: str, implementation, drop: set[str], front=(), back=()) -> None:
    """Register a command taking the parameters of `nll score`, less ``drop``, plus its own.

    One list of scoring options serves score, plot and compare.
    """
    import inspect

    def parameter(param_name, annotation, default=inspect.Parameter.empty):
        return inspect.Parameter(param_name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)

    shared = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
              for p in inspect.signature(score, eval_str=True).parameters.values() if p.name not in drop]
    params = [parameter(*f) for f in front] + shared + [parameter(*b) for b in back]
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)  # required ones first

    def command(**options) -> None:
        implementation(**options)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = implementation.__doc__
    app.command(name, cls=PlainHelp, epilog=_epilog(name))(handle_errors(command))


_INTERVAL_OPTIONS = ("interval", "confidence", "resamples", "seed")  # compare declares its own


@app.command(cls=PlainHelp, epilog=_epilog("kl"))
@handle_errors
def kl(
    p: Annotated[str, typer.Argument(metavar="P", help="Reference distributions P (the data), or - for "
                                     "standard input.", show_default=False)],
    q: Annotated[str, typer.Argument(metavar="Q", help="Model distributions Q, or - for standard input.",
                                     show_default=False)],
    classes: Classes = None,
    probs: Probs = None,
    key: Key = None,
    ignore: Ignore = None,
    symmetric: Annotated[bool, typer.Option("--symmetric", help="Also report KL(Q || P) and the "
                                            "Jensen-Shannon divergence.")] = False,
    input: Input = InputKind.probs,
    eps: Eps = EPS_DEFAULT,
    tol: Tol = 1e-4,
    renormalize: Renormalize = False,
    base: BaseOpt = Base.e,
    format: FormatOpt = Format.table,
    per_sample: PerSample = None,
    max: Max = None,
    min: Min = None,
    quiet: Quiet = False,
    debug: Debug = False,
    report_file: ReportFile = None,
    no_ci_integration: NoCiIntegration = False,
    save_state: SaveState = None,
    storage_option: StorageOption = None,
    engine: EngineOpt = Engine.local,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    workers: Workers = None,
    partition_size: PartitionSize = None,
) -> None:
    """KL(P || Q) per row pair and on average, with cross-entropy H(P, Q) and entropy H(P).

    Rows pair by --key (default id, when both files have it), else by position.
    """
    _prepare_process()
    from . import api
    from .ci import report_targets

    report_files = report_targets(report_file or (), [p, q], [per_sample])
    with _ProgressBar(quiet, _total_bytes([p, q])) as progress:
        report = api.kl(p, q, classes=classes, probs=probs, key=key, input=input.value, eps=eps, tol=tol,
                        renormalize=renormalize, base=base.value, symmetric=symmetric, max=max or (),
                        min=min or (), per_sample=per_sample, progress=progress, ignore=ignore or (),
                        save_state=save_state, storage_options=_storage_options(storage_option), engine=engine.value,
                        scheduler=scheduler, scheduler_file=scheduler_file, workers=workers,
                        partition_size=partition_size)
    _finish(report, format, per_sample, report_files, not no_ci_integration)


_derived_command("plot", _plot, drop={"format", "per_sample", "max", "min", "report_file", "no_ci_integration",
                                      "save_state", *_INTERVAL_OPTIONS, "gate_on", "multilabel", "label_delimiter"},
                 front=[(
    "output", Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The image to write: "
                                          ".png, .svg or .pdf.",
                                          show_default=False)])], back=[(
    "calibrate", Annotated[bool, typer.Option("--calibrate", help="Fit a temperature on the file (nll calibrate) "
                                              "and draw the calibrated curve beside the original; --temperature T "
                                              "draws a given one.")], False)])
_derived_command("compare", _compare, drop={"preds", "per_sample", "save_state", *_INTERVAL_OPTIONS, "temperature",
                                           "multilabel", "label_delimiter"}, front=[
    ("base_file", Annotated[str, typer.Argument(metavar="BASE", help="Predictions of the model in use.",
                                                show_default=False)]),
    ("new_file", Annotated[str, typer.Argument(metavar="NEW", help="Predictions of the candidate model.",
                                               show_default=False)]),
], back=[
    ("confidence", Annotated[float, typer.Option("--confidence", metavar="LEVEL", help="The level of the "
                                               "bootstrap intervals.")], 0.95),
    ("resamples", Annotated[int, typer.Option("--resamples", metavar="N", help="How many bootstrap "
                                              "resamples to draw.")], 2000),
    ("seed", Annotated[int, typer.Option("--seed", metavar="N", help="The bootstrap seed, so that a run "
                                         "repeats exactly.")], 0),
    ("fail_if_worse", Annotated[Optional[float], typer.Option(
        "--fail-if-worse", metavar="DELTA", help="Exit 1 when the nll delta and its whole interval are "
        "above DELTA (0: any clear regression).")], None),
    ("max_increase", Annotated[Optional[list[str]], typer.Option(
        "--max-increase", metavar="METRIC=X[%]", help="Exit 1 if METRIC rose by more than X (in its units) or "
        "X% of the base value (repeatable).")], None),
    ("max_decrease", Annotated[Optional[list[str]], typer.Option(
        "--max-decrease", metavar="METRIC=X[%]", help="Exit 1 if METRIC fell by more than X or X% "
        "(accuracy=0.01).")], None),
    ("min_increase", Annotated[Optional[list[str]], typer.Option(
        "--min-increase", metavar="METRIC=X[%]", help="Exit 1 unless METRIC rose by at least X or X%.")], None),
    ("min_decrease", Annotated[Optional[list[str]], typer.Option(
        "--min-decrease", metavar="METRIC=X[%]", help="Exit 1 unless METRIC fell by at least X or X% "
        "(nll=1%).")], None),
    ("bootstrap", Annotated[Optional[BootstrapKind], typer.Option(
        "--bootstrap", metavar="rows|poisson", help="rows: resample rows (strided blocks above 20,000 rows); "
        "poisson: Poisson(1) row weights seeded by each row's position in BASE, the same for any split of "
        "the rows. Default: rows, poisson with --engine dask.", show_default=False)], None),
])


def _version(value: bool) -> None:
    if value:
        try:
            sys.stdout.write(f"nll {__version__}\n")
            sys.stdout.flush()
        except BrokenPipeError:  # Click would make it exit 1, the gate-failed code
            _silence_stdout()
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Score classifier prediction files from the command line."""


def _app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command the line names, if it names one: Typer builds the options of
    every command it holds on each run (40 ms for all, 15 ms for `score` alone)."""
    from typer.main import get_command_name

    if len(argv) < 2:
        return app
    named = [c for c in app.registered_commands
             if c.callback is not None and (c.name or get_command_name(c.callback.__name__)) == argv[1]]
    if not named:
        return app  # the group's help, --version, or a misspelt command and its error
    slim = copy.copy(app)
    slim.registered_commands = named
    return slim


def _guard_standard_streams() -> None:
    """Give a closed standard stream (`>&-`, `2>&-`, `<&-`) a stand-in, before any file is opened.

    Otherwise the next file opened would take its number and receive what was meant for it. A
    closed stdin reads as empty; a closed stdout fails every write with "Bad file descriptor" (exit 2:
    the results went nowhere); a closed stderr swallows messages, the exit code staying as it is.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        stand_in = os.open(os.devnull, flags)
        if stand_in != fd:
            os.dup2(stand_in, fd)
            os.close(stand_in)
        if fd == 0:
            sys.stdin = open(0, "r", closefd=False)
        elif fd == 1:
            sys.stdout = open(1, "w", closefd=False)  # read-only /dev/null: writes fail with EBADF
        else:
            sys.stderr = open(2, "w", closefd=False)


def _on_termination(signum, frame) -> None:
    raise Terminated(signum)


def main() -> None:
    """Console entry point.

    SIGTERM and SIGHUP unwind like Ctrl-C (temporary files removed), then exit 128 + the signal.
    Leaves with os._exit once the output is flushed: a reader thread may still be blocked on a
    slow pipe, or inside pyarrow, and must not meet the interpreter's shutdown.
    """
    import signal

    _one_blas_thread()
    _guard_standard_streams()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_termination)
    try:
        _app_for(sys.argv)(prog_name="nll")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:  # before a command started
        _err("nll: interrupted")
        code = EXIT_INTERRUPTED
    except Terminated as exc:
        _err(f"nll: terminated by {exc}")
        code = EXIT_SIGNAL_BASE + exc.signum
    except OSError as exc:  # not met inside a command
        code = _stdout_fault(exc)
    code = _flush_stdout(code)
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # nothing more can be said there
        pass
    os._exit(code)


def _one_blas_thread() -> None:
    """Before numpy is imported: BLAS on one thread, unless the environment says otherwise.

    nll runs its own threads (CSV ranges, batches). OpenBLAS would start one thread per core more,
    which spin for about 0.1 s after numpy's import and after each BLAS call: measured here, 0.07 s
    of CPU on a 10-row file and 0.1 s on 2M rows, taken from the threads that parse. Dask's nanny
    sets the same variables for its workers.
    """
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def _flush_stdout(code: int) -> int:
    """Flush what is left for stdout; a full disk there is exit 2, a closed pipe is not an error."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        return code or _stdout_fault(exc)
    except (ValueError, AttributeError):
        pass
    return code


def _stdout_fault(exc: OSError) -> int:
    """The exit code of an OSError met writing stdout outside a command (help, version, last flush)."""
    if isinstance(exc, BrokenPipeError):
        _silence_stdout()
        return 0
    fault = environment_fault(exc, "standard output")
    _err(f"nll: error: {fault}" if fault else f"nll: internal error: {type(exc).__name__}: {exc}")
    return fault.exit_code if fault else EXIT_INTERNAL


class TokenLayout(str, Enum):
    table = "table"
    chat = "chat"
    completions = "completions"
    vllm = "vllm"
    lm_eval = "lm-eval"


TOKENS_EXAMPLES = ["nll tokens tokens_trigram.csv",
                   "nll tokens tokens_trigram.csv --by source --worst 3 --base 2",
                   "nll tokens tokens_trigram_chat.jsonl -f json",
                   "nll tokens tokens_trigram.csv --per-doc docs.csv --max bits_per_byte=4",
                   "nll tokens --compare tokens_bigram.csv tokens_trigram.csv --fail-if-worse 0",
                   "nll tokens tokens_trigram.csv --report tokens.md --report tokens-junit.xml"]


@app.command(cls=PlainHelp, epilog="Examples, in the sample_data folder:\n\n" + "\n".join(TOKENS_EXAMPLES))
@handle_errors
def tokens(
    files: Annotated[list[str], typer.Argument(metavar="FILES", help="Token log-probability files of one layout: "
                                               "a long table (.csv, .tsv, .parquet, .jsonl, one row per token), "
                                               "OpenAI chat or legacy completions, vLLM prompt_logprobs or "
                                               "lm-evaluation-harness samples (.jsonl); with --compare, BASE NEW.",
                                               show_default=False)],
    format_in: Annotated[Optional[TokenLayout], typer.Option(
        "--format-in", metavar="LAYOUT", help="The layout of the files: table, chat, completions, vllm or "
        "lm-eval.",
        show_default="detected")] = None,
    doc: Annotated[Optional[str], typer.Option("--doc", metavar="COLUMN", help="The document id column.",
                                               show_default="doc_id, document_id, doc, ..., id")] = None,
    logprob: Annotated[Optional[str], typer.Option("--logprob", metavar="COLUMN", help="The token "
                                                   "log-probability column (<= 0; placeholders null, NaN, -inf and "
                                                   "<= -9999 are counted, never scored).",
                                                   show_default="logprob, log_prob, token_logprob, ...")] = None,
    bytes: Annotated[Optional[str], typer.Option("--bytes", metavar="COLUMN", help="The token byte length "
                                                 "column.", show_default="bytes, n_bytes, ...; else the UTF-8 "
                                                 "length of the token text")] = None,
    mask: Annotated[Optional[str], typer.Option("--mask", metavar="COLUMN", help="1 / true: the token is scored; "
                                                "0 / false: it is not.", show_default="mask, loss_mask, ...")] = None,
    text: Annotated[Optional[str], typer.Option("--text", metavar="COLUMN", help="The token text: a document's "
                                                "text is its scored tokens' text in file order (bytes, words).",
                                                show_default="token, token_text, text, ...")] = None,
    by: Annotated[Optional[list[str]], typer.Option("--by", metavar="COLUMN", help="Every metric per value of "
                                                    "COLUMN (task, domain), constant within a document.")] = None,
    base: BaseOpt = Base.e,
    worst: Annotated[int, typer.Option("--worst", metavar="N", help="List the N documents with the largest "
                                       "NLL per token.")] = 0,
    per_doc: Annotated[Optional[str], typer.Option("--per-doc", metavar="FILE", help="Write one row per "
                                                   "document (id, tokens, bytes, words, nll, perplexity, "
                                                   "bits_per_byte) to a .csv or .parquet file, or - for "
                                                   "stdout.")] = None,
    format: FormatOpt = Format.table,
    max: Max = None,
    min: Min = None,
    compare: Annotated[bool, typer.Option("--compare", help="FILES are BASE NEW: paired by document id, deltas "
                                          "of nll and bits_per_byte with bootstrap intervals.")] = False,
    confidence: Annotated[float, typer.Option("--confidence", metavar="LEVEL", help="The level of the "
                                              "bootstrap intervals (--interval, --compare).")] = 0.95,
    resamples: Annotated[int, typer.Option("--resamples", metavar="N", help="Bootstrap resamples "
                                           "(--interval, --compare).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="The bootstrap seed (--interval, "
                                     "--compare).")] = 0,
    fail_if_worse: Annotated[Optional[float], typer.Option(
        "--fail-if-worse", metavar="DELTA", help="--compare: exit 1 when the nll delta and its whole interval "
        "are above DELTA (bits_per_byte when the tokenizers differ).")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
    report_file: ReportFile = None,
    no_ci_integration: NoCiIntegration = False,
    interval: Annotated[bool, typer.Option("--interval", help="A seeded Poisson bootstrap over documents: an "
                                           "interval for every metric, overall and per group (--confidence, "
                                           "--resamples, --seed).")] = False,
    gate_on: GateOnOpt = GateOn.on_value,
) -> None:
    """Perplexity, bits per byte and per-document NLL from saved LLM token log-probabilities.

    Token-weighted nll and perplexity, means of per-document nll and perplexity, bits per byte.

    Byte and word perplexity and bits per byte as lm-evaluation-harness defines them; masks and placeholders counted.

    Exit codes: 0 ok, 1 a gate or --fail-if-worse failed, 2 usage, input or environment error, 3 a bug of nll.
    """
    _prepare_process()
    from .ci import report_targets
    from .errors import UsageError
    from .tokens import api as tokens_api
    from .tokens.render import check_format, write_report

    check_format(format.value)
    report_files = report_targets(report_file or (), files, [per_doc])
    layout = format_in.value if format_in is not None else None
    columns = dict(doc=doc, logprob=logprob, bytes=bytes, mask=mask, text=text)
    with _ProgressBar(quiet, None) as progress:  # tokens read so far (the readers do not report bytes)
        if compare:
            if len(files) != 2:
                raise UsageError(f"--compare takes two files, BASE NEW (got {len(files)})")
            if by or per_doc:
                raise UsageError("--compare does not take --by or --per-doc")
            if interval or gate_on.value != "value":
                raise UsageError("--interval and --gate-on apply to one set of files: --compare bootstraps its "
                                 "deltas already")
            report = tokens_api.compare_tokens(files[0], files[1], format_in=layout, base=base.value,
                                               confidence=confidence, resamples=resamples, seed=seed,
                                               fail_if_worse=fail_if_worse, max=max or (), min=min or (),
                                               worst=worst, progress=progress, **columns)
        else:
            if fail_if_worse is not None:
                raise UsageError("--fail-if-worse needs --compare BASE NEW")
            report = tokens_api.tokens(files, format_in=layout, by=by or (), base=base.value, worst=worst,
                                       max=max or (), min=min or (), per_doc=per_doc, progress=progress,
                                       interval=interval, confidence=confidence, resamples=resamples, seed=seed,
                                       gate_on=gate_on.value, **columns)
    _finish(report, format, per_doc, report_files, not no_ci_integration, write=write_report)


TOKEN_COMPARE_OPTIONS = {"base", "worst", "max", "min", "confidence", "resamples", "seed", "fail_if_worse", "debug"}


def _token_files(*files: str) -> bool:
    """`nll compare` on LLM token files (chat, completions, vLLM, lm-eval JSON Lines): `nll tokens --compare`."""
    from .tokens.readers import detect, is_json

    return all(is_json(f) for f in files) and all(detect(f) != "table" for f in files)


def _compare_token_files(base_file: str, new_file: str, format: Format, quiet: bool, options: dict,
                         report_files: list[tuple[str, str]], ci_integration: bool) -> None:
    import inspect

    from .errors import UsageError
    from .tokens import api as tokens_api
    from .tokens.render import check_format, write_report

    check_format(format.value)
    defaults = {p.name: p.default for p in inspect.signature(score).parameters.values()}
    given = [name for name, value in options.items()
             if name not in TOKEN_COMPARE_OPTIONS and name in defaults and value != defaults[name]]
    if given:
        raise UsageError(f"{', '.join('--' + n.replace('_', '-') for n in given)}: not an option for token files "
                         "(see nll tokens --help)")
    with _ProgressBar(quiet, None) as progress:
        report = tokens_api.compare_tokens(base_file, new_file, base=options["base"].value, worst=options["worst"],
                                           max=options["max"] or (), min=options["min"] or (),
                                           confidence=options["confidence"], resamples=options["resamples"],
                                           seed=options["seed"], fail_if_worse=options["fail_if_worse"],
                                           progress=progress)
    _finish(report, format, None, report_files, ci_integration, write=write_report)


EXAMPLES["merge"] = ["nll merge robot_tools.nllstate",
                     "nll merge robot_tools.nllstate --format json --max nll=0.5"]


@app.command(cls=PlainHelp, epilog=_epilog("merge"))
@handle_errors
def merge(
    states: Annotated[list[str], typer.Argument(metavar="STATES", help="State files written by --save-state "
                                                "(.nllstate), globs or directories of them, local or s3://...",
                                                show_default=False)],
    format: FormatOpt = Format.table,
    max: Max = None,
    min: Min = None,
    save_state: Annotated[Optional[str], typer.Option("--save-state", metavar="FILE", help="Also write the "
                                                      "merged state, to merge again later.")] = None,
    storage_option: StorageOption = None,
    quiet: Quiet = False,
    debug: Debug = False,
    report_file: ReportFile = None,
    no_ci_integration: NoCiIntegration = False,
) -> None:
    """The report of several state files: the same as one run over all their inputs.

    States of different classes, settings, bins, units or versions are refused. They are read one at a time.
    """
    from . import api  # no _prepare_process(): no rows are read, and pyarrow is never imported
    from .ci import report_targets

    _resume_garbage_collection()  # what _prepare_process does for the commands that read rows

    report_files = report_targets(report_file or (), [states])
    with _MergeProgress(quiet) as progress:
        report = api.merge(states, max=max or (), min=min or (), save_state=save_state,
                           storage_options=_storage_options(storage_option), progress=progress)
    _finish(report, format, None, report_files, not no_ci_integration)


class _MergeProgress(_ProgressBar):
    """The progress bar of `nll merge`: state files read and the rows they hold."""

    def __init__(self, quiet: bool):
        self.bar = None
        if quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.fields[rows]:,} rows in {task.completed:,} state files"),
                            TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True)
        self.task = self.bar.add_task("merging", total=None, rows=0)


EXAMPLES["calibrate"] = [
    "nll calibrate robot_tools_val_logits.csv --input logits --apply robot_tools_test_logits.csv",
    "nll calibrate robot_tools_val_logits.csv --input logits --save temperature.json --max ece=0.05",
    "nll calibrate robot_tools_test_logits.csv --input logits --load temperature.json --output calibrated",
    "nll calibrate robot_tools_test_logits.csv --input logits --temperature 2.5 --format json",
]


class Method(str, Enum):
    temperature = "temperature"
    vector = "vector"


@app.command(cls=PlainHelp, epilog=_epilog("calibrate"))
@handle_errors
def calibrate(
    valid: Annotated[str, typer.Argument(metavar="VALID", help="Held-out predictions with true labels, "
                                         "to fit the temperature on (.csv, .tsv, .csv.gz, .parquet).",
                                         show_default=False)],
    apply: Annotated[Optional[list[str]], typer.Option("--apply", metavar="TEST", help="A file to calibrate with "
                                                       "the same T and score before and after "
                                                       "(repeatable).")] = None,
    method: Annotated[Method, typer.Option("--method", metavar="temperature|vector", help="The calibration map: "
                                           "one temperature T, softmax(z / T); or vector scaling, a scale and a "
                                           "bias per class on the log-probabilities x, softmax(a * x + b)."
                                           )] = Method.temperature,
    temperature: Annotated[Optional[float], typer.Option("--temperature", metavar="T", help="Use this T instead "
                                                         "of fitting one.")] = None,
    load: Annotated[Optional[str], typer.Option("--load", metavar="FILE", help="Use the T saved by --save "
                                                "instead of fitting one.")] = None,
    save: Annotated[Optional[str], typer.Option("--save", metavar="FILE", help="Write T as JSON, for --load "
                                                "or score --temperature.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="DIR", help="Write a calibrated "
                                                  "copy of VALID and each TEST into DIR: same name, format, "
                                                  "columns and kind of values; never over an input.")] = None,
    label: Label = None,
    classes: Classes = None,
    probs: Probs = None,
    key: Key = None,
    weight: Annotated[Optional[str], typer.Option("--weight", metavar="COLUMN", help="A column of sample "
                                                  "weights, for the fit and the metrics.")] = None,
    ignore: Ignore = None,
    positive: Positive = None,
    input: Input = InputKind.probs,
    eps: Eps = EPS_DEFAULT,
    tol: Tol = 1e-4,
    renormalize: Renormalize = False,
    base: BaseOpt = Base.e,
    bins: Annotated[int, typer.Option("--bins", metavar="N", help="Equal-width confidence bins for "
                                      "ECE.")] = 15,
    top_k: Annotated[Optional[int], typer.Option("--top-k", metavar="K", help="Also top_k_accuracy.")] = None,
    format: FormatOpt = Format.table,
    max: Annotated[Optional[list[str]], typer.Option("--max", metavar="METRIC=VALUE", help="Exit 1 if METRIC of "
                                                     "VALID after calibration is above VALUE (repeatable).")] = None,
    min: Annotated[Optional[list[str]], typer.Option("--min", metavar="METRIC=VALUE", help="Exit 1 if METRIC of "
                                                     "VALID after calibration is below VALUE (repeatable).")] = None,
    debug: Debug = False,
    l2: Annotated[float, typer.Option("--l2", metavar="X", help="Vector scaling's penalty (X / 2)(|a - 1|^2 + "
                                      "|b|^2) towards the identity map.")] = 1e-4,
    report_file: ReportFile = None,
    no_ci_integration: NoCiIntegration = False,
) -> None:
    """Temperature scaling: fit T by maximum likelihood on VALID, report every metric before and after.

    Calibrated predictions are softmax(z / T), z the logits, log-probabilities or log p; T > 1 softens them.

    Memory: the fit holds VALID's log-probabilities, rows x classes x 8 bytes (4 copies while it runs).

    --apply files are streamed. Each file is read more than once: no standard input.

    Exit codes: 0 ok, 1 a --max/--min gate failed, 2 usage, input or environment error, 3 a bug of nll.
    """
    from .ci import report_targets

    copies = [os.path.join(output, os.path.basename(str(path))) for path in [valid, *(apply or ())]] if output else []
    report_files = report_targets(report_file or (), [valid, *(apply or ())], [save, output, *copies])
    _prepare_process()
    from . import api
    from .render import write_calibration

    result = api.calibrate(valid, apply=apply or (), method=method.value, temperature=temperature, load=load,
                           save=save, output=output, label=label, classes=classes, probs=probs, key=key,
                           weight=weight, ignore=ignore or (), positive=positive, input=input.value, eps=eps,
                           tol=tol, renormalize=renormalize, base=base.value, bins=bins, top_k=top_k,
                           max=max or (), min=min or (), l2=l2)
    _finish(result, format, None, report_files, not no_ci_integration, write=write_calibration,
            gates_on=" (VALID after calibration)")
