"""Goodfire SAEs: a plain ``torch.save(state_dict)`` in ``*.pth`` / ``*.pt``.

* Llama-3.1-8B-Instruct l19 / Llama-3.3-70B-Instruct l50: ``encoder_linear.{weight,bias}``,
  ``decoder_linear.{weight,bias}`` (``nn.Linear`` layout). ``relu(encoder_linear(x))``,
  ``decoder_linear(f)``: transposes only, no centering.
* gpt-oss-20b hackathon SAE (``topk_sae_l15_exp16_k32.pt``): ``encoder_linear.weight`` (+ ``.bias``),
  ``decoder.weight`` (+ ``decoder_bias`` / ``decoder.bias``), TopK. ``k`` comes from the ``k=`` option or from
  a ``_k<N>`` token in the file name; without either the loader asks for it. Assumed, as for the other
  Goodfire SAEs: no input centering, ``topk(relu(x @ W_enc + b_enc))``.

Read with ``torch.load(weights_only=True)``. The layer in the file name (``-l19``, ``_l15_``) becomes
``hook_name = blocks.<L>.hook_resid_post`` (the output of ``model.layers.<L>``).

Options: ``k`` (gpt-oss TopK variant).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, SaeHubError, UnsafeCheckpointError
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only, peek

_SUFFIXES = (".pt", ".pth")
_K_IN_NAME = re.compile(r"(?:^|[_-])k(\d+)(?=[_.-]|$)")
_LAYER_IN_NAME = re.compile(r"(?:^|[_-])l(\d+)(?=[_.-]|$)", re.IGNORECASE)
_STANDARD = {"encoder_linear.weight", "encoder_linear.bias", "decoder_linear.weight", "decoder_linear.bias"}
_TOPK_REQUIRED = {"encoder_linear.weight", "decoder.weight"}
_TOPK_OPTIONAL = {"encoder_linear.bias", "decoder_bias", "decoder.bias"}


def _variant(obj: Any) -> str | None:
    """``"standard"``, ``"topk"`` or None for a (skeleton) state dict."""
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        return None
    keys = set(obj)
    if keys == _STANDARD:
        return "standard"
    if _TOPK_REQUIRED <= keys <= _TOPK_REQUIRED | _TOPK_OPTIONAL and not {"decoder_bias", "decoder.bias"} <= keys:
        return "topk"
    return None


def _candidates(folder: Path) -> list[Path]:
    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in _SUFFIXES:
            try:
                if _variant(peek(f)) is not None:
                    out.append(f)
            except SaeHubError:
                continue
    return out


def detect(path: Path) -> bool:
    """A ``.pth``/``.pt`` state dict with Goodfire's keys, or a folder holding exactly one."""
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            return False
        try:
            return _variant(peek(path)) is not None
        except UnsafeCheckpointError:
            if path.suffix == ".pth":  # Goodfire's own suffix: say why, rather than "no loader"
                raise
            return False
    return len(_candidates(path)) == 1


@register_loader("goodfire", files=["*.pth", "*.pt"], detect=detect, options=["k"])
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Goodfire ``encoder_linear`` / ``decoder_linear`` state dict."""
    if path.is_file():
        file = path
    else:
        found = _candidates(path)
        if len(found) != 1:
            raise MissingFileError(f"expected exactly one Goodfire .pth/.pt state dict, found "
                                   f"{[f.name for f in found]}", path=path)
        file = found[0]
    sd = load_weights_only(file)
    variant = _variant(sd)
    if variant is None:
        keys = sorted(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise CorruptFileError(f"not a Goodfire SAE state dict (keys {keys})", path=file)
    W_e = sd["encoder_linear.weight"]
    d_sae, d_in = W_e.shape
    b_enc = sd.get("encoder_linear.bias")
    if b_enc is None:
        b_enc = torch.zeros(d_sae, dtype=W_e.dtype)
    notes: list[str] = []
    k = None
    if variant == "standard":
        if options.get("k") is not None:
            raise ConfigError("k applies to the TopK (gpt-oss) variant only; this SAE is ReLU", path=file, field="k")
        W_d, b_dec = sd["decoder_linear.weight"], sd["decoder_linear.bias"]
        if tuple(W_d.shape) != (d_in, d_sae):
            raise CorruptFileError(f"decoder_linear.weight is {list(W_d.shape)}, expected [{d_in}, {d_sae}]",
                                   path=file, field="decoder_linear.weight")
        W_dec = W_d.T
        arch = "relu"
    else:
        W_d = sd["decoder.weight"]
        if tuple(W_d.shape) == (d_in, d_sae):
            W_dec = W_d.T
            notes.append("W_dec = decoder.weight.T (nn.Linear layout)")
        elif tuple(W_d.shape) == (d_sae, d_in):
            W_dec = W_d
        else:
            raise CorruptFileError(f"decoder.weight is {list(W_d.shape)}, expected [{d_in}, {d_sae}]",
                                   path=file, field="decoder.weight")
        b_dec = sd.get("decoder_bias", sd.get("decoder.bias"))
        if b_dec is None:
            b_dec = torch.zeros(d_in, dtype=W_d.dtype)
        k = _k(options.get("k"), file)
        if k > d_sae:
            raise ConfigError(f"k={k} exceeds the number of features d_sae={d_sae}", path=file, field="k")
        arch = "topk"
        notes.append("gpt-oss Goodfire TopK SAE: assumed no input centering, topk(relu(x @ W_enc + b_enc))")
    cfg = SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), k=k,
                    dtype=str(W_e.dtype).removeprefix("torch."))
    layer = _LAYER_IN_NAME.search(file.stem)
    if layer:
        cfg.hook_name = f"blocks.{int(layer.group(1))}.hook_resid_post"
        cfg.hf_hook_name = f"model.layers.{int(layer.group(1))}"
    cfg.extra["source_class"] = f"goodfire ({variant})"
    for note in notes:
        cfg.record(note)
    cfg.provenance.source_files = [{"name": file.name}]
    tensors = {"W_enc": W_e.T, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    return cfg, tensors


def _k(option: Any, file: Path) -> int:
    from_name = _K_IN_NAME.search(file.stem)
    name_k = int(from_name.group(1)) if from_name else None
    if option is not None:
        if isinstance(option, bool) or not isinstance(option, int) or option <= 0:
            raise ConfigError(f"k must be a positive integer, got {option!r}", path=file, field="k")
        if name_k is not None and name_k != option:
            raise ConfigError(f"k={option} contradicts the file name ({file.name}: k={name_k})", path=file,
                              field="k")
        return option
    if name_k is None:
        raise ConfigError("this Goodfire TopK SAE does not record k and its file name has no _k<N> token; "
                          "pass k=", path=file, field="k")
    return name_k
