"""Gemma Scope 2 (Gemma 3) JumpReLU SAEs, transcoders and per-layer CLT files: ``params.safetensors``.

Layout on the Hub: ``google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}`` with folders such as
``resid_post/layer_{L}_width_{W}_l0_{small|medium|big}/`` (also ``*_all``, ``attn_out``, ``mlp_out``,
``transcoder``; ``..._affine`` for transcoders with an affine skip) holding ``params.safetensors`` and often a
``config.json`` (``hf_hook_point_in``, ``hf_hook_point_out``, ``model_name``, ``architecture``, ``width``, ``l0``,
``type``, ``affine_connection``).

Tensors are lower-case: ``w_enc`` [d_in, d_sae], ``w_dec`` [d_sae, d_out], ``b_enc``, ``b_dec``, ``threshold``,
and for affine transcoders ``affine_skip_connection`` [d_in, d_out] (output ``decode(f) + x @ affine``), kept as
``W_skip = affine.T`` [d_out, d_in] with ``has_skip`` (canonical ``forward`` adds ``x @ W_skip.T``, the same
thing). Semantics are canonical JumpReLU: no centering, no normalisation.

Cross-layer transcoder files (``clt/width_*/params_layer_{L}.safetensors``: ``w_dec`` [d_sae, n_targets, d_out],
one file per source layer) load WHOLE as a :class:`~sae_hub.multilayer.MultiLayerDictionary` (format
``gemma-scope-2-clt``, :func:`load_clt`). As a single ``SAE`` one such file is refused by default: a per-layer SAE
cannot hold a decoder into several layers. The option ``clt_decoder="sum"`` (a lossy view, kept for SAELens
parity) sums the decoders over the target axis (this DROPS the cross-layer structure: the result writes
everything into one output); ``clt_decoder=<int>`` keeps one target slice. Crosscoders are refused.

Hook names come from ``config.json`` (HF module paths mapped to TransformerLens names) or, failing that, from
the folder (``resid_post*/layer_L...`` -> ``blocks.L.hook_resid_post``, ``attn_out*`` -> ``blocks.L.attn.hook_z``,
``mlp_out*`` -> ``blocks.L.hook_mlp_out``, ``transcoder*`` -> ``blocks.L.hook_mlp_in`` -> ``blocks.L.hook_mlp_out``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import (
    ConfigError,
    SaeHubError,
    ShapeMismatchError,
    UnknownArchitectureError,
    UnsupportedSAEError,
)
from sae_hub.files import read_json, read_safetensors, read_safetensors_header
from sae_hub.loading import register_loader

__all__ = ["detect", "detect_clt", "hf_to_tl_hook", "load", "load_clt"]

PARAMS = "params.safetensors"
CONFIG = "config.json"
_KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
_REPO = re.compile(r"gemma-scope-2-(\d+[mb])-(pt|it)(?:$|[^a-z0-9])")


def _is_gs2_header(path: Path) -> bool:
    try:
        keys = set(read_safetensors_header(path).keys())
    except SaeHubError:
        return False
    return {"w_enc", "w_dec", "threshold"} <= keys


def detect(path: Path) -> bool:
    """A folder with ``params.safetensors``, or a ``.safetensors`` file with Gemma Scope 2's lower-case keys."""
    if path.is_dir():
        return (path / PARAMS).is_file()
    if path.is_file() and path.suffix == ".safetensors":
        return path.name == PARAMS or _is_gs2_header(path)
    return False


def hf_to_tl_hook(hf: str) -> str | None:
    """TransformerLens name of a Gemma 3 HF hook point (``model.layers.L.output`` -> ``blocks.L.hook_resid_post``)."""
    name = hf.replace("model.language_model.", "model.").removeprefix("language_model.")
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if not m:
        return None
    layer, rest = m.groups()
    return {
        "output": f"blocks.{layer}.hook_resid_post",
        "self_attn.o_proj.input": f"blocks.{layer}.attn.hook_z",
        "post_feedforward_layernorm.output": f"blocks.{layer}.hook_mlp_out",
        "pre_feedforward_layernorm.output": f"blocks.{layer}.hook_mlp_in",
    }.get(rest)


def _folder_hooks(parts: tuple[str, ...]) -> tuple[str | None, str | None]:
    for i in range(len(parts) - 1, 0, -1):
        m = re.match(r"(?:params_)?layer_(\d+)", parts[i])
        if not m:
            continue
        layer, kind = m.group(1), parts[i - 1].removesuffix("_all")
        if kind == "resid_post":
            return f"blocks.{layer}.hook_resid_post", None
        if kind == "attn_out":
            return f"blocks.{layer}.attn.hook_z", None
        if kind == "mlp_out":
            return f"blocks.{layer}.hook_mlp_out", None
        if kind in ("transcoder", "transcoders"):
            return f"blocks.{layer}.hook_mlp_in", f"blocks.{layer}.hook_mlp_out"
        return None, None
    return None, None


@register_loader(
    "gemma-scope-2",
    files=[PARAMS, CONFIG],
    detect=detect,
    options=["clt_decoder"],
    description="Google Gemma Scope 2 (Gemma 3) JumpReLU SAEs/transcoders (params.safetensors)",
)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Gemma Scope 2 ``params.safetensors`` (SAE, transcoder, affine transcoder; CLT file with an option)."""
    file = path / PARAMS if path.is_dir() else path
    folder = file.parent
    where = " ".join(file.parts[-3:]).lower()
    cfg_json: dict[str, Any] = {}
    if (folder / CONFIG).is_file():
        raw = read_json(folder / CONFIG)
        if not isinstance(raw, dict):
            raise ConfigError("config.json must be a JSON object", path=folder / CONFIG)
        cfg_json = raw
    kind = str(cfg_json.get("type", "")).lower()
    if "crosscoder" in where or "crosscoder" in kind:
        raise UnsupportedSAEError("Gemma Scope 2 crosscoders encode several layers jointly (one feature reads all "
                                  "of them); a single-hook SAE cannot reproduce them", path=file)
    arch = cfg_json.get("architecture", "jump_relu")
    if str(arch).lower().replace("_", "") != "jumprelu":
        raise UnknownArchitectureError(f"Gemma Scope 2 architecture {arch!r}; only jump_relu is known",
                                       path=folder / CONFIG, field="architecture")
    sd, _ = read_safetensors(file)
    lower = {k.lower(): k for k in sd}
    t: dict[str, torch.Tensor] = {}
    for key in _KEYS:
        if key not in lower:
            raise ShapeMismatchError(f"missing tensor {key!r} (found {sorted(sd)})", path=file, field=key)
        t[key] = sd[lower[key]]
    skip = sd.get(lower["affine_skip_connection"]) if "affine_skip_connection" in lower else None
    w_enc, w_dec = t["w_enc"], t["w_dec"]
    if w_enc.dim() != 2:
        raise UnsupportedSAEError(f"w_enc has shape {list(w_enc.shape)}: a multi-layer encoder (crosscoder or "
                                  "stacked CLT) is not a single SAE", path=file, field="w_enc")
    d_in, d_sae = w_enc.shape
    conversions = ["Gemma Scope 2: W_enc = w_enc, W_dec = w_dec, threshold as stored"]
    clt = options.get("clt_decoder")
    if w_dec.dim() == 3:
        if w_dec.shape[0] != d_sae:
            raise ShapeMismatchError(f"CLT w_dec has shape {list(w_dec.shape)}, expected [{d_sae}, n_targets, d_out]",
                                     path=file, field="w_dec")
        n_targets = w_dec.shape[1]
        if clt is None:
            raise UnsupportedSAEError(
                f"this is a cross-layer transcoder file: w_dec {list(w_dec.shape)} decodes each feature into "
                f"{n_targets} layers, which a per-layer SAE cannot hold. Load the folder of params_layer files whole "
                "with sae_hub.MultiLayerDictionary.load_from_disk (format gemma-scope-2-clt), or pass "
                "clt_decoder='sum' to sum the decoders over the target axis (lossy: drops the cross-layer structure) "
                "or clt_decoder=<target index> to keep one",
                path=file, field="w_dec")
        if clt == "sum":
            w_dec = w_dec.float().sum(dim=1).to(w_dec.dtype)
            conversions.append(f"CLT: W_dec = w_dec summed over its {n_targets} targets (cross-layer structure "
                               "dropped)")
        elif isinstance(clt, int) and not isinstance(clt, bool) and -n_targets <= clt < n_targets:
            w_dec = w_dec[:, clt, :]
            conversions.append(f"CLT: W_dec = w_dec[:, {clt}, :] (one target of {n_targets}; the others dropped)")
        else:
            raise ConfigError(f"clt_decoder must be 'sum' or a target index in [0, {n_targets}), got {clt!r}",
                              field="clt_decoder")
    elif clt is not None:
        raise ConfigError("clt_decoder applies to cross-layer transcoder files only", field="clt_decoder")
    if w_dec.dim() != 2 or w_dec.shape[0] != d_sae:
        raise ShapeMismatchError(f"w_dec has shape {list(w_dec.shape)}, expected [{d_sae}, d_out]", path=file,
                                 field="w_dec")
    d_out = w_dec.shape[1]
    for key, shape in (("b_enc", (d_sae,)), ("b_dec", (d_out,)), ("threshold", (d_sae,))):
        if tuple(t[key].shape) != shape:
            raise ShapeMismatchError(f"{key} has shape {list(t[key].shape)}, expected {list(shape)}", path=file,
                                     field=key)
    out = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": t["b_enc"], "b_dec": t["b_dec"], "threshold": t["threshold"]}
    if skip is not None:
        if tuple(skip.shape) != (d_in, d_out):
            raise ShapeMismatchError(f"affine_skip_connection has shape {list(skip.shape)}, expected [{d_in}, "
                                     f"{d_out}]", path=file, field="affine_skip_connection")
        out["W_skip"] = skip.T
        conversions.append("W_skip = affine_skip_connection.T (output += x @ affine_skip_connection)")
    dtypes = {v.dtype for v in out.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise ShapeMismatchError(f"tensors must share one floating dtype, found {sorted(map(str, dtypes))}",
                                 path=file)
    dtype = next(iter(dtypes))
    hf_in, hf_out = cfg_json.get("hf_hook_point_in"), cfg_json.get("hf_hook_point_out")
    hf_in = hf_in if isinstance(hf_in, str) else None
    hf_out = hf_out if isinstance(hf_out, str) and hf_out != hf_in else None
    hook_in = hf_to_tl_hook(hf_in) if hf_in else None
    hook_out = hf_to_tl_hook(hf_out) if hf_out else None
    if hook_in is None:
        hook_in, folder_out = _folder_hooks(file.parts)
        hook_out = hook_out or folder_out
    if t["w_dec"].dim() == 3:
        hook_out = hf_out = None  # a summed / selected CLT decoder has no single documented output hook
    model = cfg_json.get("model_name")
    if isinstance(model, str) and model and "/" not in model:
        model = f"google/{model}"
    if not model:
        for part in file.parts:
            m = _REPO.search(part)
            if m:
                model = f"google/gemma-3-{m.group(1)}-{m.group(2)}"
    cfg = SAEConfig(
        architecture="jumprelu", d_in=d_in, d_sae=d_sae, d_out=d_out, has_skip=skip is not None,
        dtype=str(dtype).removeprefix("torch."),
        reshape_activations="hook_z" if hook_in and hook_in.endswith("hook_z") else "none",
        hook_name=hook_in, hook_name_out=hook_out if hook_out != hook_in else None,
        hf_hook_name=hf_in, hf_hook_name_out=hf_out, model_name=model if isinstance(model, str) else None,
        license="cc-by-4.0" if model else None,
        extra={"gemma_scope_2": {**{k: cfg_json[k] for k in ("width", "l0", "type", "affine_connection")
                                    if k in cfg_json}, **({"clt_decoder": clt} if clt is not None else {})}},
    )
    for c in conversions:
        cfg.record(c)
    return cfg, out


# ---------------------------------------------------------------------- whole cross-layer transcoders

CLT_FILE = re.compile(r"params_layer_(\d+)\.safetensors")
CLT_OPTIONS = ("feature_input_hook", "feature_output_hook", "model_name")


def _clt_files(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = CLT_FILE.fullmatch(p.name)
        if m and p.is_file():
            out[int(m.group(1))] = p
    return out


def detect_clt(path: Path) -> bool:
    """A folder of ``params_layer_{L}.safetensors`` files whose lowest holds Gemma Scope 2 keys with a 3-d
    ``w_dec`` (a CLT source layer)."""
    if not path.is_dir():
        return False
    files = _clt_files(path)
    if not files:
        return False
    try:
        header = read_safetensors_header(files[min(files)])
    except SaeHubError:
        return False
    keys = set(header.keys())
    return {"w_enc", "w_dec", "b_enc", "b_dec", "threshold"} <= keys and len(header.shape("w_dec")) == 3


def _relative_hook(options: dict[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is not None and (not isinstance(value, str) or not value or value.startswith("blocks.")):
        raise ConfigError(f"{name} must be a hook name relative to a block (e.g. 'hook_resid_mid'), got {value!r}",
                          field=name)
    return value


# kind="multilayer": load returns a MultiLayerConfig (typed Any here: LoadFn is typed for SAE loaders).
@register_loader("gemma-scope-2-clt", files=["params_layer_*.safetensors"], detect=detect_clt,
                 options=CLT_OPTIONS, kind="multilayer",
                 description="Google Gemma Scope 2 cross-layer transcoder (params_layer_{L}.safetensors), whole")
def load_clt(path: Path, options: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """Gemma Scope 2 CLT folder -> canonical multi-layer tensors (``docs/formats.md#gemma-scope-2-clt``).

    One ``params_layer_{L}.safetensors`` per source layer ``L = 0..n-1``: ``w_enc [d_in, d_sae]``, ``b_enc``,
    ``threshold [d_sae]`` (JumpReLU), ``b_dec [d_out]`` (the bias of TARGET layer ``L``), ``w_dec [d_sae, n, d_out]``
    indexed by absolute target layer (slots before ``L`` are not read: a feature writes at or after the layer it
    reads, as circuit-tracer's ``w_dec[L, :, L:, :]``; a ``[d_sae, n - L, d_out]`` decoder is read as is) and,
    in ``_affine`` folders, ``affine_skip_connection [d_in, d_out]`` (target ``L`` adds ``x_L @ affine``, kept as
    ``W_skip.L = affine.T``). Every layer is loaded: circuit-tracer 0.5.0's ``load_gemma_scope_2_clt`` loops over
    ``range(max(paths))`` and so drops the last one. Google's JumpReLU ``relu(z) * (z > t)`` is the
    canonical ``z * (z > t)`` for ``t >= 0``; a negative ``t`` is raised to 0 (exact, recorded). Tensors stay
    memory-mapped (the decoder slice is a view).
    """
    from sae_hub.errors import MissingFileError
    from sae_hub.multilayer import MultiLayerConfig

    folder = path if path.is_dir() else path.parent
    files = _clt_files(folder)
    if not files:
        raise MissingFileError("no params_layer_{L}.safetensors files in this folder", path=folder)
    n = max(files) + 1
    for layer in range(n):
        if layer not in files:
            raise MissingFileError(f"layer {layer} is missing: the folder has params_layer files up to {n - 1} "
                                   f"(a Gemma Scope 2 CLT covers layers 0..n-1 without a gap)",
                                   path=folder / f"params_layer_{layer}.safetensors", field="w_dec")
    first: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    skips: list[bool] = []
    negative: list[int] = []
    for layer in range(n):
        file = files[layer]
        sd, _ = read_safetensors(file)
        for key in _KEYS:
            if key not in sd:
                raise ShapeMismatchError(f"missing tensor {key!r} (found {sorted(sd)})", path=file, field=key)
        extra = sorted(set(sd) - {*_KEYS, "affine_skip_connection"})
        if extra:
            raise ShapeMismatchError(f"unexpected tensor(s) {extra} in a Gemma Scope 2 CLT file", path=file,
                                     field=extra[0])
        w_enc, w_dec = sd["w_enc"], sd["w_dec"]
        if w_enc.dim() != 2:
            raise ShapeMismatchError(f"w_enc has shape {list(w_enc.shape)}, expected [d_in, d_sae]", path=file,
                                     field="w_enc")
        d_in, d_sae = w_enc.shape
        if w_dec.dim() != 3 or w_dec.shape[0] != d_sae:
            raise ShapeMismatchError(f"w_dec has shape {list(w_dec.shape)}, expected [d_sae={d_sae}, n_targets, "
                                     "d_out]", path=file, field="w_dec")
        d_out = w_dec.shape[2]
        if not first:
            first = {"d_in": d_in, "d_sae": d_sae, "d_out": d_out, "file": file.name}
        for name, got in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
            if got != first[name]:
                raise ShapeMismatchError(f"{name}={got} here but {first[name]} in {first['file']}: the files of one "
                                         "CLT share their widths", path=file,
                                         field="w_dec" if name == "d_out" else "w_enc")
        slots = w_dec.shape[1]
        if slots == n:
            dec = w_dec[:, layer:, :]
        elif slots == n - layer:
            dec = w_dec
        else:
            raise ShapeMismatchError(f"w_dec decodes into {slots} target layers; with {n} layers (files 0..{n - 1}) "
                                     f"source layer {layer} needs {n} (indexed by target layer) or {n - layer} (from "
                                     "this layer on)", path=file, field="w_dec")
        for key, shape in (("b_enc", (d_sae,)), ("threshold", (d_sae,)), ("b_dec", (d_out,))):
            if tuple(sd[key].shape) != shape:
                raise ShapeMismatchError(f"{key} has shape {list(sd[key].shape)}, expected {list(shape)}", path=file,
                                         field=key)
        threshold = sd["threshold"]
        if bool((threshold < 0).any()):  # Google's relu(z) * (z > t) is z * (z > max(t, 0)): exact, recorded
            threshold = threshold.clamp_min(0)
            negative.append(layer)
        tensors.update({f"W_enc.{layer}": w_enc, f"b_enc.{layer}": sd["b_enc"], f"threshold.{layer}": threshold,
                        f"W_dec.{layer}": dec, f"b_dec.{layer}": sd["b_dec"]})
        skip = sd.get("affine_skip_connection")
        skips.append(skip is not None)
        if skip is not None:
            if tuple(skip.shape) != (d_in, d_out):
                raise ShapeMismatchError(f"affine_skip_connection has shape {list(skip.shape)}, expected [{d_in}, "
                                         f"{d_out}]", path=file, field="affine_skip_connection")
            tensors[f"W_skip.{layer}"] = skip.T
        if skips[0] != skips[-1]:
            raise ShapeMismatchError(f"affine_skip_connection is {'absent' if skips[0] else 'present'} here but "
                                     f"{'present' if skips[0] else 'absent'} in {first['file']}: every layer of an "
                                     "affine CLT has one", path=file, field="affine_skip_connection")
    hin = _relative_hook(options, "feature_input_hook")
    hout = _relative_hook(options, "feature_output_hook")
    model = options.get("model_name")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model_name must be a string, got {model!r}", field="model_name")
    if not model:
        for part in folder.parts:
            m = _REPO.search(part)
            if m:
                model = f"google/gemma-3-{m.group(1)}-{m.group(2)}"
    cfg = MultiLayerConfig(
        kind="clt", layers=list(range(n)), d_in=first["d_in"], d_sae=first["d_sae"], d_out=first["d_out"],
        architecture="jumprelu", has_skip=skips[0], dtype=str(tensors["W_enc.0"].dtype).removeprefix("torch."),
        model_name=model or None,
        hook_names_in=[f"blocks.{i}.{hin}" if hin else None for i in range(n)],
        hook_names_out=[f"blocks.{i}.{hout}" if hout else None for i in range(n)],
    )
    cfg.extra["feature_input_hook"] = hin
    cfg.extra["feature_output_hook"] = hout
    cfg.provenance.source_format = "gemma-scope-2-clt"
    cfg.record("Gemma Scope 2 CLT: W_enc.L = w_enc, threshold.L as stored (z * (z > threshold)), "
               "W_dec.L = w_dec[:, L:, :] (target slots before L not read)")
    if negative:
        cfg.record(f"layers {negative}: negative thresholds raised to 0 (Google's relu(z) * (z > t) equals "
                   "z * (z > max(t, 0)))")
    if skips[0]:
        cfg.record("W_skip.L = affine_skip_connection.T (target L adds x_L @ affine_skip_connection)")
    return cfg, tensors
