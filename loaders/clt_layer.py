"""One source layer of a circuit-tracer cross-layer transcoder (``W_enc_{L}.safetensors`` + ``W_dec_{L}.safetensors``)
as a single-layer ``SAE``: what SAELens's ``mntss_clt_layer_transcoder`` releases name (``path`` = the layer).

File facts (circuit-tracer 0.5.0's ``CrossLayerTranscoder.to_safetensors``, also described in
:mod:`sae_hub.loaders.circuit_tracer`): ``W_enc_{L} [d_sae, d_in]`` (``z = x @ W_enc.T + b_enc``), ``b_enc_{L}``,
``b_dec_{L} [d_out]`` (the bias of target layer ``L``), optional ``threshold_{L}`` (JumpReLU ``z * (z > th)``) and
``W_dec_{L} [d_sae, n - L, d_out]`` (slot ``j`` writes layer ``L + j``). ``config.yaml`` gives ``model_name`` and
the hooks relative to a block (``feature_input_hook`` / ``feature_output_hook``).

Why an option is required: the encoder of one layer is exactly an SAE encoder, but its decoder writes into
``n - L`` layers, which no single-layer SAE holds. ``clt_decoder="sum"`` is SAELens's choice (``W_dec`` summed over
the targets; features exact, reconstructions NOT: lossy, recorded in the provenance); ``clt_decoder=<j>`` keeps
target slot ``j`` (layer ``L + j``; also lossy for reconstruction: the other sources' writes are absent). Without
it the load is refused, naming ``MultiLayerDictionary`` (the whole CLT, exact). Why a folder may hold other
layers' files: the Hub cache keeps every layer fetched so far in one snapshot, so the layer comes from the
``layer`` option (the release table gives it) when more than one is present.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_config_bytes, read_safetensors
from sae_hub.loading import register_loader

__all__ = ["detect", "load"]

CONFIG = "config.yaml"
_ENC = re.compile(r"W_enc_(\d+)\.safetensors")


def detect(path: Path) -> bool:
    """Never autodetected: a folder of ``W_enc_*``/``W_dec_*`` files is a whole CLT (``circuit-tracer-clt``);
    this view is chosen by name (a release's ``format``, or ``format=``)."""
    return False


def _layer(folder: Path, options: dict[str, Any]) -> int:
    value = options.get("layer")
    if value is None:
        found = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _ENC.fullmatch(p.name)))
        if len(found) != 1:
            raise ConfigError(f"this folder holds W_enc files for layers {found}: pass layer=<source layer>",
                              path=folder, field="layer")
        return found[0]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"option layer must be a non-negative integer, got {value!r}", field="layer")


def _config(folder: Path) -> dict[str, Any]:
    p = folder / CONFIG
    if not p.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(read_config_bytes(p))
    except yaml.YAMLError as e:
        raise CorruptFileError(f"not valid YAML: {e}", path=p) from None
    if not isinstance(data, dict):
        raise ConfigError("config.yaml must be a mapping", path=p)
    for key in ("model_name", "feature_input_hook", "feature_output_hook"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{key} must be a string, got {data[key]!r}", path=p, field=key)
    if data.get("model_kind") not in (None, "cross_layer_transcoder"):
        raise ConfigError(f"config.yaml says model_kind {data['model_kind']!r}, not a cross_layer_transcoder",
                          path=p, field="model_kind")
    return data


@register_loader("clt-source-layer", files=["W_enc_*.safetensors", "W_dec_*.safetensors", CONFIG],
                 detect=detect, options=["layer", "clt_decoder"],
                 description="one source layer of a circuit-tracer CLT as an SAE (clt_decoder='sum' or a target: "
                             "lossy decoder, exact features)")
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Source layer ``layer`` of a circuit-tracer CLT folder as an SAE transcoder (see the module docstring)."""
    folder = path if path.is_dir() else path.parent
    L = _layer(folder, options)
    pe, pd = folder / f"W_enc_{L}.safetensors", folder / f"W_dec_{L}.safetensors"
    for p, key in ((pe, f"W_enc_{L}"), (pd, f"W_dec_{L}")):
        if not p.is_file():
            raise MissingFileError(f"layer {L} of this CLT needs {p.name}", path=p, field=key)
    te, _ = read_safetensors(pe)
    td, _ = read_safetensors(pd)
    for key in (f"W_enc_{L}", f"b_enc_{L}", f"b_dec_{L}"):
        if key not in te:
            raise ShapeMismatchError(f"no tensor {key} in {pe.name} (it has {sorted(te)})", path=pe, field=key)
    extra = sorted(set(te) - {f"W_enc_{L}", f"b_enc_{L}", f"b_dec_{L}", f"threshold_{L}"})
    if extra:
        raise ShapeMismatchError(f"unexpected tensor {extra[0]} in {pe.name}", path=pe, field=extra[0])
    if f"W_dec_{L}" not in td or len(td) != 1:
        bad = f"W_dec_{L}" if f"W_dec_{L}" not in td else sorted(set(td) - {f"W_dec_{L}"})[0]
        raise ShapeMismatchError(f"{pd.name} must hold exactly W_dec_{L} (it has {sorted(td)})", path=pd, field=bad)
    W_enc, W_dec = te[f"W_enc_{L}"], td[f"W_dec_{L}"]
    for key, t, p in ((f"W_enc_{L}", W_enc, pe), (f"W_dec_{L}", W_dec, pd)):
        if not t.is_floating_point():
            raise ShapeMismatchError(f"tensor {key} has dtype {t.dtype}; weights must be floating point", path=p,
                                     field=key)
    if W_enc.dim() != 2:
        raise ShapeMismatchError(f"tensor W_enc_{L} has shape {list(W_enc.shape)}, expected [d_sae, d_in]", path=pe,
                                 field=f"W_enc_{L}")
    d_sae, d_in = W_enc.shape
    if W_dec.dim() != 3 or W_dec.shape[0] != d_sae:
        raise ShapeMismatchError(f"tensor W_dec_{L} has shape {list(W_dec.shape)}, expected [d_sae={d_sae}, "
                                 "n_targets, d_out]", path=pd, field=f"W_dec_{L}")
    n_targets, d_out = W_dec.shape[1], W_dec.shape[2]
    for key, want in ((f"b_enc_{L}", (d_sae,)), (f"b_dec_{L}", (d_out,))):
        if tuple(te[key].shape) != want:
            raise ShapeMismatchError(f"tensor {key} has shape {list(te[key].shape)}, expected {list(want)}",
                                     path=pe, field=key)
    th = te.get(f"threshold_{L}")
    if th is not None:
        if th.numel() != d_sae:
            raise ShapeMismatchError(f"tensor threshold_{L} has shape {list(th.shape)}, expected [{d_sae}]",
                                     path=pe, field=f"threshold_{L}")
        th = th.reshape(d_sae)
        if bool((th < 0).any()):
            raise UnsupportedSAEError("negative thresholds: circuit-tracer's z*(z>th) differs from an SAE's "
                                      "relu(z)*(z>th); load the whole CLT with MultiLayerDictionary", path=pe,
                                      field=f"threshold_{L}")
    choice = options.get("clt_decoder")
    if choice is None:
        raise UnsupportedSAEError(
            f"source layer {L} of a cross-layer transcoder decodes into {n_targets} layers, which a single-layer SAE "
            "cannot hold exactly. Load the whole CLT with sae_hub.MultiLayerDictionary (exact), or pass "
            "clt_decoder='sum' (SAELens's view: decoders summed over targets; features exact, reconstructions not) "
            f"or clt_decoder=<target slot 0..{n_targets - 1}>", path=pd, field=f"W_dec_{L}")
    cfg_yaml = _config(folder)
    hin, hout = cfg_yaml.get("feature_input_hook"), cfg_yaml.get("feature_output_hook")
    notes = ["W_enc transposed ([d_sae, d_in] -> [d_in, d_sae]); b_dec = b_dec of target layer "
             f"{L} (circuit-tracer's b_dec_{L})"]
    if choice == "sum":
        dec = W_dec.float().sum(dim=1).to(W_dec.dtype)
        notes.append(f"LOSSY: W_dec = W_dec_{L} summed over its {n_targets} target layers (SAELens's "
                     "mntss_clt_layer_transcoder view; features exact, reconstructions not)")
        out_hook = None
    elif isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < n_targets:
        dec = W_dec[:, choice, :]
        notes.append(f"LOSSY: W_dec = W_dec_{L}[:, {choice}, :] (target layer {L + choice} only; other sources' "
                     "writes there are absent)")
        out_hook = f"blocks.{L + choice}.{hout}" if hout else None
    else:
        raise ConfigError(f"clt_decoder must be 'sum' or a target slot in [0, {n_targets}), got {choice!r}",
                          field="clt_decoder")
    cfg = SAEConfig(
        architecture="jumprelu" if th is not None else "relu", d_in=d_in, d_sae=d_sae, d_out=d_out,
        dtype=str(W_enc.dtype).removeprefix("torch."), model_name=cfg_yaml.get("model_name"),
        hook_name=f"blocks.{L}.{hin}" if hin else None, hook_name_out=out_hook,
        extra={"clt_layer": {"layer": L, "n_targets": n_targets, "clt_decoder": choice}},
    )
    for note in notes:
        cfg.record(note)
    out = {"W_enc": W_enc.T, "b_enc": te[f"b_enc_{L}"], "W_dec": dec, "b_dec": te[f"b_dec_{L}"]}
    if th is not None:
        out["threshold"] = th
    return cfg, out
