"""What sae-hub saves is what SAELens reads, or the save refuses (checked here without SAELens; the compat
suite, tests/compat/test_saelens_save_matrix.py, runs SAELens 6.54 itself on every combination).

- a constant scaling factor, which no SAELens field applies at run time, is folded into the saved weights (on
  a copy: the SAE in memory is unchanged) and recorded in the saved provenance;
- variants SAELens cannot compute raise IncompatibleSaveError before anything is written;
- ``saelens_compatible=False`` writes exactly what the SAE holds, marked sae-hub-only, and loads back here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hub import SAE, SAEConfig, convert
from sae_hub.errors import ConfigError, IncompatibleSaveError

LLAMASCOPIUM = Path(__file__).parent / "fixtures" / "llamascopium"
TOL = {"atol": 1e-5, "rtol": 1e-5}


def random_sae(**kw) -> SAE:
    g = torch.Generator().manual_seed(0)
    kw.setdefault("d_in", 16)
    kw.setdefault("d_sae", 48)
    sae = SAE(SAEConfig(hook_name="blocks.2.hook_resid_post", **kw))
    with torch.no_grad():
        for _name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        if hasattr(sae, "threshold"):
            sae.threshold.abs_()
    return sae


def x16() -> torch.Tensor:
    return torch.randn(10, 16, generator=torch.Generator().manual_seed(1)) * 3 + 1


def saved_cfg(folder: Path) -> dict:
    return json.loads((folder / "cfg.json").read_text())


def test_lm_saes_dataset_wise_jumprelu_converts_with_the_factor_folded(tmp_path):
    """Was: normalize_activations expected_average_only_in with the factor only in metadata, which SAELens
    ignores (features off by up to 6.9)."""
    (out,) = convert(LLAMASCOPIUM / "jumprelu_dataset_wise", tmp_path / "o", progress=False)
    cfg = saved_cfg(out)
    assert cfg["normalize_activations"] == "none"
    assert "norm_scaling_factor" not in cfg["metadata"] and "norm_scaling_factor_out" not in cfg["metadata"]
    assert cfg["metadata"]["provenance"]["conversions"][-1].startswith("fold_activation_norm_scaling_factor(s_in=0.25")
    ref = load_file(LLAMASCOPIUM / "jumprelu_dataset_wise" / "reference.safetensors")
    sae = SAE.load_from_disk(out)
    with torch.no_grad():  # the library's own outputs, from the plain SAELens computation that now applies
        z = ref["x"] @ sae.W_enc + sae.b_enc
        codes = torch.relu(z) * (z > sae.threshold)
        torch.testing.assert_close(codes, ref["codes"], **TOL)
        torch.testing.assert_close(codes @ sae.W_dec + sae.b_dec, ref["recon"], **TOL)


@pytest.mark.parametrize("extra", [{}, {"norm_scaling_factor_out": 4.0}, {"apply_b_dec_to_input": True},
                                   {"architecture": "topk", "k": 4, "rescale_acts_by_decoder_norm": True}])
def test_save_folds_the_factor_into_a_copy_and_records_it(extra, tmp_path):
    kw = {"architecture": "jumprelu", "normalize_activations": "expected_average_only_in",
          "norm_scaling_factor": 0.3, **extra}
    sae = random_sae(**kw)
    x = x16()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    with torch.no_grad():
        f, y = sae.encode(x), sae(x)
    sae.save_pretrained(tmp_path / "o")
    cfg = saved_cfg(tmp_path / "o")
    assert cfg["normalize_activations"] == "none" and "norm_scaling_factor" not in cfg["metadata"]
    conversions = cfg["metadata"]["provenance"]["conversions"]
    assert any(c.startswith("fold_activation_norm_scaling_factor") for c in conversions)
    # the SAE in memory is untouched
    assert sae.cfg.norm_scaling_factor == 0.3 and sae.cfg.provenance.conversions == []
    assert all(torch.equal(v, before[k]) for k, v in sae.state_dict().items())
    back = SAE.load_from_disk(tmp_path / "o")
    assert back.cfg.norm_scaling_factor is None
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), f, **TOL)
        torch.testing.assert_close(back(x), y, **TOL)


def test_fold_of_a_recorded_factor_leaves_the_skip_connection_alone():
    """forward adds x @ W_skip.T on the raw input, so folding a config-recorded factor must not scale W_skip
    (it did, by s_in/s_out: outputs changed whenever s_in != s_out)."""
    sae = random_sae(architecture="relu", d_out=12, has_skip=True, normalize_activations="expected_average_only_in",
                     norm_scaling_factor=0.3, norm_scaling_factor_out=2.5)
    x = x16()
    with torch.no_grad():
        y = sae(x)
        sae.fold_activation_norm_scaling_factor()
        torch.testing.assert_close(sae(x), y, **TOL)


@pytest.mark.parametrize(("kw", "field"), [
    ({"architecture": "relu", "normalize_activations": "zscore"}, "normalize_activations"),
    ({"architecture": "topk", "k": 4, "rank_by_decoder_norm": True}, "rank_by_decoder_norm"),
    ({"architecture": "topk", "k": 4, "d_out": 12}, "architecture"),
    ({"architecture": "gated", "d_out": 12, "has_skip": True}, "architecture"),
    ({"architecture": "relu", "d_out": 12, "normalize_activations": "layer_norm"}, "normalize_activations"),
])
def test_what_saelens_cannot_compute_is_refused_and_saved_only_on_request(kw, field, tmp_path):
    sae = random_sae(**kw)
    x = x16()
    random_sae(architecture="relu").save_pretrained(tmp_path / "o")
    old = (tmp_path / "o" / "sae_weights.safetensors").read_bytes()
    with pytest.raises(IncompatibleSaveError) as e:
        sae.save_pretrained(tmp_path / "o")
    assert isinstance(e.value, ConfigError) and e.value.field == field and e.value.path == str(tmp_path / "o")
    assert "saelens_compatible=False" in str(e.value)
    assert (tmp_path / "o" / "sae_weights.safetensors").read_bytes() == old  # nothing written

    sae.save_pretrained(tmp_path / "o", saelens_compatible=False)
    cfg = saved_cfg(tmp_path / "o")
    assert cfg["architecture"] == "sae_hub_only:" + sae.cfg.saelens_architecture()
    assert cfg["metadata"]["sae_hub_only"]["reasons"][0].startswith(field)
    back = SAE.load_from_disk(tmp_path / "o")
    with torch.no_grad():
        assert torch.equal(back(x), sae(x)) and torch.equal(back.encode(x), sae.encode(x))
    # the marker describes that save only: loaded and saved again (still incompatible), it is rewritten
    back.save_pretrained(tmp_path / "again", saelens_compatible=False)
    assert saved_cfg(tmp_path / "again")["metadata"]["sae_hub_only"] == cfg["metadata"]["sae_hub_only"]


def test_a_kept_factor_is_sae_hub_only_and_a_later_default_save_folds_it(tmp_path):
    sae = random_sae(architecture="relu", normalize_activations="expected_average_only_in", norm_scaling_factor=0.3)
    sae.save_pretrained(tmp_path / "kept", saelens_compatible=False)
    cfg = saved_cfg(tmp_path / "kept")
    assert cfg["architecture"] == "sae_hub_only:standard" and cfg["metadata"]["norm_scaling_factor"] == 0.3
    back = SAE.load_from_disk(tmp_path / "kept")
    assert back.cfg.norm_scaling_factor == 0.3
    back.save_pretrained(tmp_path / "folded")
    cfg = saved_cfg(tmp_path / "folded")
    assert cfg["architecture"] == "standard" and "sae_hub_only" not in cfg["metadata"]
    with torch.no_grad():
        torch.testing.assert_close(SAE.load_from_disk(tmp_path / "folded")(x16()), sae(x16()), **TOL)


def test_a_compatible_sae_saved_with_saelens_compatible_false_is_a_plain_folder(tmp_path):
    random_sae(architecture="jumprelu").save_pretrained(tmp_path / "o", saelens_compatible=False)
    cfg = saved_cfg(tmp_path / "o")
    assert cfg["architecture"] == "jumprelu" and "sae_hub_only" not in cfg["metadata"]


def test_convert_refuses_before_writing_and_the_cli_has_the_switch(tmp_path):
    src = LLAMASCOPIUM / "topk_dataset_wise"
    with pytest.raises(IncompatibleSaveError) as e:
        convert(src, tmp_path / "o", progress=False)
    assert e.value.field == "rank_by_decoder_norm" and e.value.path == str(src)
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []
    cli = [sys.executable, "-m", "sae_hub.cli", "convert", str(src)]
    out = subprocess.run([*cli, str(tmp_path / "o")], capture_output=True, text=True)
    assert out.returncode == 1 and "--no-saelens-compatible" in out.stderr and not (tmp_path / "o").exists()
    out = subprocess.run([*cli, str(tmp_path / "o"), "--no-saelens-compatible"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert saved_cfg(tmp_path / "o")["architecture"] == "sae_hub_only:topk_rank_by_decoder_norm"
    out = subprocess.run([*cli, str(tmp_path / "f"), "--fold-decoder-norm"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cfg = saved_cfg(tmp_path / "f")
    assert cfg["architecture"] == "topk" and cfg["normalize_activations"] == "none"
