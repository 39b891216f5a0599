"""Kissane, Krzyzanowski et al.'s GPT-2 small attention-output SAEs (``ckkissane/attn-saes-gpt2-small-all-layers``,
SAELens ``conversion_func: connor_rob_hook_z``): ``<name>.pt`` (a pickled state dict) + ``<name>_cfg.json``.

Facts (SAELens 6.54's ``connor_rob_hook_z_huggingface_loader``, which feeds the unpickled tensors to its standard
SAE unchanged): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``; ReLU with
the input centred on ``b_dec`` (``apply_b_dec_to_input``); the config's ``act_size`` / ``dict_size`` are ``d_in`` /
``d_sae`` and ``act_name`` the hook (``blocks.L.attn.hook_z``): the SAE reads the concatenated heads' ``z``
(``[..., n_heads, d_head]`` flattened), so ``reshape_activations="hook_z"``. Already canonical: nothing is
transformed. The pickle is read by :func:`sae_hub.safe_pickle.load_weights_only` (tensors and containers only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, MissingFileError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_json
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only

__all__ = ["detect", "load"]

_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
_CFG_KEYS = ("act_size", "dict_size", "act_name")


def _cfg_path(pt: Path) -> Path:
    return pt.with_name(pt.name[: -len(pt.suffix)] + "_cfg.json")


def _weights(path: Path) -> Path:
    if path.is_file():
        return path
    pts = sorted(p for p in path.glob("*.pt") if _cfg_path(p).is_file())
    if len(pts) != 1:
        raise UnsupportedSAEError(f"expected one <name>.pt with its <name>_cfg.json here, found "
                                  f"{[p.name for p in pts]}: pass the .pt file", path=path)
    return pts[0]


def detect(path: Path) -> bool:
    """A ``.pt`` file (or a folder with one) whose ``<name>_cfg.json`` has ``act_size``, ``dict_size`` and
    ``act_name``."""
    try:
        pt = _weights(path)
    except UnsupportedSAEError:
        return False
    cfg = _cfg_path(pt)
    if pt.suffix != ".pt" or not cfg.is_file() or cfg.stat().st_size > 1 << 20:
        return False
    try:
        raw = read_json(cfg)
    except Exception:
        return False
    return isinstance(raw, dict) and all(k in raw for k in _CFG_KEYS)


@register_loader("connor-rob-hook-z", files=["*.pt", "*_cfg.json"], detect=detect, priority=5,
                 description="Kissane et al. GPT-2 attention hook_z SAEs (<name>.pt state dict + <name>_cfg.json)")
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """``<name>.pt`` + ``<name>_cfg.json`` as a canonical ReLU SAE on ``hook_z`` (see the module docstring)."""
    pt = _weights(path)
    cfg_path = _cfg_path(pt)
    if not cfg_path.is_file():
        raise MissingFileError(f"the config {cfg_path.name} beside {pt.name} is missing", path=cfg_path)
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a JSON object", path=cfg_path)
    for key in _CFG_KEYS:
        if key not in raw:
            raise ConfigError(f"the config has no {key}", path=cfg_path, field=key)
    d_in, d_sae, hook = raw["act_size"], raw["dict_size"], raw["act_name"]
    for key, v in (("act_size", d_in), ("dict_size", d_sae)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {v!r}", path=cfg_path, field=key)
    if not isinstance(hook, str) or not hook:
        raise ConfigError(f"act_name must be a hook name, got {hook!r}", path=cfg_path, field="act_name")
    sd = load_weights_only(pt)
    if not isinstance(sd, Mapping):
        raise UnsupportedSAEError(f"expected a state dict, got a {type(sd).__name__}", path=pt)
    keys = set(sd)
    if keys != set(_KEYS):
        bad = sorted(keys.symmetric_difference(_KEYS), key=str)[0]
        raise ShapeMismatchError(f"the state dict must hold exactly {list(_KEYS)}, it has {sorted(map(str, keys))}",
                                 path=pt, field=str(bad))
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    dtypes = set()
    for key, shape in want.items():
        t = sd[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ShapeMismatchError(f"{key} must be a floating-point tensor", path=pt, field=key)
        if tuple(t.shape) != shape:
            raise ShapeMismatchError(f"tensor {key} has shape {list(t.shape)}; the config's act_size={d_in}, "
                                     f"dict_size={d_sae} need {list(shape)}", path=pt, field=key)
        dtypes.add(t.dtype)
    if len(dtypes) != 1:
        raise ShapeMismatchError(f"tensors must share one dtype, found {sorted(map(str, dtypes))}", path=pt)
    model = raw.get("model_name")
    cfg = SAEConfig(
        architecture="relu", d_in=d_in, d_sae=d_sae, dtype=str(dtypes.pop()).removeprefix("torch."),
        apply_b_dec_to_input=True, hook_name=hook,
        reshape_activations="hook_z" if hook.endswith("hook_z") else "none",
        model_name=model if isinstance(model, str) and model else "gpt2-small",
        extra={"connor_rob_hook_z": {k: raw[k] for k in ("l1_coeff", "lr", "seed") if k in raw}},
    )
    return cfg, {k: sd[k] for k in _KEYS}
