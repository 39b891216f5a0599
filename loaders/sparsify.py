"""EleutherAI sparsify (formerly ``sae``) sparse coders: ``<hookpoint>/cfg.json`` + ``sae.safetensors``.

sparsify's ``cfg.json`` is *not* SAELens's: it holds ``SparseCoderConfig`` (``activation``, ``expansion_factor``,
``num_latents``, ``k``, ``normalize_decoder``, ``skip_connection``, ``transcode``, ...) plus ``d_in``, and no
``architecture``/``d_sae``. Tensors (``SparseCoder``): ``encoder.weight`` [d_sae, d_in], ``encoder.bias``,
``W_dec`` [d_sae, d_in] (already decoder orientation), ``b_dec`` [d_in], optional ``W_skip`` [d_in, d_in].
Pre-release (< 2024-06-07) files hold ``W_enc`` [d_in, d_sae], ``b_enc``, ``W_dec``, ``b_dec``.

Semantics (``SparseCoder.encode/decode/forward``): ``x' = x - b_dec`` unless ``transcode``;
``pre = relu(x' @ encoder.weight.T + encoder.bias)``; exact per-row ``topk(pre, k)``;
``out = top_acts @ W_dec[idx] + b_dec (+ x @ W_skip.T)``. That is canonical topk with
``apply_b_dec_to_input = not transcode`` and ``has_skip`` for ``W_skip`` (applied to the raw input, as the
canonical ``forward`` does). ``W_dec``'s orientation is decided by shape (the SAELens sparsify loader wrongly
transposes it). ``groupmax``, ``signed``, ``embed_skip`` and ``gram_lookup`` cannot be represented and are refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, SaeHubError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_json, read_safetensors
from sae_hub.loading import register_loader

__all__ = ["detect", "load"]

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
_SPARSIFY_FIELDS = ("expansion_factor", "num_latents", "k", "activation", "normalize_decoder", "multi_topk",
                    "skip_connection", "transcode", "signed")
_SAELENS_FIELDS = ("architecture", "d_sae")


def _looks_like_sparsify(cfg: Any) -> bool:
    return (isinstance(cfg, dict) and not any(f in cfg for f in _SAELENS_FIELDS)
            and any(f in cfg for f in _SPARSIFY_FIELDS))


def detect(path: Path) -> bool:
    """A folder with ``sae.safetensors`` and a sparsify-style ``cfg.json`` (no SAELens ``architecture``/``d_sae``)."""
    if not (path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()):
        return False
    try:
        cfg = read_json(path / CONFIG)
    except SaeHubError:
        return True  # sparsify's own file pair with a broken config: ours to report
    return _looks_like_sparsify(cfg)


def _hooks(hookpoint: str, transcode: bool) -> tuple[str | None, str | None]:
    """TransformerLens names for HF module paths sparsify trains on (``layers.N``, ``layers.N.mlp``, ...)."""
    name = hookpoint.removeprefix("model.").removeprefix("gpt_neox.").removeprefix("transformer.")
    m = re.fullmatch(r"(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?", name)
    if m:
        layer, sub = m.group(1), m.group(2)
        if sub is None:
            return f"blocks.{layer}.hook_resid_post", None
        if sub == "mlp":
            if transcode:
                return f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
            return f"blocks.{layer}.hook_mlp_out", None
        return f"blocks.{layer}.hook_attn_out", None
    if name in ("embed_tokens", "embed_in", "wte"):
        return "hook_embed", None
    return None, None


@register_loader(
    "sparsify",
    files=[CONFIG, WEIGHTS],
    detect=detect,
    description="EleutherAI sparsify sparse coders (cfg.json + sae.safetensors per hookpoint)",
)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """EleutherAI sparsify sparse coder folder (``cfg.json`` + ``sae.safetensors``)."""
    folder = path if path.is_dir() else path.parent
    cfg_path, w_path = folder / CONFIG, folder / WEIGHTS
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ConfigError("cfg.json must be a JSON object", path=cfg_path)
    if not _looks_like_sparsify(cfg):
        raise ConfigError("this cfg.json is not a sparsify SparseCoderConfig (it has SAELens fields or none of "
                          f"{', '.join(_SPARSIFY_FIELDS)})", path=cfg_path)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise UnsupportedSAEError(
            f"activation={activation!r}: groupmax keeps the max of each of k contiguous latent groups, which no "
            "canonical activation (relu/jumprelu/topk) reproduces" if activation == "groupmax"
            else f"unknown sparsify activation {activation!r}", path=cfg_path, field="activation")
    for flag, why in (
        ("signed", "the legacy signed option selects top-k by |pre-activation| and keeps negative values"),
        ("embed_skip", "embed_skip adds an affine map of the *embedding* activations, another hook point"),
        ("gram_lookup", "gram_lookup subtracts a per-n-gram mean activation table that is not in the checkpoint"),
    ):
        if cfg.get(flag):
            raise UnsupportedSAEError(f"{flag}=True is not supported: {why}", path=cfg_path, field=flag)
    if "k" not in cfg:
        raise ConfigError("missing required field 'k'", path=cfg_path, field="k")
    k = cfg["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}", path=cfg_path, field="k")
    transcode = cfg.get("transcode", False)
    if not isinstance(transcode, bool):
        raise ConfigError(f"transcode must be a bool, got {transcode!r}", path=cfg_path, field="transcode")

    sd, _ = read_safetensors(w_path)
    conversions: list[str] = []
    if "encoder.weight" in sd:
        enc = _need(sd, "encoder.weight", 2, w_path)
        d_sae, d_in = enc.shape
        W_enc = enc.T
        b_enc = _need(sd, "encoder.bias", 1, w_path)
        conversions.append("W_enc = encoder.weight.T, b_enc = encoder.bias")
    elif "W_enc" in sd:  # pre-release layout
        W_enc = _need(sd, "W_enc", 2, w_path)
        b_enc = _need(sd, "b_enc", 1, w_path)
        d_sae = b_enc.shape[0]
        if W_enc.shape[1] != d_sae and W_enc.shape[0] == d_sae:
            W_enc = W_enc.T
            conversions.append("pre-release W_enc stored [d_sae, d_in]: transposed")
        d_in = W_enc.shape[0]
        conversions.append("pre-release sparsify layout (W_enc, b_enc, W_dec, b_dec)")
    else:
        raise ShapeMismatchError(f"neither encoder.weight nor W_enc in the weights (found {sorted(sd)})",
                                 path=w_path, field="encoder.weight")
    if "d_in" in cfg and cfg["d_in"] != d_in:
        raise ShapeMismatchError(f"cfg.json says d_in={cfg['d_in']!r}, the encoder reads {d_in}",
                                 path=w_path, field="d_in")
    num_latents = cfg.get("num_latents") or 0
    ef = cfg.get("expansion_factor")
    if num_latents:
        expected = num_latents
    elif isinstance(ef, int) and not isinstance(ef, bool):
        expected = d_in * ef
    else:
        expected = None
    if expected is not None and expected != d_sae:
        raise ShapeMismatchError(f"cfg.json implies {expected} latents, the encoder has {d_sae}",
                                 path=w_path, field="num_latents")
    if tuple(b_enc.shape) != (d_sae,):
        raise ShapeMismatchError(f"encoder bias has shape {list(b_enc.shape)}, expected [{d_sae}]",
                                 path=w_path, field="encoder.bias")
    W_dec = _need(sd, "W_dec", 2, w_path)
    if W_dec.shape[0] != d_sae and W_dec.shape[1] == d_sae:
        W_dec = W_dec.T
        conversions.append("W_dec stored [d_out, d_sae]: transposed to [d_sae, d_out]")
    elif W_dec.shape[0] != d_sae:
        raise ShapeMismatchError(f"W_dec has shape {list(W_dec.shape)}, expected [{d_sae}, d_out]",
                                 path=w_path, field="W_dec")
    d_out = W_dec.shape[1]
    b_dec = _need(sd, "b_dec", 1, w_path)
    if b_dec.shape[0] != d_out:
        raise ShapeMismatchError(f"b_dec has shape {list(b_dec.shape)}, expected [{d_out}]", path=w_path,
                                 field="b_dec")
    if not transcode and d_out != d_in:
        raise ShapeMismatchError(f"an autoencoder (transcode=False) must reconstruct its input: d_out={d_out} "
                                 f"!= d_in={d_in}", path=w_path, field="W_dec")
    if k > d_sae:
        raise ConfigError(f"k={k} exceeds the {d_sae} latents", path=cfg_path, field="k")
    out = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    has_skip = "W_skip" in sd
    if has_skip:
        W_skip = _need(sd, "W_skip", 2, w_path)
        if tuple(W_skip.shape) != (d_out, d_in):
            raise ShapeMismatchError(f"W_skip has shape {list(W_skip.shape)}, expected [{d_out}, {d_in}]",
                                     path=w_path, field="W_skip")
        out["W_skip"] = W_skip
        conversions.append("W_skip (skip_connection): output += x @ W_skip.T on the raw input")
    elif cfg.get("skip_connection"):
        raise ShapeMismatchError("skip_connection=True but no W_skip tensor", path=w_path, field="W_skip")
    dtypes = {t.dtype for t in out.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ShapeMismatchError(f"tensors must share one floating dtype, found {sorted(map(str, dtypes))}",
                                 path=w_path)
    dtype = next(iter(dtypes))
    hook_in, hook_out = _hooks(folder.name, transcode)
    conversions.append("x - b_dec before the encoder (apply_b_dec_to_input)" if not transcode
                       else "transcoder: no input centering")
    sae_cfg = SAEConfig(
        architecture="topk", d_in=d_in, d_sae=d_sae, d_out=d_out, k=k, apply_b_dec_to_input=not transcode,
        has_skip=has_skip, dtype=str(dtype).removeprefix("torch."),
        hook_name=hook_in, hook_name_out=hook_out, hf_hook_name=folder.name,
        extra={"sparsify": {"hookpoint": folder.name, "transcode": transcode,
                            "normalize_decoder": cfg.get("normalize_decoder"),
                            "multi_topk": cfg.get("multi_topk")}},
    )
    if transcode and sae_cfg.hook_name_out is None and d_out == d_in:
        sae_cfg.extra["sparsify"]["note"] = "transcoder: the output hook is the hookpoint module's output"
    for c in conversions:
        sae_cfg.record(c)
    return sae_cfg, out


def _need(sd: dict[str, torch.Tensor], key: str, ndim: int, path: Path) -> torch.Tensor:
    if key not in sd:
        raise ShapeMismatchError(f"missing tensor {key!r} (found {sorted(sd)})", path=path, field=key)
    t = sd[key]
    if t.dim() != ndim:
        raise ShapeMismatchError(f"tensor {key!r} has {t.dim()} dims, expected {ndim}", path=path, field=key)
    return t
