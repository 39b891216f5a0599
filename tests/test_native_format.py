"""The native format (SAELens 6's): parity with SAELens-written folders, round trips, and typed errors."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hub import SAE, SAEConfig
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    FormatDetectionError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnknownArchitectureError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sae_lens"
CASES = sorted(p.name for p in FIXTURES.iterdir())


@pytest.mark.parametrize("case", CASES)
def test_saelens_fixture_reproduces_library_outputs(case):
    """Each folder was written by SAELens 6.54.12; codes/recon are what SAELens computed."""
    sae = SAE.load_from_disk(FIXTURES / case)
    ref = load_file(FIXTURES / case / "reference.safetensors")
    with torch.no_grad():
        codes = sae.encode(ref["x"])
        recon = sae.decode(codes)
        assert (codes - ref["codes"]).abs().max() <= 1e-5
        assert (recon - ref["recon"]).abs().max() <= 1e-5
        assert (sae(ref["x"]) - ref["recon"]).abs().max() <= 1e-5
    assert sae.cfg.provenance.source_format == "saelens"
    assert sae.cfg.hook_name and sae.cfg.model_name == "gpt2"


def test_gated_fixture_paths():
    sae = SAE.load_from_disk(FIXTURES / "gated")
    ref = load_file(FIXTURES / "gated" / "reference.safetensors")
    xc = ref["x"] - sae.b_dec
    torch.testing.assert_close(xc @ sae.W_enc + sae.b_gate, ref["gate_pre"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag, ref["mag_pre"], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_save_then_load_round_trips_exactly(case, tmp_path):
    sae = SAE.load_from_disk(FIXTURES / case)
    sae.save_pretrained(tmp_path / "out", sparsity=torch.linspace(-5, -1, sae.cfg.d_sae))
    back = SAE.load_from_disk(tmp_path / "out")
    assert back.cfg.to_dict()["architecture"] == sae.cfg.to_dict()["architecture"]
    for name, p in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name
    assert back.cfg.hook_name == sae.cfg.hook_name
    assert load_file(tmp_path / "out" / "sparsity.safetensors")["sparsity"].shape == (sae.cfg.d_sae,)
    on_disk = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert on_disk["metadata"]["provenance"]["source_format"] == "saelens"
    assert not list((tmp_path / "out").glob(".*tmp*")), "temp files left behind"


def test_saved_files_use_saelens_names_and_layout(tmp_path):
    cfg = SAEConfig(architecture="topk", d_in=6, d_sae=10, k=3, apply_b_dec_to_input=True,
                    hook_name="blocks.1.hook_resid_post", model_name="tiny")
    SAE(cfg).save_pretrained(tmp_path)
    d = json.loads((tmp_path / "cfg.json").read_text())
    for key in ("architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                "normalize_activations", "reshape_activations", "k", "rescale_acts_by_decoder_norm", "metadata"):
        assert key in d, key
    assert d["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert set(load_file(tmp_path / "sae_weights.safetensors")) == {"W_enc", "b_enc", "W_dec", "b_dec"}


def test_pre6_flat_config_loads(tmp_path):
    """A pre-6 SAELens cfg.json: flat, hook_point, activation_fn_str, boolean normalize_activations."""
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(6, 10, generator=g), "b_enc": torch.randn(10, generator=g),
         "W_dec": torch.randn(10, 6, generator=g), "b_dec": torch.randn(6, generator=g)}
    save_file(t, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({
        "d_in": 6, "d_sae": 10, "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "model_name": "gpt2-small",
        "normalize_activations": False, "dtype": "float32", "device": "cpu", "context_size": 128,
    }))
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 3 and sae.cfg.apply_b_dec_to_input
    assert sae.cfg.hook_name == "blocks.8.hook_resid_pre" and sae.cfg.model_name == "gpt2-small"
    x = torch.randn(4, 6, generator=g)
    z = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    v, i = z.relu().topk(3, dim=-1)
    torch.testing.assert_close(sae.encode(x), torch.zeros(4, 10).scatter(-1, i, v))


def test_expected_average_only_in_without_factor_warns_and_matches_saelens(tmp_path):
    shutil.copytree(FIXTURES / "standard", tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    ref = load_file(FIXTURES / "standard" / "reference.safetensors")
    with pytest.warns(UserWarning, match="norm_scaling_factor"):
        sae = SAE.load_from_disk(tmp_path / "s")
    torch.testing.assert_close(sae.encode(ref["x"]), ref["codes"])  # SAELens 6 applies nothing either
    scaled = SAE.load_from_disk(tmp_path / "s", norm_scaling_factor=2.0)
    torch.testing.assert_close(scaled.encode(ref["x"] / 2.0), ref["codes"], atol=1e-5, rtol=1e-5)


def test_load_keeps_stored_dtype_unless_asked(tmp_path):
    sae = SAE.load_from_disk(FIXTURES / "jumprelu")
    sae.to(torch.bfloat16).save_pretrained(tmp_path)
    assert SAE.load_from_disk(tmp_path).dtype == torch.bfloat16
    up = SAE.load_from_disk(tmp_path, dtype="float32")
    assert up.dtype == torch.float32 and up.cfg.dtype == "float32"
    assert up.cfg.provenance.conversions[-1] == "cast bfloat16->float32"


def test_load_assigns_mapped_tensors_without_random_init(monkeypatch):
    def boom(self):
        raise AssertionError("reset_parameters ran during load")

    monkeypatch.setattr(SAE, "reset_parameters", boom)
    sae = SAE.load_from_disk(FIXTURES / "topk")
    assert sae.W_enc.device.type == "cpu" and not sae.W_enc.is_meta
    ref = load_file(FIXTURES / "topk" / "sae_weights.safetensors")
    assert torch.equal(sae.W_enc, ref["W_enc"])


def test_in_place_fold_does_not_modify_the_file(tmp_path):
    shutil.copytree(FIXTURES / "jumprelu", tmp_path / "j")
    before = (tmp_path / "j" / "sae_weights.safetensors").read_bytes()
    sae = SAE.load_from_disk(tmp_path / "j")
    sae.fold_W_dec_norm()
    del sae
    assert (tmp_path / "j" / "sae_weights.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def folder(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "standard", tmp_path / "sae")
    return tmp_path / "sae"


def test_missing_weights_file(folder):
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(MissingFileError) as e:
        SAE.load_from_disk(folder, format="saelens")
    assert "sae_weights.safetensors" in str(e.value)
    with pytest.raises(FormatDetectionError, match=r"cfg\.json"):  # autodetect lists what it found
        SAE.load_from_disk(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(MissingFileError):
        SAE.load_from_disk(tmp_path / "nope")


def test_truncated_safetensors(folder):
    p = folder / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated") as e:
        SAE.load_from_disk(folder)
    assert e.value.path == str(p)


@pytest.mark.parametrize("payload", [b"", b"\x01\x02", struct.pack("<Q", 10) + b"{not json}", b"garbage" * 10])
def test_corrupt_safetensors_header(folder, payload):
    (folder / "sae_weights.safetensors").write_bytes(payload)
    with pytest.raises(CorruptFileError) as e:
        SAE.load_from_disk(folder)
    assert "sae_weights.safetensors" in str(e.value)


def test_cfg_not_json(folder):
    (folder / "cfg.json").write_text("{'d_in': 16,")
    with pytest.raises(CorruptFileError, match="not valid JSON") as e:
        SAE.load_from_disk(folder)
    assert e.value.path.endswith("cfg.json")


@pytest.mark.parametrize("field", ["d_in", "d_sae", "architecture"])
def test_cfg_missing_required_field(folder, field):
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg[field]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(folder)
    assert e.value.field == field and e.value.path.endswith("cfg.json")


def test_shapes_disagree_with_config(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_sae"] = 65
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError, match=r"W_enc has shape \[16, 64\]") as e:
        SAE.load_from_disk(folder)
    assert e.value.field == "W_enc"


def test_missing_tensor_for_architecture(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "jumprelu"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError, match="threshold"):
        SAE.load_from_disk(folder)


def test_unknown_architecture(folder):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "matching_pursuit"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError, match="matching_pursuit") as e:
        SAE.load_from_disk(folder)
    assert e.value.field == "architecture" and e.value.path.endswith("cfg.json")


def test_unknown_loader_option_is_rejected(folder):
    with pytest.raises(ConfigError, match="top_k"):
        SAE.load_from_disk(folder, top_k=3)


def test_every_error_is_a_sae_hub_error():
    for exc in (MissingFileError, CorruptFileError, ConfigError, ShapeMismatchError, UnknownArchitectureError,
                FormatDetectionError):
        assert issubclass(exc, SaeHubError)


def test_our_safetensors_writer_is_read_by_the_safetensors_library(tmp_path):
    """The writer streams bytes itself; the reference reader must agree on every dtype and shape."""
    from safetensors import safe_open

    from sae_hub.files import write_safetensors_atomic

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "c": torch.arange(6, dtype=torch.int64).reshape(2, 3), "d": torch.tensor(2.5),
               "e": torch.zeros(0, 4), "f": torch.randn(4, 2, generator=g).T,  # non-contiguous
               "g": torch.tensor([True, False])}
    # two large transposed matrices take the path that copies them on worker threads
    big = {"w1": torch.randn(600, 700, generator=g).T, "w2": torch.randn(700, 600, generator=g).T,
           "w3": torch.randn(512, 1024, generator=g)[:, ::2]}
    for case in (tensors, {**tensors, **big}):
        write_safetensors_atomic(tmp_path / "x.safetensors", case, metadata={"format": "pt"})
        back = load_file(tmp_path / "x.safetensors")
        assert set(back) == set(case)
        for k, t in case.items():
            assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_written_tensors_are_aligned_when_read_back_with_mixed_dtypes(tmp_path):
    """A float32 tensor written after an odd-length float16 one used to start at an odd offset (the writer laid
    tensors out by name); the safetensors writer orders them by alignment, so every mapped tensor is aligned."""
    from sae_hub.files import read_safetensors, write_safetensors_atomic

    g = torch.Generator().manual_seed(0)
    tensors = {"a_half": torch.randn(3, generator=g).half(), "b_float": torch.randn(5, generator=g),
               "c_byte": torch.tensor([1], dtype=torch.int8), "d_double": torch.randn(3, generator=g).double(),
               "e_bf16": torch.randn(7, generator=g).bfloat16(), "f_long": torch.arange(3)}
    write_safetensors_atomic(tmp_path / "mixed.safetensors", tensors, metadata={"format": "pt"})
    ours, _ = read_safetensors(tmp_path / "mixed.safetensors")
    theirs = load_file(tmp_path / "mixed.safetensors")
    for back in (ours, theirs):
        assert set(back) == set(tensors)
        for k, t in tensors.items():
            assert back[k].data_ptr() % back[k].element_size() == 0, k
            assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
