"""circuit-tracer 0.5.0 transcoder sets and CLTs: the library's own files (tests/fixtures/circuit_tracer, written by
``TranscoderSet.to_safetensors`` / ``CrossLayerTranscoder.to_safetensors``) load with no format hint and reproduce
the library's features and outputs; malformed file sets are typed errors naming the file and the tensor.

Malformed sets are made by rewriting fixture files with ``safetensors.torch.save_file`` (an independent writer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hub import SAE, detect_format
from sae_hub.errors import (
    ConfigError,
    FormatDetectionError,
    MissingFileError,
    SaeHubError,
    ShapeMismatchError,
    UnsupportedSAEError,
)
from sae_hub.multilayer import MultiLayerDictionary

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
CASES = {
    "transcoder_set_jumprelu_skip": ("circuit-tracer-transcoders", "transcoder_set", "jumprelu", True,
                                     "mlp.hook_in", "mlp.hook_out", "Qwen/Qwen3-0.6B"),
    "transcoder_set_relu": ("circuit-tracer-transcoders", "transcoder_set", "relu", False,
                            "hook_resid_mid", "hook_mlp_out", "google/gemma-2-2b"),
    "clt_jumprelu": ("circuit-tracer-clt", "clt", "jumprelu", False, "hook_resid_mid", "hook_mlp_out",
                     "google/gemma-2-2b"),
    "clt_relu": ("circuit-tracer-clt", "clt", "relu", False, "hook_resid_mid", "hook_mlp_out",
                 "meta-llama/Llama-3.2-1B"),
}
TOL = 1e-5


def _ref(case: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / case / "reference.safetensors")


def _copy(case: str, tmp_path: Path) -> Path:
    dst = tmp_path / case
    shutil.copytree(FIXTURES / case, dst)
    (dst / "reference.safetensors").unlink()
    (dst / "case.json").unlink()
    return dst


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_loads_without_hint_and_reproduces_library(case: str) -> None:
    fmt, kind, arch, skip, hin, hout, model = CASES[case]
    path = FIXTURES / case
    assert detect_format(path) == fmt
    m = MultiLayerDictionary.load_from_disk(path)
    cfg = m.cfg
    assert (cfg.kind, cfg.architecture, cfg.has_skip, cfg.model_name) == (kind, arch, skip, model)
    assert cfg.provenance.source_format == fmt
    ref = _ref(case)
    n = ref["x"].shape[0]
    assert cfg.layers == list(range(n))
    assert cfg.hook_names_in == [f"blocks.{i}.{hin}" for i in range(n)]
    assert cfg.hook_names_out == [f"blocks.{i}.{hout}" for i in range(n)]
    feats = m.encode_all(ref["x"])
    out = m(ref["x"])  # skip terms included where the set has them
    for i in range(n):
        assert (feats[i] - ref["codes"][i]).abs().max().item() <= TOL
        assert (m.encode(i, ref["x"][i]) - ref["codes"][i]).abs().max().item() <= TOL
        assert (out[i] - ref["recon"][i]).abs().max().item() <= TOL
    # decode from the library's own codes reproduces its outputs too (skip added by hand)
    dec = m.decode(ref["codes"])
    for i in range(n):
        expect = ref["recon"][i] - (ref["x"][i] @ m.W_skip[i].T if skip else 0)
        assert (dec[i] - expect).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["transcoder_set_jumprelu_skip", "transcoder_set_relu"])
def test_one_layer_file_is_an_sae_transcoder(case: str) -> None:
    ref = _ref(case)
    _, _, arch, skip, hin, hout, _ = CASES[case]
    whole = MultiLayerDictionary.load_from_disk(FIXTURES / case)
    for i in range(ref["x"].shape[0]):
        f = FIXTURES / case / f"layer_{i}.safetensors"
        assert detect_format(f) == "circuit-tracer-transcoder"
        sae = SAE.load_from_disk(f)
        assert (sae.cfg.architecture, sae.cfg.has_skip) == (arch, skip)
        assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == (f"blocks.{i}.{hin}", f"blocks.{i}.{hout}")
        assert (sae.encode(ref["x"][i]) - ref["codes"][i]).abs().max().item() <= TOL
        assert (sae(ref["x"][i]) - ref["recon"][i]).abs().max().item() <= TOL
        view = whole.layer_sae(i)  # the per-layer view of the set is the same SAE
        for name, t in sae.state_dict().items():
            assert torch.equal(view.state_dict()[name], t), name


def test_wrong_class_for_the_files_is_a_typed_error() -> None:
    """Before the multi-layer loaders, these folders were a FormatDetectionError; now SAE says which class reads them
    and MultiLayerDictionary refuses a single-layer file."""
    for case in CASES:
        with pytest.raises(UnsupportedSAEError, match="MultiLayerDictionary") as e:
            SAE.load_from_disk(FIXTURES / case)
        assert e.value.path == str(FIXTURES / case) and e.value.field == "format"
    with pytest.raises(UnsupportedSAEError, match="SAE.load_from_disk"):
        MultiLayerDictionary.load_from_disk(FIXTURES / "transcoder_set_relu" / "layer_0.safetensors")


def test_loading_keeps_the_files_tensors_without_a_copy() -> None:
    m = MultiLayerDictionary.load_from_disk(FIXTURES / "clt_jumprelu")
    assert not m.W_enc[0].is_contiguous()  # the file's [d_sae, d_in] seen transposed, not copied
    assert m.W_dec[1].shape == (40, 2, 16)  # the file's own layout kept as the target axis


# ---------------------------------------------------------------------- malformed CLT file sets


def test_clt_missing_layer_names_file_and_tensor(tmp_path: Path) -> None:
    d = _copy("clt_jumprelu", tmp_path)
    (d / "W_enc_1.safetensors").unlink()
    with pytest.raises(MissingFileError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "W_enc_1.safetensors") and e.value.field == "W_enc_1"
    d2 = _copy("clt_relu", tmp_path / "b")
    (d2 / "W_dec_1.safetensors").unlink()
    with pytest.raises(MissingFileError) as e:
        MultiLayerDictionary.load_from_disk(d2)
    assert e.value.path == str(d2 / "W_dec_1.safetensors") and e.value.field == "W_dec_1"


def test_clt_mismatched_d_sae_names_file_and_tensor(tmp_path: Path) -> None:
    d = _copy("clt_jumprelu", tmp_path)
    t = load_file(d / "W_enc_2.safetensors")
    t = {k: torch.cat([v, v[:8]]) if k != "b_dec_2" else v for k, v in t.items()}  # 48 features instead of 40
    save_file(t, d / "W_enc_2.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "W_enc_2.safetensors") and e.value.field == "W_enc_2"
    # the decoder of a layer disagreeing with its own encoder's width
    d2 = _copy("clt_relu", tmp_path / "b")
    w = load_file(d2 / "W_dec_0.safetensors")["W_dec_0"]
    save_file({"W_dec_0": w[:-1].contiguous()}, d2 / "W_dec_0.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d2)
    assert e.value.path == str(d2 / "W_dec_0.safetensors") and e.value.field == "W_dec_0"


def test_clt_target_count_disagreeing_with_layer_count(tmp_path: Path) -> None:
    d = _copy("clt_jumprelu", tmp_path)
    w = load_file(d / "W_dec_1.safetensors")["W_dec_1"]  # [40, 2, 16]: layer 1 of 3 writes to 2 layers
    save_file({"W_dec_1": w[:, :1].contiguous()}, d / "W_dec_1.safetensors")
    with pytest.raises(ShapeMismatchError, match="needs 2") as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "W_dec_1.safetensors") and e.value.field == "W_dec_1"
    # a fourth layer's files: now layer 0's decoder (3 targets) is one short of the 4 layers
    d2 = _copy("clt_relu", tmp_path / "b")
    enc = load_file(d2 / "W_enc_1.safetensors")
    save_file({k.replace("_1", "_2"): v for k, v in enc.items()}, d2 / "W_enc_2.safetensors")
    save_file({"W_dec_2": load_file(d2 / "W_dec_1.safetensors")["W_dec_1"]}, d2 / "W_dec_2.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d2)
    assert e.value.path == str(d2 / "W_dec_0.safetensors") and e.value.field == "W_dec_0"


def test_clt_stray_missing_or_inconsistent_tensors(tmp_path: Path) -> None:
    d = _copy("clt_jumprelu", tmp_path)
    t = load_file(d / "W_enc_1.safetensors")
    save_file({**t, "W_skip_1": torch.zeros(16, 16)}, d / "W_enc_1.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "W_enc_1.safetensors") and e.value.field == "W_skip_1"
    save_file({k: v for k, v in t.items() if k != "threshold_1"}, d / "W_enc_1.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.field == "threshold_1"
    save_file({k: v for k, v in t.items() if k != "b_dec_1"}, d / "W_enc_1.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "W_enc_1.safetensors") and e.value.field == "b_dec_1"


# ---------------------------------------------------------------------- malformed transcoder sets


def test_transcoder_set_missing_layer(tmp_path: Path) -> None:
    d = _copy("transcoder_set_jumprelu_skip", tmp_path)
    (d / "layer_1.safetensors").unlink()
    with pytest.raises(MissingFileError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "layer_1.safetensors")


def test_transcoder_set_bad_layer_files(tmp_path: Path) -> None:
    d = _copy("transcoder_set_jumprelu_skip", tmp_path)
    t = load_file(d / "layer_2.safetensors")
    save_file({k: v for k, v in t.items() if k != "W_skip"}, d / "layer_2.safetensors")
    with pytest.raises(UnsupportedSAEError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "layer_2.safetensors") and e.value.field == "W_skip"
    save_file({**t, "log_thresholds": t["b_enc"].clone()}, d / "layer_2.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.field == "log_thresholds"
    save_file({**t, "b_dec": t["b_dec"][:-1].contiguous()}, d / "layer_2.safetensors")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "layer_2.safetensors") and e.value.field == "b_dec"


def test_config_yaml_that_disagrees_is_refused(tmp_path: Path) -> None:
    d = _copy("transcoder_set_relu", tmp_path)
    (d / "config.yaml").write_text("model_kind: cross_layer_transcoder\nfeature_input_hook: hook_resid_mid\n")
    with pytest.raises(ConfigError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "config.yaml") and e.value.field == "model_kind"
    (d / "config.yaml").write_text("model_kind: transcoder_set\ntranscoders:\n  - hf://google/gemma-scope-2b-pt-"
                                   "transcoders/layer_0/width_16k/average_l0_76/params.npz\n")
    with pytest.raises(UnsupportedSAEError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.field == "transcoders"
    (d / "config.yaml").write_text("model_kind: transcoder_set\n")
    (d / "wanb-config.yaml").write_text("d_model: {value: 16}\nd_feature: {value: 64}\n")
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(d)
    assert e.value.path == str(d / "wanb-config.yaml") and e.value.field == "d_feature"


def test_without_config_hooks_come_from_options(tmp_path: Path) -> None:
    d = _copy("clt_relu", tmp_path)
    (d / "config.yaml").unlink()
    m = MultiLayerDictionary.load_from_disk(d)
    assert m.cfg.hook_names_in == [None, None] and m.cfg.model_name is None
    m = MultiLayerDictionary.load_from_disk(d, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out")
    assert m.cfg.hook_names_out == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    with pytest.raises(ConfigError):
        MultiLayerDictionary.load_from_disk(d, feature_input_hook=3)


def test_negative_threshold_loads_exactly_as_a_set_and_is_refused_as_an_sae(tmp_path: Path) -> None:
    """circuit-tracer's JumpReLU is z * (z > threshold): with a negative threshold a negative pre-activation above it
    passes through. The set computes that; an SAE (relu(z) * (z > threshold)) cannot, so the single file is refused."""
    d = _copy("transcoder_set_jumprelu_skip", tmp_path)
    t = load_file(d / "layer_0.safetensors")
    th = t["activation_function.threshold"].clone()
    th[:8] = -5.0
    save_file({**t, "activation_function.threshold": th}, d / "layer_0.safetensors")
    x = _ref("transcoder_set_jumprelu_skip")["x"][0]
    m = MultiLayerDictionary.load_from_disk(d)
    z = x @ t["W_enc"].T + t["b_enc"]
    expect = z * (z > th)
    assert bool((expect < 0).any())  # the case is real: some features pass negative values
    assert (m.encode(0, x) - expect).abs().max().item() <= TOL
    with pytest.raises(UnsupportedSAEError) as e:
        SAE.load_from_disk(d / "layer_0.safetensors")
    assert e.value.field == "activation_function.threshold"
    with pytest.raises(UnsupportedSAEError):
        m.layer_sae(0)
    assert m.layer_sae(1).cfg.architecture == "jumprelu"


def test_unrelated_folder_is_not_claimed(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "layer_0.safetensors")
    with pytest.raises(FormatDetectionError):
        detect_format(tmp_path)
    with pytest.raises(SaeHubError):
        MultiLayerDictionary.load_from_disk(tmp_path, format="circuit-tracer-transcoders")
