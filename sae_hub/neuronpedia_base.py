"""Which Neuronpedia site sae-hub points at: the one rule both ``SAE.neuronpedia_url`` and
:mod:`sae_hub.analysis.neuronpedia` use.

A module of its own, with nothing but :mod:`os` behind it, so that building one URL from an SAE does not import
the analysis package (plots, logit lens, feature statistics) and the analysis package does not need the SAE.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_BASE_URL", "ENV_VAR", "resolve_base_url"]

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
ENV_VAR = "NEURONPEDIA_URL"


def resolve_base_url(explicit: str | None = None) -> str:
    """The Neuronpedia base URL in use: ``explicit``, else ``$NEURONPEDIA_URL``, else the public site."""
    url = explicit or os.environ.get(ENV_VAR) or DEFAULT_BASE_URL
    return url.rstrip("/")
