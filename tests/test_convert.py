"""sae_hub.convert / ``sae-hub convert``: round trips, provenance, batch conversion."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_hub import SAE, convert
from sae_hub.errors import FormatDetectionError
from sae_hub.files import sha256_file

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("case", ["sae_lens/jumprelu", "sae_lens/gated", "sae_lens/topk"])
def test_convert_round_trip_gives_identical_outputs(case, tmp_path):
    (out,) = convert(FIX / case, tmp_path / "out")
    direct, converted = SAE.load_from_disk(FIX / case), SAE.load_from_disk(out)
    x = load_file(FIX / case / "reference.safetensors")["x"]
    assert torch.equal(direct(x), converted(x)) and torch.equal(direct.encode(x), converted.encode(x))
    files = {f["name"]: f["sha256"] for f in converted.cfg.provenance.source_files}
    weights = (FIX / case / "sae_weights.safetensors").read_bytes()
    assert files["sae_weights.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert converted.cfg.provenance.source_format == "saelens"


@pytest.mark.parametrize("size", [0, 1, 4095, (1 << 24) + 3])
def test_sha256_file_equals_hashlib(tmp_path, size):
    data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(size)).numpy()
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    assert sha256_file(path) == hashlib.sha256(data.tobytes()).hexdigest()


def test_convert_records_dtype_and_fold(tmp_path):
    (out,) = convert(FIX / "sae_lens/jumprelu", tmp_path / "o", dtype="bfloat16", fold_decoder_norm=True)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    assert cfg["metadata"]["provenance"]["conversions"] == ["cast float32->bfloat16", "fold_W_dec_norm"]
    sae = SAE.load_from_disk(out)
    ref = load_file(FIX / "sae_lens/jumprelu/reference.safetensors")
    torch.testing.assert_close(sae(ref["x"]).float(), ref["recon"], atol=0.1, rtol=0.02)


def test_convert_a_folder_of_many_saes(tmp_path):
    src = tmp_path / "lab"
    for case in ("standard", "topk"):
        shutil.copytree(FIX / "sae_lens" / case, src / "layer3" / case)
    (src / "notes.txt").write_text("not an SAE")
    written = convert(src, tmp_path / "native", progress=False)
    assert sorted(p.relative_to(tmp_path / "native").as_posix() for p in written) == ["layer3/standard",
                                                                                       "layer3/topk"]
    assert SAE.load_from_disk(tmp_path / "native/layer3/topk").cfg.k == 6


def test_convert_nothing_recognisable(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FormatDetectionError):
        convert(tmp_path, tmp_path / "out")


def test_cli_convert_and_inspect(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "convert", str(FIX / "sae_lens/gated"),
                          str(tmp_path / "g"), "--dtype", "float32"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "g"
    shown = subprocess.run([sys.executable, "-m", "sae_hub.cli", "inspect", str(tmp_path / "g")],
                           capture_output=True, text=True, check=True).stdout
    assert "gated" in shown and "sae_weights.safetensors" in shown


def test_provenance_lists_only_the_files_the_loader_read(tmp_path):
    """An overcomplete folder holds module.pt and state_dict.pt; the loader reads module.pt only."""
    (out,) = convert(FIX / "overcomplete/topk", tmp_path / "o")
    files = SAE.load_from_disk(out).cfg.provenance.source_files
    assert [f["name"] for f in files] == ["module.pt"]
    assert files[0]["sha256"] == sha256_file(FIX / "overcomplete/topk/module.pt")


# ---------------------------------------------------------------------- to="circuit-tracer"
# circuit-tracer itself reads these folders in tests/compat_circuit_tracer (its own environment); here: the files
# equal circuit-tracer's own to_safetensors output bit for bit, and what it cannot hold is refused before writing.

CT = FIX / "circuit_tracer"
CT_CASES = ["transcoder_set_jumprelu_skip", "transcoder_set_relu", "clt_jumprelu", "clt_relu"]


@pytest.mark.parametrize("case", CT_CASES)
def test_convert_to_circuit_tracer_rewrites_its_own_files_bit_for_bit(case, tmp_path):
    from sae_hub.multilayer import MultiLayerDictionary

    (out,) = convert(CT / case, tmp_path / "ct", to="circuit-tracer")
    weights = sorted(p.name for p in (CT / case).glob("*.safetensors") if p.name != "reference.safetensors")
    assert sorted(p.name for p in out.iterdir()) == sorted([*weights, "config.yaml"])
    for name in weights:
        a, b = load_file(CT / case / name), load_file(out / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (name, k)
    import yaml

    orig, written = (yaml.safe_load((p / "config.yaml").read_text()) for p in (CT / case, out))
    assert {k: written[k] for k in orig} == orig
    files = {f["name"]: f["sha256"] for f in written["sae_hub"]["provenance"]["source_files"]}
    assert files[weights[0]] == hashlib.sha256((CT / case / weights[0]).read_bytes()).hexdigest()
    ref = load_file(CT / case / "reference.safetensors")
    d = MultiLayerDictionary.load_from_disk(out)
    out_by_layer = d.forward(ref["x"])
    torch.testing.assert_close(torch.stack([out_by_layer[i] for i in d.cfg.layers]), ref["recon"], atol=1e-5,
                               rtol=1e-5)


def _dictionary(kind="transcoder_set", arch="relu", n=2, **kw):
    from sae_hub.multilayer import MultiLayerConfig, MultiLayerDictionary

    layers = kw.pop("layers", list(range(n)))
    hooks = kw.pop("hooks", True)
    cfg = MultiLayerConfig(kind=kind, layers=layers, d_in=kw.pop("d_in", 8), d_sae=kw.pop("d_sae", 12),
                           architecture=arch,
                           hook_names_in=[f"blocks.{L}.hook_resid_mid" for L in layers] if hooks else None,
                           hook_names_out=[f"blocks.{L}.hook_mlp_out" for L in layers] if hooks else None, **kw)
    g = torch.Generator().manual_seed(0)
    d = MultiLayerDictionary(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return d


@pytest.mark.parametrize(("make", "field"), [
    (lambda: _dictionary(arch="topk", k=3), "architecture"),
    (lambda: _dictionary(d_sae=[12, 16]), "d_sae"),
    (lambda: _dictionary(d_out=6), "d_out"),
    (lambda: _dictionary(layers=[0, 2]), "layers"),
    (lambda: _dictionary(layers=[1, 2]), "layers"),
    (lambda: _dictionary(kind="clt", has_skip=True), "has_skip"),
    (lambda: _dictionary(hooks=False), "feature_input_hook"),
])
def test_circuit_tracer_refusals_name_the_field_and_write_nothing(make, field, tmp_path):
    from sae_hub.errors import IncompatibleSaveError

    d = make()
    with pytest.raises(IncompatibleSaveError) as e:
        d.save_circuit_tracer(tmp_path / "out")
    assert e.value.field == field and str(tmp_path / "out") in str(e.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_circuit_tracer_hooks_from_options_and_disagreements(tmp_path):
    import yaml

    from sae_hub.errors import ConfigError, IncompatibleSaveError

    bare = _dictionary(hooks=False)
    out = bare.save_circuit_tracer(tmp_path / "a", feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                                   scan="my-scan")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"], cfg["scan"]) == ("mlp.hook_in", "mlp.hook_out",
                                                                                     "my-scan")
    with pytest.raises(ConfigError) as e:  # the dictionary says hook_resid_mid
        _dictionary().save_circuit_tracer(tmp_path / "b", feature_input_hook="mlp.hook_in")
    assert e.value.field == "feature_input_hook"
    mixed = _dictionary()
    mixed.cfg.hook_names_in = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"]
    with pytest.raises(IncompatibleSaveError) as e:
        mixed.save_circuit_tracer(tmp_path / "c")
    assert e.value.field == "hook_names_in"
    hf = _dictionary()
    hf.cfg.hook_names_out = ["model.layers.0.mlp", "model.layers.1.mlp"]
    with pytest.raises(IncompatibleSaveError) as e:
        hf.save_circuit_tracer(tmp_path / "d")
    assert e.value.field == "hook_names_out"


def test_circuit_tracer_save_replaces_a_previous_set_instead_of_mixing_files(tmp_path):
    """A 2-layer set written over a 3-layer CLT folder: circuit-tracer counts the layer_/W_enc_ files it finds, so a
    stale layer_2 or W_enc_0 left beside the new files would load as another dictionary. Foreign files survive."""
    from sae_hub.multilayer import MultiLayerDictionary

    dst = tmp_path / "ct"
    _dictionary(kind="clt", n=3).save_circuit_tracer(dst)
    _dictionary(n=3).save_circuit_tracer(dst)
    (dst / "notes.txt").write_text("mine")
    _dictionary(n=2).save_circuit_tracer(dst)
    assert sorted(p.name for p in dst.iterdir()) == ["config.yaml", "layer_0.safetensors", "layer_1.safetensors",
                                                     "notes.txt"]
    assert MultiLayerDictionary.load_from_disk(dst).cfg.layers == [0, 1]


def _save_sae(path, layer, **kw):
    from sae_hub import SAEConfig

    hook_out = kw.pop("hook_name_out", f"blocks.{layer}.hook_mlp_out")
    cfg = SAEConfig(architecture=kw.pop("architecture", "relu"), d_in=8, d_sae=12,
                    hook_name=kw.pop("hook_name", f"blocks.{layer}.hook_resid_mid"), hook_name_out=hook_out, **kw)
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(layer)))
    sae.save_pretrained(path, saelens_compatible=False)
    return sae


@pytest.mark.parametrize(("kw", "field"), [
    ({"architecture": "topk", "k": 2}, "architecture"),
    ({"architecture": "gated"}, "architecture"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
])
def test_circuit_tracer_refuses_sae_variants_it_cannot_compute(kw, field, tmp_path):
    from sae_hub.errors import IncompatibleSaveError

    _save_sae(tmp_path / "src", 0, **kw)
    with pytest.raises(IncompatibleSaveError) as e:
        convert(tmp_path / "src", tmp_path / "out", to="circuit-tracer")
    assert e.value.field == field and "src" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_circuit_tracer_transcoder_folder_needs_layers_from_hooks(tmp_path):
    from sae_hub.errors import IncompatibleSaveError

    _save_sae(tmp_path / "src" / "a", 0)
    _save_sae(tmp_path / "src" / "b", 1, hook_name="mlp_in_somewhere", hook_name_out="mlp_out_somewhere")
    with pytest.raises(IncompatibleSaveError) as e:
        convert(tmp_path / "src", tmp_path / "out", to="circuit-tracer")
    assert e.value.field == "hook_name" and str(tmp_path / "src" / "b") in str(e.value)


def test_circuit_tracer_folds_sae_negative_thresholds_exactly(tmp_path):
    """relu(z)*(z>t) with t<0 is z*(z>0): written as t=0, which circuit-tracer's z*(z>t) computes the same."""
    import yaml

    from sae_hub.multilayer import MultiLayerDictionary

    sae = _save_sae(tmp_path / "src", 0, architecture="jumprelu")
    assert bool((sae.threshold < 0).any()) and bool((sae.threshold > 0).any())
    (out,) = convert(tmp_path / "src", tmp_path / "out", to="circuit-tracer")
    th = load_file(out / "layer_0.safetensors")["activation_function.threshold"]
    assert torch.equal(th, sae.threshold.detach().clamp(min=0))
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(9)) * 3
    d = MultiLayerDictionary.load_from_disk(out)  # computes z*(z>t), as circuit-tracer does
    assert torch.equal(d.encode(0, x), sae.encode(x))
    conv = yaml.safe_load((out / "config.yaml").read_text())["sae_hub"]["provenance"]["conversions"]
    assert any("negative JumpReLU threshold(s) set to 0" in c for c in conv)


def test_convert_unknown_target_and_fold_flag(tmp_path):
    from sae_hub.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        convert(CT / "clt_relu", tmp_path / "o", to="saelens")
    assert e.value.field == "to"
    with pytest.raises(ConfigError) as e:
        convert(CT / "clt_relu", tmp_path / "o", to="circuit-tracer", fold_decoder_norm=True)
    assert e.value.field == "fold_decoder_norm"


def test_cli_convert_to_circuit_tracer(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sae_hub.cli", "convert", str(CT / "transcoder_set_relu"),
                          str(tmp_path / "ct"), "--to", "circuit-tracer", "--option", "scan=s1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "ct"
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == ["config.yaml", "layer_0.safetensors",
                                                                   "layer_1.safetensors"]
    assert "scan: s1" in (tmp_path / "ct" / "config.yaml").read_text()
