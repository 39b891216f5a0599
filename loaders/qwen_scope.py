"""Qwen Scope TopK SAEs (Qwen3 / Qwen3.5): ``layer{L}.sae.pt`` plain state dicts.

Keys ``W_enc`` [d_sae, d_in], ``W_dec`` [d_in, d_sae], ``b_enc`` [d_sae], ``b_dec`` [d_in]: both matrices are
stored transposed relative to sae-hub's layout (decided by ``b_enc``'s length; when ``d_in == d_sae`` the
documented Qwen layout is assumed). ``topk(relu(x @ W_enc.T + b_enc))``, ``f @ W_dec.T + b_dec``, no centering.
Read with ``torch.load(weights_only=True)``.

``k`` is not stored: it comes from the ``k=`` option or from the repository name, which ends in ``L0_<k>``
(``...SAE-Res-Qwen3-8B-W64K-L0_50``) when the path (e.g. the Hub cache folder) contains it. ``layer{L}`` in the
file name gives ``hook_name = blocks.<L>.hook_resid_post`` (HF ``model.layers.<L>``).

A repository folder holds one file per layer: pass the file itself, or the folder with ``layer=L``
(autodetection accepts a folder only when it holds exactly one ``*.sae.pt``).

Options: ``k``, ``layer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only, peek

_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec"}
_L0 = re.compile(r"L0_(\d+)(?![\d])")
_LAYER = re.compile(r"^layer(\d+)\.sae\.pt$")


def _is_qwen_file(path: Path) -> bool:
    if not path.name.endswith(".sae.pt"):
        return False
    obj = peek(path)
    return isinstance(obj, Mapping) and set(obj) == _KEYS


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(".sae.pt"))


def detect(path: Path) -> bool:
    """A ``*.sae.pt`` file with exactly ``W_enc, W_dec, b_enc, b_dec``, or a folder holding exactly one."""
    if path.is_file():
        return _is_qwen_file(path)
    files = _files(path)
    return len(files) == 1 and _is_qwen_file(files[0])


def _int_option(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}", field=name)
    return value


@register_loader("qwen-scope", files=["*.sae.pt"], detect=detect, options=["k", "layer"])
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Qwen Scope ``layer{L}.sae.pt`` TopK SAE."""
    layer_opt = _int_option(options.get("layer"), "layer")
    if path.is_file():
        file = path
    elif layer_opt is not None:
        file = path / f"layer{layer_opt}.sae.pt"
        if not file.is_file():
            raise MissingFileError(f"no layer{layer_opt}.sae.pt in this folder", path=file)
    else:
        files = _files(path)
        if len(files) != 1:
            raise ConfigError(f"this folder holds {len(files)} *.sae.pt files; pass layer=L or the file itself",
                              path=path, field="layer")
        file = files[0]
    m = _LAYER.match(file.name)
    layer = int(m.group(1)) if m else None
    if layer_opt is not None and layer is not None and layer_opt != layer:
        raise ConfigError(f"layer={layer_opt} but the file is {file.name}", path=file, field="layer")

    sd = load_weights_only(file)
    if not isinstance(sd, Mapping) or set(sd) != _KEYS:
        keys = sorted(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise CorruptFileError(f"not a Qwen Scope SAE state dict (expected {sorted(_KEYS)}, got {keys})", path=file)
    W_e, W_d, b_e, b_d = sd["W_enc"], sd["W_dec"], sd["b_enc"], sd["b_dec"]
    if W_e.dim() != 2 or b_e.dim() != 1 or b_d.dim() != 1:
        raise CorruptFileError("W_enc/W_dec must be matrices and b_enc/b_dec vectors", path=file)
    d_sae, d_in = b_e.shape[0], b_d.shape[0]
    notes: list[str] = []
    if tuple(W_e.shape) == (d_sae, d_in) and tuple(W_d.shape) == (d_in, d_sae):
        W_enc, W_dec = W_e.T, W_d.T
        notes.append("W_enc = W_enc.T, W_dec = W_dec.T (Qwen Scope stores both transposed)")
    elif tuple(W_e.shape) == (d_in, d_sae) and tuple(W_d.shape) == (d_sae, d_in):
        W_enc, W_dec = W_e, W_d
    else:
        raise CorruptFileError(f"shapes disagree: W_enc {list(W_e.shape)}, W_dec {list(W_d.shape)}, "
                               f"b_enc {list(b_e.shape)}, b_dec {list(b_d.shape)}", path=file)

    k = _int_option(options.get("k"), "k")
    names = _L0.findall(str(file.resolve()))
    name_k = int(names[-1]) if names else None
    if k is None:
        if name_k is None:
            raise ConfigError("Qwen Scope files do not store k and the path has no 'L0_<k>' repository name; "
                              "pass k=", path=file, field="k")
        k = name_k
        notes.append(f"k = {k} from the repository name (L0_{k})")
    elif name_k is not None and name_k != k:
        raise ConfigError(f"k={k} contradicts the repository name (L0_{name_k})", path=file, field="k")

    if k == 0 or k > d_sae:
        raise ConfigError(f"k={k} must be between 1 and the number of features d_sae={d_sae}", path=file, field="k")
    cfg = SAEConfig(architecture="topk", d_in=int(d_in), d_sae=int(d_sae), k=k,
                    dtype=str(W_e.dtype).removeprefix("torch."))
    if layer is not None:
        cfg.hook_name = f"blocks.{layer}.hook_resid_post"
        cfg.hf_hook_name = f"model.layers.{layer}"
    cfg.extra["source_class"] = "qwen_scope"
    for note in notes:
        cfg.record(note)
    cfg.provenance.source_files = [{"name": file.name}]
    tensors = {"W_enc": W_enc, "b_enc": b_e, "W_dec": W_dec, "b_dec": b_d}
    return cfg, tensors
