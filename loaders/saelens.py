"""SAELens folders (6.x and the flat pre-6 layout), which are also sae-hub's native format.

Files: ``cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity.safetensors``, log10 feature densities).
Parameter names and orientation are already canonical. Two legacy details are converted:
training checkpoints hold ``log_threshold`` (we store ``threshold = exp(log_threshold)``), and pre-6
fine-tuned SAEs hold a per-feature ``scaling_factor`` that multiplies features before the decoder
(folded exactly into ``W_dec`` rows and recorded).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from sae_hub.config import SAEConfig
from sae_hub.files import read_json, read_safetensors
from sae_hub.loading import register_loader

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"


def detect(path: Path) -> bool:
    """A folder with ``cfg.json`` next to ``sae_weights.safetensors``."""
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load_config(path: Path, options: dict[str, Any]) -> SAEConfig:
    """The config alone, from ``cfg.json``."""
    folder = path if path.is_dir() else path.parent
    cfg = SAEConfig.from_dict(read_json(folder / CONFIG), path=str(folder / CONFIG))
    factor = options.get("norm_scaling_factor")
    if factor is not None:
        cfg.norm_scaling_factor = float(factor)
    return cfg


@register_loader("saelens", files=[CONFIG, WEIGHTS], detect=detect,
                 options=["norm_scaling_factor"], config_files=[CONFIG], load_config=load_config)
def load(path: Path, options: dict[str, Any]) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAELens 6 / pre-6 folder (also the native sae-hub format)."""
    folder = path if path.is_dir() else path.parent
    cfg = load_config(path, options)
    tensors, _ = read_safetensors(folder / WEIGHTS)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp().to(tensors["W_enc"].dtype)
        cfg.record("threshold = exp(log_threshold)")
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not bool((scale == 1).all()):
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
