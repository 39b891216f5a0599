"""SAE quality metrics, defined once and shared by the trainer, ``evaluate`` and the analysis tools.

Conventions (stated because peers differ):

- **L0**: mean number of non-zero features per token.
- **FVU** (fraction of variance unexplained) = sum_t ||x_t - x̂_t||² / sum_t ||x_t - mean(x)||², the mean taken
  per dimension over the tokens measured. Some peers divide by ||x||² instead (no mean), which reads
  optimistic for activations with a large mean; explained variance = 1 - FVU.
- **Dead / dense latents**: a latent is dead if it did not fire on any of the last ``window`` tokens seen; dense
  if it fired on more than ``dense_threshold`` (default 10%) of them. The window is always stated with the
  number.
- **CE loss recovered** = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean), with the zero-ablation or the
  mean-ablation baseline (see :mod:`sae_hub.training.evaluation`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["FVUAccumulator", "FiringTracker", "explained_variance", "fvu", "l0"]


def l0(features: torch.Tensor) -> torch.Tensor:
    """Mean number of active (non-zero) features per token; ``features [..., d_sae]``."""
    return (features != 0).float().sum(-1).mean()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over the tokens of ``x [..., d]``: ||x - x̂||² / ||x - mean(x)||²."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    r = x2 - x_hat.reshape(-1, x.shape[-1]).float()
    total = (x2 - x2.mean(0, keepdim=True)).pow(2).sum()
    return r.pow(2).sum() / total.clamp_min(torch.finfo(torch.float32).tiny)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 - FVU."""
    return 1 - fvu(x, x_hat)


class FVUAccumulator:
    """FVU over many batches with the *global* mean, from running sums (Σx, Σx², Σ||r||²) on the device.

    Per-batch FVUs averaged are not the FVU of the whole set (each batch would use its own mean).
    """

    def __init__(self) -> None:
        self.n = 0
        self.sum_x: torch.Tensor | None = None
        self.sum_x2: torch.Tensor | None = None
        self.sum_r2: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x2 = x.reshape(-1, x.shape[-1]).double()
        r2 = (x2 - x_hat.reshape(-1, x.shape[-1]).double()).pow(2).sum()
        sx, sxx = x2.sum(0), x2.pow(2).sum(0)
        if self.sum_x is None or self.sum_x2 is None or self.sum_r2 is None:
            self.sum_x, self.sum_x2, self.sum_r2 = sx, sxx, r2
        else:
            self.sum_x += sx
            self.sum_x2 += sxx
            self.sum_r2 += r2
        self.n += x2.shape[0]

    def compute(self) -> float:
        if self.n == 0 or self.sum_x is None or self.sum_x2 is None or self.sum_r2 is None:
            return math.nan
        total = (self.sum_x2 - self.sum_x.pow(2) / self.n).sum()
        return float(self.sum_r2 / total.clamp_min(1e-300))


class FiringTracker:
    """Per-latent firing counts over a sliding window of tokens, kept on the device (no host sync per step).

    ``update`` takes dense features ``[..., d_sae]`` or topk ``indices [..., k]`` (with ``values`` to drop zeros).
    The window is approximated in blocks of ``window // blocks`` tokens, so "dead" means "no firing in at least
    the last ``window - window/blocks`` tokens".
    """

    def __init__(self, d_sae: int, window: int = 10_000_000, blocks: int = 10,
                 device: torch.device | str | None = None) -> None:
        self.d_sae = d_sae
        self.window = int(window)
        self.block_size = max(1, self.window // blocks)
        self.blocks: list[tuple[int, torch.Tensor]] = []  # (tokens, counts [d_sae])
        self.current = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.current_tokens = 0
        self.total_tokens = 0
        self.total_counts = torch.zeros(d_sae, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor | None = None, *, indices: torch.Tensor | None = None,
               values: torch.Tensor | None = None) -> None:
        if indices is not None:
            # index_add rather than bincount / boolean masking: those read sizes back from a GPU (a host sync)
            idx = indices.reshape(-1)
            fired = (values.reshape(-1) > 0).long() if values is not None else torch.ones_like(idx)
            counts = torch.zeros(self.d_sae, dtype=torch.long, device=idx.device).index_add_(0, idx, fired)
            n_tokens = indices.reshape(-1, indices.shape[-1]).shape[0]
        elif features is not None:
            f = features.reshape(-1, features.shape[-1])
            counts = (f != 0).sum(0)
            n_tokens = f.shape[0]
        else:
            raise ValueError("update needs features or indices")
        counts = counts.to(self.current.device, torch.long)
        self.current += counts
        self.total_counts += counts
        self.current_tokens += n_tokens
        self.total_tokens += n_tokens
        if self.current_tokens >= self.block_size:
            self.blocks.append((self.current_tokens, self.current.clone()))
            self.current.zero_()
            self.current_tokens = 0
            while sum(t for t, _ in self.blocks) > self.window:
                self.blocks.pop(0)

    def window_counts(self) -> tuple[int, torch.Tensor]:
        """(tokens, per-latent firing counts) over the current window."""
        tokens = self.current_tokens + sum(t for t, _ in self.blocks)
        counts = self.current.clone()
        for _, c in self.blocks:
            counts += c
        return tokens, counts

    def dead_mask(self) -> torch.Tensor:
        """Latents that never fired in the window (all False until a full block was seen)."""
        tokens, counts = self.window_counts()
        if tokens < self.block_size:
            return torch.zeros_like(counts, dtype=torch.bool)
        return counts == 0

    def dead_fraction(self) -> float:
        return float(self.dead_mask().float().mean())

    def dense_fraction(self, threshold: float = 0.1) -> float:
        tokens, counts = self.window_counts()
        return float((counts.float() / max(tokens, 1) > threshold).float().mean())

    def log10_density(self, eps: float = 1e-10) -> torch.Tensor:
        """log10 of each latent's firing frequency over everything seen (the ``sparsity.safetensors`` tensor)."""
        return torch.log10(self.total_counts.float() / max(self.total_tokens, 1) + eps)
