"""Analysis of loaded SAEs: logit lens, feature statistics over text, plots, Neuronpedia look-ups.

* :func:`logit_lens` — per feature, the tokens its decoder direction promotes/suppresses (``W_dec @ W_U``,
  computed in chunks), the moments of that row and token-set enrichment scores.
* :func:`feature_stats` — firing density, mean/max activation and top activating contexts per feature,
  streamed over a dataset; :meth:`FeatureStats.write_sparsity` / :func:`read_sparsity` for
  ``sparsity.safetensors``.
* :mod:`sae_hub.analysis.plots` — plotly figures (offline HTML); :mod:`sae_hub.analysis.neuronpedia` —
  a feature's explanation and top logits from Neuronpedia.

Importing this package needs only torch: plotly, requests and pandas (extra ``analysis``) are imported by the
functions that use them, which raise MissingDependencyError naming the extra when they are missing, and
transformer_lens is never imported (the model object brings its own classes).

``logit_lens`` and ``feature_stats`` are both a submodule and the function of the same name; the functions
are bound here, after their submodules are imported, so ``sae_hub.analysis.logit_lens(...)`` is the function
(the submodules stay reachable through ``sys.modules`` / ``from sae_hub.analysis.logit_lens import ...``).
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_hub.analysis.feature_stats import FeatureStats, read_sparsity
from sae_hub.analysis.feature_stats import feature_stats as feature_stats
from sae_hub.analysis.logit_lens import (
    BUILTIN_TOKEN_SETS,
    FeatureLogits,
    LogitLensResult,
    TokenWeight,
    UnembedInfo,
    enrichment,
    logit_weights,
    token_set_mask,
    vocab_strings,
)
from sae_hub.analysis.logit_lens import logit_lens as logit_lens

__all__ = [
    "BUILTIN_TOKEN_SETS",
    "FeatureLogits",
    "FeatureStats",
    "LogitLensResult",
    "TokenWeight",
    "UnembedInfo",
    "enrichment",
    "feature_stats",
    "logit_lens",
    "logit_weights",
    "neuronpedia",
    "plots",
    "read_sparsity",
    "token_set_mask",
    "vocab_strings",
]

_SUBMODULES = {"plots", "neuronpedia"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"sae_hub.analysis.{name}")
    raise AttributeError(f"module 'sae_hub.analysis' has no attribute {name!r}")
