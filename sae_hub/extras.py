"""Optional dependencies: which extra brings which package, and the one helper that imports them.

A loader-only user installs ``sae-hub`` (torch, huggingface-hub, safetensors, numpy, pyyaml, tqdm, msgspec) and
can load, convert and list every SAE. Plots, Neuronpedia and DataFrames need ``sae-hub[analysis]``; booting a
TransformerLens model and reading ``datasets`` need ``sae-hub[lens]``; ``[train]`` is that plus scipy (the
one-to-one feature matching of ``evaluate_recovery``); ``[nnsight]`` is ``[lens]`` plus nnsight, for splicing
SAEs into an ``nnsight.LanguageModel``. Every import of an optional package goes through
:func:`require`, so a missing one is one line naming the extra to install (a
:class:`~sae_hub.errors.MissingDependencyError`, also an ``ImportError``), not a ``ModuleNotFoundError`` from
deep inside a function.

This module imports only the standard library and :mod:`sae_hub.errors`: it is safe to import anywhere.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sae_hub.errors import MissingDependencyError

__all__ = ["EXTRAS", "MODULE_EXTRA", "MissingDependencyError", "require"]

#: extra -> the distributions it installs (pyproject.toml's ``[project.optional-dependencies]`` says the same;
#: tests/test_extras.py checks the two agree).
EXTRAS: dict[str, tuple[str, ...]] = {
    "analysis": ("plotly", "requests", "pandas"),
    "lens": ("transformer-lens", "transformers", "datasets"),
    "train": ("transformer-lens", "transformers", "datasets", "scipy"),
    "nnsight": ("transformer-lens", "transformers", "datasets", "nnsight"),
    "wandb": ("wandb",),
}

#: import name -> the extra that provides it, for the packages sae-hub imports optionally.
MODULE_EXTRA: dict[str, str] = {
    "plotly": "analysis",
    "requests": "analysis",
    "pandas": "analysis",
    "transformer_lens": "lens",
    "transformers": "lens",
    "datasets": "lens",
    "scipy": "train",  # Hungarian matching (mcc) in evaluate_recovery
    "nnsight": "nnsight",  # an nnsight LanguageModel is adapted without importing nnsight; only its tests need it
    "wandb": "wandb",  # sae_hub.training.callbacks.WandbCallback
}


def _install_hint(extra: str) -> str:
    return f"pip install 'sae-hub[{extra}]'"


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import and return ``module`` (e.g. ``"plotly.graph_objects"``), or raise a one-line
    :class:`MissingDependencyError` naming the extra that installs it.

    ``extra`` defaults to the one :data:`MODULE_EXTRA` lists for the top-level package; ``purpose`` ("plots",
    "Neuronpedia look-ups") says in the message what needed it. A package that is installed but fails to import
    (a missing dependency of its own, a broken build) is reported the same way, with the original error on the
    same line: reinstalling the extra is the fix for both.
    """
    top = module.partition(".")[0]
    extra = extra or MODULE_EXTRA.get(top)
    if extra is None:
        raise ValueError(f"no extra is known for {module!r}: pass extra=")  # a programming error, not user input
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if isinstance(e, ModuleNotFoundError) and missing.partition(".")[0] == top:
            detail = "it is not installed"
        else:  # installed, but broken (a dependency of its own missing, a bad build): say why on the same line
            detail = "it could not be imported (" + " ".join(f"{type(e).__name__}: {e}".split()) + ")"
        what = f"{top} is needed" + (f" for {purpose}" if purpose else "")
        raise MissingDependencyError(f"{what}, but {detail}: {_install_hint(extra)}", module=top,
                                     extra=extra) from None

