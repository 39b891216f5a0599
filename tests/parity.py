"""Shared check for loader tests: how far a loaded SAE is from a library's reference outputs."""

from __future__ import annotations

import torch

from sae_hub import SAE


def parity_errors(sae: SAE, ref: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Max abs error of encode, decode(encode) and forward against ref's codes/recon for ref['x']."""
    x = ref["x"]
    codes = sae.encode(x)
    recon = sae.decode(codes)
    fwd = sae(x)
    return ((codes - ref["codes"]).abs().max().item(), (recon - ref["recon"]).abs().max().item(),
            (fwd - ref["recon"]).abs().max().item())
