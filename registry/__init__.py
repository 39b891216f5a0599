"""Release tables: one YAML file per family, installed as ``sae_hub.registry``.

The YAML files here are data only; the schema and the code that reads them live in :mod:`sae_hub.releases`.
The names below are re-exported so users write ``sae_hub.registry.add("my_lab.yaml")``.
"""

from sae_hub.releases import add, entry_for, get_release, list_releases, list_saes, reset, resolve

__all__ = ["add", "entry_for", "get_release", "list_releases", "list_saes", "reset", "resolve"]
