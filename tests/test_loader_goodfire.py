"""Goodfire loader: generated state dicts in Goodfire's layouts, checked against nn.Linear forward passes."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from sae_hub import SAE
from sae_hub.errors import ConfigError, CorruptFileError, FormatDetectionError, UnsafeCheckpointError
from sae_hub.loading import detect_format

d, D = 16, 64
TOL = 1e-5


class _Goodfire(nn.Module):
    """Goodfire's published SAE: relu(encoder_linear(x)), decoder_linear(f)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_linear = nn.Linear(d, D)
        self.decoder_linear = nn.Linear(D, d)

    def forward(self, x):
        f = torch.relu(self.encoder_linear(x))
        return f, self.decoder_linear(f)


def _errs(sae, x, codes, recon):
    c = sae.encode(x)
    return max((c - codes).abs().max().item(), (sae.decode(c) - recon).abs().max().item(),
               (sae(x) - recon).abs().max().item())


def test_standard_pth_file_and_folder(tmp_path):
    torch.manual_seed(0)
    model = _Goodfire()
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(8, d) * 2
    with torch.no_grad():
        codes, recon = model(x)
    for target in (path, tmp_path):
        assert detect_format(target) == "goodfire"
        sae = SAE.load_from_disk(target)
        assert sae.cfg.architecture == "relu" and not sae.cfg.apply_b_dec_to_input
        assert sae.cfg.hook_name == "blocks.19.hook_resid_post"
        assert _errs(sae, x, codes, recon) <= TOL
    with pytest.raises(ConfigError, match="TopK"):
        SAE.load_from_disk(path, k=4)


def _topk_state(with_bias=True):
    s = {"encoder_linear.weight": torch.randn(D, d) * 0.3, "decoder.weight": torch.randn(d, D) * 0.3}
    if with_bias:
        s["encoder_linear.bias"] = torch.randn(D) * 0.1
        s["decoder_bias"] = torch.randn(d) * 0.1
    return s


def _topk_ref(s, x, k):
    pre = x @ s["encoder_linear.weight"].T + s.get("encoder_linear.bias", 0)
    vals, idx = pre.topk(k, dim=-1)  # topk on pre-activations, then relu (same as topk of relu)
    f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
    return f, f @ s["decoder.weight"].T + s.get("decoder_bias", 0)


@pytest.mark.parametrize("with_bias", [True, False])
def test_gpt_oss_topk_variant(tmp_path, with_bias):
    torch.manual_seed(1)
    s = _topk_state(with_bias)
    path = tmp_path / "topk_sae_l15_exp16_k8.pt"
    torch.save(s, path)
    x = torch.randn(8, d) * 2
    codes, recon = _topk_ref(s, x, 8)
    assert detect_format(path) == "goodfire"
    sae = SAE.load_from_disk(path)
    assert sae.cfg.k == 8 and sae.cfg.hook_name == "blocks.15.hook_resid_post"
    assert _errs(sae, x, codes, recon) <= TOL
    with pytest.raises(ConfigError, match="contradicts"):
        SAE.load_from_disk(path, k=4)


def test_topk_k_needs_name_or_option(tmp_path):
    s = _topk_state()
    path = tmp_path / "sae.pt"
    torch.save(s, path)
    with pytest.raises(ConfigError, match="pass k="):
        SAE.load_from_disk(path)
    x = torch.randn(4, d)
    assert _errs(SAE.load_from_disk(path, k=5), x, *_topk_ref(s, x, 5)) <= TOL


def test_folder_with_two_candidates_is_not_guessed(tmp_path):
    torch.save(_Goodfire().state_dict(), tmp_path / "a.pth")
    torch.save(_Goodfire().state_dict(), tmp_path / "b.pth")
    with pytest.raises(FormatDetectionError):
        SAE.load_from_disk(tmp_path)
    assert SAE.load_from_disk(tmp_path / "a.pth").cfg.d_sae == D


def test_bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_Goodfire().state_dict(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[:-100])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(bad)
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(bad, format="goodfire")
    sd = _Goodfire().state_dict()
    sd["decoder_linear.weight"] = torch.randn(d + 1, D)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(CorruptFileError, match=r"decoder_linear.weight"):
        SAE.load_from_disk(tmp_path / "shape.pth")


def test_malicious_pth(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sd = {**_Goodfire().state_dict(), "x": Payload()}
    torch.save(sd, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"posix.system"):
        SAE.load_from_disk(tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"posix.system"):
        SAE.load_from_disk(tmp_path / "evil.pth", format="goodfire")
    assert not marker.exists()
