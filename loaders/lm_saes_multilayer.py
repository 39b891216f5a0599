"""llamascopium (lm-saes) era-C cross-layer transcoders and crosscoders, loaded whole.

What llamascopium 2.0.0b34's ``save_pretrained`` + ``cfg.save_hyperparameters`` write (fixtures in
``tests/fixtures/llamascopium_clt``): ``config.json`` (``sae_type``, ``d_model``, ``act_fn``, ``norm_activation``,
``sparsity_include_decoder_norm``, hooks, ...) and ``sae_weights.safetensors`` (metadata ``version``).

CLT (``sae_type: clt``, format ``llamascopium-clt``; ``hook_points_in``/``hook_points_out``, one per layer):
``W_E [n, d_model, d_sae]``, ``b_E [n, d_sae]``, ``W_D.{t} [t+1, d_sae, d_model]`` (slot ``i`` decodes source ``i``
INTO target ``t``), ``b_D.{t} [d_model]``, for JumpReLU ``activation_function.log_jumprelu_threshold [n, d_sae]``.
Canonical: ``W_enc.i = W_E[i]``, ``W_dec.i[:, t-i] = W_D.{t}[i]`` (one copy: the library groups decoders by target,
the canonical type by source), ``b_dec.t = b_D.{t}``.

Crosscoder (``sae_type: crosscoder``, format ``llamascopium-crosscoder``; ``hook_points``, one per head/site):
``W_E [n, d_model, d_sae]``, ``b_E [n, d_sae]``, ``W_D [n, d_sae, d_model]``, ``b_D [n, d_model]``, for JumpReLU
``activation_function.log_jumprelu_threshold [d_sae]``. Site ``h`` holds ``W_E[h]``, ``b_E[h]``, ``W_D[h]``,
``b_D[h]`` as a :class:`~sae_hub.multilayer.CrossCoder` (the library always gates on the decoder norm).

Decoder-norm gating (``sparsity_include_decoder_norm``; always on for crosscoders): the library computes
``act(z * n) / n`` with ``n_j`` the norm of feature ``j``'s decoders (a CLT: over every decoder of that source
feature, all targets together; a crosscoder: of ``W_D[h, j]`` per site). For ReLU that is ``relu(z)``; for
JumpReLU it is exactly ``z * (z > theta / n)``, so the stored threshold becomes ``theta / n`` (per site for a
crosscoder). A feature whose decoders are all zero gets an infinite threshold (it never fires; the library's
``0 / 0`` gives NaN there, and such a feature writes nothing either way).

Normalisation (``norm_activation``): ``inference`` is none (the ``dataset_average_activation_norm.*`` tensors the
library writes anyway hold uninitialised values and are ignored). ``dataset-wise`` (the library normalises each
hook by ``s = sqrt(d_model) / norm[hook]`` before encoding and the caller divides outputs by the output hook's
``s``) is folded exactly, keeping the library's codes: ``W_enc.i *= s_in_i`` and ``W_dec[i->t], b_dec.t /=
s_out_t``; recorded in the provenance. Norms come from the checkpoint or the option
``dataset_average_activation_norm`` (``{hook: float}``). ``token-wise``/``batch-wise`` depend on each token /
batch and are refused.

Refused with the reason: ``topk`` with decoder-norm ranking (a CLT; the canonical top-k ranks ``relu(z)``),
``layertopk`` (one top-k across every layer), ``batchtopk`` / ``batchlayertopk`` (batch-dependent at inference),
crosscoder ``topk``, and GLU encoders. Missing tensors, widths that disagree across tensors, or a decoder group
``W_D.{t}`` whose source count is not ``t + 1`` are typed errors naming the file and the tensor.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.errors import ConfigError, SaeHubError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_json, read_safetensors, read_safetensors_header
from sae_hub.loading import register_loader
from sae_hub.multilayer import CrossCoderConfig, MultiLayerConfig

# Relative: this package is installed as sae_hub.loaders from the loaders/ folder (setuptools package-dir), a
# mapping mypy cannot follow from a checkout; `.lm_saes` names the same module either way.
from .lm_saes import checked_field, model_name_of

__all__ = ["detect_clt", "detect_crosscoder", "load_clt", "load_crosscoder"]

CONFIG = "config.json"
LM_CONFIG = "lm_config.json"
# The library's search order, safetensors only (its .pt and .dcp checkpoints are for training runs).
WEIGHT_CANDIDATES = ("sae_weights.safetensors", "checkpoints/pruned.safetensors", "checkpoints/final.safetensors")
NORM_PREFIX = "dataset_average_activation_norm."
OPTIONS = ("dataset_average_activation_norm",)
_HOOK_LAYER = re.compile(r"blocks\.(\d+)\.")


# ---------------------------------------------------------------------- detection


def _weights(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHT_CANDIDATES if (folder / n).is_file()), None)


def _detect(path: Path, sae_type: str) -> bool:
    """``config.json`` saying ``sae_type`` next to weights in that type's layout (``W_E`` 3-d, and ``W_D.0`` for a
    CLT / a 3-d ``W_D`` for a crosscoder). Both are needed: the lm-saes SAE loader also recognises the folder, and
    a config whose tensors are an SAE's is its to refuse with the reason (priority settles the rest)."""
    if not path.is_dir() or not (path / CONFIG).is_file():
        return False
    weights = _weights(path)
    if weights is None:
        return False
    try:
        cfg = read_json(path / CONFIG)
        header = read_safetensors_header(weights)
    except SaeHubError:
        return False
    if not isinstance(cfg, dict) or cfg.get("sae_type") != sae_type:
        return False
    keys = set(header.keys())
    if "W_E" not in keys or len(header.shape("W_E")) != 3:
        return False
    if sae_type == "clt":
        return "W_D.0" in keys
    return "W_D" in keys and len(header.shape("W_D")) == 3


def detect_clt(path: Path) -> bool:
    """An llamascopium CrossLayerTranscoder folder (``sae_type: clt``, ``W_E [n, d, s]`` and ``W_D.{t}``)."""
    return _detect(path, "clt")


def detect_crosscoder(path: Path) -> bool:
    """An llamascopium Crosscoder folder (``sae_type: crosscoder``, ``W_E`` and ``W_D`` ``[n, ., .]``)."""
    return _detect(path, "crosscoder")


# ---------------------------------------------------------------------- shared reading


def _hooks(cfg: dict[str, Any], name: str, path: Path) -> list[str]:
    hooks = checked_field(cfg, name, list, path)
    if not hooks or any(not isinstance(h, str) or not h for h in hooks) or len(set(hooks)) != len(hooks):
        raise ConfigError(f"{name} must be a non-empty list of distinct hook names, got {hooks!r}", path=path,
                          field=name)
    return list(hooks)


def _tensor(sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if key not in sd:
        raise ShapeMismatchError(f"missing tensor {key!r} (found {sorted(sd)[:12]})", path=path, field=key)
    t = sd[key]
    if tuple(t.shape) != shape:
        raise ShapeMismatchError(f"tensor {key!r} has shape {list(t.shape)}, expected {list(shape)}", path=path,
                                 field=key)
    if not t.is_floating_point():
        raise ShapeMismatchError(f"tensor {key!r} is {t.dtype}, expected a floating dtype", path=path, field=key)
    return t


def _read(folder: Path, sae_type: str) -> tuple[dict[str, Any], Path, dict[str, torch.Tensor], Path]:
    """The config (checked for what cannot be expressed) and the memory-mapped weights."""
    cfg_path = folder / CONFIG
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ConfigError("the config must be a JSON object", path=cfg_path)
    if cfg.get("sae_type") != sae_type:
        raise ConfigError(f"sae_type is {cfg.get('sae_type')!r}, this loader reads {sae_type!r}", path=cfg_path,
                          field="sae_type")
    if cfg.get("use_glu_encoder"):
        raise UnsupportedSAEError("GLU encoders (use_glu_encoder) add a second, non-linear encoder path",
                                  path=cfg_path, field="use_glu_encoder")
    weights = _weights(folder)
    if weights is None:
        from sae_hub.errors import MissingFileError

        raise MissingFileError(f"no weights file (looked for {', '.join(WEIGHT_CANDIDATES)})", path=folder)
    sd, _meta = read_safetensors(weights)
    glu = [k for k in sd if k.startswith(("W_E_glu", "b_E_glu"))]
    if glu:
        raise UnsupportedSAEError("GLU encoders add a second, non-linear encoder path", path=weights, field=glu[0])
    return cfg, cfg_path, sd, weights


def _scales(cfg: dict[str, Any], cfg_path: Path, sd: dict[str, torch.Tensor], weights: Path, hooks: list[str],
            d_model: int, options: dict[str, Any]) -> dict[str, float] | None:
    """``{hook: s}`` with ``s = sqrt(d_model) / norm[hook]`` (float32, as the library's ``compute_norm_factor``)
    for ``dataset-wise``; None for ``inference``; other modes refused."""
    mode = checked_field(cfg, "norm_activation", str, cfg_path, default="dataset-wise")
    if mode == "inference":
        return None
    if mode in ("token-wise", "batch-wise"):
        raise UnsupportedSAEError(f"norm_activation={mode!r} rescales each input by its own "
                                  f"{'token' if mode == 'token-wise' else 'batch'} norm, which no fixed weight of a "
                                  "multi-layer dictionary can hold", path=cfg_path, field="norm_activation")
    if mode != "dataset-wise":
        raise ConfigError(f"unknown norm_activation {mode!r}", path=cfg_path, field="norm_activation")
    given = options.get("dataset_average_activation_norm") or {}
    if not isinstance(given, dict):
        raise ConfigError("option dataset_average_activation_norm must be a dict {hook: float}",
                          field="dataset_average_activation_norm")
    out: dict[str, float] = {}
    for hook in dict.fromkeys(hooks):
        if hook in given:
            value, where = given[hook], None
        elif f"{NORM_PREFIX}{hook}" in sd:
            t = sd[f"{NORM_PREFIX}{hook}"]
            if t.numel() != 1:
                raise ShapeMismatchError(f"{NORM_PREFIX}{hook} must hold one number, has shape {list(t.shape)}",
                                         path=weights, field=f"{NORM_PREFIX}{hook}")
            value, where = float(t.float().item()), weights
        else:
            raise ConfigError(f"norm_activation='dataset-wise' but no {NORM_PREFIX}{hook} is stored; pass "
                              "dataset_average_activation_norm={hook: norm}", path=weights,
                              field=f"{NORM_PREFIX}{hook}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"dataset_average_activation_norm[{hook!r}] must be a positive number, got {value!r} "
                              "(the library writes uninitialised values when the norm was never computed; pass "
                              "dataset_average_activation_norm={hook: norm})", path=where,
                              field=f"{NORM_PREFIX}{hook}")
        out[hook] = float(torch.tensor(math.sqrt(d_model) / value, dtype=torch.float32))
    return out


def _dims(cfg: dict[str, Any], cfg_path: Path, sd: dict[str, torch.Tensor], weights: Path, n: int) -> tuple[int, int]:
    """``(d_model, d_sae)``: ``d_model`` from the config, ``d_sae`` from ``W_E`` (checked against
    ``expansion_factor`` / ``d_sae`` when the config gives them)."""
    d_model = checked_field(cfg, "d_model", int, cfg_path)
    if d_model <= 0:
        raise ConfigError(f"d_model must be positive, got {d_model}", path=cfg_path, field="d_model")
    if "W_E" not in sd:
        raise ShapeMismatchError("missing tensor 'W_E'", path=weights, field="W_E")
    shape = tuple(sd["W_E"].shape)
    if len(shape) != 3 or shape[:2] != (n, d_model):
        raise ShapeMismatchError(f"tensor 'W_E' has shape {list(shape)}, expected [{n}, {d_model}, d_sae] ({n} "
                                 "hooks in the config)", path=weights, field="W_E")
    d_sae = shape[2]
    want = cfg.get("d_sae")
    ef = cfg.get("expansion_factor")
    if want is None and isinstance(ef, (int, float)) and not isinstance(ef, bool):
        want = int(ef * d_model)
    if isinstance(want, int) and want != d_sae:
        raise ShapeMismatchError(f"W_E has d_sae={d_sae}, the config says {want} (expansion_factor {ef!r})",
                                 path=weights, field="W_E")
    return d_model, d_sae


def _act(cfg: dict[str, Any], cfg_path: Path, what: str, allowed: tuple[str, ...]) -> str:
    act = str(checked_field(cfg, "act_fn", str, cfg_path, default="relu")).lower()
    reasons = {
        "layertopk": "one top-k across every layer's features together, which per-layer encoders cannot state",
        "batchtopk": "top-k over the whole batch, also at inference: a token's features depend on its batch",
        "batchlayertopk": "top-k over the whole batch and every layer: a token's features depend on its batch",
        "topk": "top-k ranked on z * ||W_D_j|| (decoder-norm gating), which the canonical top-k (ranking relu(z)) "
                "does not state",
    }
    if act not in allowed:
        raise UnsupportedSAEError(f"a {what} with act_fn={act!r} is not supported: "
                                  f"{reasons.get(act, 'unknown activation function')}", path=cfg_path,
                                  field="act_fn")
    return act


def _theta(sd: dict[str, torch.Tensor], shape: tuple[int, ...], weights: Path) -> torch.Tensor:
    return _tensor(sd, "activation_function.log_jumprelu_threshold", shape, weights).float().exp()


def _gate(theta: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``theta / n`` (float32): ``z * n > theta`` is ``z > theta / n`` for ``n > 0``; ``n == 0`` never fires."""
    return torch.where(norm > 0, theta / norm.clamp_min(torch.finfo(torch.float32).tiny),
                       torch.full_like(theta, math.inf))


# ---------------------------------------------------------------------- CLT


# LoadFn is typed for SAE loaders; kind="multilayer" loaders return a MultiLayerConfig (see register_loader).
@register_loader("llamascopium-clt", files=[CONFIG, LM_CONFIG, *WEIGHT_CANDIDATES], detect=detect_clt,  # type: ignore[arg-type]
                 options=OPTIONS, kind="multilayer", priority=5,
                 description="llamascopium era-C cross-layer transcoder (CrossLayerTranscoder), whole")
def load_clt(path: Path, options: dict[str, Any]) -> tuple[MultiLayerConfig, dict[str, torch.Tensor]]:
    """llamascopium CrossLayerTranscoder folder -> canonical multi-layer tensors (see the module docstring)."""
    folder = path if path.is_dir() else path.parent
    cfg, cfg_path, sd, weights = _read(folder, "clt")
    hin = _hooks(cfg, "hook_points_in", cfg_path)
    hout = _hooks(cfg, "hook_points_out", cfg_path)
    n = len(hin)
    if len(hout) != n:
        raise ConfigError(f"hook_points_out has {len(hout)} hooks, hook_points_in {n}: one output per layer",
                          path=cfg_path, field="hook_points_out")
    d_model, d_sae = _dims(cfg, cfg_path, sd, weights, n)
    sidn = checked_field(cfg, "sparsity_include_decoder_norm", bool, cfg_path, default=True)
    act = _act(cfg, cfg_path, "CLT", ("relu", "jumprelu") if sidn else ("relu", "jumprelu", "topk"))
    W_E = sd["W_E"]
    if not W_E.is_floating_point():
        raise ShapeMismatchError(f"tensor 'W_E' is {W_E.dtype}, expected a floating dtype", path=weights, field="W_E")
    dtype = W_E.dtype
    b_E = _tensor(sd, "b_E", (n, d_sae), weights)
    groups = []
    for t in range(n):
        key = f"W_D.{t}"
        if key not in sd:
            raise ShapeMismatchError(f"missing decoder group {key!r} (target layer {t} of {n}; found "
                                     f"{sorted(k for k in sd if k.startswith('W_D.'))})", path=weights, field=key)
        got = tuple(sd[key].shape)
        if len(got) == 3 and got[0] != t + 1:
            raise ShapeMismatchError(f"decoder group {key!r} holds {got[0]} sources; target {t} is written by "
                                     f"sources 0..{t} ({t + 1})", path=weights, field=key)
        groups.append(_tensor(sd, key, (t + 1, d_sae, d_model), weights))
    extra = sorted(k for k in sd if k.startswith("W_D.") and k[4:] not in {str(t) for t in range(n)})
    if extra:
        raise ShapeMismatchError(f"decoder group(s) {extra} beyond the {n} layers the config names", path=weights,
                                 field=extra[0])
    use_bias = checked_field(cfg, "use_decoder_bias", bool, cfg_path, default=True)
    b_D = [_tensor(sd, f"b_D.{t}", (d_model,), weights) if use_bias or f"b_D.{t}" in sd
           else torch.zeros(d_model, dtype=dtype) for t in range(n)]
    scales = _scales(cfg, cfg_path, sd, weights, hin + hout, d_model, options)
    tensors: dict[str, torch.Tensor] = {}
    conversions = []
    for i in range(n):
        W_dec = torch.stack([groups[t][i] for t in range(i, n)], dim=1)  # [d_sae, n - i, d_model]
        tensors[f"W_enc.{i}"] = W_E[i]
        tensors[f"b_enc.{i}"] = b_E[i]
        tensors[f"W_dec.{i}"] = W_dec
        tensors[f"b_dec.{i}"] = b_D[i]
    conversions.append("decoders regrouped by source: W_dec.i[:, t - i] = W_D.{t}[i]")
    if act == "jumprelu":
        theta = _theta(sd, (n, d_sae), weights)
        for i in range(n):
            if sidn:  # the norm over every decoder of source feature j (all targets), as the library's whole encode
                norm = tensors[f"W_dec.{i}"].float().pow(2).sum(dim=(1, 2)).sqrt()
                tensors[f"threshold.{i}"] = _gate(theta[i], norm).to(dtype)
            else:
                tensors[f"threshold.{i}"] = theta[i].to(dtype)
        conversions.append("threshold = exp(log_jumprelu_threshold)" + (" / ||decoders of feature j||"
                                                                        if sidn else ""))
    if scales is not None:
        for i in range(n):
            tensors[f"W_enc.{i}"] = (W_E[i].float() * scales[hin[i]]).to(dtype)
            W_dec = tensors[f"W_dec.{i}"].float()
            out_s = torch.tensor([scales[hout[t]] for t in range(i, n)], dtype=torch.float32)
            tensors[f"W_dec.{i}"] = (W_dec / out_s[None, :, None]).to(dtype)
            tensors[f"b_dec.{i}"] = (b_D[i].float() / scales[hout[i]]).to(dtype)
        conversions.append("dataset-wise normalisation folded exactly (codes kept): W_enc.i *= s_in_i, "
                           "W_dec[i->t] /= s_out_t, b_dec.t /= s_out_t, s = sqrt(d_model)/dataset_average_norm")
    layers = [_layer(h) for h in hin]
    if any(x is None for x in layers) or [_layer(h) for h in hout] != layers or \
            any(a >= b for a, b in itertools.pairwise(layers)):  # type: ignore[operator]
        layers = list(range(n))
    mcfg = MultiLayerConfig(kind="clt", layers=[int(x) for x in layers if x is not None], d_in=d_model,
                            d_sae=d_sae, architecture=act, k=checked_field(cfg, "top_k", int, cfg_path) if act == "topk"
                            else None, dtype=str(dtype).removeprefix("torch."), model_name=model_name_of(folder),
                            hook_names_in=list[str | None](hin), hook_names_out=list[str | None](hout))
    mcfg.provenance.source_format = "llamascopium-clt"
    mcfg.provenance.conversions.extend(conversions)
    return mcfg, tensors


def _layer(hook: str) -> int | None:
    m = _HOOK_LAYER.match(hook)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------- crosscoder


@register_loader("llamascopium-crosscoder", files=[CONFIG, LM_CONFIG, *WEIGHT_CANDIDATES],  # type: ignore[arg-type]
                 detect=detect_crosscoder, options=OPTIONS, kind="crosscoder", priority=5,
                 description="llamascopium era-C crosscoder (Crosscoder), whole")
def load_crosscoder(path: Path, options: dict[str, Any]) -> tuple[CrossCoderConfig, dict[str, torch.Tensor]]:
    """llamascopium Crosscoder folder -> canonical crosscoder tensors (see the module docstring)."""
    folder = path if path.is_dir() else path.parent
    cfg, cfg_path, sd, weights = _read(folder, "crosscoder")
    hooks = _hooks(cfg, "hook_points", cfg_path)
    n = len(hooks)
    d_model, d_sae = _dims(cfg, cfg_path, sd, weights, n)
    act = _act(cfg, cfg_path, "crosscoder", ("relu", "jumprelu"))
    W_E = sd["W_E"]
    if not W_E.is_floating_point():
        raise ShapeMismatchError(f"tensor 'W_E' is {W_E.dtype}, expected a floating dtype", path=weights, field="W_E")
    dtype = W_E.dtype
    b_E = _tensor(sd, "b_E", (n, d_sae), weights)
    W_D = _tensor(sd, "W_D", (n, d_sae, d_model), weights)
    use_bias = "b_D" in sd or checked_field(cfg, "use_decoder_bias", bool, cfg_path, default=True)
    b_D = _tensor(sd, "b_D", (n, d_model), weights) if use_bias else torch.zeros(n, d_model, dtype=dtype)
    scales = _scales(cfg, cfg_path, sd, weights, hooks, d_model, options)
    tensors: dict[str, torch.Tensor] = {}
    for h in range(n):
        tensors.update({f"W_enc.{h}": W_E[h], f"b_enc.{h}": b_E[h], f"W_dec.{h}": W_D[h], f"b_dec.{h}": b_D[h]})
    conversions = ["site h holds W_E[h], b_E[h], W_D[h], b_D[h]"]
    if act == "jumprelu":
        theta = _theta(sd, (d_sae,), weights)
        for h in range(n):
            tensors[f"threshold.{h}"] = _gate(theta, W_D[h].float().norm(dim=-1)).to(dtype)
        conversions.append("threshold.h = exp(log_jumprelu_threshold) / ||W_D[h, j]|| (decoder-norm gate per site)")
    if scales is not None:
        for h, hook in enumerate(hooks):
            s = scales[hook]
            tensors[f"W_enc.{h}"] = (W_E[h].float() * s).to(dtype)
            tensors[f"W_dec.{h}"] = (W_D[h].float() / s).to(dtype)
            tensors[f"b_dec.{h}"] = (b_D[h].float() / s).to(dtype)
        conversions.append("dataset-wise normalisation folded exactly (codes kept): W_enc.h *= s_h, W_dec.h and "
                           "b_dec.h /= s_h, s = sqrt(d_model)/dataset_average_norm")
    ccfg = CrossCoderConfig(n_sites=n, d_in=d_model, d_sae=d_sae, architecture=act,
                            dtype=str(dtype).removeprefix("torch."), hook_names=list[str | None](hooks),
                            model_names=[model_name_of(folder)] * n)
    ccfg.provenance.source_format = "llamascopium-crosscoder"
    ccfg.provenance.conversions.extend(conversions)
    return ccfg, tensors
