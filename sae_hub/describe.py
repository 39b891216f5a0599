"""A short human-readable summary of an SAE, for ``sae-hub inspect``, the demo and notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["describe"]


def describe(sae: SAE) -> str:
    """Format, architecture, shapes, hooks, input handling and provenance of ``sae``, one fact per line."""
    from sae_hub.files import dtype_to_str

    c = sae.cfg
    lines = [
        f"architecture   {c.architecture}" + (f" (k={c.k})" if c.k is not None else "")
        + (" transcoder" if c.is_transcoder else "") + (" +skip" if c.has_skip else ""),
        f"d_in / d_sae   {c.d_in} / {c.d_sae}" + (f" / d_out {c.d_out}" if c.is_transcoder else ""),
        f"dtype, device  {dtype_to_str(sae.dtype)}, {sae.device}",
        f"model, hook    {c.model_name or '?'} @ {c.hook_name or '?'}"
        + (f" -> {c.hook_name_out}" if c.hook_name_out and c.hook_name_out != c.hook_name else ""),
        f"input          centre by b_dec: {c.apply_b_dec_to_input}; normalize: {c.normalize_activations}"
        + (f" (x{c.norm_scaling_factor:g})" if c.norm_scaling_factor is not None else ""),
        "tensors        " + ", ".join(f"{n} {list(p.shape)}" for n, p in sae.named_parameters()),
        f"source         {c.provenance.source_format or '?'}: "
        + ", ".join(f["name"] for f in c.provenance.source_files),
    ]
    if c.provenance.conversions:
        lines.append("conversions    " + "; ".join(c.provenance.conversions))
    return "\n".join(lines)
