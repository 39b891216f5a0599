"""Built-in format converters, one module per foreign format (installed as ``sae_hub.loaders``).

Each module registers itself with :func:`sae_hub.register_loader`: a pure function from local files to
``(SAEConfig, canonical tensors)`` and a ``detect`` predicate. Modules are imported on first use of the
loader registry, not by ``import sae_hub``.
"""
