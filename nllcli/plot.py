"""nll plot: reliability diagram, confidence and loss histograms, per-class NLL; one image file."""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UsageError, visible
from .report import Report

FORMATS = ("png", "svg", "pdf")
FIGSIZE = (12.0, 9.0)  # inches
DPI = 150
MAX_CLASSES = 20  # the classes with the highest NLL, when there are more
LEGEND = {"fontsize": 8, "framealpha": 0.9, "edgecolor": "none"}
BLUE, RED, GREY, GREEN = "#4c72b0", "#c44e52", "#8c8c8c", "#2a9d5c"
DOMINANT_SHARE = 0.5  # a confidence bin holding more than this share of the weight: log scale


def write_plot(output: str, report: Report | None = None, calibrated: Report | None = None,
               temperature: float | None = None) -> None:
    """Check OUTPUT (suffix, matplotlib, folder); given a report, draw it and write OUTPUT atomically.

    ``calibrated``: the report of the same file scaled by ``temperature`` (nll calibrate), drawn
    beside the original in the reliability diagram and the confidence histogram.
    """
    path = Path(output)
    fmt = path.suffix.lower()[1:]
    if fmt not in FORMATS:
        raise UsageError(f"--output {output}: name a .png, .svg or .pdf file")
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("nll plot needs matplotlib: pip install 'nllcli[plot]'") from None
    from .sinks import check_destination

    check_destination(output, "--output")
    if report is None:
        return
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # the same figure whatever the user's matplotlibrc says
        matplotlib.rcParams["svg.hashsalt"] = "nll"  # stable ids in SVG
        matplotlib.rcParams["text.parse_math"] = False  # a '$' in a class or file name is text, not mathtext
        fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)  # no pyplot, no GUI
        _draw(fig, report, calibrated, temperature)
        _save(fig, path, fmt)


def _save(fig, path: Path, fmt: str) -> None:
    """Write to a temporary file beside PATH, then rename it over PATH; leave nothing behind on error."""
    from .sinks import AtomicFile, reported_as

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)  # no timestamps
    file = AtomicFile(path, suffix=path.suffix)
    try:
        with reported_as(str(path)), open(file.temp, "wb") as sink:
            fig.savefig(sink, format=fmt, metadata=metadata)
        file.commit()
    except BaseException:
        file.abort()
        raise


def _draw(fig, report: Report, calibrated: Report | None = None, temperature: float | None = None) -> None:
    (rel, conf), (loss, per_class) = fig.subplots(2, 2)
    _reliability(rel, report, calibrated, temperature)
    _confidence(conf, report, calibrated, temperature)
    _losses(loss, report)
    _per_class(per_class, report)
    headline = _headline(report)
    if calibrated is not None and temperature is not None:
        headline += f"\nafter temperature scaling, T = {temperature:.4g}:   {_headline(calibrated, rows=False)}"
    fig.suptitle(f"{_inputs(report)}\n{headline}", fontsize=13)


def _reliability(ax, report: Report, calibrated: Report | None = None, temperature: float | None = None) -> None:
    m = report.metrics
    title = "Reliability" + (f"   ECE {_num(m['ece'])}   MCE {_num(m.get('mce'))}" if "ece" in m else "")
    if calibrated is not None and "ece" in calibrated.metrics:
        title += f"   ->   ECE {_num(calibrated.metrics['ece'])} after T"
    ax.set_title(title)
    bins = [b for b in report.calibration if b["weight"] > 0]
    if not bins:
        return _note(ax, "no calibration: needs a label column")
    lo = [b["bin"][0] for b in bins]
    width = [b["bin"][1] - b["bin"][0] for b in bins]
    acc = [b["accuracy"] for b in bins]
    cnf = [b["confidence"] for b in bins]
    ax.plot([0, 1], [0, 1], "--", color=GREY, lw=1, label="perfectly calibrated")
    ax.bar(lo, acc, width, align="edge", color=BLUE, edgecolor="white", label="accuracy")
    ax.bar(lo, [c - a for a, c in zip(acc, cnf)], width, bottom=acc, align="edge", color=RED,
           alpha=0.3, hatch="//", edgecolor=RED, lw=0.5, label="gap to mean confidence")
    if len(report.calibration) <= 25:
        for x, w, a, c, b in zip(lo, width, acc, cnf, bins):
            ax.text(x + w / 2, max(a, c) + 0.015, _count(b["weight"]), ha="center", va="bottom", fontsize=7)
    if calibrated is not None and temperature is not None:
        after = [b for b in calibrated.calibration if b["weight"] > 0]
        ax.plot([b["confidence"] for b in after], [b["accuracy"] for b in after], "o-", color=GREEN, lw=1.5,
                ms=4, label=f"after T = {temperature:.4g}")
        # room above accuracy 1 for a legend of two columns, which would otherwise hide bars
        ax.set(ylim=(0, 1.3), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.legend(loc="upper left", ncol=2, **LEGEND)
        ax.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy")
        return None
    ax.set(xlim=(0, 1), ylim=(0, 1.1), xlabel="confidence (top-class probability)", ylabel="accuracy")
    ax.legend(loc="upper left", **LEGEND)


def _confidence(ax, report: Report, calibrated: Report | None = None, temperature: float | None = None) -> None:
    bins = report.calibration
    if not any(b["weight"] > 0 for b in bins):
        ax.set_title("Confidence")
        return _note(ax, "no confidences: needs a label column")
    weights = [b["weight"] for b in bins]
    total = sum(weights)
    log_scale = max(weights) > DOMINANT_SHARE * total  # one bin would flatten every other bar
    ax.set_title("Confidence" + ("   (log scale: one bin holds most rows)" if log_scale else ""))
    ax.bar([b["bin"][0] for b in bins], weights, [b["bin"][1] - b["bin"][0] for b in bins],
           align="edge", color=BLUE, edgecolor="white", label="as given" if calibrated is not None else None)
    if calibrated is not None and temperature is not None:
        edges = [b["bin"][0] for b in calibrated.calibration] + [calibrated.calibration[-1]["bin"][1]]
        ax.stairs([b["weight"] for b in calibrated.calibration], edges, color=GREEN, lw=1.8,
                  label=f"after T = {temperature:.4g}")
    if log_scale:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # no mathtext: plain 100
        ax.yaxis.set_minor_formatter(NullFormatter())
    mean_conf = sum(b["confidence"] * b["weight"] for b in bins if b["weight"] > 0) / total
    ax.axvline(mean_conf, color=RED, lw=1.5, label=f"mean confidence {mean_conf:.3f}")
    if "accuracy" in report.metrics:
        ax.axvline(report.metrics["accuracy"], color="black", ls="--", lw=1.5,
                   label=f"accuracy {report.metrics['accuracy']:.3f}")
    ax.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel=_weight_label(report))
    ax.legend(loc="upper left", **LEGEND)


def _losses(ax, report: Report) -> None:
    ax.set_title("Per-sample loss")
    rows = report.loss_histogram
    if not any(r["weight"] > 0 for r in rows):
        return _note(ax, "no rows")
    labels = [f"{_num(lo, 2)}–{_num(hi, 2)}" if hi is not None else f"≥ {_num(lo, 2)}"
              for lo, hi in (r["range"] for r in rows)]
    weights = [r["weight"] for r in rows]
    bars = ax.bar(range(len(rows)), weights, color=BLUE, width=0.8)
    ax.bar_label(bars, [_count(w) if w else "" for w in weights], fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set(xlabel=f"loss of one sample ({report.units})", ylabel=_weight_label(report))
    ax.set_ylim(top=max(weights) * 1.1)


def _per_class(ax, report: Report) -> None:
    rows, title = report.per_class, f"Mean {_loss_name(report)} per class"
    if len(rows) > MAX_CLASSES:
        title = f"Mean {_loss_name(report)}, {MAX_CLASSES} highest of {len(rows)} classes"
        rows = sorted(rows, key=lambda r: -1.0 if math.isnan(r["nll"]) else r["nll"], reverse=True)[:MAX_CLASSES]
    overall = report.metrics.get("nll")
    overall = overall if overall is not None and math.isfinite(overall) else None
    if rows and overall is not None:
        ax.axhline(overall, color=RED, ls="--", lw=1, zorder=1)
        title += f"   (dashed: overall {_num(overall)})"
    ax.set_title(title)
    if not rows:
        return _note(ax, "no classes: needs a label column")
    heights = [r["nll"] if math.isfinite(r["nll"]) else 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), heights, color=BLUE, width=0.7)
    few = len(rows) <= 8
    notes = [f"{_num(r['nll'])}{chr(10) if few else ' · '}acc {_percent(r['accuracy'])}" for r in rows]
    ax.bar_label(bars, notes, fontsize=8 if few else 7, padding=2, rotation=0 if few else 90,
                 bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_xticks(range(len(rows)), [visible(r["class"]) for r in rows], fontsize=8,
                  **({} if few else {"rotation": 40, "ha": "right", "rotation_mode": "anchor"}))
    top = max(*heights, overall or 0.0, 1e-9)
    ax.set(ylabel=f"mean {_loss_name(report)} ({report.units})", ylim=(0, top * (1.25 if few else 1.6)))


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set(xticks=[], yticks=[])


def _inputs(report: Report) -> str:
    names = {role: [visible(Path(n).name) for n in paths] for role, paths in report.inputs.items()}
    shown = [", ".join(ns[:3]) + (f" (+{len(ns) - 3} more)" if len(ns) > 3 else "") for ns in names.values()]
    return " vs targets ".join(shown)


def _headline(report: Report, rows: bool = True) -> str:
    m, parts = report.metrics, [f"{report.rows:,} rows"] if rows else []
    if "nll" in m:
        parts.append(f"{_loss_name(report)} {_num(m['nll'])} {report.units}")
    if "accuracy" in m:
        parts.append(f"accuracy {_percent(m['accuracy'])}")
    parts += [f"{name} {_num(m[key])}" for name, key in (("Brier", "brier"), ("ECE", "ece")) if key in m]
    return "   ·   ".join(parts)


def _loss_name(report: Report) -> str:
    """NLL, or cross-entropy against soft targets (where the two differ: the targets have entropy)."""
    return "cross-entropy" if report.metrics.get("entropy", 0.0) > 0 else "NLL"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def _count(weight: float) -> str:
    return f"{weight:.0f}" if weight == int(weight) or weight >= 100 else f"{weight:.3g}"


def _weight_label(report: Report) -> str:
    return "weight" if report.weighted else "rows"
