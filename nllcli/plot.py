"""Placeholder until the plotting module lands (nll plot)."""


def write_plot(output, report=None):
    from .errors import UsageError

    raise UsageError("nll plot is not available yet")
