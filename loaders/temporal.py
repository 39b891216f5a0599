"""canrager's temporal SAEs (``canrager/temporalSAEs``: ``<model>/layer_L/temporal/conf.yaml`` +
``latest_ckpt.safetensors``; SAELens ``conversion_func: temporal``): REFUSED, with the reason.

Why: a temporal SAE is not a function of one activation vector. Its ``attn_layers.*`` tensors are attention
layers (``n_heads``, ``n_attn_layers``, ``bottleneck_factor`` in ``conf.yaml``) that predict part of each token's
code from the EARLIER tokens of the context; the sparse (``kval_topk``) part codes what that prediction misses
(``sae_diff_type``). ``sae_hub.SAE`` encodes each row independently, so it cannot hold it, and an exact class of
its own needs those attention layers' exact computation (masking, scaling, the bottleneck, how the two parts
combine), which sae-hub has no independent reference for yet: loading it approximately would be a silent lie.
The loader still reads ``conf.yaml`` so the refusal names what the checkpoint is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, UnsupportedSAEError
from sae_hub.files import read_config_bytes
from sae_hub.loading import register_loader

__all__ = ["detect", "load"]

CONF, CKPT = "conf.yaml", "latest_ckpt.safetensors"


def detect(path: Path) -> bool:
    """A folder with ``conf.yaml`` and ``latest_ckpt.safetensors``."""
    return path.is_dir() and (path / CONF).is_file() and (path / CKPT).is_file()


def _refuse_config(path: Path, options: dict[str, Any]) -> SAEConfig:
    """``SAE.get_config`` fetches ``conf.yaml`` alone and gets the same refusal (never the weights)."""
    return load(path, options)[0]


@register_loader("temporal-sae", files=[CONF, CKPT], config_files=[CONF], load_config=_refuse_config, detect=detect,
                 description="canrager temporal SAEs (conf.yaml + latest_ckpt.safetensors): refused, see docs")
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Always a typed refusal naming the checkpoint's temporal settings (see the module docstring)."""
    import yaml

    folder = path if path.is_dir() else path.parent
    conf = folder / CONF
    if not conf.is_file():
        raise MissingFileError("a temporal SAE folder has conf.yaml", path=conf)
    try:
        raw = yaml.safe_load(read_config_bytes(conf))
    except yaml.YAMLError as e:
        raise CorruptFileError(f"not valid YAML: {e}", path=conf) from None
    if not isinstance(raw, dict):
        raise ConfigError("conf.yaml must be a mapping", path=conf)
    sae = raw.get("sae") if isinstance(raw.get("sae"), dict) else {}
    shown = ", ".join(f"{k}={sae[k]!r}" for k in ("n_heads", "n_attn_layers", "sae_diff_type", "kval_topk")
                      if k in sae)
    raise UnsupportedSAEError(
        f"a temporal SAE ({shown or 'attention over earlier tokens'}) codes each token partly from the earlier "
        "tokens of its context through attention layers; it is not a per-token SAE and sae-hub has no exact class "
        "for it yet, so it is refused rather than loaded approximately", path=conf, field="sae")
