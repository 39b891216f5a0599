"""``sae_hub.from_pretrained(release, sae_id)``: whatever dictionary a release holds, in the class that computes it.

``SAE.from_pretrained`` always returns an :class:`~sae_hub.sae.SAE` (callers such as splicing and conversion rely
on that) and refuses a release of transcoder sets or cross-layer transcoders; ``MultiLayerDictionary.from_pretrained``
loads those. This function is the one-line entry point for a notebook that does not want to know which it is: the
release's format, read from the release table before any I/O, decides which class loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_hub.multilayer import CrossCoder, MultiLayerDictionary
    from sae_hub.sae import SAE
    from sae_hub.temporal import TemporalSAE

__all__ = ["from_pretrained"]


def from_pretrained(release: str, sae_id: str, *, revision: str | None = None, format: str | None = None,
                    **kwargs: Any) -> SAE | MultiLayerDictionary | CrossCoder | TemporalSAE:
    """Load ``sae_id`` of ``release`` (or of a Hub repo id): an :class:`SAE` for a single layer, a
    :class:`~sae_hub.multilayer.MultiLayerDictionary` for a transcoder set or CLT release, a
    :class:`~sae_hub.multilayer.CrossCoder` for a crosscoder release, a :class:`~sae_hub.temporal.TemporalSAE` for a
    temporal SAE release.

    ``kwargs`` are those of ``SAE.from_pretrained`` (``device``, ``dtype``, ``force_download``,
    ``local_files_only``, loader options).
    """
    import importlib

    from sae_hub.loading import KINDS, release_kind
    from sae_hub.releases import locate

    kind = release_kind(locate(release, sae_id, revision=revision, format=format)) or "sae"
    _, module, name = KINDS[kind]
    cls = getattr(importlib.import_module(module), name)
    loaded: SAE | MultiLayerDictionary | CrossCoder | TemporalSAE = cls.from_pretrained(
        release, sae_id, revision=revision, format=format, **kwargs)
    return loaded
