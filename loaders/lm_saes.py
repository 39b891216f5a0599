"""OpenMOSS Language-Model-SAEs / llamascopium checkpoints (PyPI ``lm-saes`` -> ``llamascopium``), all four eras.

The format changed four times; the era is read from the config file name and the tensor names
(``docs/formats.md#lm-saes-eras``):

====  ===================================================  ==================================================
era   files                                                tensors / semantics
====  ===================================================  ==================================================
A     ``hyperparams.json`` + ``checkpoints/final.*``        ``encoder.*``/``decoder.*`` (nn.Linear); scalar
      (or ``sae_weights.*``, ``checkpoints/pruned.*``)     ``jump_relu_threshold`` in *raw* activation scale;
                                                           norms ``{"in", "out"}`` in the JSON. The library
                                                           folds the dataset norm on load, so features are
                                                           raw-scale. Optional ``feature_act_mask/scale``.
B1    ``config.json`` + ``sae_weights.*``                   Linear keys + top-level ``log_jumprelu_threshold``;
                                                           normalisation inside ``encode``; gate on
                                                           ``z*||W_D_j||`` if ``sparsity_include_decoder_norm``.
B2    same                                                 Linear keys + ``activation_function.log_jumprelu_
                                                           threshold``; normalisation by the caller.
B0    same (a transitional layout before B1)               Linear keys, scalar ``jump_relu_threshold`` in
                                                           config.json, gated like B1.
C     same                                                 ``W_E``, ``b_E``, ``W_D``, ``b_D``,
                                                           ``activation_function.log_jumprelu_threshold``,
                                                           ``dataset_average_activation_norm.<hook>`` (0-d).
====  ===================================================  ==================================================

Eras B and C (the library's default ``from_pretrained(fold_activation_scale=False)``) report features in the
*normalised* scale ``x * s_in`` with ``s = sqrt(d_model) / dataset_average_activation_norm[hook]`` and
reconstruct ``decode(f) / s_out`` in the raw space. That is kept as the run-time ``norm_scaling_factor``
(+ ``norm_scaling_factor_out`` for transcoders), not folded, so codes equal the library's. The option
``fold_activation_scale=True`` replays the library's ``standardize_parameters_of_dataset_norm``
(``b_E /= s_in``, ``b_D /= s_out``, ``W_D *= s_in/s_out``) *including its bug* of leaving the JumpReLU threshold
in the normalised scale; a warning says so.

``sparsity_include_decoder_norm`` (default True): the library gates/ranks on ``z * n_j`` (``n_j = ||W_D_j||``)
but reports ``z``. JumpReLU becomes ``threshold = theta / n_j`` exactly; TopK gets the core flag
``rank_by_decoder_norm`` (rank on ``relu(z) * n_j``, report ``relu(z)``), unless every ``n_j`` is 1.

Refused with :class:`UnsupportedSAEError` (the message says why): ``batchtopk`` unless an opt-in is given
(``batchtopk="topk"`` or ``batchtopk="jumprelu"`` with ``threshold=`` / ``calibration_activations=``),
``batch-wise`` normalisation, ``token-wise`` transcoders, GLU encoders, and the non-SAE dictionaries
(crosscoder, clt, lorsa, molt; era-C CLTs and crosscoders load whole through ``loaders/lm_saes_multilayer.py``).

``batchtopk="jumprelu"`` with ``calibration_activations``: one global threshold ``t`` on the gate score
``relu(z) * n_j`` (``relu(z)`` without ``sparsity_include_decoder_norm``), midway between the ``k*N``-th and
``(k*N+1)``-th largest score over the ``N`` rows, so exactly ``k*N`` activations pass the strict ``>`` (mean L0 = k);
``threshold_j = t / n_j``. (llamascopium's ``topk_to_jumprelu_conversion``, written for CLTs, takes the ``k*N``-th
largest ``relu(z)`` itself and divides by ``n_j`` afterwards; with decoder-norm gating that does not give L0 = k.)
Calibrated on the library's own batch, it reproduces the library's batchtopk output on that batch exactly.

Options: ``fold_activation_scale`` (bool), ``batchtopk`` ("topk" | "jumprelu"), ``threshold`` (float),
``calibration_activations`` (tensor ``[N, d_model]``), ``dataset_average_activation_norm`` (``{hook or
"in"/"out": float}``, supplies or overrides the stored norms).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnsupportedSAEError,
)
from sae_hub.files import read_json, read_safetensors
from sae_hub.loading import register_loader
from sae_hub.safe_pickle import load_weights_only

__all__ = ["detect", "load"]

CONFIG = "config.json"  # eras B and C
HYPERPARAMS = "hyperparams.json"  # era A
LM_CONFIG = "lm_config.json"
# The library's own search order (every era).
WEIGHT_CANDIDATES = (
    "sae_weights.safetensors",
    "sae_weights.pt",
    "checkpoints/pruned.safetensors",
    "checkpoints/pruned.pt",
    "checkpoints/final.safetensors",
    "checkpoints/final.pt",
)
DCP_CANDIDATES = ("sae_weights.dcp", "checkpoints/pruned.dcp", "checkpoints/final.dcp")
NORM_PREFIX = "dataset_average_activation_norm."

_NON_SAE_REASONS = {
    "crosscoder": "a crosscoder encodes the sum over all its hook points (W_E [n_heads, d_model, d_sae]); a "
                  "per-hook SAE cut from it would not reproduce its features. Era-C crosscoder files load whole "
                  "with sae_hub.CrossCoder.load_from_disk",
    "clt": "a cross-layer transcoder decodes every feature into all later layers (W_D.{i} [i+1, d_sae, d_model]). "
           "Era-C CLT files load whole with sae_hub.MultiLayerDictionary.load_from_disk",
    "lorsa": "Lorsa is low-rank sparse attention (W_Q, W_K, W_V, W_O heads), not a sparse autoencoder",
    "molt": "MOLT is a mixture of linear transforms (U_matrices, V_matrices), not a sparse autoencoder",
}
_BATCHTOPK_HELP = (
    "llamascopium act_fn='batchtopk' keeps the top top_k*batch_size activations over the whole batch, also at "
    "inference, so a token's features depend on the other tokens in its batch; sae-hub SAEs encode each token "
    "on its own. Opt in explicitly: batchtopk='topk' (per-token top-k with k=top_k; identical to the library "
    "on a one-token batch), or batchtopk='jumprelu' with threshold=<float> (one global threshold on the "
    "library's gate score, relu(z)*||W_D_j|| when sparsity_include_decoder_norm) or "
    "calibration_activations=<tensor [N, d_model]> (the threshold that gives mean L0 = top_k per row on "
    "those activations, as llamascopium's topk_to_jumprelu_conversion)"
)


# ---------------------------------------------------------------------------------------------- detection


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _weights_file(folder: Path) -> Path | None:
    for name in WEIGHT_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    return None


def detect(path: Path) -> bool:
    """An lm-saes folder: ``config.json`` with lm-saes fields, or ``hyperparams.json``, next to its weights.

    Distinct from SAELens (``cfg.json``), sparsify (``cfg.json`` + ``sae.safetensors``) and Gemma Scope 2
    (``config.json`` + ``params.safetensors``): the weights must be one of the library's own file names and the
    config must carry ``d_model`` (lm-saes's name for the width).
    """
    if not path.is_dir():
        return False
    has_weights = _weights_file(path) is not None or any((path / n).exists() for n in DCP_CANDIDATES)
    if not has_weights:
        return False
    for name in (CONFIG, HYPERPARAMS):
        if (path / name).is_file():
            try:
                d = read_json(path / name)
            except SaeHubError:
                return name == HYPERPARAMS  # a broken hyperparams.json next to lm-saes weights: ours to report
            if isinstance(d, dict) and "d_model" in d and ("act_fn" in d or "sae_type" in d or "hook_point_in" in d):
                return True
    return False


# ---------------------------------------------------------------------------------------------- reading


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    # weights_only (nothing is executed), memory-mapped only where every record is stored at its declared size
    obj = load_weights_only(path)
    sd = obj.get("sae") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptFileError("an lm-saes .pt checkpoint is {'sae': state_dict, 'version': ...}", path=path)
    version = obj.get("version")
    return dict(sd), ({"version": str(version)} if version is not None else {})


def checked_field(d: dict[str, Any], name: str, types: type | tuple[type, ...], path: Path, default: Any = ...) -> Any:
    """``d[name]`` checked against ``types`` (a bool is not an int here); missing -> default or ConfigError.
    Shared with the multi-layer llamascopium loader, whose configs use the same conventions."""
    if name not in d or d[name] is None:
        if default is ...:
            raise ConfigError(f"missing required field {name!r}", path=path, field=name)
        return default
    value = d[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ConfigError(f"field {name!r} has the wrong type: {value!r}", path=path, field=name)
    return value


def _tensor(sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if key not in sd:
        raise ShapeMismatchError(f"missing tensor {key!r} (found {sorted(sd)})", path=path, field=key)
    t = sd[key]
    if tuple(t.shape) != shape:
        raise ShapeMismatchError(f"tensor {key!r} has shape {list(t.shape)}, expected {list(shape)}",
                                 path=path, field=key)
    if not t.is_floating_point():
        raise ShapeMismatchError(f"tensor {key!r} is {t.dtype}, expected a floating dtype", path=path, field=key)
    return t


def _scale_factor(d_model: int, norm: float) -> float:
    """``sqrt(d_model) / norm`` rounded to float32, as the library's ``compute_norm_factor`` makes it."""
    return float(torch.tensor(math.sqrt(d_model) / norm, dtype=torch.float32))


def _check_norm(value: float, hook: str, path: Path) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"norm_activation='dataset-wise' needs dataset_average_activation_norm[{hook!r}] > 0, but the "
            f"checkpoint holds {value!r} (lm-saes writes uninitialised torch.empty values when the norm was never "
            "set). Pass dataset_average_activation_norm={hook: value} to supply it",
            path=path, field=f"{NORM_PREFIX}{hook}",
        )
    return value


def _lookup_norms(hooks: tuple[str, str], sd: dict[str, torch.Tensor], cfg_json: dict[str, Any],
                  options: dict[str, Any], path: Path, cfg_path: Path | None = None) -> tuple[float, float]:
    """The dataset-wise average norms of (hook_in, hook_out): option > weights file > config JSON.

    Errors name the file the bad value came from (``path`` for the weights and options, ``cfg_path`` for the
    config JSON)."""
    override = options.get("dataset_average_activation_norm")
    if override is not None and not isinstance(override, dict):
        raise ConfigError("dataset_average_activation_norm must be a dict {hook or 'in'/'out': float}",
                          field="dataset_average_activation_norm")
    stored = cfg_json.get("dataset_average_activation_norm")
    stored = stored if isinstance(stored, dict) else {}
    out = []
    for hook, side in zip(hooks, ("in", "out"), strict=True):
        value: Any = None
        where = path
        for source, src_path in ((override or {}, path),
                                 ({k[len(NORM_PREFIX):]: v for k, v in sd.items() if k.startswith(NORM_PREFIX)}, path),
                                 (stored, cfg_path or path)):
            for key in (hook, side):
                if key in source:
                    value = source[key]
                    break
            if value is not None:
                where = src_path
                break
        if value is None:
            raise ConfigError(
                f"norm_activation='dataset-wise' but no dataset_average_activation_norm for {hook!r} in the weights "
                "or the config; pass dataset_average_activation_norm={hook: value}",
                path=path, field=f"{NORM_PREFIX}{hook}",
            )
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ShapeMismatchError(f"{NORM_PREFIX}{hook} must be a scalar", path=where,
                                         field=f"{NORM_PREFIX}{hook}")
            value = value.float().item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"dataset_average_activation_norm[{hook!r}] must be a number, got {value!r}",
                              path=where, field=f"{NORM_PREFIX}{hook}")
        out.append(_check_norm(float(value), hook, where))
    return out[0], out[1]


def model_name_of(folder: Path) -> str | None:
    """The model a checkpoint folder's ``lm_config.json`` names, if it has one (also read by the multi-layer loader)."""
    p = folder / LM_CONFIG
    if not p.is_file():
        return None
    try:
        d = read_json(p)
    except SaeHubError:
        return None
    name = d.get("model_name") if isinstance(d, dict) else None
    return str(name) if name else None


# ---------------------------------------------------------------------------------------------- options


def _bool_option(options: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = options.get(name, default)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"option {name} must be True or False, got {value!r}", field=name)
    return value


def _batchtopk_mode(options: dict[str, Any]) -> str | None:
    mode = options.get("batchtopk")
    if mode is not None and mode not in ("topk", "jumprelu"):
        raise ConfigError(f"option batchtopk must be 'topk' or 'jumprelu', got {mode!r}", field="batchtopk")
    if mode == "jumprelu":
        given = [n for n in ("threshold", "calibration_activations") if options.get(n) is not None]
        if len(given) != 1:
            raise ConfigError("batchtopk='jumprelu' needs exactly one of threshold=<float> or "
                              "calibration_activations=<tensor [N, d_model]>", field="batchtopk")
    elif mode is None or mode == "topk":
        for n in ("threshold", "calibration_activations"):
            if options.get(n) is not None:
                raise ConfigError(f"option {n} only applies with batchtopk='jumprelu'", field=n)
    return mode


# ---------------------------------------------------------------------------------------------- conversion


@dataclasses.dataclass
class _Dict:
    """One era-independent view of an lm-saes SAE, in the library's own (normalised) space."""

    era: str
    W_E: torch.Tensor  # [d_model, d_sae]
    b_E: torch.Tensor  # [d_sae]
    W_D: torch.Tensor  # [d_sae, d_model]
    b_D: torch.Tensor | None  # [d_model]
    theta: torch.Tensor | None  # gate threshold on the gate score (z*n if sidn), [d_sae]


def _decoder_norm(W_D: torch.Tensor) -> torch.Tensor:
    return W_D.float().norm(dim=1)


@register_loader(
    "lm-saes",
    files=[CONFIG, HYPERPARAMS, LM_CONFIG, *WEIGHT_CANDIDATES],
    detect=detect,
    options=["fold_activation_scale", "batchtopk", "threshold", "calibration_activations",
             "dataset_average_activation_norm"],
    description="OpenMOSS lm-saes / llamascopium SAEs (eras A, B1, B2, C; Llama Scope)",
)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """lm-saes / llamascopium folder (eras A, B1, B2, C)."""
    folder = _folder(path)
    weights = path if path.is_file() and path.suffix in (".safetensors", ".pt") else _weights_file(folder)
    if weights is None:
        if any((folder / n).exists() for n in DCP_CANDIDATES):
            raise UnsupportedSAEError(
                "this is a distributed (torch.distributed.checkpoint .dcp) lm-saes checkpoint; load it with "
                "llamascopium and save_pretrained() it on one process to get sae_weights.safetensors", path=folder)
        raise MissingFileError(f"no lm-saes weights file (looked for {', '.join(WEIGHT_CANDIDATES)})", path=folder)
    if (folder / CONFIG).is_file():
        cfg_path = folder / CONFIG
    elif (folder / HYPERPARAMS).is_file():
        cfg_path = folder / HYPERPARAMS
    else:
        raise MissingFileError(f"no {CONFIG} (eras B/C) or {HYPERPARAMS} (era A)", path=folder)
    cfg_json = read_json(cfg_path)
    if not isinstance(cfg_json, dict):
        raise ConfigError("the config must be a JSON object", path=cfg_path)
    sae_type = cfg_json.get("sae_type", "sae")
    if sae_type != "sae":
        reason = _NON_SAE_REASONS.get(str(sae_type), "sae-hub loads only sae_type='sae'")
        raise UnsupportedSAEError(f"lm-saes sae_type={sae_type!r} is not supported: {reason}",
                                  path=cfg_path, field="sae_type")
    if cfg_json.get("use_glu_encoder"):
        raise UnsupportedSAEError(_GLU_REASON, path=cfg_path, field="use_glu_encoder")
    sd, meta = _read_weights(weights)
    glu = [k for k in sd if k.startswith(("W_E_glu", "b_E_glu", "encoder_glu."))]
    if glu:
        raise UnsupportedSAEError(_GLU_REASON, path=weights, field=glu[0])
    if cfg_path.name == HYPERPARAMS:
        return _load_era_a(cfg_json, cfg_path, sd, weights, folder, options)
    return _load_era_bc(cfg_json, cfg_path, sd, meta, weights, folder, options)


_GLU_REASON = ("GLU encoders (use_glu_encoder: z *= sigmoid(x @ W_E_glu + b_E_glu)) are a second, non-linear "
               "encoder path that no canonical SAE parameter can hold")


def _common_fields(cfg_json: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    d_model = checked_field(cfg_json, "d_model", int, cfg_path)
    if d_model <= 0:
        raise ConfigError(f"d_model must be positive, got {d_model}", path=cfg_path, field="d_model")
    hook_in = checked_field(cfg_json, "hook_point_in", str, cfg_path)
    hook_out = checked_field(cfg_json, "hook_point_out", str, cfg_path, default=hook_in)
    return {
        "d_model": d_model,
        "act_fn": str(checked_field(cfg_json, "act_fn", str, cfg_path, default="relu")).lower(),
        "norm": checked_field(cfg_json, "norm_activation", str, cfg_path, default="dataset-wise"),
        "sidn": checked_field(cfg_json, "sparsity_include_decoder_norm", bool, cfg_path, default=True),
        "top_k": checked_field(cfg_json, "top_k", int, cfg_path, default=50),
        "use_decoder_bias": checked_field(cfg_json, "use_decoder_bias", bool, cfg_path, default=True),
        "pre_bias": checked_field(cfg_json, "apply_decoder_bias_to_pre_encoder", bool, cfg_path, default=False),
        "hook_in": hook_in,
        "hook_out": hook_out,
    }


def _check_act_and_norm(f: dict[str, Any], cfg_path: Path) -> None:
    if f["act_fn"] not in ("relu", "jumprelu", "topk", "batchtopk"):
        raise UnsupportedSAEError(
            f"act_fn={f['act_fn']!r} is not supported for an SAE (batchlayertopk/layertopk are CLT-only)",
            path=cfg_path, field="act_fn")
    if f["norm"] not in ("dataset-wise", "inference", "token-wise", "batch-wise"):
        raise ConfigError(f"unknown norm_activation {f['norm']!r}", path=cfg_path, field="norm_activation")
    if f["norm"] == "batch-wise":
        raise UnsupportedSAEError(
            "norm_activation='batch-wise' scales every token by sqrt(d_model) / (mean norm of the tokens in its "
            "batch), so outputs depend on the batch; no per-token SAE can reproduce it",
            path=cfg_path, field="norm_activation")
    if f["norm"] == "token-wise" and f["hook_in"] != f["hook_out"]:
        raise UnsupportedSAEError(
            "a token-wise-normalised transcoder rescales its output by the norm of the *target* activation "
            f"({f['hook_out']}), which is not available from the input at inference",
            path=cfg_path, field="norm_activation")
    if f["act_fn"] in ("topk", "batchtopk") and f["top_k"] <= 0:
        raise ConfigError(f"top_k must be positive, got {f['top_k']}", path=cfg_path, field="top_k")


def _check_top_k(f: dict[str, Any], d_sae: int, cfg_path: Path) -> None:
    """top_k must select at most d_sae features (a value like 1e9 is refused here, naming the file, rather than
    deep inside the SAE config without it)."""
    if f["act_fn"] in ("topk", "batchtopk") and f["top_k"] > d_sae:
        raise ConfigError(f"top_k={f['top_k']} exceeds the number of features d_sae={d_sae}", path=cfg_path,
                          field="top_k")


def _load_era_bc(cfg_json: dict[str, Any], cfg_path: Path, sd: dict[str, torch.Tensor], meta: dict[str, str],
                 weights: Path, folder: Path, options: dict[str, Any],
                 ) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    f = _common_fields(cfg_json, cfg_path)
    _check_act_and_norm(f, cfg_path)
    d = f["d_model"]
    ef = checked_field(cfg_json, "expansion_factor", (int, float), cfg_path)
    if not math.isfinite(ef) or ef <= 0:
        raise ConfigError(f"expansion_factor must be a positive finite number, got {ef!r}", path=cfg_path,
                          field="expansion_factor")
    d_sae = int(d * ef)
    if d_sae <= 0:
        raise ConfigError(f"d_sae = int(d_model * expansion_factor) = {d_sae}", path=cfg_path,
                          field="expansion_factor")
    _check_top_k(f, d_sae, cfg_path)
    if "W_E" in sd:
        era = "C"
        W_E = _tensor(sd, "W_E", (d, d_sae), weights)
        b_E = _tensor(sd, "b_E", (d_sae,), weights)
        W_D = _tensor(sd, "W_D", (d_sae, d), weights)
        b_D = _tensor(sd, "b_D", (d,), weights) if f["use_decoder_bias"] else None
    elif "encoder.weight" in sd:
        era = "B"
        W_E = _tensor(sd, "encoder.weight", (d_sae, d), weights).T
        b_E = _tensor(sd, "encoder.bias", (d_sae,), weights)
        W_D = _tensor(sd, "decoder.weight", (d, d_sae), weights).T
        b_D = _tensor(sd, "decoder.bias", (d,), weights) if f["use_decoder_bias"] else None
    else:
        raise ShapeMismatchError(f"neither W_E (era C) nor encoder.weight (era B) in the weights (found {sorted(sd)})",
                                 path=weights, field="W_E")
    theta = None
    if f["act_fn"] == "jumprelu":
        if "activation_function.log_jumprelu_threshold" in sd:
            era = "C" if era == "C" else "B2"
            log_t = _tensor(sd, "activation_function.log_jumprelu_threshold", (d_sae,), weights)
            theta = log_t.exp()  # in the threshold's own dtype, as the library computes it
        elif "log_jumprelu_threshold" in sd:
            era = "B1"
            theta = _tensor(sd, "log_jumprelu_threshold", (d_sae,), weights).exp()
        elif isinstance(cfg_json.get("jump_relu_threshold"), (int, float)):
            era = "B0" if era == "B" else era
            if not math.isfinite(cfg_json["jump_relu_threshold"]):
                raise ConfigError(f"jump_relu_threshold must be finite, got {cfg_json['jump_relu_threshold']!r}",
                                  path=cfg_path, field="jump_relu_threshold")
            theta = torch.full((d_sae,), float(cfg_json["jump_relu_threshold"]), dtype=torch.float32)
        else:
            raise ShapeMismatchError("act_fn='jumprelu' but no log_jumprelu_threshold tensor and no "
                                     "jump_relu_threshold in the config", path=weights,
                                     field="activation_function.log_jumprelu_threshold")
        if not bool(torch.isfinite(theta.float()).all()):
            raise ConfigError("the JumpReLU threshold has non-finite values", path=weights,
                              field="log_jumprelu_threshold")
    raw = _Dict(era, W_E, b_E, W_D, b_D, theta)

    fold = _bool_option(options, "fold_activation_scale", False)
    mode = _batchtopk_mode(options)
    if f["act_fn"] == "batchtopk" and mode is None:
        raise UnsupportedSAEError(_BATCHTOPK_HELP, path=cfg_path, field="act_fn")
    if f["act_fn"] != "batchtopk" and mode is not None:
        raise ConfigError(f"option batchtopk applies to act_fn='batchtopk' checkpoints, this one is {f['act_fn']!r}",
                          field="batchtopk")
    conversions: list[str] = [f"lm-saes era {era} (version {meta.get('version', 'unknown')})"]

    # ---- activation normalisation: run-time factor (default) or the library's own fold
    s_in = s_out = 1.0
    norm_kind = "none"
    if f["norm"] == "dataset-wise":
        n_in, n_out = _lookup_norms((f["hook_in"], f["hook_out"]), sd, cfg_json, options, weights, cfg_path)
        if fold:
            fs_in, fs_out = math.sqrt(d) / n_in, math.sqrt(d) / n_out
            raw.b_E = raw.b_E / fs_in
            if raw.b_D is not None:
                raw.b_D = raw.b_D / fs_out
            raw.W_D = raw.W_D * (fs_in / fs_out)
            conversions.append(f"fold_activation_scale (library standardize_parameters_of_dataset_norm): "
                               f"b_E /= {fs_in!r}, b_D /= {fs_out!r}, W_D *= {fs_in / fs_out!r}")
            if f["act_fn"] == "jumprelu":
                warnings.warn(
                    f"{folder}: fold_activation_scale=True replays llamascopium's fold, which does not rescale the "
                    "JumpReLU threshold (a library bug): these features differ from the unfolded ones by more "
                    "than a scale factor, exactly as the library's do",
                    UserWarning, stacklevel=5)
        else:
            s_in, s_out = _scale_factor(d, n_in), _scale_factor(d, n_out)
            norm_kind = "expected_average_only_in"
            conversions.append(f"norm_scaling_factor = sqrt(d_model)/{n_in!r} = {s_in!r} (run time)"
                               + (f", norm_scaling_factor_out = sqrt(d_model)/{n_out!r} = {s_out!r}"
                                  if s_out != s_in else ""))
    elif f["norm"] == "token-wise":
        if fold:
            raise ConfigError("fold_activation_scale needs norm_activation='dataset-wise'; token-wise "
                              "normalisation is per token and cannot be folded", field="fold_activation_scale")
        norm_kind = "constant_norm_rescale"
        conversions.append("token-wise normalisation -> constant_norm_rescale (run time)")

    kwargs: dict[str, Any] = {}
    if norm_kind == "expected_average_only_in":
        kwargs.update(norm_scaling_factor=s_in, norm_scaling_factor_out=s_out)
    return _finish(raw, f, d, d_sae, norm_kind, kwargs, conversions, mode, options, folder, weights)


def _finish(raw: _Dict, f: dict[str, Any], d: int, d_sae: int, norm_kind: str, kwargs: dict[str, Any],
            conversions: list[str], mode: str | None, options: dict[str, Any], folder: Path, weights: Path,
            ) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Build the canonical (config, tensors) from the library-space view (eras B and C)."""
    dtype = raw.W_E.dtype
    transcoder = f["hook_in"] != f["hook_out"]
    b_dec = raw.b_D if raw.b_D is not None else torch.zeros(d, dtype=dtype)
    b_enc = raw.b_E
    center = False
    if f["pre_bias"] and raw.b_D is not None:
        if transcoder:  # canonical centering needs d_out == d_in space; fold it (F1) instead
            b_enc = (raw.b_E.float() - raw.b_D.float() @ raw.W_E.float()).to(dtype)
            conversions.append("apply_decoder_bias_to_pre_encoder folded: b_enc = b_E - b_D @ W_E")
        else:
            center = True
    sd: dict[str, torch.Tensor] = {"W_enc": raw.W_E, "b_enc": b_enc, "W_dec": raw.W_D, "b_dec": b_dec}
    n = _decoder_norm(raw.W_D)
    act = f["act_fn"]
    arch = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": mode or "topk"}[act]
    k = f["top_k"] if arch == "topk" else None
    rank_by_norm = False
    if arch == "topk" and f["sidn"]:
        rank_by_norm = not bool(torch.allclose(n, torch.ones_like(n), rtol=0, atol=1e-6))
    if rank_by_norm:
        kwargs["rank_by_decoder_norm"] = True
        conversions.append("topk ranks relu(z)*||W_D_j||, reports relu(z) (sparsity_include_decoder_norm)")
    cfg = SAEConfig(
        architecture=arch, d_in=d, d_sae=d_sae, d_out=d, k=k, apply_b_dec_to_input=center,
        normalize_activations=norm_kind, dtype=str(dtype).removeprefix("torch."),
        hook_name=f["hook_in"], hook_name_out=f["hook_out"] if transcoder else None,
        model_name=model_name_of(folder),
        extra={"lm_saes": {"era": raw.era, "act_fn": act, "norm_activation": f["norm"],
                           "sparsity_include_decoder_norm": f["sidn"], "top_k": f["top_k"]}},
        **kwargs,
    )
    if arch == "jumprelu":
        if act == "jumprelu":
            assert raw.theta is not None
            th = raw.theta.float() / n if f["sidn"] else raw.theta.float()
            conversions.append("threshold = exp(log_jumprelu_threshold)" + (" / ||W_D_j||" if f["sidn"] else ""))
        else:
            th = _batchtopk_threshold(cfg, sd, n, f["sidn"], options, conversions)
        sd["threshold"] = th.to(dtype)
    elif act == "batchtopk":
        conversions.append(f"batchtopk -> per-token topk (k={f['top_k']}), opted in with batchtopk='topk'")
    for c in conversions:
        cfg.record(c)
    return cfg, sd


def _batchtopk_threshold(cfg: SAEConfig, sd: dict[str, torch.Tensor], n: torch.Tensor, sidn: bool,
                         options: dict[str, Any], conversions: list[str]) -> torch.Tensor:
    """Per-feature JumpReLU threshold for the batchtopk='jumprelu' opt-in, on the gate score z*n (or z)."""
    gate_n = n if sidn else torch.ones_like(n)
    if options.get("threshold") is not None:
        t = options["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise ConfigError(f"option threshold must be a finite number, got {t!r}", field="threshold")
        t = float(t)
        conversions.append(f"batchtopk -> jumprelu with the given global threshold {t!r} on the gate score"
                           + (" (threshold_j = t/||W_D_j||)" if sidn else ""))
        return torch.full_like(n, t) / gate_n
    acts = options["calibration_activations"]
    try:
        acts = torch.as_tensor(acts)
    except Exception as e:
        raise ConfigError(f"calibration_activations must be a tensor: {e}", field="calibration_activations") from None
    if acts.dim() < 2 or acts.shape[-1] != cfg.d_in or acts.numel() == 0:
        raise ShapeMismatchError(f"calibration_activations must have shape [N, {cfg.d_in}], got {list(acts.shape)}",
                                 field="calibration_activations")
    acts = acts.reshape(-1, cfg.d_in)
    rows = acts.shape[0]
    top_k = cfg.extra["lm_saes"]["top_k"]
    budget = top_k * rows
    if budget >= rows * cfg.d_sae:
        raise ConfigError(f"top_k * N = {budget} is not below N * d_sae; cannot calibrate",
                          field="calibration_activations")
    from sae_hub.sae import SAE

    relu_cfg = cfg.replace(architecture="relu", k=None, rescale_acts_by_decoder_norm=False,
                           rank_by_decoder_norm=False)
    probe = SAE.from_state_dict(relu_cfg, {k: v for k, v in sd.items() if k != "threshold"})
    best: torch.Tensor | None = None
    chunk = max(1, (1 << 24) // max(cfg.d_sae, 1))
    with torch.no_grad():
        for start in range(0, rows, chunk):
            scores = probe.encode(acts[start:start + chunk]).float() * gate_n
            flat = scores.flatten()
            if best is not None:
                flat = torch.cat([best, flat])
            best = flat.topk(min(budget + 1, flat.numel()), sorted=False).values
    assert best is not None
    top = best.topk(budget + 1).values  # sorted, descending
    t = float((top[budget - 1] + top[budget]) / 2)
    if top[budget - 1] == top[budget]:
        warnings.warn("calibration: the top_k*N-th and next gate scores tie; mean L0 will be below top_k",
                      UserWarning, stacklevel=7)
    conversions.append(
        f"batchtopk -> jumprelu calibrated on {rows} activation rows: global gate threshold {t!r} (midway between "
        f"the {budget}th and {budget + 1}th largest relu(z)" + ("*||W_D_j||" if sidn else "")
        + "), so mean L0 = top_k on those rows" + ("; threshold_j = t/||W_D_j||" if sidn else ""))
    return torch.full_like(n, t) / gate_n


# ---------------------------------------------------------------------------------------------- era A


def _load_era_a(cfg_json: dict[str, Any], cfg_path: Path, sd: dict[str, torch.Tensor], weights: Path,
                folder: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Llama Scope v1: replay the library's ``from_pretrained`` (fold dataset norm, unit decoder columns)."""
    f = _common_fields(cfg_json, cfg_path)
    _check_act_and_norm(f, cfg_path)
    if f["act_fn"] == "batchtopk":
        raise UnsupportedSAEError("act_fn='batchtopk' did not exist in era A", path=cfg_path, field="act_fn")
    fold = _bool_option(options, "fold_activation_scale", None)
    if fold is False:
        raise ConfigError("era A (hyperparams.json) checkpoints always load folded, as the library's "
                          "from_pretrained does; fold_activation_scale=False is not available",
                          field="fold_activation_scale")
    if _batchtopk_mode(options) is not None:
        raise ConfigError("option batchtopk applies to act_fn='batchtopk' checkpoints", field="batchtopk")
    d = f["d_model"]
    E = sd.get("encoder.weight")
    if E is None:
        raise ShapeMismatchError(f"era A weights need encoder.weight (found {sorted(sd)})", path=weights,
                                 field="encoder.weight")
    d_sae = int(E.shape[0]) if E.dim() == 2 else -1
    if "d_sae" in cfg_json and cfg_json["d_sae"] != d_sae:
        raise ShapeMismatchError(f"encoder.weight has {d_sae} rows, hyperparams say d_sae={cfg_json['d_sae']}",
                                 path=weights, field="encoder.weight")
    E = _tensor(sd, "encoder.weight", (d_sae, d), weights)
    _check_top_k(f, d_sae, cfg_path)
    dtype = E.dtype
    be = _tensor(sd, "encoder.bias", (d_sae,), weights).float()
    D = _tensor(sd, "decoder.weight", (d, d_sae), weights).float()
    bd = _tensor(sd, "decoder.bias", (d,), weights).float() if f["use_decoder_bias"] else torch.zeros(d)
    E = E.float()
    conversions = ["lm-saes era A (Llama Scope v1): replaying from_pretrained"]
    if f["norm"] == "dataset-wise":
        n_in, n_out = _lookup_norms((f["hook_in"], f["hook_out"]), {}, cfg_json, options, cfg_path)
        s_in, s_out = math.sqrt(d) / n_in, math.sqrt(d) / n_out
        D = D * (s_in / s_out)
        be = be / s_in
        bd = bd / s_out
        conversions.append(f"dataset norm folded: s_in={s_in!r}, s_out={s_out!r} (encoder.bias /= s_in, "
                           "decoder.bias /= s_out, decoder.weight *= s_in/s_out)")
    norm_kind = "constant_norm_rescale" if f["norm"] == "token-wise" else "none"
    if f["sidn"]:
        n = D.norm(dim=0)
        if not bool((n > 0).all()):
            raise ConfigError("a decoder column has zero norm", path=weights, field="decoder.weight")
        D = D / n
        E = E * n[:, None]
        be = be * n
        conversions.append("decoder columns made unit-norm (sparsity_include_decoder_norm): W_enc *= n, b_enc *= n")
    act = f["act_fn"]
    jt = cfg_json.get("jump_relu_threshold")
    theta: float | None = None
    if act == "topk" and isinstance(jt, (int, float)) and not isinstance(jt, bool) and jt > 0:
        act = "jumprelu"
        conversions.append("topk with jump_relu_threshold > 0 -> jumprelu (as the library does)")
    if act == "jumprelu":
        if isinstance(jt, bool) or not isinstance(jt, (int, float)) or not math.isfinite(jt):
            raise ConfigError("act_fn='jumprelu' needs a numeric jump_relu_threshold", path=cfg_path,
                              field="jump_relu_threshold")
        if jt < 0:
            raise UnsupportedSAEError("era A JumpReLU is z.where(z > threshold, 0): with a negative threshold it "
                                      "passes negative values, which the canonical relu(z)*(z>threshold) cannot",
                                      path=cfg_path, field="jump_relu_threshold")
        theta = float(jt)
    W_enc, b_enc, W_dec, b_dec = E.T, be, D.T, bd
    # pre-2024-10-26: features multiplied by feature_act_mask * feature_act_scale
    a = None
    if "feature_act_mask" in sd or "feature_act_scale" in sd:
        mask = _tensor(sd, "feature_act_mask", (d_sae,), weights).float() if "feature_act_mask" in sd else 1.0
        scale = _tensor(sd, "feature_act_scale", (d_sae,), weights).float() if "feature_act_scale" in sd else 1.0
        a = torch.ones(d_sae) * mask * scale
        if bool((a == 1).all()):
            a = None
    threshold = torch.full((d_sae,), theta) if theta is not None else None
    if a is not None:
        if act != "topk" and bool((a >= 0).all()):
            W_enc = W_enc * a
            b_enc = b_enc * a
            if threshold is not None:
                threshold = threshold * a
            conversions.append("feature_act_mask*feature_act_scale folded into the encoder (features scaled as "
                               "the library's)")
        else:
            W_dec = W_dec * a[:, None]
            conversions.append("feature_act_mask*feature_act_scale folded into W_dec rows (F4); feature values "
                               "are before that scale")
    transcoder = f["hook_in"] != f["hook_out"]
    center = False
    if f["pre_bias"] and f["use_decoder_bias"]:
        if transcoder:
            b_enc = b_enc - b_dec @ W_enc
            conversions.append("apply_decoder_bias_to_pre_encoder folded: b_enc -= b_dec @ W_enc")
        else:
            center = True
    sd_out = {"W_enc": W_enc.to(dtype), "b_enc": b_enc.to(dtype), "W_dec": W_dec.to(dtype),
              "b_dec": b_dec.to(dtype)}
    if threshold is not None:
        sd_out["threshold"] = threshold.to(dtype)
        conversions.append(f"threshold = jump_relu_threshold = {theta!r} (raw activation scale) for every feature")
    cfg = SAEConfig(
        architecture=act, d_in=d, d_sae=d_sae, d_out=d, k=f["top_k"] if act == "topk" else None,
        apply_b_dec_to_input=center, normalize_activations=norm_kind, dtype=str(dtype).removeprefix("torch."),
        hook_name=f["hook_in"], hook_name_out=f["hook_out"] if transcoder else None,
        model_name=model_name_of(folder),
        extra={"lm_saes": {"era": "A", "act_fn": f["act_fn"], "norm_activation": f["norm"],
                           "sparsity_include_decoder_norm": f["sidn"], "top_k": f["top_k"]}},
    )
    for c in conversions:
        cfg.record(c)
    return cfg, sd_out
