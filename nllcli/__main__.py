from .cli import main

if __name__ == "__main__":  # Dask's worker processes import this module again: they must not run nll
    main()
