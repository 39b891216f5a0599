"""qresearch's DeepSeek-R1-Distill-Llama-8B SAE (``DeepSeek-R1-Distill-Llama-8B-SAE-l{L}.pt``; SAELens
``conversion_func: deepseek_r1``): a pickled ``nn.Linear`` state dict.

Facts (SAELens 6.54's ``deepseek_r1_sae_huggingface_loader``): ``encoder.weight [d_sae, d_in]``, ``encoder.bias``,
``decoder.weight [d_in, d_sae]``, ``decoder.bias``; ReLU, no input centring (``apply_b_dec_to_input=False``),
stored bfloat16; the layer is the ``l(\\d+)`` in the file name and the hook ``blocks.L.hook_resid_post``.
Canonical: ``W_enc = encoder.weight.T``, ``W_dec = decoder.weight.T`` (transposes, exact).

Why ``detect`` never claims a file: other formats (nanoSAE, dictionary_learning's ``AutoEncoderNew``) store the same
four keys; this one is chosen by name (the release table's ``format``, or ``format="deepseek-r1"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ShapeMismatchError, UnsupportedSAEError
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only

__all__ = ["detect", "load"]

_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def detect(path: Path) -> bool:
    """Never autodetected (see the module docstring)."""
    return False


@register_loader("deepseek-r1", files=["*.pt"], detect=detect,
                 description="qresearch DeepSeek-R1-Distill-Llama SAE (.pt nn.Linear state dict; by name only)")
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """The state dict as a canonical ReLU SAE (see the module docstring)."""
    if path.is_dir():
        pts = sorted(path.glob("*.pt"))
        if len(pts) != 1:
            raise UnsupportedSAEError(f"expected one .pt file here, found {[p.name for p in pts]}", path=path)
        path = pts[0]
    sd = load_weights_only(path)
    if not isinstance(sd, Mapping):
        raise UnsupportedSAEError(f"expected a state dict, got a {type(sd).__name__}", path=path)
    if set(sd) != set(_KEYS):
        bad = sorted(set(map(str, sd)).symmetric_difference(_KEYS))[0]
        raise ShapeMismatchError(f"the state dict must hold exactly {list(_KEYS)}, it has {sorted(map(str, sd))}",
                                 path=path, field=bad)
    for key in _KEYS:
        if not isinstance(sd[key], torch.Tensor) or not sd[key].is_floating_point():
            raise ShapeMismatchError(f"{key} must be a floating-point tensor", path=path, field=key)
    enc = sd["encoder.weight"]
    if enc.dim() != 2:
        raise ShapeMismatchError(f"encoder.weight has shape {list(enc.shape)}, expected [d_sae, d_in]", path=path,
                                 field="encoder.weight")
    d_sae, d_in = enc.shape
    for key, shape in (("encoder.bias", (d_sae,)), ("decoder.weight", (d_in, d_sae)), ("decoder.bias", (d_in,))):
        if tuple(sd[key].shape) != shape:
            raise ShapeMismatchError(f"{key} has shape {list(sd[key].shape)}, expected {list(shape)}", path=path,
                                     field=key)
    dtypes = {sd[k].dtype for k in _KEYS}
    if len(dtypes) != 1:
        raise ShapeMismatchError(f"tensors must share one dtype, found {sorted(map(str, dtypes))}", path=path)
    m = re.search(r"l(\d+)", path.stem)
    cfg = SAEConfig(
        architecture="relu", d_in=d_in, d_sae=d_sae, dtype=str(dtypes.pop()).removeprefix("torch."),
        hook_name=f"blocks.{m.group(1)}.hook_resid_post" if m else None,
        model_name="deepseek-ai/DeepSeek-R1-Distill-Llama-8B" if "deepseek-r1" in path.name.lower() else None,
    )
    cfg.record("W_enc = encoder.weight.T, W_dec = decoder.weight.T")
    return cfg, {"W_enc": sd["encoder.weight"].T, "b_enc": sd["encoder.bias"], "W_dec": sd["decoder.weight"].T,
                 "b_dec": sd["decoder.bias"]}
