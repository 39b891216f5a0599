"""Training SAEs on language-model activations: ``train_sae(TrainConfig(...), activations) -> SAE``.

The rooms, in reading order:

* ``trainer.py`` — :class:`Trainer` and :func:`train_sae`: parameters and init, the step, the loop, the SAE out;
* ``config.py`` — :class:`TrainConfig`, every knob and its default;
* ``activations.py`` — every activation source (tensors, iterables, a live model, an on-disk cache) and the
  :class:`ActivationSource` protocol they share;
* ``kernels.py`` — the training-time SAE math: sparse TopK autograd functions (forward and backward formulas),
  JumpReLU's straight-through estimators, decoder constraints;
* ``checkpoint.py`` / ``distributed.py`` — checkpoints on disk; devices and data parallelism;
* ``evaluation.py`` — :func:`evaluate`, quality numbers of any SAE; ``synthetic.py`` — planted-feature data and
  recovery metrics;
* ``callbacks.py`` — optional experiment logging (:class:`WandbCallback`; wandb imported only when one is made).

Names resolve on first access (as in :mod:`sae_hub`), so ``import sae_hub.training`` stays cheap and importing
one submodule (say, the activation sources) does not pull in the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # the trainer, its config, checkpoints and kernels
    "TrainConfig": "sae_hub.training.config",
    "Trainer": "sae_hub.training.trainer",
    "train_sae": "sae_hub.training.trainer",
    "latest_checkpoint": "sae_hub.training.checkpoint",
    "sparse_encode": "sae_hub.training.kernels",
    "sparse_decode": "sae_hub.training.kernels",
    # optional experiment logging (wandb imported only when a WandbCallback is made)
    "WandbCallback": "sae_hub.training.callbacks",
    # synthetic data with planted features, and recovery metrics
    "SyntheticActivations": "sae_hub.training.synthetic",
    "evaluate_recovery": "sae_hub.training.synthetic",
    "firing_f1": "sae_hub.training.synthetic",
    "max_cosine": "sae_hub.training.synthetic",
    "mmcs": "sae_hub.training.synthetic",
    "mcc": "sae_hub.training.synthetic",
    "recovered_fraction": "sae_hub.training.synthetic",
    # activation sources, the on-disk activation cache, and evaluate()
    "ActivationSource": "sae_hub.training.activations",
    "TensorSource": "sae_hub.training.activations",
    "ModelActivationSource": "sae_hub.training.activations",
    "ActivationCache": "sae_hub.training.activations",
    "cache_activations": "sae_hub.training.activations",
    "as_source": "sae_hub.training.activations",
    "pack_tokens": "sae_hub.training.activations",
    "evaluate": "sae_hub.training.evaluation",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from sae_hub.training.activations import ActivationCache as ActivationCache
    from sae_hub.training.activations import ActivationSource as ActivationSource
    from sae_hub.training.activations import ModelActivationSource as ModelActivationSource
    from sae_hub.training.activations import TensorSource as TensorSource
    from sae_hub.training.activations import as_source as as_source
    from sae_hub.training.activations import cache_activations as cache_activations
    from sae_hub.training.activations import pack_tokens as pack_tokens
    from sae_hub.training.callbacks import WandbCallback as WandbCallback
    from sae_hub.training.checkpoint import latest_checkpoint as latest_checkpoint
    from sae_hub.training.config import TrainConfig as TrainConfig
    from sae_hub.training.evaluation import evaluate as evaluate
    from sae_hub.training.kernels import sparse_decode as sparse_decode
    from sae_hub.training.kernels import sparse_encode as sparse_encode
    from sae_hub.training.synthetic import SyntheticActivations as SyntheticActivations
    from sae_hub.training.synthetic import evaluate_recovery as evaluate_recovery
    from sae_hub.training.synthetic import firing_f1 as firing_f1
    from sae_hub.training.synthetic import max_cosine as max_cosine
    from sae_hub.training.synthetic import mcc as mcc
    from sae_hub.training.synthetic import mmcs as mmcs
    from sae_hub.training.synthetic import recovered_fraction as recovered_fraction
    from sae_hub.training.trainer import Trainer as Trainer
    from sae_hub.training.trainer import train_sae as train_sae


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_hub.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
