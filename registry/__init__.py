"""The shipped release table: one YAML file per family of releases, installed as ``sae_hub.registry``.

The YAML files here are data only; the code that reads them is :mod:`sae_hub.releases` (schema:
:mod:`sae_hub.registry_schema`), which finds this folder without importing this package. The names below are
re-exported so users write ``sae_hub.registry.add("my_lab.yaml")``.
"""

from sae_hub.releases import add, entry_for, get_release, list_releases, list_saes, reset, resolve

__all__ = ["add", "entry_for", "get_release", "list_releases", "list_saes", "reset", "resolve"]
