"""Synthetic activations with planted ground-truth features, and metrics for how well an SAE recovers them.

A language model gives no ground truth to check an SAE against; planted features do. Two generators share one
class. The *toy* (the defaults; Sharkey et al. 2022) is what a unit test needs:

    x = Σ_i a_i · g_i  (+ noise),     a_i = m_i · [u_i < p_i],     g_i ∈ R^d unit, n > d (superposition)

with Zipf-like firing probabilities ``p_i ∝ (i + 1)^-zipf_exponent`` scaled so that a token has
``mean_active`` features on average, and magnitudes ``m_i ~ U(magnitude_range)``. Independent Gaussian-direction
features are easy: every trainer scores MMCS ≈ 1 on it, which hides real differences between trainers.

The *realistic* generator (:meth:`SyntheticActivations.realistic`; SynthSAEBench, Chanin & Garriga-Alonso 2026,
arXiv 2602.14687, scaled down from its 16k-feature model) adds the structure that makes real activations hard:

- **Zipfian firing rescaled to a range** (``probability_range``): ``p_i`` from ``p_max`` for the most frequent
  feature down to ``p_min``, so most features are rare;
- **correlated firing** (``correlation_rank``): a Gaussian copula, ``fire_i = [z_i > Φ⁻¹(1 − p_i)]`` with
  ``z = F·ε + √(1 − ‖F_i‖²)·η``, ``F [n, rank]`` of scale ``correlation_scale`` (unit variances, marginals kept);
- **a feature hierarchy** (``hierarchy_roots`` trees, ``hierarchy_branching`` children each, ``hierarchy_depth``
  levels; breadth-first over the most frequent features): a child fires only if its parent does, and with
  ``mutually_exclusive`` at most one child of a parent fires (a uniformly random one of those that would). Child
  probabilities are compensated (÷ p_parent, × (1 + Σ siblings' p / p_parent)) so marginals stay near ``p_i``;
- **magnitude distributions** (``magnitude_distribution="normal"``): ``relu(N(μ_i, σ_i))``, ``μ_i`` linear from
  ``magnitude_range[1]`` (most frequent) to ``magnitude_range[0]`` (rarest), ``σ_i ~ |N(magnitude_std,
  magnitude_std)|`` per feature;
- **a bias** (``bias_norm``): a fixed random offset every token carries (an SAE's ``b_dec`` should learn it);
- **non-orthogonal dictionaries**: random directions in superposition (``n_features > d``); the largest cosine
  between two of 1024 features in d = 256 is ≈ 0.3 (:attr:`SyntheticActivations.max_overlap`).

:class:`SyntheticActivations` is an *activation source* (the protocol :func:`~sae_hub.training.train_sae`
reads): ``batches(batch_size, seed=, rank=, world_size=, start=)`` streams seeded batches, so runs are
reproducible, resumable, and data-parallel ranks read disjoint slices of the same global batches.

Recovery metrics compare decoder rows with the planted directions by cosine similarity:

- **MMCS**: mean over true features of the best cosine with any decoder row (several latents may match one
  feature, so duplicates are not penalised);
- **recovered fraction**: share of true features whose best cosine exceeds a threshold (0.9, 0.99);
- **MCC**: one-to-one (Hungarian) matching, mean cosine over the ``min(n_features, d_sae)`` matched pairs (as
  SAELens's ``mean_correlation_coefficient``, except that cosines are signed: a latent pointing *against* a
  feature has not learnt it); needs scipy, which is optional;
- **F1 of firing**: each latent is matched to the feature its decoder row is closest to, and scored as a
  detector of that feature's firing on held-out tokens (precision, recall, F1 per latent, then the mean over
  latents: SAELens's ``ClassificationMetricsCalculator`` convention);
- **dead fraction**: latents that never fired on the held-out tokens.

FVU and L0 come from :mod:`sae_hub.metrics`, the definitions every other part of sae-hub uses.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError
from sae_hub.metrics import FVUAccumulator

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = [
    "SyntheticActivations",
    "evaluate_recovery",
    "firing_f1",
    "max_cosine",
    "mcc",
    "mmcs",
    "recovered_fraction",
]

# Seeds for different purposes are mixed with these so that, e.g., batch 0 never shares a stream with the
# feature directions.
_FEATURE_STREAM = 0x5EED_F00D
_BATCH_STREAM = 0xBA7C_4000
_STRUCTURE_STREAM = 0x57C7_0001


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
        probability_range: ``(p_min, p_max)``: Zipf weights rescaled linearly onto this range (SynthSAEBench);
            ``mean_active`` and ``max_probability`` are then unused.
        hierarchy_roots, hierarchy_branching, hierarchy_depth, mutually_exclusive: the feature forest (0 roots:
            none); see the module docstring.
        correlation_rank, correlation_scale: low-rank Gaussian-copula correlation of firing (rank 0: independent).
        magnitude_distribution: ``"uniform"`` (``U(magnitude_range)``) or ``"normal"`` (module docstring).
        magnitude_std: mean (and spread) of the per-feature standard deviations of ``"normal"`` magnitudes.
        bias_norm: norm of a fixed random offset added to every token.

    Any of the structural fields switches sampling to the realistic path (a Gaussian copula); with none of them
    the toy's draws are unchanged.
    """

    d: int
    n_features: int
    mean_active: float = 5.0
    zipf_exponent: float = 0.5
    magnitude_range: tuple[float, float] = (0.5, 1.5)
    noise_std: float = 0.0
    max_probability: float = 0.5
    seed: int = 0
    probability_range: tuple[float, float] | None = None
    hierarchy_roots: int = 0
    hierarchy_branching: int = 4
    hierarchy_depth: int = 3
    mutually_exclusive: bool = True
    correlation_rank: int = 0
    correlation_scale: float = 0.1
    magnitude_distribution: str = "uniform"
    magnitude_std: float = 0.5
    bias_norm: float = 0.0
    hook_name: str | None = None  # source-protocol metadata, copied into the trained SAE's config
    model_name: str | None = None
    # Ground-truth directions [n_features, d] (unit norm, most frequent first) and target firing probabilities
    # [n_features] (sum = mean_active unless capped or given a range); derived from the fields above.
    features: torch.Tensor = field(init=False, repr=False)
    probabilities: torch.Tensor = field(init=False, repr=False)
    # [n_features] parent feature of each feature (-1: none); [d] the bias (zeros without one)
    parent: torch.Tensor = field(init=False, repr=False)
    bias: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        g = _generator(_FEATURE_STREAM, self.seed)
        feats = torch.randn(self.n_features, self.d, generator=g, dtype=torch.float64)
        self.features = (feats / feats.norm(dim=-1, keepdim=True)).float()
        if self.probability_range is not None:
            lo, hi = self.probability_range
            w = torch.arange(1, self.n_features + 1, dtype=torch.float64).pow(-self.zipf_exponent)
            span = float(w[0] - w[-1])
            unit = (w - w[-1]) / span if span > 0 else torch.ones_like(w)
            self.probabilities = (lo + (hi - lo) * unit).float()
        else:
            self.probabilities = _zipf_probabilities(self.n_features, self.mean_active, self.zipf_exponent,
                                                     self.max_probability)
        self._build_structure()

    def _validate(self) -> None:
        """Bad fields are ConfigErrors naming the field (the generator is public API, and a benchmark's input)."""
        if self.d <= 0 or self.n_features <= 0:
            raise ConfigError("d and n_features must be positive", field="d" if self.d <= 0 else "n_features")
        if self.probability_range is not None:
            lo, hi = (float(v) for v in self.probability_range)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"probability_range must satisfy 0 < p_min <= p_max <= 1, got "
                                  f"{self.probability_range}", field="probability_range")
        if self.hierarchy_roots < 0 or self.hierarchy_branching < 2 or self.hierarchy_depth < 1:
            raise ConfigError("hierarchy needs roots >= 0, branching >= 2, depth >= 1", field="hierarchy_roots")
        if self.correlation_rank < 0 or self.correlation_scale < 0:
            raise ConfigError("correlation_rank and correlation_scale must be non-negative",
                              field="correlation_rank")
        if self.magnitude_distribution not in ("uniform", "normal"):
            raise ConfigError(f"magnitude_distribution must be 'uniform' or 'normal', got "
                              f"{self.magnitude_distribution!r}", field="magnitude_distribution")
        lo_m, hi_m = self.magnitude_range
        if not 0 <= lo_m <= hi_m:
            raise ConfigError(f"magnitude_range must be 0 <= lo <= hi, got {self.magnitude_range}",
                              field="magnitude_range")
        for name in ("magnitude_std", "bias_norm", "noise_std"):
            if not float(getattr(self, name)) >= 0:
                raise ConfigError(f"{name} must be non-negative", field=name)

    @classmethod
    def realistic(cls, d: int = 256, n_features: int = 1024, *, seed: int = 0, **overrides: object
                  ) -> SyntheticActivations:
        """SynthSAEBench-16k's structure (16,384 features in d = 768) scaled to ``n_features`` in ``d``.

        Zipf exponent 0.5 rescaled to p ∈ [5e-4, 0.4]; one hierarchy tree (branching 4, depth 3, siblings mutually
        exclusive) per 128 features; rank-25 correlation of scale 0.1; magnitudes ``relu(N(μ, σ))`` with μ from
        5.0 (most frequent) to 4.0 (rarest) and σ ~ |N(0.5, 0.5)|; a bias of norm 1. ``overrides`` replace any
        field. At the defaults a token has ≈ 9 active features (:meth:`true_l0`).
        """
        fields: dict[str, object] = dict(
            zipf_exponent=0.5, probability_range=(5e-4, 0.4), hierarchy_roots=max(1, n_features // 128),
            hierarchy_branching=4, hierarchy_depth=3, mutually_exclusive=True, correlation_rank=25,
            correlation_scale=0.1, magnitude_distribution="normal", magnitude_range=(4.0, 5.0), magnitude_std=0.5,
            bias_norm=1.0, noise_std=0.0)
        fields.update(overrides)
        return cls(d=d, n_features=n_features, seed=seed, **fields)  # type: ignore[arg-type]

    @property
    def structured(self) -> bool:
        """Whether sampling takes the realistic path (any structure beyond the toy's)."""
        return bool(self.probability_range is not None or self.hierarchy_roots or self.correlation_rank
                    or self.magnitude_distribution != "uniform" or self.bias_norm)

    @property
    def max_overlap(self) -> float:
        """Largest |cosine| between two distinct ground-truth directions (how non-orthogonal the dictionary is)."""
        sim = (self.features @ self.features.T).abs()
        sim.fill_diagonal_(0)
        return float(sim.max())

    def _build_structure(self) -> None:
        """Hierarchy levels, compensated conditional probabilities, copula factors, magnitudes, bias."""
        n = self.n_features
        g = _generator(_STRUCTURE_STREAM, self.seed)
        parent = torch.full((n,), -1, dtype=torch.long)
        # Breadth-first over the most frequent features, whole sibling groups only, so that each level is a
        # contiguous block: (first child, number of parents = groups, first parent); children of parent
        # ``first_parent + i`` are ``first_child + i·branching + [0, branching)``. Slices, not index lists, keep
        # sampling cheap (the copula's randn dominates).
        self._levels: list[tuple[int, int, int]] = []
        br = self.hierarchy_branching
        nxt, first_parent, n_parents = min(self.hierarchy_roots, n), 0, min(self.hierarchy_roots, n)
        for _ in range(self.hierarchy_depth if self.hierarchy_roots else 0):
            groups = min(n_parents, (n - nxt) // br)
            if groups == 0:
                break
            kids = torch.arange(nxt, nxt + groups * br)
            parent[kids] = first_parent + (kids - nxt) // br
            self._levels.append((nxt, groups, first_parent))
            first_parent, n_parents, nxt = nxt, groups * br, nxt + groups * br
        self.parent = parent
        p = self.probabilities.double()
        cond = p.clone()
        for first, groups, first_par in self._levels:
            pk = p[first:first + groups * br].view(groups, br)  # [groups, br] children's target marginals
            pp = p[first_par:first_par + groups, None]  # [groups, 1] their parents'
            c = pk / pp
            if self.mutually_exclusive:
                c = c * (1 + (pk.sum(-1, keepdim=True) - pk).clamp_min(0) / pp)
            cond[first:first + groups * br] = c.reshape(-1)
        self._cond = cond.clamp(max=1.0)
        # Φ⁻¹(1 − p) = √2·erfinv(1 − 2p); p = 1 gives -inf (always fires)
        self._threshold = (math.sqrt(2) * torch.erfinv(1 - 2 * self._cond)).float()
        self._factor = torch.zeros(n, 0)
        self._diag_sqrt = torch.ones(n)
        if self.correlation_rank:
            f = torch.randn(n, self.correlation_rank, generator=g, dtype=torch.float64) * self.correlation_scale
            sq = f.pow(2).sum(1)
            over = sq > 0.99  # keep at least 1% independent variance per feature
            f[over] *= (0.99 / sq[over]).sqrt()[:, None]
            self._factor = f.float()
            self._diag_sqrt = (1 - f.pow(2).sum(1)).sqrt().float()
        lo, hi = self.magnitude_range
        self._mag_mean = torch.linspace(hi, lo, n) if n > 1 else torch.full((1,), float(hi))
        self._mag_std = (self.magnitude_std + self.magnitude_std * torch.randn(n, generator=g)).abs()
        b = torch.randn(self.d, generator=g, dtype=torch.float64)
        self.bias = (b / b.norm() * self.bias_norm).float() if self.bias_norm else torch.zeros(self.d)

    def true_l0(self, n: int = 16384, *, seed: int = 99) -> float:
        """Mean number of active ground-truth features per token, measured on ``n`` tokens (hierarchy and mutual
        exclusion make the probabilities' sum only an upper bound)."""
        return float((self.sample_with_codes(n, seed=seed)[1] > 0).sum(-1).float().mean())

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
        if self.structured:
            codes, x = self._structured(n, g)
        else:
            active = torch.rand(n, self.n_features, generator=g) < self.probabilities
            lo, hi = self.magnitude_range
            codes = (lo + (hi - lo) * torch.rand(n, self.n_features, generator=g)) * active
            x = codes @ self.features
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(n, self.d, generator=g)
        return x, codes

    def _structured(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [n, n_features], x [n, d]) of the realistic path: copula firing, hierarchy top-down,
        magnitudes; x from the ~L0 non-zeros per token (a bag sum) rather than a dense [n, F] @ [F, d] GEMM."""
        z = torch.randn(n, self.n_features, generator=g)  # [n, F] independent part
        if self.correlation_rank:
            eps = torch.randn(n, self.correlation_rank, generator=g)  # [n, rank] shared factors
            z = torch.addmm(z * self._diag_sqrt, eps, self._factor.T)
        fire = z > self._threshold  # [n, F]
        br = self.hierarchy_branching
        for first, groups, first_par in self._levels:  # top-down: parents are final before their children
            block = fire[:, first:first + groups * br].view(n, groups, br)  # [n, groups, br] a view into fire
            alive = block & fire[:, first_par:first_par + groups, None]  # a child fires only with its parent
            if self.mutually_exclusive:  # keep one uniformly random firing child per sibling group
                u = torch.rand(n, groups, br, generator=g).masked_fill_(~alive, -1.0)  # [n, groups, br]
                alive &= u == u.amax(-1, keepdim=True)
            block.copy_(alive)
        rows, cols = fire.nonzero(as_tuple=True)
        mags = (self._mag_mean[cols] + self._mag_std[cols] * torch.randn(cols.numel(), generator=g)).abs()
        if self.magnitude_distribution == "uniform":
            lo, hi = self.magnitude_range
            mags = lo + (hi - lo) * torch.rand(cols.numel(), generator=g)
        codes = torch.zeros(n, self.n_features)
        codes[rows, cols] = mags
        offsets = torch.searchsorted(rows, torch.arange(n))  # rows come sorted from nonzero
        x = torch.nn.functional.embedding_bag(cols, self.features, offsets, mode="sum", per_sample_weights=mags)
        return codes, x + self.bias

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
    """Mean cosine of a one-to-one (Hungarian) matching of true features to decoder rows, over the
    ``min(n_features, d_sae)`` matched pairs (SAELens's convention, cosines signed: see the module docstring).

    Unlike MMCS, one latent cannot stand in for two features. Needs scipy (``linear_sum_assignment``), an
    optional dependency (extra ``train``): raises MissingDependencyError naming it when missing.
    """
    from sae_hub.extras import require

    linear_sum_assignment = require("scipy.optimize", extra="train", purpose="mcc").linear_sum_assignment
    dec = torch.nn.functional.normalize(decoder.detach().double().cpu(), dim=-1)
    feats = torch.nn.functional.normalize(features.detach().double().cpu(), dim=-1)
    sim = (feats @ dec.T).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].mean())


def firing_f1(latents_fired: torch.Tensor, true_fired: torch.Tensor, match: torch.Tensor
              ) -> dict[str, float]:
    """Each latent as a detector of its matched feature's firing: mean precision, recall and F1 over latents.

    ``latents_fired [N, d_sae]`` and ``true_fired [N, n_features]`` are booleans over the same tokens;
    ``match [d_sae]`` the feature each latent is scored against. Undefined precision/recall/F1 (no firing on
    either side) count as 0, as in SAELens's classification metrics.
    """
    t = true_fired[:, match]  # [N, d_sae]
    tp = (latents_fired & t).sum(0).double()
    fp = (latents_fired & ~t).sum(0).double()
    fn = (~latents_fired & t).sum(0).double()
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
    return {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}


@torch.no_grad()
def evaluate_recovery(sae: SAE | Any, data: SyntheticActivations, *, n_tokens: int = 16384, seed: int = 12345,
                      top_features: int | None = None) -> dict[str, float]:
    """Recovery, detection and reconstruction of ``sae`` on ``data``.

    Returns MMCS, ``recovered_0.9`` / ``recovered_0.99`` (fraction of features whose best cosine exceeds the
    threshold), MCC (when scipy is installed), and, on ``n_tokens`` fresh tokens from stream ``seed``: FVU, L0,
    ``dead_fraction`` (latents that never fired on them), and precision / recall / F1 of firing (each latent
    scored against the feature its decoder row is closest to). ``top_features`` restricts the recovery metrics to
    the most frequent features as well (reported under ``*_top``): rare features need far more samples to learn,
    so a short run is judged on the frequent ones.

    ``sae`` is any object with ``W_dec [d_sae, d]``, ``encode`` and ``decode`` taking raw activations (an sae-hub
    :class:`~sae_hub.SAE`, or SAELens's, so both sides of a comparison are scored by the same code).
    """
    from sae_hub.metrics import l0

    dec = sae.W_dec.detach().float()
    device = dec.device
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
    dec_n = torch.nn.functional.normalize(dec.cpu(), dim=-1)
    match = (dec_n @ data.features.T).argmax(-1)  # [d_sae] each latent's closest feature
    acc, l0_sum, bs = FVUAccumulator(), 0.0, 4096
    tp = torch.zeros(dec.shape[0], dtype=torch.float64)
    fp, fn = torch.zeros_like(tp), torch.zeros_like(tp)
    ever = torch.zeros(dec.shape[0], dtype=torch.bool)
    for j in range(math.ceil(n_tokens / bs)):
        x, codes = data.sample_with_codes(min(bs, n_tokens - j * bs), seed=seed, index=j)
        f = sae.encode(x.to(device))
        acc.update(x.to(device), sae.decode(f))
        l0_sum += float(l0(f)) * x.shape[0]
        fired = (f != 0).cpu()
        truth = (codes > 0)[:, match]
        tp += (fired & truth).sum(0)
        fp += (fired & ~truth).sum(0)
        fn += (~fired & truth).sum(0)
        ever |= fired.any(0)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
    out.update({"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())})
    out["fvu"] = acc.compute()
    out["l0"] = l0_sum / n_tokens
    out["dead_fraction"] = float((~ever).float().mean())
    return out
