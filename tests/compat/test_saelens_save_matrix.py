"""Every SAE sae-hub can write, checked against SAELens 6.54 itself: either SAELens loads the saved folder and
computes the same features and reconstructions (<= 1e-5), or the save refuses it with IncompatibleSaveError,
and then ``saelens_compatible=False`` writes a folder SAELens refuses loudly (never misreads) that sae-hub
still loads exactly.

Matrix: architecture (relu, jumprelu, topk in three rankings, gated, transcoders and skip transcoders of each
kind) x normalisation (none, a constant factor in and out, expected_average_only_in without a factor,
constant_norm_rescale, layer_norm, layer_norm with a factor, zscore) x fold done before saving (none,
fold_W_dec_norm, fold_activation_norm_scaling_factor). Plus the lm-saes fixtures through ``convert``, whose
references are the library's own outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sae_lens = pytest.importorskip("sae_lens", reason="compat suite: run in the SAELens + TransformerLens 3 env")

from sae_hub import SAE, SAEConfig, convert  # noqa: E402
from sae_hub.errors import IncompatibleSaveError  # noqa: E402

LLAMASCOPIUM = Path(__file__).resolve().parent.parent / "fixtures" / "llamascopium"
D_IN, D_SAE, D_OUT = 16, 48, 12
TOL = {"atol": 1e-5, "rtol": 1e-5}

ARCHS: dict[str, dict] = {
    "relu": {"architecture": "relu"},
    "relu-centred": {"architecture": "relu", "apply_b_dec_to_input": True},
    "jumprelu": {"architecture": "jumprelu"},
    "topk": {"architecture": "topk", "k": 5, "apply_b_dec_to_input": True},
    "topk-rescale": {"architecture": "topk", "k": 5, "rescale_acts_by_decoder_norm": True},
    "topk-rank": {"architecture": "topk", "k": 5, "rank_by_decoder_norm": True},
    "gated": {"architecture": "gated", "apply_b_dec_to_input": True},
    "transcoder": {"architecture": "relu", "d_out": D_OUT},
    "jumprelu-transcoder": {"architecture": "jumprelu", "d_out": D_OUT},
    "topk-transcoder": {"architecture": "topk", "k": 5, "d_out": D_OUT},
    "gated-transcoder": {"architecture": "gated", "d_out": D_OUT},
    "skip-transcoder": {"architecture": "relu", "d_out": D_OUT, "has_skip": True},
    "jumprelu-skip-transcoder": {"architecture": "jumprelu", "d_out": D_OUT, "has_skip": True},
    "topk-skip-transcoder": {"architecture": "topk", "k": 5, "d_out": D_OUT, "has_skip": True},
    "skip-same-width-centred": {"architecture": "relu", "has_skip": True, "apply_b_dec_to_input": True},
}
NORMS: dict[str, dict] = {
    "none": {},
    "factor": {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.3},
    "factor-in-out": {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.3,
                      "norm_scaling_factor_out": 2.5},
    "no-factor": {"normalize_activations": "expected_average_only_in"},
    "constant_norm_rescale": {"normalize_activations": "constant_norm_rescale"},
    "layer_norm": {"normalize_activations": "layer_norm"},
    "layer_norm+factor": {"normalize_activations": "layer_norm", "norm_scaling_factor": 1.7},
    "zscore": {"normalize_activations": "zscore"},
}
FOLDS = ("none", "fold_W_dec_norm", "fold_scaling")


def _valid(arch: dict, norm: dict, fold: str) -> bool:
    """The combinations sae-hub can hold: SAEConfig accepts it and the fold asked for is defined for it."""
    if arch.get("apply_b_dec_to_input") and arch.get("d_out"):
        return False  # transcoders cannot subtract b_dec (SAEConfig refuses)
    if fold == "fold_W_dec_norm" and arch["architecture"] == "topk" and not (
            arch.get("rescale_acts_by_decoder_norm") or arch.get("rank_by_decoder_norm")):
        return False  # not exact, refused by fold_W_dec_norm
    return fold != "fold_scaling" or "norm_scaling_factor" in norm


CASES = [(a, n, f) for a in ARCHS for n in NORMS for f in FOLDS if _valid(ARCHS[a], NORMS[n], f)]


def random_sae(**kw) -> SAE:
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, model_name="tiny", hook_name="blocks.1.hook_resid_pre",
                        hook_name_out="blocks.1.hook_mlp_out" if kw.get("d_out") else None, **kw))
    with torch.no_grad():
        for _name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        if hasattr(sae, "threshold"):
            sae.threshold.abs_()
    return sae


def inputs() -> torch.Tensor:
    return torch.randn(10, D_IN, generator=torch.Generator().manual_seed(1)) * 2 + 1


def outputs_of(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """features, decode(encode(x)) and forward(x) (which adds the skip for skip transcoders)."""
    with torch.no_grad():
        f = sae.encode(x)
        return f, sae.decode(f), sae(x)


def assert_refused_by_saelens(folder: Path) -> None:
    with pytest.raises(KeyError, match="sae_hub_only:"):
        sae_lens.SAE.load_from_disk(str(folder))


@pytest.mark.parametrize(("arch", "norm", "fold"), CASES, ids=["/".join(c) for c in CASES])
def test_saelens_computes_what_we_saved_or_the_save_refuses(arch, norm, fold, tmp_path):
    sae = random_sae(**ARCHS[arch], **NORMS[norm])
    if fold == "fold_W_dec_norm":
        sae.fold_W_dec_norm()
    elif fold == "fold_scaling":
        sae.fold_activation_norm_scaling_factor()
    x = inputs()
    ours = outputs_of(sae, x)
    params = {k: v.clone() for k, v in sae.state_dict().items()}
    cfg_before = sae.cfg.to_dict()
    problems = sae.cfg.saelens_incompatibilities()

    if not problems:
        sae.save_pretrained(tmp_path / "compatible")
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "compatible"))
        for got, want in zip(outputs_of(theirs, x), ours, strict=True):
            torch.testing.assert_close(got, want, **TOL)
        saved = json.loads((tmp_path / "compatible" / "cfg.json").read_text())
        assert "norm_scaling_factor" not in saved["metadata"] and "sae_hub_only" not in saved["metadata"]
        for got, want in zip(outputs_of(SAE.load_from_disk(tmp_path / "compatible"), x), ours, strict=True):
            torch.testing.assert_close(got, want, **TOL)
    else:
        with pytest.raises(IncompatibleSaveError) as e:
            sae.save_pretrained(tmp_path / "refused")
        assert e.value.field == problems[0][0] and not (tmp_path / "refused").exists()

    # sae-hub-only: exactly what this SAE holds, which SAELens refuses whenever it would compute it otherwise
    sae.save_pretrained(tmp_path / "ours", saelens_compatible=False)
    saved = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    folds_at_save = (sae.cfg.norm_scaling_factor is not None or sae.cfg.norm_scaling_factor_out is not None
                     or (sae.cfg.has_skip and sae.cfg.apply_b_dec_to_input))
    if problems or folds_at_save:
        assert saved["architecture"].startswith("sae_hub_only:") and saved["metadata"]["sae_hub_only"]["reasons"]
        assert_refused_by_saelens(tmp_path / "ours")
    else:
        assert "sae_hub_only" not in saved["metadata"]
        for got, want in zip(outputs_of(sae_lens.SAE.load_from_disk(str(tmp_path / "ours")), x), ours, strict=True):
            torch.testing.assert_close(got, want, **TOL)
    for got, want in zip(outputs_of(SAE.load_from_disk(tmp_path / "ours"), x), ours, strict=True):
        assert torch.equal(got, want)

    # saving never changes the SAE in memory
    assert sae.cfg.to_dict() == cfg_before
    assert all(torch.equal(v, params[k]) for k, v in sae.state_dict().items())


def test_the_matrix_covers_both_outcomes():
    refused = [c for c in CASES if random_sae(**ARCHS[c[0]], **NORMS[c[1]]).cfg.saelens_incompatibilities()]
    assert 0 < len(refused) < len(CASES)
    assert len(CASES) > 150


# ---------------------------------------------------------------------------------------------- lm-saes via convert


def test_lm_saes_jumprelu_dataset_wise_converts_to_a_folder_saelens_reads_right(tmp_path):
    """The fixture's scaling factor lived only in metadata before; SAELens ignored it (features off by 6.9)."""
    ref = load_file(LLAMASCOPIUM / "jumprelu_dataset_wise" / "reference.safetensors")
    (out,) = convert(LLAMASCOPIUM / "jumprelu_dataset_wise", tmp_path / "out", progress=False)
    saved = json.loads((out / "cfg.json").read_text())
    assert saved["normalize_activations"] == "none" and "norm_scaling_factor" not in saved["metadata"]
    assert any(c.startswith("fold_activation_norm_scaling_factor")
               for c in saved["metadata"]["provenance"]["conversions"])
    theirs = sae_lens.SAE.load_from_disk(str(out))
    with torch.no_grad():
        codes = theirs.encode(ref["x"])
        torch.testing.assert_close(codes, ref["codes"], **TOL)
        torch.testing.assert_close(theirs.decode(codes), ref["recon"], **TOL)


def test_lm_saes_relu_converts_to_a_folder_saelens_reads_right(tmp_path):
    ref = load_file(LLAMASCOPIUM / "relu_inference_no_norm" / "reference.safetensors")
    (out,) = convert(LLAMASCOPIUM / "relu_inference_no_norm", tmp_path / "out", progress=False)
    theirs = sae_lens.SAE.load_from_disk(str(out))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(ref["x"]), ref["codes"], **TOL)
        torch.testing.assert_close(theirs(ref["x"]), ref["recon"], **TOL)


@pytest.mark.parametrize(("case", "options"), [("topk_dataset_wise", {}),
                                               ("batchtopk_dataset_wise", {"batchtopk": "topk"})])
def test_lm_saes_topk_ranked_by_decoder_norm(case, options, tmp_path):
    """Ranks on z*||W_D_j|| but reports z: no SAELens form. Refused by default; sae-hub-only on request
    (SAELens refuses that folder); with --fold-decoder-norm a plain topk (features z*||W_D_j||) SAELens reads."""
    ref = load_file(LLAMASCOPIUM / case / "reference.safetensors")
    with pytest.raises(IncompatibleSaveError) as e:
        convert(LLAMASCOPIUM / case, tmp_path / "refused", progress=False, **options)
    assert e.value.field == "rank_by_decoder_norm" and "saelens_compatible=False" in str(e.value)
    assert not (tmp_path / "refused").exists()

    (only,) = convert(LLAMASCOPIUM / case, tmp_path / "only", progress=False, saelens_compatible=False, **options)
    assert_refused_by_saelens(only)
    direct = SAE.load_from_disk(LLAMASCOPIUM / case, **options)
    for got, want in zip(outputs_of(SAE.load_from_disk(only), ref["x"]), outputs_of(direct, ref["x"]), strict=True):
        assert torch.equal(got, want)

    (folded,) = convert(LLAMASCOPIUM / case, tmp_path / "folded", progress=False, fold_decoder_norm=True, **options)
    theirs = sae_lens.SAE.load_from_disk(str(folded))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ref["x"]), direct(ref["x"]), **TOL)
        torch.testing.assert_close(theirs.encode(ref["x"]), direct.encode(ref["x"]) * direct.W_dec_norm, **TOL)
    if case == "topk_dataset_wise":  # the library's own reconstruction
        torch.testing.assert_close(theirs(ref["x"]), ref["recon"], **TOL)
