"""Defaults for keys a cfg.json leaves out are SAELens 6's own (``sae_lens.saes.sae.SAEConfig``: a missing
``apply_b_dec_to_input`` is True; its transcoder configs refuse True), so a folder loads here as it loads there."""

from __future__ import annotations

import pytest

from sae_hub import SAEConfig


def _cfg(arch: str, **extra) -> dict:
    d = {"architecture": arch, "d_in": 8, "d_sae": 16, "metadata": {"sae_lens_version": "6.0.0"}, **extra}
    if "transcoder" in arch:
        d["d_out"] = 6
    if arch == "topk":
        d["k"] = 2
    return d


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk", "gated"])
def test_missing_apply_b_dec_to_input_reads_as_saelens_default_true(arch):
    assert SAEConfig.from_dict(_cfg(arch)).apply_b_dec_to_input is True


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_missing_apply_b_dec_to_input_on_a_transcoder_reads_false(arch):
    assert SAEConfig.from_dict(_cfg(arch)).apply_b_dec_to_input is False


def test_explicit_value_wins():
    assert SAEConfig.from_dict(_cfg("standard", apply_b_dec_to_input=False)).apply_b_dec_to_input is False


def test_release_scaling_factor_applies_only_to_expected_average_only_in(tmp_path):
    """SAELens's from_pretrained folds a release's norm_scaling_factor only into SAEs whose cfg says
    expected_average_only_in; for any other normalisation the factor is ignored, here too."""
    import torch

    from sae_hub import SAE

    x = torch.randn(4, 8)
    for norm, scaled in (("none", False), ("layer_norm", False), ("expected_average_only_in", True)):
        sae = SAE(SAEConfig(architecture="relu", d_in=8, d_sae=16, normalize_activations=norm))
        folder = tmp_path / norm
        sae.save_pretrained(folder)
        plain = SAE.load_from_disk(folder, format="saelens")
        got = SAE.load_from_disk(folder, format="saelens", norm_scaling_factor=3.0)
        assert (got.cfg.norm_scaling_factor == 3.0) is scaled
        if not scaled:
            assert torch.equal(got.encode(x), plain.encode(x))
