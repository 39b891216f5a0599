"""Release tables (YAML, one file per family), installed as ``sae_hub.registry``."""
