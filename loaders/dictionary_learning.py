"""saprmarks/dictionary_learning trainer folders: ``ae.pt`` + ``config.json``.

``config.json`` is ``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "lm_name", "layer",
"submodule_name", ...}, "buffer": {...}}``; ``trainer.dict_class`` picks the conversion. ``ae.pt`` is read with
``torch.load(weights_only=True)`` (a state dict: no code runs). A *final* ``ae.pt`` (and
``checkpoints/ae_<step>.pt``) is a flat state dict whose biases are already rescaled for
``normalize_activations``; a *backup* ``ae.pt`` is ``{"step", "ae", "optimizer", "config", "norm_factor"}``
with unscaled biases, and gets the library's ``scale_biases(norm_factor)`` (recorded).

Conversions by ``dict_class`` (all exact):

* ``AutoEncoder``: ``relu(encoder(x - bias))``, ``decoder(f) + bias``: ``apply_b_dec_to_input``,
  ``b_dec = bias``.
* ``AutoEncoderNew``: ``relu(encoder(x))``, ``decoder(f)`` (with bias): transposes only.
* ``GatedAutoEncoder``: native ``gated``: ``W_enc = encoder.weight.T``, ``b_gate = gate_bias``, ``r_mag``,
  ``b_mag = mag_bias``, ``b_dec = decoder_bias`` with input centering.
* ``AutoEncoderTopK``: ``topk_k(relu(encoder(x - b_dec)))``: topk with ``k`` from the ``k`` buffer (else
  config.json / the option); ``use_threshold=True`` gives the library's optional scalar-threshold path.
* ``BatchTopKSAE``: the default encode is ``relu(z) * (relu(z) > threshold)``: jumprelu with
  ``full(D, threshold)``; an unset threshold (< 0) keeps every ``relu(z)``: relu. (Older versions without a
  threshold buffer encode with a top-k over the whole batch: refused.)
* ``MatryoshkaBatchTopKSAE``: as BatchTopK, ``W_enc``/``W_dec`` already canonical; ``group_sizes`` dropped
  (all groups are active at inference).
* ``JumpReluAutoEncoder``: ``relu(z * (z > threshold))``: jumprelu, no centering (``apply_b_dec_to_input`` is
  not saved and defaults to False).

Options: ``normalize_decoder`` (``AutoEncoder`` only: the F3 fold ``AutoEncoder.from_pretrained`` applies by
default; it multiplies feature values by the decoder column norms, so it is off unless asked), ``k``
(``AutoEncoderTopK`` without a ``k`` buffer), ``use_threshold`` (``AutoEncoderTopK``: encode with the
stored scalar threshold instead of top-k, like ``encode(use_threshold=True)``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, CorruptFileError, MissingFileError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import read_json
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only

WEIGHTS = "ae.pt"
CONFIG = "config.json"
_CHECKPOINT = re.compile(r"^ae(_\d+)?\.pt$")

# tensors each class's scale_biases multiplies (threshold only when >= 0, as the library does)
_SCALED = {
    "AutoEncoder": ("encoder.bias", "bias"),
    "AutoEncoderNew": ("encoder.bias", "decoder.bias"),
    "GatedAutoEncoder": ("decoder_bias", "mag_bias", "gate_bias"),
    "JumpReluAutoEncoder": ("b_dec", "b_enc", "threshold"),
    "AutoEncoderTopK": ("encoder.bias", "b_dec", "threshold"),
    "BatchTopKSAE": ("encoder.bias", "b_dec", "threshold"),
    "MatryoshkaBatchTopKSAE": ("b_enc", "b_dec", "threshold"),
}


def detect(path: Path) -> bool:
    """A dictionary_learning ``ae.pt`` / ``checkpoints/ae_<step>.pt``, or a trainer folder holding ``ae.pt``.

    The file name decides; a missing ``config.json`` is reported by the loader, not hidden by detection. Its
    state dicts share their keys with other formats' (nanoSAE), so this format is registered with a higher
    ``priority``: it wins an ``ae.pt``, and the other ``.pt`` files of a trainer folder are nobody's (see
    :func:`sae_hub.loading.detect_format`).
    """
    if path.is_file():
        return bool(_CHECKPOINT.match(path.name))
    return (path / WEIGHTS).is_file()


def _find_config(weights: Path) -> Path | None:
    for folder in (weights.parent, weights.parent.parent):
        if (folder / CONFIG).is_file():
            return folder / CONFIG
    return None


@register_loader("dictionary-learning", files=[WEIGHTS, CONFIG], detect=detect,
                 options=["normalize_decoder", "k", "use_threshold"], priority=10)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """dictionary_learning trainer output (``ae.pt`` + ``config.json``)."""
    weights = path if path.is_file() else path / WEIGHTS
    if not weights.is_file():
        raise MissingFileError(f"no {WEIGHTS} in this trainer folder", path=weights)
    obj = load_weights_only(weights)
    backup = isinstance(obj, Mapping) and "ae" in obj and isinstance(obj.get("ae"), Mapping)
    state = obj["ae"] if backup else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError("ae.pt is neither a state dict nor a training backup", path=weights)
    state = {str(k): v for k, v in state.items()}

    config_path = _find_config(weights)
    trainer: dict[str, Any] | None = None
    config: dict[str, Any] = {}
    if config_path is not None:
        config = read_json(config_path)
        if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
            raise ConfigError("config.json has no 'trainer' object", path=config_path, field="trainer")
        trainer = config["trainer"]
    elif backup and isinstance(obj.get("config"), Mapping):
        trainer = dict(obj["config"])
    if trainer is None:
        raise MissingFileError(f"dictionary_learning needs {CONFIG} (its trainer.dict_class says which class "
                               f"wrote {weights.name}); it is not next to the weights",
                               path=weights.parent / CONFIG)
    where = str(config_path) if config_path is not None else str(weights)
    dict_class = trainer.get("dict_class")
    if not isinstance(dict_class, str):
        raise ConfigError("trainer.dict_class is missing", path=where, field="trainer.dict_class")
    if dict_class not in _SCALED:
        raise UnsupportedSAEError(f"dict_class {dict_class!r} is not supported (supported: {', '.join(_SCALED)})",
                                  path=where, field="trainer.dict_class")

    notes: list[str] = []
    if backup:
        factor = obj.get("norm_factor")
        if factor is not None:
            if isinstance(factor, torch.Tensor):
                factor = factor.item()
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise CorruptFileError(f"backup norm_factor {factor!r} is not a positive number", path=weights)
            state = _scale_biases(state, dict_class, float(factor))
            notes.append(f"training backup: scale_biases(norm_factor={float(factor)!r}) applied, as the trainer "
                         "does before writing the final ae.pt")

    cfg_kwargs, tensors, more = _convert(dict_class, state, trainer, options, weights)
    notes += more
    d_in, d_sae = tensors["W_enc"].shape
    for name, want in (("activation_dim", d_in), ("dict_size", d_sae)):
        got = trainer.get(name)
        if got is not None and got != want:
            raise ShapeMismatchError(f"trainer.{name}={got} but the weights have {want}", path=where,
                                     field=f"trainer.{name}")
    cfg = SAEConfig(d_in=int(d_in), d_sae=int(d_sae), dtype=str(tensors["W_enc"].dtype).removeprefix("torch."),
                    model_name=trainer.get("lm_name") if isinstance(trainer.get("lm_name"), str) else None,
                    **cfg_kwargs)
    cfg.extra["source_class"] = f"dictionary_learning {dict_class}"
    for key in ("trainer_class", "layer", "submodule_name"):
        if trainer.get(key) is not None:
            cfg.extra[f"dictionary_learning_{key}"] = trainer[key]
    buffer = config.get("buffer")
    if buffer is None:  # absent or null: the buffer only adds provenance
        buffer = {}
    elif not isinstance(buffer, dict):
        raise ConfigError(f"config.json's buffer must be an object, got {type(buffer).__name__}",
                          path=where, field="buffer")
    if buffer.get("io") is not None:
        cfg.extra["dictionary_learning_io"] = buffer["io"]
    for note in notes:
        cfg.record(note)
    files = [{"name": weights.name}]
    if config_path is not None:
        files.append({"name": config_path.name})
    cfg.provenance.source_files = files
    return cfg, tensors


def _scale_biases(state: dict[str, torch.Tensor], dict_class: str, s: float) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key in _SCALED[dict_class]:
        t = out.get(key)
        if t is None:
            continue
        if key == "threshold" and dict_class != "JumpReluAutoEncoder" and float(t.max()) < 0:
            continue
        out[key] = (t.double() * s).to(t.dtype)
    return out


def _need(state: Mapping[str, torch.Tensor], keys: tuple[str, ...], dict_class: str, path: Path) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CorruptFileError(f"{dict_class} state dict lacks {missing} (has {sorted(state)})", path=path,
                               field=missing[0])


def _scalar(t: torch.Tensor | None) -> float | None:
    if t is None:
        return None
    if t.numel() != 1:
        raise ValueError(f"expected a scalar, got shape {list(t.shape)}")
    return float(t.float().item())


def _bool_option(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}", field=name)
    return value


def _k_value(state: Mapping[str, torch.Tensor], trainer: Mapping[str, Any], options: Mapping[str, Any],
             path: Path) -> int:
    found: dict[str, int] = {}
    for where, raw in (("state dict", state.get("k")), ("config", trainer.get("k")), ("option", options.get("k"))):
        if raw is None:
            continue
        if isinstance(raw, torch.Tensor):
            raw = raw.item()
        if (isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or int(raw) != raw
                or raw <= 0):
            raise ConfigError(f"k from the {where} must be a positive integer, got {raw!r}", path=path, field="k")
        found[where] = int(raw)
    if not found:
        raise ConfigError("AutoEncoderTopK needs k: not in the state dict or config.json; pass k=",
                          path=path, field="k")
    if "option" in found and "state dict" in found and found["option"] != found["state dict"]:
        raise ConfigError(f"k={found['option']} contradicts the state dict's k={found['state dict']}",
                          path=path, field="k")
    # precedence: the state dict's buffer, then the caller's option, then config.json (found is not empty)
    return next(found[w] for w in ("state dict", "option", "config") if w in found)


def _convert(dict_class: str, s: dict[str, torch.Tensor], trainer: Mapping[str, Any], options: Mapping[str, Any],
             path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    notes: list[str] = []
    normalize = _bool_option(options.get("normalize_decoder"), "normalize_decoder")
    use_threshold = _bool_option(options.get("use_threshold"), "use_threshold")
    if normalize and dict_class != "AutoEncoder":
        raise ConfigError("normalize_decoder applies to AutoEncoder only (its from_pretrained does it)",
                          path=path, field="normalize_decoder")
    if use_threshold and dict_class != "AutoEncoderTopK":
        raise ConfigError("use_threshold applies to AutoEncoderTopK only", path=path, field="use_threshold")
    if options.get("k") is not None and dict_class != "AutoEncoderTopK":
        raise ConfigError("k applies to AutoEncoderTopK only", path=path, field="k")
    kw: dict[str, Any] = {}
    if dict_class == "AutoEncoder":
        _need(s, ("bias", "encoder.weight", "encoder.bias", "decoder.weight"), dict_class, path)
        W_enc, b_enc, W_dec = s["encoder.weight"].T, s["encoder.bias"], s["decoder.weight"].T
        t = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": s["bias"]}
        kw.update(architecture="relu", apply_b_dec_to_input=True)
        if normalize:
            n = W_dec.double().norm(dim=1)
            t["W_dec"] = (W_dec.double() / n[:, None]).to(W_dec.dtype)
            t["W_enc"] = (W_enc.double() * n[None, :]).to(W_enc.dtype)
            t["b_enc"] = (b_enc.double() * n).to(b_enc.dtype)
            notes.append("normalize_decoder: decoder columns scaled to unit norm, encoder rows and bias "
                         "multiplied by the norms (AutoEncoder.from_pretrained's default; features x ||W_dec_j||)")
    elif dict_class == "AutoEncoderNew":
        _need(s, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), dict_class, path)
        t = {"W_enc": s["encoder.weight"].T, "b_enc": s["encoder.bias"], "W_dec": s["decoder.weight"].T,
             "b_dec": s["decoder.bias"]}
        kw.update(architecture="relu")
    elif dict_class == "GatedAutoEncoder":
        _need(s, ("decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias", "decoder.weight"),
              dict_class, path)
        if "encoder.bias" in s:
            raise UnsupportedSAEError("GatedAutoEncoder with an encoder bias is not the library's layout", path=path)
        t = {"W_enc": s["encoder.weight"].T, "b_gate": s["gate_bias"], "r_mag": s["r_mag"],
             "b_mag": s["mag_bias"], "W_dec": s["decoder.weight"].T, "b_dec": s["decoder_bias"]}
        kw.update(architecture="gated", apply_b_dec_to_input=True)
    elif dict_class == "JumpReluAutoEncoder":
        _need(s, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), dict_class, path)
        t = {k: s[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        kw.update(architecture="jumprelu")
        notes.append("JumpReluAutoEncoder: apply_b_dec_to_input is not saved; the library default (False) is used")
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        _need(s, ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"), dict_class, path)
        t = {"W_enc": s["encoder.weight"].T, "b_enc": s["encoder.bias"], "W_dec": s["decoder.weight"].T,
             "b_dec": s["b_dec"]}
        kw.update(apply_b_dec_to_input=True)
        threshold = _scalar(s.get("threshold"))
        if dict_class == "AutoEncoderTopK" and not use_threshold:
            k = _k_value(s, trainer, options, path)
            if k > t["W_enc"].shape[1]:
                raise ConfigError(f"k={k} exceeds the number of features {t['W_enc'].shape[1]}", path=path, field="k")
            kw.update(architecture="topk", k=k)
        else:
            if threshold is None:
                raise UnsupportedSAEError(
                    f"this {dict_class} has no 'threshold' buffer (an older library version): its encode is a "
                    "top-k over the whole batch, which no per-row SAE reproduces", path=path)
            _threshold_arch(kw, t, threshold, dict_class, notes)
    elif dict_class == "MatryoshkaBatchTopKSAE":
        _need(s, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), dict_class, path)
        t = {k: s[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        kw.update(apply_b_dec_to_input=True)
        _threshold_arch(kw, t, _scalar(s["threshold"]), dict_class, notes)
        if "group_sizes" in s:
            notes.append(f"group_sizes {s['group_sizes'].tolist()} dropped: every group is active at inference")
    else:  # pragma: no cover - guarded by _SCALED
        raise UnsupportedSAEError(f"dict_class {dict_class!r} is not supported", path=path)
    return kw, t, notes


def _threshold_arch(kw: dict[str, Any], t: dict[str, torch.Tensor], threshold: float | None, dict_class: str,
                    notes: list[str]) -> None:
    assert threshold is not None
    if not math.isfinite(threshold):
        raise ValueError(f"non-finite threshold {threshold}")
    if threshold < 0:
        kw.update(architecture="relu")
        notes.append(f"{dict_class}: threshold {threshold:g} < 0 (never set), so relu(z) > threshold keeps every "
                     "activation: relu")
        return
    d_sae = t["W_enc"].shape[1]
    t["threshold"] = torch.full((d_sae,), threshold, dtype=t["W_enc"].dtype)
    kw.update(architecture="jumprelu")
    notes.append(f"{dict_class}: relu(z) * (relu(z) > {threshold!r}) -> jumprelu, threshold = full({d_sae}, "
                 f"{threshold!r})")
