"""score() and kl(): plan the job, stream it through the engine, build the Report."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from . import losses
from .columns import parse_classes, resolve_layout
from .engine import Evaluator, Progress, _run
from .errors import InputError
from .plan import (
    Settings,
    _check_per_sample_target,
    _check_stdin_once,
    _default_key,
    _gates,
    _input_names,
    _list_width_names,
    _sources,
    plan_score,
)
from .report import SYMMETRIC, Report, _report


def score(preds, *, per_sample=None, progress: Progress | None = None, **options) -> Report:
    """Score predictions against hard labels or soft targets.

    ``preds`` and ``targets`` are paths (or lists of paths, '-' for stdin), pandas DataFrames or
    pyarrow Tables. Options: targets, label, classes, probs, key, weight, positive, input, eps,
    tol, renormalize, base, target_prefix, target_probs, label_smoothing, bins, by, worst, max,
    min (gates such as ``max=["nll=0.4"]``, evaluated into the report, not raised).
    """
    _check_per_sample_target(per_sample, preds, options.get("targets"))
    job = plan_score(preds, **options)
    evaluator = job.evaluator()
    with _atomic(_writer(per_sample)) as writer:
        job.run(evaluator, writer, progress)
        return job.report(evaluator)


@contextlib.contextmanager
def _atomic(writer):
    """Commit the per-sample writer on success, remove its file on any failure."""
    try:
        yield writer
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.commit()


def kl(p, q, *, classes: str | list[str] | None = None, probs: str | None = None, key: str | None = None,
       input: str = "probs", eps: float = losses.EPS, tol: float = 1e-4, renormalize: bool = False,
       base: str = "e", symmetric: bool = False, max: Sequence[str] = (), min: Sequence[str] = (),
       per_sample=None, progress: Progress | None = None) -> Report:
    """KL(P || Q) per row pair: P the reference distribution, Q the model (clipped by ``eps``)."""
    settings = Settings(input, eps, tol, renormalize, str(base), symmetric=symmetric)
    _check_stdin_once(p, q)
    _check_per_sample_target(per_sample, p, q)
    names = ["kl", "cross_entropy", "entropy", "perplexity"] + (list(SYMMETRIC) if symmetric else [])
    gates = _gates(max, min, names)
    p_sources, q_sources = _sources(p), _sources(q)
    p_schema, q_schema = p_sources[0].schema, q_sources[0].schema
    pair_key = _default_key(key, (q_schema, q_sources[0].name), (p_schema, p_sources[0].name))
    class_list = parse_classes(classes) if isinstance(classes, str) else classes
    layout = resolve_layout(q_schema, q_sources[0].name, classes=class_list, probs=probs, key=pair_key,
                            label_required=False)
    layout.label = None  # a label column is never a class here, and is not needed
    if probs and not layout.class_names:
        layout.class_names = _list_width_names(q_sources, layout)
    if layout.binary:
        raise InputError(q_sources[0].name, "needs one probability column per class, found one")
    evaluator = Evaluator(layout, settings, soft=True, target_kind=settings.kind, calibration=False)
    with _atomic(_writer(per_sample)) as writer:
        _run(evaluator, q_sources, layout, p_sources, pair_key, None, True, probs=probs, writer=writer,
             progress=progress, explicit_classes=class_list is not None)
        return _report("kl", evaluator, settings, {"p": _input_names(p_sources), "q": _input_names(q_sources)},
                       gates, True)


def _writer(per_sample):
    if per_sample is None:
        return None
    from .render import PerSampleWriter

    return PerSampleWriter.open(per_sample)
