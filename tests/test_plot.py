"""nll plot: image files from the sample data, checks before reading, atomic writes, determinism."""

import os
import sys

import pytest

matplotlib = pytest.importorskip("matplotlib")

from nllcli.plot import FIGSIZE, write_plot  # noqa: E402
from nllcli.report import Report  # noqa: E402


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<svg"), (".pdf", b"%PDF")])
def test_writes_each_format(run, samples, tmp_path, suffix, magic):
    out = tmp_path / f"robot{suffix}"
    result = run("plot", samples / "robot_tools.csv", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    # The report's warnings (the sample has clipped zeros), then where the picture went.
    assert result.stderr.splitlines()[-1] == f"nll: wrote {out}"
    assert all(line.startswith(("nll: warning: ", "nll: note: ")) for line in result.stderr.splitlines()[:-1])
    data = out.read_bytes()
    assert (magic in data[:2000]) if suffix == ".svg" else data.startswith(magic)
    assert _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    if suffix == ".png":
        from matplotlib.image import imread

        height, width = imread(out).shape[:2]
        assert width / height == pytest.approx(FIGSIZE[0] / FIGSIZE[1], rel=0.01)
        assert width >= 1000
    if suffix == ".pdf":
        assert b"CreationDate" not in data


@pytest.mark.parametrize("args", [
    ["robot_tools_logits.csv", "--input", "logits"],
    ["robot_tools.csv", "--targets", "robot_tools_annotators.csv"],
    ["robot_tools.csv", "--bins", "5", "--base", "2"],
])
def test_options_of_score_pass_through(run, samples, tmp_path, args):
    out = tmp_path / "out.png"
    args = [samples / a if a.endswith(".csv") else a for a in args]
    result = run("plot", *args, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_bad_option_of_score_is_a_usage_error(run, samples, tmp_path):
    result = run("plot", samples / "robot_tools.csv", "--bins", "0", "-o", tmp_path / "out.png")
    assert result.exit_code == 2
    assert "--bins" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.jpg", "out", "out.png.txt"])
def test_bad_suffix(run, samples, tmp_path, name):
    result = run("plot", samples / "robot_tools.csv", "-o", tmp_path / name)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert ".png, .svg or .pdf" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_folder(run, samples, tmp_path):
    result = run("plot", samples / "robot_tools.csv", "-o", tmp_path / "nowhere" / "out.png")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and result.stderr.count("\n") == 1


def test_output_is_a_directory(run, samples, tmp_path):
    (tmp_path / "d.png").mkdir()
    result = run("plot", samples / "robot_tools.csv", "-o", tmp_path / "d.png")
    assert result.exit_code == 2
    assert "directory" in result.stderr


def test_input_error_leaves_nothing_and_keeps_an_existing_file(run, tmp_path):
    out = tmp_path / "out.png"
    result = run("plot", tmp_path / "missing.csv", "-o", out)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    assert run("plot", tmp_path / "missing.csv", "-o", out).exit_code == 2
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_an_existing_file(run, samples, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, sink, **kwargs):
        sink.write(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    result = run("plot", samples / "robot_tools.csv", "-o", out)
    assert result.exit_code == 3
    assert "disk full" in result.stderr
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_without_matplotlib(run, samples, tmp_path, monkeypatch):
    class NoMatplotlib:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] == "matplotlib":
                raise ImportError(f"No module named {name!r}")

    for name in [m for m in sys.modules if m.partition(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoMatplotlib, *sys.meta_path])
    result = run("plot", samples / "robot_tools.csv", "-o", tmp_path / "out.png")
    assert result.exit_code == 2
    assert result.stderr == "nll: error: nll plot needs matplotlib: pip install 'nllcli[plot]'\n"
    assert list(tmp_path.iterdir()) == []


def test_svg_is_deterministic(run, samples, tmp_path):
    first, second = tmp_path / "a.svg", tmp_path / "B.SVG"  # the suffix in any case
    assert run("plot", samples / "robot_tools.csv", "-o", first).exit_code == 0
    assert run("plot", samples / "robot_tools.csv", "-o", second).exit_code == 0
    assert first.read_bytes() == second.read_bytes()


def test_panels_without_data_show_a_note(tmp_path):
    """Soft targets without labels: no calibration and no per-class rows, still a figure."""
    report = Report("score", {"preds": ["soft.csv"], "targets": ["annotators.csv"]}, 10, ["a", "b"], "nats",
                    {"nll": 0.7, "cross_entropy": 0.7, "brier": 0.2},
                    loss_histogram=[{"range": [0.0, None], "weight": 0.0}])
    out = tmp_path / "soft.svg"
    write_plot(str(out), report)
    svg = out.read_text()
    assert svg.count("needs a label column") == 3  # matplotlib writes each text as a comment too


def test_infinite_and_undefined_values_draw(tmp_path):
    inf, nan = float("inf"), float("nan")
    per_class = [{"class": f"c{i}", "rows": 1, "nll": v, "accuracy": a}
                 for i, (v, a) in enumerate([(inf, 0.0), (nan, nan)] + [(0.5, 0.9)] * 30)]
    calibration = [{"bin": [b / 40, (b + 1) / 40], "weight": 2.5, "confidence": (b + 0.5) / 40, "accuracy": 0.5}
                   for b in range(40)]
    report = Report("score", {"preds": [f"part-{i}.parquet" for i in range(5)]}, 32, [r["class"] for r in per_class],
                    "bits", {"nll": inf, "accuracy": 0.8, "brier": 0.3, "ece": 0.1, "mce": 0.4}, per_class,
                    weighted=True, calibration=calibration,
                    loss_histogram=[{"range": [0.0, 1.0], "weight": 30.0}, {"range": [1.0, None], "weight": 2.0}])
    out = tmp_path / "odd.png"
    write_plot(str(out), report)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_check_without_report_writes_nothing(tmp_path):
    write_plot(str(tmp_path / "out.pdf"))
    assert list(tmp_path.iterdir()) == []
