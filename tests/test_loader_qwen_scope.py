"""Qwen Scope loader: generated ``layer{L}.sae.pt`` files in Qwen's transposed layout."""

from __future__ import annotations

import pytest
import torch

from sae_hub import SAE
from sae_hub.errors import ConfigError, CorruptFileError, FormatDetectionError, MissingFileError
from sae_hub.loading import detect_format

d, D = 16, 64
TOL = 1e-5


def _state():
    return {"W_enc": torch.randn(D, d) * 0.3, "W_dec": torch.randn(d, D) * 0.3, "b_enc": torch.randn(D) * 0.1,
            "b_dec": torch.randn(d) * 0.1}


def _ref(s, x, k):
    pre = x @ s["W_enc"].T + s["b_enc"]
    vals, idx = torch.relu(pre).topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, idx, vals)
    return f, f @ s["W_dec"].T + s["b_dec"]


def _errs(sae, x, codes, recon):
    c = sae.encode(x)
    return max((c - codes).abs().max().item(), (sae.decode(c) - recon).abs().max().item(),
               (sae(x) - recon).abs().max().item())


def test_layer_file_with_k_from_repo_name(tmp_path):
    torch.manual_seed(0)
    repo = tmp_path / "models--Qwen--SAE-Res-Qwen3-8B-W64K-L0_7" / "snapshots" / "abc123"
    repo.mkdir(parents=True)
    s = _state()
    torch.save(s, repo / "layer12.sae.pt")
    x = torch.randn(8, d) * 2
    codes, recon = _ref(s, x, 7)
    for target in (repo / "layer12.sae.pt", repo):
        assert detect_format(target) == "qwen-scope"
        sae = SAE.load_from_disk(target)
        assert sae.cfg.k == 7 and sae.cfg.architecture == "topk"
        assert sae.cfg.hook_name == "blocks.12.hook_resid_post" and sae.cfg.hf_hook_name == "model.layers.12"
        assert _errs(sae, x, codes, recon) <= TOL
    with pytest.raises(ConfigError, match="contradicts"):
        SAE.load_from_disk(repo, k=3)


def test_k_option_and_layer_choice(tmp_path):
    torch.manual_seed(1)
    states = {L: _state() for L in (3, 4)}
    for L, s in states.items():
        torch.save(s, tmp_path / f"layer{L}.sae.pt")
    with pytest.raises(FormatDetectionError):
        SAE.load_from_disk(tmp_path)  # two layers: which one?
    with pytest.raises(ConfigError, match="pass k="):
        SAE.load_from_disk(tmp_path / "layer3.sae.pt")
    x = torch.randn(5, d)
    sae = SAE.load_from_disk(tmp_path, format="qwen-scope", layer=4, k=9)
    assert _errs(sae, x, *_ref(states[4], x, 9)) <= TOL
    with pytest.raises(MissingFileError):
        SAE.load_from_disk(tmp_path, format="qwen-scope", layer=5, k=9)
    with pytest.raises(ConfigError, match="layer"):
        SAE.load_from_disk(tmp_path, format="qwen-scope", k=9)


def test_bad_files(tmp_path):
    s = _state()
    s["W_dec"] = torch.randn(d + 2, D)
    torch.save(s, tmp_path / "layer0.sae.pt")
    with pytest.raises(CorruptFileError, match="shapes disagree"):
        SAE.load_from_disk(tmp_path / "layer0.sae.pt", k=4)
    good = tmp_path / "g" / "layer1.sae.pt"
    good.parent.mkdir()
    torch.save(_state(), good)
    good.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(good, k=4)
    other = tmp_path / "o" / "layer2.sae.pt"
    other.parent.mkdir()
    torch.save({"W_enc": torch.randn(D, d)}, other)
    with pytest.raises(FormatDetectionError):
        SAE.load_from_disk(other, k=4)
    with pytest.raises(CorruptFileError, match="not a Qwen Scope"):
        SAE.load_from_disk(other, format="qwen-scope", k=4)
