"""Metrics against direct computations written here."""

from __future__ import annotations

import torch

from sae_hub.metrics import FiringTracker, FVUAccumulator, fvu, l0


def test_l0_and_fvu_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g) * 3 + 5
    x_hat = x + torch.randn(50, 8, generator=g) * 0.5
    f = torch.relu(torch.randn(50, 30, generator=g))
    assert abs(l0(f).item() - (f > 0).sum().item() / 50) < 1e-6
    direct = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(fvu(x, x_hat), direct)
    # dividing by ||x||^2 instead would be much smaller here because of the mean of 5
    assert fvu(x, x_hat) > 3 * ((x - x_hat) ** 2).sum() / (x**2).sum()


def test_fvu_accumulator_uses_the_global_mean():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g) + torch.arange(6.0)
    x_hat = x + 0.3 * torch.randn(300, 6, generator=g)
    acc = FVUAccumulator()
    for lo in range(0, 300, 70):
        acc.update(x[lo:lo + 70], x_hat[lo:lo + 70])
    assert abs(acc.compute() - fvu(x, x_hat).item()) < 1e-6


def test_firing_tracker_dead_dense_and_density():
    t = FiringTracker(d_sae=5, window=100, blocks=4)
    f = torch.zeros(25, 5)
    f[:, 0] = 1.0  # always fires: dense
    f[0, 1] = 1.0  # fires once, in the first block only
    t.update(f)
    for _ in range(4):
        t.update(indices=torch.zeros(25, 1, dtype=torch.long), values=torch.ones(25, 1))
    dead = t.dead_mask()
    assert dead.tolist() == [False, True, True, True, True]  # latent 1's firing left the 100-token window
    assert abs(t.dense_fraction(0.5) - 0.2) < 1e-6
    density = t.log10_density()
    torch.testing.assert_close(density[0], torch.log10(torch.tensor(1.0 + 1e-10)))
    torch.testing.assert_close(density[1], torch.log10(torch.tensor(1 / 125 + 1e-10)))
