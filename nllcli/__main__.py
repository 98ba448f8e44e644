"""The `nll` console script and `python -m nllcli`: the command line of nllcli.cli, with Python's
cyclic garbage collector paused while its modules load (cli._prepare_process turns it back on)."""

import gc


def main() -> None:
    gc.disable()  # before the first import: see cli._resume_garbage_collection
    from .cli import main as run

    run()


if __name__ == "__main__":  # Dask's worker processes import this module again: they must not run nll
    main()
