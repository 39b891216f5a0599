"""nanoSAE loader: library-written fixtures (pickles and state dicts), generated variants, errors."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from parity import parity_errors
from safetensors.torch import load_file
from torch import nn

from sae_hub import SAE
from sae_hub.errors import ConfigError, CorruptFileError, UnsafeCheckpointError, UnsupportedSAEError
from sae_hub.loading import detect_format

FIXTURES = Path(__file__).parent / "fixtures" / "nanosae"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
TOL = 1e-5




@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("target", ["folder", "sae.pt", "state_dict.pt"])
def test_fixture_reproduces_library(case, target):
    folder = FIXTURES / case
    ref = load_file(folder / "reference.safetensors")
    path = folder if target == "folder" else folder / target
    options = {}
    if target == "state_dict.pt":
        options["dataset_normalization"] = "zscore" if case == "sae_zscore" else None
    assert detect_format(path) == "nanosae"
    sae = SAE.load_from_disk(path, **options)
    errs = parity_errors(sae, ref)
    assert max(errs) <= TOL, (case, target, errs)
    assert sae.cfg.provenance.source_files == [{"name": "sae.pt" if target != "state_dict.pt" else target}]


def test_fixture_details():
    topk = SAE.load_from_disk(FIXTURES / "saetopk_v0_models_topk")
    assert topk.cfg.architecture == "topk" and topk.cfg.k == 16 and not topk.cfg.apply_b_dec_to_input
    z = SAE.load_from_disk(FIXTURES / "sae_zscore")
    assert z.cfg.normalize_activations == "zscore"
    ref = load_file(FIXTURES / "sae_zscore" / "reference.safetensors")
    xn, _ = z._prepare_input(ref["x"])  # the library's own z-scored rows
    assert (xn - ref["x_normalized"]).abs().max() <= TOL
    recon_n = z.encode(ref["x"]) @ z.W_dec + z.b_dec
    assert (recon_n - ref["recon_normalized"]).abs().max() <= TOL
    std = SAE.load_from_disk(FIXTURES / "sae_topk_branch_standard")
    assert torch.count_nonzero(std.b_dec) == 0
    assert any("unused 'bias'" in c for c in std.cfg.provenance.conversions)
    # the first version's forward(output_features=True) = encode(x) * ||decoder column||: informational only
    v0 = SAE.load_from_disk(FIXTURES / "sae_v0_models_sae")
    ref = load_file(FIXTURES / "sae_v0_models_sae" / "reference.safetensors")
    assert (v0.encode(ref["x"]) * v0.W_dec_norm - ref["codes_forward_scaled"]).abs().max() <= TOL


def test_state_dict_cannot_know_zscore():
    path = FIXTURES / "sae_zscore" / "state_dict.pt"
    ref = load_file(FIXTURES / "sae_zscore" / "reference.safetensors")
    with pytest.warns(UserWarning, match="dataset_normalization"):
        sae = SAE.load_from_disk(path)
    assert sae.cfg.normalize_activations == "none"
    assert max(parity_errors(sae, ref)) > 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SAE.load_from_disk(path, dataset_normalization="zscore")
    with pytest.raises(ConfigError, match="dataset_normalization"):
        SAE.load_from_disk(path, dataset_normalization="minmax")
    with pytest.raises(ConfigError, match="contradicts the pickled config"):
        SAE.load_from_disk(FIXTURES / "sae_zscore", dataset_normalization=None)


def test_topk_k_option():
    sd = FIXTURES / "saetopk_v0_models_topk" / "state_dict.pt"
    sae = SAE.load_from_disk(sd, k=8, dataset_normalization=None)
    assert sae.cfg.k == 8
    with pytest.raises(ConfigError, match="contradicts the pickled k=16"):
        SAE.load_from_disk(FIXTURES / "saetopk_v0_models_topk", k=8)
    with pytest.raises(ConfigError, match="SAETopK only"):
        SAE.load_from_disk(FIXTURES / "sae", k=8)


# ------------------------------------------------------------------------------------------ generated


@pytest.fixture
def fake_nanosae(monkeypatch):
    """Stand-in ``nanosae.models.SAE`` / ``nanosae.config.SAEConfig`` registered for pickling."""
    mods = {}
    for name in ("nanosae", "nanosae.models", "nanosae.config", "nanosae.experimental"):
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])

    class SAEConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class SAEModel(nn.Module):
        def __init__(self, d_in, d_sae, config):
            super().__init__()
            self.config = config
            self.encoder = nn.Linear(d_in, d_sae)
            self.decoder = nn.Linear(d_sae, d_in)

        def forward(self, x):
            f = torch.relu(self.encoder(x))
            return self.decoder(f), f

    class GatedSAE(SAEModel):
        pass

    for obj, mod, name in ((SAEConfig, "nanosae.config", "SAEConfig"), (SAEModel, "nanosae.models", "SAE"),
                           (GatedSAE, "nanosae.experimental", "GatedSAE")):
        obj.__module__, obj.__qualname__ = mod, name
        setattr(mods[mod], name, obj)
    return types.SimpleNamespace(SAE=SAEModel, SAEConfig=SAEConfig, GatedSAE=GatedSAE)


def test_generated_zscore_pickle_without_the_library(fake_nanosae, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = fake_nanosae.SAE(10, 30, fake_nanosae.SAEConfig(input_size=10, hidden_size=30,
                                                            dataset_normalization="zscore", model_name="m"))
    torch.save(model, tmp_path / "sae.pt")
    for name in ("nanosae", "nanosae.models", "nanosae.config", "nanosae.experimental"):
        monkeypatch.delitem(sys.modules, name)
    x = torch.randn(6, 10) * 4 + 2
    mean = x.double().mean(-1, keepdim=True)
    std = x.double().std(-1, keepdim=True, correction=0) + 1e-5
    xn = ((x.double() - mean) / std).float()
    with torch.no_grad():
        recon_n, codes = model(xn)
    recon = (recon_n.double() * std + mean).float()
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.model_name == "m"
    assert (sae.encode(x) - codes).abs().max() <= TOL
    assert (sae(x) - recon).abs().max() <= TOL


def test_unknown_nanosae_class_is_refused(fake_nanosae, tmp_path):
    torch.save(fake_nanosae.GatedSAE(4, 8, fake_nanosae.SAEConfig()), tmp_path / "sae.pt")
    with pytest.raises(UnsupportedSAEError, match=r"nanosae.experimental.GatedSAE"):
        SAE.load_from_disk(tmp_path)


def test_malicious_nanosae_pickle(fake_nanosae, tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    model = fake_nanosae.SAE(4, 8, fake_nanosae.SAEConfig(dataset_normalization=Payload()))
    torch.save(model, tmp_path / "sae.pt")
    with pytest.raises(UnsafeCheckpointError, match="system"):
        SAE.load_from_disk(tmp_path)
    assert not marker.exists()


def test_truncated_and_malformed(tmp_path):
    data = (FIXTURES / "sae" / "sae.pt").read_bytes()
    (tmp_path / "sae.pt").write_bytes(data[:-200])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path)
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path / "sae.pt", format="nanosae")
    bad = {"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.randn(8), "decoder.weight": torch.randn(5, 8)}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CorruptFileError, match=r"disagree|not a nanoSAE"):
        SAE.load_from_disk(tmp_path / "bad.pt", format="nanosae", dataset_normalization=None)
