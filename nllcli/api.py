"""The Python API, which the command line calls: plan the job, run it through the engine, build the Report.

``preds``, ``targets``, ``p`` and ``q`` are paths (or lists of paths, '-' for standard input),
pandas DataFrames or pyarrow Tables. Gates (``max=["nll=0.4"]``, ``min=["accuracy=0.9"]``) are
evaluated into the report (``Report.failed_gates``), not raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import losses
from .engine import Progress, run
from .errors import UsageError
from .plan import Job, parse_gates, plan_kl, plan_score, say_notes
from .report import Report, build_report
from .sinks import check_per_sample_target, per_sample_sink
from .statefile import SavedState, check_state_target, expand_state_paths, load_state, merge_states
from .statefile import save_state as write_state

__all__ = ["kl", "load_state", "merge", "save_state", "score"]

if TYPE_CHECKING:
    from .calibration import Calibration

PathOrData = object  # a path, a list of paths, '-', a pandas DataFrame or a pyarrow Table


def score(preds: PathOrData, *, targets: PathOrData | None = None, label: str | None = None,
          classes: str | list[str] | None = None, probs: str | None = None, key: str | None = None,
          weight: str | None = None, ignore: Sequence[str] = (), positive: str | None = None,
          input: str = "probs",
          eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False, base: str = "e",
          target_prefix: str | None = None, target_probs: str | None = None,
          label_smoothing: float | None = None, bins: int = 15, top_k: int | None = None,
          by: Sequence[str] = (), worst: int = 0, max: Sequence[str] = (), min: Sequence[str] = (),
          per_sample: str | Path | None = None, progress: Progress | None = None, bins_kind: str = "width",
          ignore_label: str | int | None = None, class_weight: str | dict[str, float] | Sequence[float] | None = None,
          class_weight_file: str | Path | None = None, save_state: str | Path | None = None,
          storage_options: dict | None = None,
          engine: str = "local", scheduler: str | None = None, scheduler_file: str | None = None,
          workers: int | None = None, partition_size: int | str | None = None,
          interval: bool = False, confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
          gate_on: str = "value", temperature: float | None = None,
          vector_scaling: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
          multilabel: bool = False, label_delimiter: str | None = None) -> Report:
    """Score predictions against hard labels or soft targets (`nll score`).

    targets: a file of target distributions, paired by ``key`` or by position; target_prefix:
    targets in the same file as columns PREFIX<class>; label_smoothing: (1 - A) * one_hot + A / K.
    label, classes, probs (a list column), key, weight, positive (class 1 of a binary file): the
    columns; ignore: columns that play no part. input: probs, logits or log-probs; eps: the clip
    (0: none); tol: how far a row may sum from 1; renormalize: divide rows by their sum; base: e,
    2 or 10. bins: confidence bins for ECE; top_k: also top_k_accuracy (the label among the K
    likeliest classes); by: group columns; worst: list the N largest losses. per_sample: a .csv or
    .parquet file (or '-') of one row per sample, written atomically. progress(rows, bytes) is
    called after each batch. bins_kind: "width" or "mass", the bins of ece, mce, ece_l2(_debiased)
    and the calibration table (ece_mass is always equal-mass). ignore_label: rows with this label
    are dropped and counted (torch's ignore_index, e.g. -100). class_weight: NAME=W,... (or a dict,
    or one weight per class in order), or class_weight_file (JSON or CSV class,weight): each row
    weighs weight[label] (times its ``weight``), so means are sum w l / sum w, torch's rule.
    save_state: also write the run's State to this .nllstate file (see
    merge()). storage_options: options of the remote file system for s3://, gs://, az://, http(s)://
    inputs (fsspec's, e.g. {"endpoint_url": ..., "anon": True}).

    engine: "local" (this process) or "dask": the same numbers, computed on a Dask cluster at
    ``scheduler`` (an address; else $DASK_SCHEDULER_ADDRESS) or ``scheduler_file``, or on a local
    cluster of ``workers`` processes started for the run; partition_size: bytes of input a
    partition holds (64MB). With dask, per_sample names a directory of Parquet parts.
    interval: a Poisson bootstrap percentile interval of every metric
    (``Report.intervals``, per group too) at ``confidence`` from ``resamples`` resamples seeded by
    ``seed``; gate_on: what the gates test, "value", "lower" or "upper" (a bound of the interval) or
    "interval" (fail only when the whole interval is past the threshold); a bound implies interval.
    temperature: score softmax(z / T) instead (z the logits, the
    log-probabilities, or log p for probabilities), as `nll calibrate` does; vector_scaling:
    (scales, biases), one per class, score softmax(a * x + b) with x the log-probabilities.
    multilabel: each class column is an independent P(y_k = 1), the labels 0/1 columns
    (target_prefix) or a column listing each row's classes (label, split on label_delimiter);
    see nllcli.multilabel.
    """
    if multilabel:
        from .multilabel import score as score_multilabel

        given = {"--targets": targets, "--probs": probs, "--positive": positive, "--target-probs": target_probs,
                 "--label-smoothing": label_smoothing, "--top-k": top_k, "--by": by or None, "--worst": worst or None,
                 "--per-sample": per_sample, "--temperature": temperature, "--renormalize": renormalize or None,
                 "vector_scaling": vector_scaling, "--bins-kind": None if bins_kind == "width" else bins_kind,
                 "--ignore-label": ignore_label, "--class-weight": class_weight,
                 "--class-weight-file": class_weight_file, "--save-state": save_state,
                 "--storage-option": storage_options, "--engine": None if engine == "local" else engine,
                 "--interval": interval or None, "--gate-on": None if gate_on == "value" else gate_on}
        unsupported = [option for option, value in given.items() if value is not None]
        if unsupported:
            raise UsageError(f"--multilabel does not take {', '.join(unsupported)}")
        return score_multilabel(preds, label=label, classes=classes, key=key, weight=weight, ignore=ignore,
                                input=input, eps=eps, base=base, target_prefix=target_prefix,
                                label_delimiter=label_delimiter, bins=bins, max=max, min=min, progress=progress)
    if label_delimiter is not None:
        raise UsageError("--label-delimiter splits the labels of --multilabel")
    check_per_sample_target(per_sample, preds, targets)
    check_state_target(save_state, preds, targets)
    job = plan_score(preds, targets=targets, label=label, classes=classes, probs=probs, key=key, weight=weight,
                     ignore=ignore, positive=positive, input=input, eps=eps, tol=tol, renormalize=renormalize,
                     base=base,
                     target_prefix=target_prefix, target_probs=target_probs, label_smoothing=label_smoothing,
                     bins=bins, top_k=top_k, by=by, worst=worst, max=max, min=min, bins_kind=bins_kind,
                     ignore_label=ignore_label, class_weight=class_weight, class_weight_file=class_weight_file,
                     storage_options=storage_options, interval=interval, confidence=confidence,
                     resamples=resamples, seed=seed, gate_on=gate_on,
                     temperature=temperature, vector_scaling=vector_scaling)
    dask = _engine(engine, scheduler=scheduler, scheduler_file=scheduler_file, workers=workers,
                   partition_size=partition_size)
    return _run_and_report(job, per_sample, progress, save_state, storage_options, dask)


def kl(p: PathOrData, q: PathOrData, *, classes: str | list[str] | None = None, probs: str | None = None,
       key: str | None = None, input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4,
       renormalize: bool = False, base: str = "e", symmetric: bool = False, max: Sequence[str] = (),
       min: Sequence[str] = (), ignore: Sequence[str] = (), per_sample: str | Path | None = None,
       progress: Progress | None = None, save_state: str | Path | None = None,
       storage_options: dict | None = None, engine: str = "local",
       scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None,
       partition_size: int | str | None = None) -> Report:
    """KL(P || Q) per row pair (`nll kl`): P the reference distribution, Q the model (clipped by ``eps``).

    Rows pair by ``key`` (default id, when both have it), else by position. symmetric: also
    KL(Q || P) and the Jensen-Shannon divergence. The other options (engine ones too) are those
    of score().
    """
    check_per_sample_target(per_sample, p, q)
    check_state_target(save_state, p, q)
    job = plan_kl(p, q, classes=classes, probs=probs, key=key, input=input, eps=eps, tol=tol,
                  renormalize=renormalize, base=base, symmetric=symmetric, max=max, min=min, ignore=ignore,
                  storage_options=storage_options)
    dask = _engine(engine, scheduler=scheduler, scheduler_file=scheduler_file, workers=workers,
                   partition_size=partition_size)
    return _run_and_report(job, per_sample, progress, save_state, storage_options, dask)


def _engine(engine: str, **options):
    """None for the local engine, else the checked DaskOptions."""
    if engine == "local":
        if any(v is not None for v in options.values()):
            given = ", ".join("--" + k.replace("_", "-") for k, v in options.items() if v is not None)
            raise UsageError(f"{given}: only with --engine dask")
        return None
    if engine != "dask":
        raise UsageError(f"--engine {engine!r}: choose local or dask")
    from .engine_dask import DaskOptions

    return DaskOptions.of(**options)


def _run_and_report(job: Job, per_sample, progress: Progress | None, save_state: str | Path | None = None,
                    storage_options: dict | None = None, dask=None) -> Report:
    if dask is not None:
        from .engine_dask import run_dask

        state = run_dask(job, dask, per_sample, progress)
        report = build_report(job, state)
    else:
        with per_sample_sink(job, per_sample) as sink:
            state = run(job, sink, progress)
            report = build_report(job, state)
    if save_state is not None:
        write_state(SavedState(job, state), save_state, storage_options=storage_options)
    if job.command == "score":
        say_notes(job)
    return report


def save_state(saved: SavedState, path: str | Path, *, storage_options: dict | None = None) -> None:
    """Write a SavedState (from load_state() or merge_states()) to a .nllstate file, atomically; an
    s3://, gs:// or az:// URL is written as one object."""
    write_state(saved, path, storage_options=storage_options)


def merge(states: str | Path | Sequence[str | Path], *, max: Sequence[str] = (), min: Sequence[str] = (),
          save_state: str | Path | None = None, storage_options: dict | None = None,
          progress: Progress | None = None) -> Report:
    """The report of several state files (`nll merge`): the same as one run over all their inputs.

    states: .nllstate paths or URLs, globs and directories of them, merged in the order given
    (globs sorted), one in memory at a time. max, min: gates, as for score(). save_state: also
    write the merged state (to merge again later). A UsageError when two states differ in their
    classes, settings, bins, units or columns; an InputError when a file is not a valid state.
    progress(rows, files) is called after each state file.
    """
    paths = [states] if isinstance(states, (str, Path)) else list(states)
    files = expand_state_paths(paths, storage_options)
    check_state_target(save_state, files)
    merged = merge_states(files, storage_options=storage_options, progress=progress)
    job = merged.job
    job.gates = parse_gates(max, min, job.command, job.settings)
    report = build_report(job, merged.state)
    if save_state is not None:
        write_state(merged, save_state, storage_options=storage_options)
    return report


def calibrate(valid: PathOrData, *, apply: Sequence[PathOrData] = (), method: str = "temperature",
              temperature: float | None = None, load: str | None = None, save: str | None = None,
              output: str | None = None, label: str | None = None, classes: str | list[str] | None = None,
              probs: str | None = None, key: str | None = None, weight: str | None = None,
              ignore: Sequence[str] = (), positive: str | None = None, input: str = "probs",
              eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False, base: str = "e",
              bins: int = 15, top_k: int | None = None, max: Sequence[str] = (),
              min: Sequence[str] = (), l2: float = 1e-4, bins_kind: str = "width") -> Calibration:
    """Temperature scaling (`nll calibrate`): fit T > 0 by maximum likelihood on ``valid`` (its
    labels, weighted by ``weight``), then score ``valid`` and each ``apply`` file before and after.

    temperature / load: take T as given, or from a file written by ``save``, instead of fitting.
    output: a folder receiving a calibrated copy of each input file, in its format and layout.
    max / min: gates on the calibrated metrics of ``valid``. method="vector": vector scaling, one
    scale and one bias per class on the log-probabilities, with the penalty (l2 / 2)(|a - 1|^2 +
    |b|^2) towards the identity. The other options are score()'s (bins_kind: the bins of ece).
    The fit holds the log-probabilities of ``valid`` in memory (n x K float64, about 4 copies while
    it runs); ``apply`` files are streamed.
    """
    from .calibration import run

    return run(valid, apply=list(apply), method=method, temperature=temperature, load=load, save=save,
               output=output, l2=l2, max=max, min=min, label=label, classes=classes, probs=probs, key=key,
               weight=weight, ignore=ignore, positive=positive, input=input, eps=eps, tol=tol,
               renormalize=renormalize, base=base, bins=bins, top_k=top_k, bins_kind=bins_kind)
