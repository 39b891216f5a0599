"""Gemma Scope (Gemma 2) JumpReLU SAEs and transcoders: ``params.npz``.

Layout on the Hub: ``google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att,transcoders}`` with folders
``layer_{L}/width_{W}/average_l0_{N}/params.npz`` (and ``embedding/width_4k/average_l0_{N}`` for the embedding
SAEs). ``params.npz`` (float32, read with ``allow_pickle=False``) holds ``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_out], ``b_enc``, ``b_dec``, ``threshold``; lowercase ``w_*`` names are accepted as SAELens does.

Semantics are canonical JumpReLU (``relu(z) * (z > threshold)``, no centering, no normalisation), so the
conversion is the identity, except for the embedding SAEs: as in SAELens, ``W_enc /= sqrt(d_in)`` and
``W_dec *= sqrt(d_in)`` when the path names ``embedding`` or the option ``embedding=True`` is given.

Hook names come from the path when it is recognisable (a component ``gemma-scope-<size>-<pt|it>-<site>``, e.g.
a Hub cache folder ``models--google--gemma-scope-2b-pt-res``, and ``layer_<L>``): ``res`` ->
``blocks.L.hook_resid_post``, ``mlp`` -> ``blocks.L.hook_mlp_out``, ``att`` -> ``blocks.L.attn.hook_z`` (with
``reshape_activations="hook_z"``), ``transcoders`` -> ``blocks.L.ln2.hook_normalized`` ->
``blocks.L.hook_mlp_out``, embedding -> ``hook_embed``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, ShapeMismatchError
from sae_hub.files import read_npz
from sae_hub.loading import register_loader

__all__ = ["detect", "load", "path_info"]

PARAMS = "params.npz"
_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)(?:$|[^a-z])")


def detect(path: Path) -> bool:
    """A folder holding ``params.npz``, or that file itself."""
    if path.is_dir():
        return (path / PARAMS).is_file()
    return path.is_file() and path.name == PARAMS


def path_info(path: Path) -> dict[str, Any]:
    """What the path says: model, site, layer, embedding (each key only when recognisable)."""
    info: dict[str, Any] = {}
    for part in path.parts:
        m = _REPO.search(part)
        if m:
            size, variant, site = m.groups()
            info["site"] = site
            info["model_name"] = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
        m = re.fullmatch(r"layer_(\d+)", part)
        if m:
            info["layer"] = int(m.group(1))
        if part == "embedding" or part.startswith("embedding_"):
            info["embedding"] = True
    return info


@register_loader(
    "gemma-scope",
    files=[PARAMS],
    detect=detect,
    options=["embedding"],
    description="Google Gemma Scope (Gemma 2) JumpReLU SAEs/transcoders (params.npz)",
)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Gemma Scope (Gemma 2) ``params.npz`` JumpReLU SAE or transcoder."""
    file = path / PARAMS if path.is_dir() else path
    wanted = {k.lower() for k in _KEYS}
    arrays = read_npz(file, keep=lambda name: name.lower() in wanted)  # others: .npy header only
    lower = {k.lower(): k for k in arrays}
    tensors: dict[str, torch.Tensor] = {}
    for key in _KEYS:
        src = key if key in arrays else lower.get(key.lower())
        if src is None:
            raise ShapeMismatchError(f"params.npz has no {key!r} (found {sorted(arrays)})", path=file, field=key)
        t = arrays[src]
        if not t.is_floating_point():
            raise ShapeMismatchError(f"{src!r} is {t.dtype}, expected floating point", path=file, field=key)
        tensors[key] = t.contiguous()
    W_enc, W_dec = tensors["W_enc"], tensors["W_dec"]
    if W_enc.dim() != 2 or W_dec.dim() != 2:
        raise ShapeMismatchError(f"W_enc {list(W_enc.shape)} and W_dec {list(W_dec.shape)} must be matrices",
                                 path=file, field="W_enc")
    d_in, d_sae = W_enc.shape
    d_out = W_dec.shape[1]
    expected = {"W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,), "threshold": (d_sae,)}
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ShapeMismatchError(f"{key} has shape {list(tensors[key].shape)}, W_enc [{d_in}, {d_sae}] needs "
                                     f"{list(shape)}", path=file, field=key)
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        tensors = {k: v.float() for k, v in tensors.items()}
    dtype = tensors["W_enc"].dtype
    info = path_info(file.parent)
    embedding = options.get("embedding", info.get("embedding", False))
    if not isinstance(embedding, bool):
        raise ConfigError(f"option embedding must be True or False, got {embedding!r}", field="embedding")
    conversions = ["Gemma Scope params.npz: identity conversion"]
    if embedding:
        s = math.sqrt(d_in)
        tensors["W_enc"] = tensors["W_enc"] / s
        tensors["W_dec"] = tensors["W_dec"] * s
        conversions.append(f"embedding SAE (as SAELens): W_enc /= sqrt(d_in)={s!r}, W_dec *= sqrt(d_in)")
    hook_in = hook_out = None
    reshape = "none"
    layer, site = info.get("layer"), info.get("site")
    if embedding:
        hook_in = "hook_embed"
    elif layer is not None and site is not None:
        hook_in = {"res": f"blocks.{layer}.hook_resid_post", "mlp": f"blocks.{layer}.hook_mlp_out",
                   "att": f"blocks.{layer}.attn.hook_z",
                   "transcoders": f"blocks.{layer}.ln2.hook_normalized"}[site]
        if site == "transcoders":
            hook_out = f"blocks.{layer}.hook_mlp_out"
        if site == "att":
            reshape = "hook_z"
    cfg = SAEConfig(
        architecture="jumprelu", d_in=d_in, d_sae=d_sae, d_out=d_out, dtype=str(dtype).removeprefix("torch."),
        reshape_activations=reshape, hook_name=hook_in, hook_name_out=hook_out,
        model_name=info.get("model_name"), license="cc-by-4.0" if "model_name" in info else None,
        extra={"gemma_scope": {k: v for k, v in info.items() if k != "model_name"}},
    )
    for c in conversions:
        cfg.record(c)
    return cfg, tensors
