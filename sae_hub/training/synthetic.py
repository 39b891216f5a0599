"""Synthetic activations with planted ground-truth features, and metrics for how well an SAE recovers them.

A language model gives no ground truth to check an SAE against; planted features do. The generator follows the
Sharkey et al. (2022) toy and SynthSAEBench (Chanin & Garriga-Alonso 2026), stripped to what a unit test needs:

    x = Σ_i a_i · g_i  (+ noise),     a_i = m_i · [u_i < p_i],     g_i ∈ R^d unit, n > d (superposition)

with Zipf-like firing probabilities ``p_i ∝ (i + 1)^-zipf_exponent`` scaled so that a token has
``mean_active`` features on average, and magnitudes ``m_i ~ U(magnitude_range)``.

:class:`SyntheticActivations` is an *activation source* (the protocol :func:`~sae_hub.training.train_sae`
reads): ``batches(batch_size, seed=, rank=, world_size=, start=)`` streams seeded batches, so runs are
reproducible, resumable, and data-parallel ranks read disjoint slices of the same global batches.

Recovery metrics compare decoder rows with the planted directions by cosine similarity:

- **MMCS**: mean over true features of the best cosine with any decoder row (several latents may match one
  feature, so duplicates are not penalised);
- **recovered fraction**: share of true features whose best cosine exceeds a threshold (0.9, 0.99);
- **MCC**: one-to-one (Hungarian) matching, mean cosine over matched pairs; needs scipy, which is optional.

FVU and L0 come from :mod:`sae_hub.metrics`, the definitions every other part of sae-hub uses.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sae_hub.metrics import FVUAccumulator

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = [
    "SyntheticActivations",
    "evaluate_recovery",
    "max_cosine",
    "mcc",
    "mmcs",
    "recovered_fraction",
]

# Seeds for different purposes are mixed with these so that, e.g., batch 0 never shares a stream with the
# feature directions.
_FEATURE_STREAM = 0x5EED_F00D
_BATCH_STREAM = 0xBA7C_4000


def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from several integers (a cheap, stable mix; no Python ``hash``, which varies)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(h & 0x7FFFFFFFFFFFFFFF)


@dataclass
class SyntheticActivations:
    """Activations built from ``n_features`` planted unit directions in ``d`` dimensions.

    Args:
        d: activation width (``d_in`` of the SAE to train).
        n_features: number of ground-truth features (``> d`` puts them in superposition).
        mean_active: expected number of active features per token (the true L0).
        zipf_exponent: firing probability of feature ``i`` is proportional to ``(i + 1) ** -zipf_exponent``
            (0 = all equally likely); probabilities are capped at ``max_probability``.
        magnitude_range: active features get a magnitude drawn uniformly from this range.
        noise_std: standard deviation of isotropic Gaussian noise added to every token (per dimension).
        seed: fixes the feature directions and probabilities (batches are seeded separately, see ``batches``).
    """

    d: int
    n_features: int
    mean_active: float = 5.0
    zipf_exponent: float = 0.5
    magnitude_range: tuple[float, float] = (0.5, 1.5)
    noise_std: float = 0.0
    max_probability: float = 0.5
    seed: int = 0
    hook_name: str | None = None  # source-protocol metadata, copied into the trained SAE's config
    model_name: str | None = None
    # Ground-truth directions [n_features, d] (unit norm, most frequent first) and firing probabilities
    # [n_features] (sum = mean_active unless capped); derived from the fields above.
    features: torch.Tensor = field(init=False, repr=False)
    probabilities: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.d <= 0 or self.n_features <= 0:
            raise ValueError("d and n_features must be positive")
        g = _generator(_FEATURE_STREAM, self.seed)
        feats = torch.randn(self.n_features, self.d, generator=g, dtype=torch.float64)
        self.features = (feats / feats.norm(dim=-1, keepdim=True)).float()
        self.probabilities = _zipf_probabilities(self.n_features, self.mean_active, self.zipf_exponent,
                                                 self.max_probability)

    # ------------------------------------------------------------------ source protocol

    @property
    def d_in(self) -> int:
        return self.d

    def batches(self, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[torch.Tensor]:
        """Endless stream of ``[batch_size, d]`` float32 batches for one rank.

        Global batch ``j`` (``batch_size * world_size`` rows) is a pure function of ``(self.seed, seed, j)``;
        rank ``r`` gets rows ``[r * batch_size, (r + 1) * batch_size)`` of it. So a run with one process and a
        run with ``world_size`` processes at the same global batch see the same tokens, and ``start`` (batches
        already consumed) resumes a stream exactly.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        j = start
        while True:
            x = self.sample_batch(batch_size * world_size, seed=seed, index=j)
            yield x[rank * batch_size:(rank + 1) * batch_size]
            j += 1

    def sample_batch(self, n: int, *, seed: int = 0, index: int = 0) -> torch.Tensor:
        """``n`` tokens ``[n, d]`` of stream ``(seed, index)``."""
        return self.sample_with_codes(n, seed=seed, index=index)[0]

    def sample_with_codes(self, n: int, *, seed: int = 0, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tokens ``[n, d]`` of stream ``(seed, index)`` and their true feature activations
        ``[n, n_features]``."""
        g = _generator(_BATCH_STREAM, self.seed, seed, index)
        active = torch.rand(n, self.n_features, generator=g) < self.probabilities
        lo, hi = self.magnitude_range
        codes = (lo + (hi - lo) * torch.rand(n, self.n_features, generator=g)) * active
        x = codes @ self.features
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(n, self.d, generator=g)
        return x, codes

    def sample(self, n: int, *, seed: int = 1) -> torch.Tensor:
        """A held-out tensor of ``n`` tokens (pass a ``seed`` the training stream does not use)."""
        return self.sample_batch(n, seed=seed, index=0)


def _zipf_probabilities(n: int, mean_active: float, exponent: float, cap: float) -> torch.Tensor:
    """``p_i ∝ (i+1)^-exponent`` with Σp = mean_active, capped at ``cap`` (the excess is re-spread)."""
    if mean_active <= 0 or mean_active > n * cap:
        raise ValueError(f"mean_active must be in (0, n_features * max_probability], got {mean_active}")
    w = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
    p = w * (mean_active / w.sum())
    for _ in range(100):  # water-filling: cap, then rescale the uncapped ones to keep the sum
        over = p >= cap
        if not bool((p > cap).any()):
            break
        free = mean_active - cap * float(over.sum())
        p = torch.where(over, torch.full_like(p, cap), w * (free / float(w[~over].sum())))
    return p.clamp_max(cap).float()


# ---------------------------------------------------------------------- recovery metrics


def max_cosine(decoder: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """For each true feature ``[n, d]``, the best cosine similarity with any decoder row ``[d_sae, d]``."""
    dec = torch.nn.functional.normalize(decoder.detach().float().cpu(), dim=-1)
    feats = torch.nn.functional.normalize(features.detach().float().cpu(), dim=-1)
    return (feats @ dec.T).max(dim=-1).values


def mmcs(decoder: torch.Tensor, features: torch.Tensor) -> float:
    """Mean max cosine similarity: mean over true features of the best cosine with any decoder row."""
    return float(max_cosine(decoder, features).mean())


def recovered_fraction(decoder: torch.Tensor, features: torch.Tensor, threshold: float = 0.9) -> float:
    """Fraction of true features whose best decoder-row cosine exceeds ``threshold``."""
    return float((max_cosine(decoder, features) > threshold).float().mean())


def mcc(decoder: torch.Tensor, features: torch.Tensor) -> float:
    """Mean cosine of a one-to-one (Hungarian) matching of true features to decoder rows.

    Unlike MMCS, one latent cannot stand in for two features. Needs scipy (``linear_sum_assignment``), an
    optional dependency (extra ``train``): raises MissingDependencyError naming it when missing.
    """
    from sae_hub.extras import require

    linear_sum_assignment = require("scipy.optimize", extra="train", purpose="mcc").linear_sum_assignment
    dec = torch.nn.functional.normalize(decoder.detach().double().cpu(), dim=-1)
    feats = torch.nn.functional.normalize(features.detach().double().cpu(), dim=-1)
    sim = (feats @ dec.T).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].sum() / features.shape[0])


@torch.no_grad()
def evaluate_recovery(sae: SAE, data: SyntheticActivations, *, n_tokens: int = 16384, seed: int = 12345,
                      top_features: int | None = None) -> dict[str, float]:
    """Recovery and reconstruction of ``sae`` on ``data``: MMCS, recovered fractions, FVU, L0 (+ MCC).

    FVU and L0 are measured on ``n_tokens`` fresh tokens from stream ``seed``. ``top_features`` restricts the
    recovery metrics to the most frequent features as well (reported under ``*_top``): rare features need far
    more samples to learn, so a short run is judged on the frequent ones.
    """
    from sae_hub.metrics import l0

    dec = sae.W_dec.detach().float()
    cos = max_cosine(dec, data.features)
    out: dict[str, float] = {
        "mmcs": float(cos.mean()),
        "recovered_0.9": float((cos > 0.9).float().mean()),
        "recovered_0.99": float((cos > 0.99).float().mean()),
    }
    if top_features:
        top = cos[:top_features]
        out.update({"mmcs_top": float(top.mean()), "recovered_0.9_top": float((top > 0.9).float().mean())})
    if importlib.util.find_spec("scipy") is not None:
        out["mcc"] = mcc(dec, data.features)
    acc, l0_sum, bs = FVUAccumulator(), 0.0, 4096
    for j in range(math.ceil(n_tokens / bs)):
        x = data.sample_batch(min(bs, n_tokens - j * bs), seed=seed, index=j).to(sae.device)
        f = sae.encode(x)
        acc.update(x, sae.decode(f))
        l0_sum += float(l0(f)) * x.shape[0]
    out["fvu"] = acc.compute()
    out["l0"] = l0_sum / n_tokens
    return out
