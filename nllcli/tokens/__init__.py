"""`nll tokens`: perplexity, bits per byte and per-document NLL of saved LLM token log-probabilities.

readers.py / table.py read the layouts (nothing computed), engine.py validates and folds batches
into kernel.DocState, report.py computes the metrics into a TokensReport, render.py writes it.
"""

from .api import compare_tokens, tokens

__all__ = ["compare_tokens", "tokens"]
