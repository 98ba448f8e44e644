"""nll: score classifier prediction files (negative log-likelihood, cross-entropy, entropy, KL).

    >>> import nllcli
    >>> report = nllcli.score("preds.csv")          # doctest: +SKIP
    >>> report.metrics["nll"], report.to_dict()     # doctest: +SKIP
    >>> nllcli.compare("base.csv", "new.csv").comparison   # doctest: +SKIP

The functions are imported on first use, so `import nllcli` (and `nll --help`) stays fast.
"""

from ._version import __version__

__all__ = ["InputError", "NllError", "Report", "SavedState", "State", "Summary", "UsageError", "__version__",
           "calibrate", "compare", "kl", "load_state", "merge", "save_state", "score"]

_LAZY = {
    "score": ("api", "score"),
    "kl": ("api", "kl"),
    "compare": ("comparison", "compare"),
    "merge": ("api", "merge"),
    "save_state": ("api", "save_state"),
    "load_state": ("statefile", "load_state"),
    "SavedState": ("statefile", "SavedState"),
    "calibrate": ("api", "calibrate"),
    "State": ("summary", "State"),
    "Report": ("report", "Report"),
    "Summary": ("summary", "Summary"),
    "NllError": ("errors", "NllError"),
    "InputError": ("errors", "InputError"),
    "UsageError": ("errors", "UsageError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'nllcli' has no attribute {name!r}")
