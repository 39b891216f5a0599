"""nanoSAE (gwenlake/nanoSAE, GitHub only): whole-module pickles (``sae.pt``) and state dicts.

Files: ``sae.pt`` (``torch.save(model)`` / ``SAETrainer.save``; read with
:func:`sae_hub.safe_pickle.safe_load`, nothing from it runs) or ``state_dict.pt``. A folder holding both loads
``sae.pt``, which also carries the config (``dataset_normalization``) and ``SAETopK.k``.

Classes (pickle paths): ``nanosae.models.SAE`` (main branch HEAD and branch ``topk``),
``nanosae.models.sae.SAE`` and ``nanosae.models.topk.SAETopK`` (first version, commit 011d361).

* ``SAE``: ``encode = relu(encoder(x))``, ``decode = decoder(f)``: ``W_enc = encoder.weight.T``,
  ``b_enc = encoder.bias``, ``W_dec = decoder.weight.T``, ``b_dec = decoder.bias`` (0 on the ``topk`` branch's
  ``architecture="standard"``, whose decoder has no bias; that variant's extra ``bias`` parameter is unused by
  its encode/decode and is dropped, recorded in the provenance).
* ``SAETopK``: ``encode = topk_k(relu(encoder(x - b_dec)))``, ``decode = decoder(f)`` (``b_dec`` is *not*
  added back). The centering is folded exactly (F1): ``b_enc = encoder.bias - b_dec @ W_enc``;
  canonical ``b_dec = decoder.bias``. ``k`` is a pickled attribute; the class hard-codes 16, so a state dict
  (which lacks it) loads with ``k=16`` unless ``k=`` says otherwise.
* ``config.dataset_normalization == "zscore"``: nanoSAE z-scores every row before training and inference
  (``(x - mean) / (std_pop + 1e-5)``); it becomes ``normalize_activations="zscore"``, and ``decode`` maps
  reconstructions back to the raw space with the same row statistics. A state dict does not record it: pass
  ``dataset_normalization="zscore"``.
* The first version's ``forward(..., output_features=True)`` multiplies features by the decoder column norms;
  that is informational only (``encode`` does not) and is not reproduced.

Options: ``dataset_normalization`` (``"zscore"`` or ``None``/``"none"``), ``k`` (SAETopK state dicts).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    MissingFileError,
    UnsupportedSAEError,
)
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import Stub, module_state_dict, peek_for_detection, qualname_of, safe_load

PICKLE_FILE = "sae.pt"
STATE_DICT_FILE = "state_dict.pt"
_CLASSES = {"nanosae.models.SAE": "SAE", "nanosae.models.sae.SAE": "SAE", "nanosae.models.topk.SAETopK": "SAETopK"}
_REQUIRED = {"encoder.weight", "encoder.bias", "decoder.weight"}
_OPTIONAL = {"decoder.bias", "b_dec", "bias"}


def _is_nanosae_object(obj: Any) -> bool:
    name = qualname_of(obj)
    if name is not None:
        return name == "nanosae" or name.startswith("nanosae.")
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        keys = set(obj)
        if not (_REQUIRED <= keys <= _REQUIRED | _OPTIONAL) or ({"b_dec", "bias"} <= keys):
            return False
        if "b_dec" in keys and "decoder.bias" not in keys:  # SAETopK's decoder always has a bias
            return False
        enc, dec = obj["encoder.weight"], obj["decoder.weight"]
        return (isinstance(enc, torch.Tensor) and isinstance(dec, torch.Tensor) and enc.dim() == 2
                and tuple(dec.shape) == (enc.shape[1], enc.shape[0]))
    return False


def detect(path: Path) -> bool:
    """A nanoSAE pickle or state dict: a ``.pt`` file, or a folder's ``sae.pt`` / ``state_dict.pt``.

    Other formats store the same keys (dictionary_learning's ``AutoEncoder``/``AutoEncoderNew``); which one a
    file is, the loader registry's precedence decides (those formats declare a higher priority), not this.
    """
    if path.is_file():
        if path.suffix not in (".pt", ".pth"):
            return False
        return _is_nanosae_object(peek_for_detection(path, own=path.name in (PICKLE_FILE, STATE_DICT_FILE)))
    return any((path / n).is_file() and _is_nanosae_object(peek_for_detection(path / n, own=True))
               for n in (PICKLE_FILE, STATE_DICT_FILE))


def _pick(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in (PICKLE_FILE, STATE_DICT_FILE):
        if (path / name).is_file():
            return path / name
    return None


def _normalization_option(value: Any) -> str | None:
    if value is None or value == "none":
        return None
    if value == "zscore":
        return "zscore"
    raise ConfigError(f"dataset_normalization must be 'zscore' or None, got {value!r}",
                      field="dataset_normalization")


@register_loader("nanosae", files=[PICKLE_FILE, STATE_DICT_FILE], detect=detect,
                 options=["dataset_normalization", "k"])
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """nanoSAE ``sae.pt`` pickle or ``state_dict.pt``."""
    file = _pick(path)
    if file is None:
        raise MissingFileError(f"no {PICKLE_FILE} or {STATE_DICT_FILE}", path=path)
    obj = safe_load(file)
    notes: list[str] = []
    pickled_norm: Any = "unknown"
    pickled_k: Any = None
    config: dict[str, Any] = {}
    if isinstance(obj, Stub):
        qn = obj.qualname
        kind = _CLASSES.get(qn)
        if kind is None:
            raise UnsupportedSAEError(f"the pickle holds {qn}; supported nanoSAE classes: {', '.join(_CLASSES)}",
                                      path=file)
        state = module_state_dict(obj, path=file)
        cfg_obj = obj.__dict__.get("config")
        if isinstance(cfg_obj, Stub):
            config = {k: v for k, v in cfg_obj.__dict__.items() if not k.startswith("_stub")}
            pickled_norm = config.get("dataset_normalization")
        elif qn != "nanosae.models.SAE":
            pickled_norm = None  # first-version classes had no config and no normalisation
        if kind == "SAETopK":
            pickled_k = obj.__dict__.get("k")
        source_class = qn
    elif isinstance(obj, Mapping):
        state = {str(k): v for k, v in obj.items()}
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CorruptFileError("state dict holds non-tensor values", path=file)
        if not _is_nanosae_object(state):
            raise CorruptFileError(f"not a nanoSAE state dict (keys {sorted(state)[:8]})", path=file)
        kind = "SAETopK" if "b_dec" in state else "SAE"
        source_class = f"nanoSAE state dict ({kind})"
    else:
        raise CorruptFileError(f"expected a pickled nanoSAE module or a state dict, got {type(obj).__name__}",
                               path=file)

    missing = sorted(_REQUIRED - set(state))
    if missing:
        raise CorruptFileError(f"missing tensor(s) {missing}", path=file, field=missing[0])
    W_e, b_e, W_d = state["encoder.weight"], state["encoder.bias"], state["decoder.weight"]
    d_sae, d_in = W_e.shape
    if tuple(W_d.shape) != (d_in, d_sae) or tuple(b_e.shape) != (d_sae,):
        raise CorruptFileError(f"encoder.weight {list(W_e.shape)}, encoder.bias {list(b_e.shape)} and "
                               f"decoder.weight {list(W_d.shape)} disagree", path=file)
    W_enc = W_e.T
    b_enc = b_e
    b_dec = state.get("decoder.bias")
    if b_dec is None:
        b_dec = torch.zeros(d_in, dtype=W_d.dtype)
        notes.append("b_dec = 0 (decoder has no bias)")
    if "bias" in state and kind == "SAE":
        notes.append("dropped the unused 'bias' parameter (branch topk, architecture='standard': encode and "
                     "decode never read it)")
    k = None
    arch = "relu"
    if kind == "SAETopK":
        centre = state.get("b_dec")
        if centre is None:
            raise CorruptFileError("SAETopK without its b_dec parameter", path=file, field="b_dec")
        b_enc = (b_e.double() - centre.double() @ W_enc.double()).to(b_e.dtype)
        notes.append("b_enc = encoder.bias - b_dec @ W_enc (SAETopK encodes relu(encoder(x - b_dec)); "
                     "decode does not add b_dec back, so canonical b_dec = decoder.bias)")
        k = _k(options.get("k"), pickled_k, file)
        if k > d_sae:
            raise ConfigError(f"k={k} exceeds the number of features d_sae={d_sae}", path=file, field="k")
        if pickled_k is None and options.get("k") is None:
            notes.append("k = 16 (SAETopK hard-codes it; the state dict does not store it)")
        arch = "topk"
    elif options.get("k") is not None:
        raise ConfigError("k applies to SAETopK only; this is a ReLU SAE", path=file, field="k")

    norm_opt = options.get("dataset_normalization", "unset")
    if norm_opt == "unset":
        norm = None if pickled_norm == "unknown" else pickled_norm
        if pickled_norm == "unknown":
            warnings.warn(
                f"{file}: a nanoSAE state dict does not record dataset_normalization; loading without the "
                "per-row z-score. Pass dataset_normalization='zscore' if the SAE was trained with it "
                "(or load the pickled sae.pt, which records it)", stacklevel=3,
            )
    else:
        norm = _normalization_option(norm_opt)
        if pickled_norm != "unknown" and (pickled_norm or None) != norm:
            raise ConfigError(f"dataset_normalization={norm_opt!r} contradicts the pickled config "
                              f"({pickled_norm!r})", path=file, field="dataset_normalization")
    if norm not in (None, "zscore"):
        raise UnsupportedSAEError(f"unknown nanoSAE dataset_normalization {norm!r}", path=file)

    cfg = SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), k=k,
                    normalize_activations="zscore" if norm == "zscore" else "none",
                    dtype=str(W_e.dtype).removeprefix("torch."),
                    model_name=config.get("model_name") if isinstance(config.get("model_name"), str) else None,
                    dataset_path=config.get("dataset_path") if isinstance(config.get("dataset_path"), str)
                    else None)
    cfg.extra["source_class"] = source_class
    if norm == "zscore":
        notes.append("nanoSAE dataset_normalization='zscore' -> normalize_activations='zscore' (per-row "
                     "(x-mean)/(std_pop+1e-5), undone on decode)")
    for note in notes:
        cfg.record(note)
    cfg.provenance.source_files = [{"name": file.name}]
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_d.T, "b_dec": b_dec}
    return cfg, tensors


def _k(option: Any, pickled: Any, file: Path) -> int:
    values = []
    for v in (option, pickled):
        if v is None:
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v or v <= 0:
            raise ConfigError(f"k must be a positive integer, got {v!r}", path=file, field="k")
        values.append(int(v))
    if len(values) == 2 and values[0] != values[1]:
        raise ConfigError(f"k={values[0]} contradicts the pickled k={values[1]}", path=file, field="k")
    return values[0] if values else 16

