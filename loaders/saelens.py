"""SAELens folders (6.x and the flat pre-6 layout), which are also sae-hub's native format.

Files: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``, log10 feature densities).
Parameter names and orientation are already canonical. Two legacy details are converted:
training checkpoints hold ``log_threshold`` (we store ``threshold = exp(log_threshold)``), and pre-6
fine-tuned SAEs hold a per-feature ``scaling_factor`` that multiplies features before the decoder
(folded exactly into ``W_dec`` rows and recorded).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError, ShapeMismatchError
from sae_hub.files import read_json, read_safetensors
from sae_hub.loading import register_loader
from sae_hub.sae import check_floating_weights

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"

logger = logging.getLogger(__name__)


def detect(path: Path) -> bool:
    """A folder with ``cfg.json`` next to ``sae_weights.safetensors``."""
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load_config(path: Path, options: dict[str, Any]) -> SAEConfig:
    """The config alone, from ``cfg.json``."""
    folder = path if path.is_dir() else path.parent
    cfg = SAEConfig.from_dict(read_json(folder / CONFIG), path=str(folder / CONFIG))
    factor = options.get("norm_scaling_factor")
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise ConfigError(f"option norm_scaling_factor must be a positive finite number, got {factor!r}",
                              path=folder, field="norm_scaling_factor")
        # As SAELens's from_pretrained: a release's factor scales the input only of an SAE trained with
        # expected_average_only_in; for any other normalisation it is not this SAE's input scale and is ignored.
        if cfg.normalize_activations == "expected_average_only_in" and cfg.norm_scaling_factor is None:
            cfg.norm_scaling_factor = float(factor)
        else:
            logger.debug("%s: norm_scaling_factor=%r ignored (normalize_activations=%r, recorded factor %r)",
                         folder, factor, cfg.normalize_activations, cfg.norm_scaling_factor)
    return cfg


@register_loader("saelens", files=[CONFIG, WEIGHTS], detect=detect,
                 options=["norm_scaling_factor"], config_files=[CONFIG], load_config=load_config)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAELens 6 / pre-6 folder (also the native sae-hub format)."""
    folder = path if path.is_dir() else path.parent
    cfg = load_config(path, options)
    tensors, _ = read_safetensors(folder / WEIGHTS)
    check_floating_weights(tensors, folder / WEIGHTS)  # here, so the error names the weights file
    if "log_threshold" in tensors and "threshold" not in tensors:
        log_threshold = tensors.pop("log_threshold")
        tensors["threshold"] = log_threshold.float().exp().to(tensors.get("W_enc", log_threshold).dtype)
        cfg.record("threshold = exp(log_threshold)")
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and "W_dec" in tensors and tuple(scale.shape) != (tensors["W_dec"].shape[0],):
        raise ShapeMismatchError(f"scaling_factor has shape {list(scale.shape)}, W_dec has "
                                 f"{tensors['W_dec'].shape[0]} rows", path=folder / WEIGHTS, field="scaling_factor")
    if scale is not None and "W_dec" in tensors and not bool((scale == 1).all()):
        W = tensors["W_dec"]
        tensors["W_dec"] = (W.float() * scale.float()[:, None]).to(W.dtype)
        cfg.record("W_dec rows *= scaling_factor (pre-6 finetuning scale)")
    if cfg.normalize_activations == "expected_average_only_in" and cfg.norm_scaling_factor is None:
        warnings.warn(
            f"{folder}: normalize_activations='expected_average_only_in' but no norm_scaling_factor is known, "
            "so inputs are not scaled (SAELens 6 does the same). Pass norm_scaling_factor=... or fold it.",
            stacklevel=3,
        )
    return cfg, tensors
