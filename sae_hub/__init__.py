"""sae-hub: one ``SAE`` class that every published sparse-autoencoder format loads into.

``import sae_hub`` is cheap: names are resolved on first access, so torch, safetensors and the hub client
load only when used, and transformer_lens / transformers / plotly / requests / pandas only in the functions
that need them. Those are optional (extras ``[analysis]``, ``[lens]``, ``[train]``, ``[all]``): a function whose
package is missing raises :class:`MissingDependencyError` naming the extra (see :mod:`sae_hub.extras`).

Library code never prints: diagnostics go to the ``logging`` logger ``"sae_hub"`` (children
``sae_hub.<module>``), long work shows a tqdm bar that a ``progress=False`` argument turns off, and only the
command line (:mod:`sae_hub.cli`) writes to stdout.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "SAE": "sae_hub.sae",
    "SAEConfig": "sae_hub.config",
    "Provenance": "sae_hub.config",
    "register_loader": "sae_hub.loading",
    "list_loaders": "sae_hub.loading",
    "get_loader": "sae_hub.loading",
    "detect_format": "sae_hub.loading",
    "convert": "sae_hub.conversion",
    "list_releases": "sae_hub.releases",
    "list_saes": "sae_hub.releases",
    "splice": "sae_hub.splicing",
    "run_with_saes": "sae_hub.splicing",
    "MultiLayerDictionary": "sae_hub.multilayer",
    "MultiLayerConfig": "sae_hub.multilayer",
    "CrossCoder": "sae_hub.multilayer",
    "CrossCoderConfig": "sae_hub.multilayer",
    "splice_replacement": "sae_hub.replacement",
    "from_pretrained": "sae_hub.pretrained",
    "TemporalSAE": "sae_hub.temporal",
    "TemporalConfig": "sae_hub.temporal",
}
_ERRORS = (
    "SaeHubError", "MissingFileError", "CorruptFileError", "ConfigError", "UnknownArchitectureError",
    "ShapeMismatchError", "UnsupportedSAEError", "UnsafeCheckpointError", "FormatDetectionError",
    "LoaderRegistrationError", "NeuronpediaError", "RegistryError", "UnknownReleaseError", "UnknownSAEError",
    "DownloadError", "IntegrityError", "IncompatibleSaveError", "MissingDependencyError",
)
_EXPORTS.update({name: "sae_hub.errors" for name in _ERRORS})

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from sae_hub.config import Provenance as Provenance
    from sae_hub.config import SAEConfig as SAEConfig
    from sae_hub.conversion import convert as convert
    from sae_hub.errors import *  # noqa: F403
    from sae_hub.loading import detect_format as detect_format
    from sae_hub.loading import get_loader as get_loader
    from sae_hub.loading import list_loaders as list_loaders
    from sae_hub.loading import register_loader as register_loader
    from sae_hub.multilayer import CrossCoder as CrossCoder
    from sae_hub.multilayer import CrossCoderConfig as CrossCoderConfig
    from sae_hub.multilayer import MultiLayerConfig as MultiLayerConfig
    from sae_hub.multilayer import MultiLayerDictionary as MultiLayerDictionary
    from sae_hub.pretrained import from_pretrained as from_pretrained
    from sae_hub.releases import list_releases as list_releases
    from sae_hub.releases import list_saes as list_saes
    from sae_hub.replacement import splice_replacement as splice_replacement
    from sae_hub.sae import SAE as SAE
    from sae_hub.splicing import run_with_saes as run_with_saes
    from sae_hub.splicing import splice as splice
    from sae_hub.temporal import TemporalConfig as TemporalConfig
    from sae_hub.temporal import TemporalSAE as TemporalSAE


_SUBMODULES = {"registry", "loaders", "hub", "releases", "training", "analysis", "extras"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # sae_hub.registry.add(...) without an explicit import
        return importlib.import_module(f"sae_hub.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
