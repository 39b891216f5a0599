"""Getting a model to run SAEs on: one place that boots a model by name.

The CLI (``train``, ``cache-activations``) and the hub demo need a model from a name or a local folder. Booting
lives here, not in the CLI, so library code and notebooks use the same function. TransformerLens 4's
``TransformerBridge`` (in compatibility mode, so TransformerLens hook names work) is preferred; TransformerLens 3's
``HookedTransformer`` is the fallback where only that is installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def load_model(name: str, device: str | None = None) -> Any:
    """A TransformerLens model for ``name`` (a Hub model id or a local Hugging Face folder) on ``device``.

    Needs the ``lens`` extra (transformer-lens); without it, MissingDependencyError names the extra.
    """
    from sae_hub.extras import MissingDependencyError, require

    tl = require("transformer_lens", extra="lens", purpose="loading a model")
    try:
        bridge = require("transformer_lens.model_bridge", extra="lens")
    except MissingDependencyError:  # TransformerLens 3: no bridge
        return tl.HookedTransformer.from_pretrained(name, device=device or "cpu")
    model = bridge.TransformerBridge.boot_transformers(name, device=device or "cpu")
    model.enable_compatibility_mode()
    return model
