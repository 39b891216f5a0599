"""llamascopium (lm-saes) era-C CLT and crosscoder loaders (loaders/lm_saes_multilayer.py).

Fixtures written by llamascopium 2.0.0b34's own save code (tests/fixtures/llamascopium_clt) load with no format hint
and reproduce the library's codes and reconstructions; generated cases in the library's layout (other shapes,
topk, bfloat16) are checked against the library's formula written out here with loops in float64; bad files are
typed errors naming the file and the tensor."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_hub import SAE
from sae_hub.errors import ConfigError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.loading import detect_format
from sae_hub.multilayer import CrossCoder, MultiLayerDictionary

LS = Path(__file__).parent / "fixtures" / "llamascopium_clt"
CLT_CASES = ["clt_relu", "clt_jumprelu_decoder_norm", "clt_jumprelu_dataset_wise"]
CC_CASES = ["crosscoder_relu", "crosscoder_jumprelu", "crosscoder_jumprelu_dataset_wise"]


@pytest.mark.parametrize("case", CLT_CASES)
def test_llamascopium_clt_fixtures_load_whole_and_match_the_library(case: str) -> None:
    assert detect_format(LS / case) == "llamascopium-clt"
    m = MultiLayerDictionary.load_from_disk(LS / case)
    ref = load_file(LS / case / "reference.safetensors")
    n = m.cfg.n_layers
    assert m.cfg.kind == "clt" and m.cfg.layers == list(range(n))
    assert m.cfg.hook_names_in == [f"blocks.{i}.ln2.hook_normalized" for i in range(n)]
    assert m.cfg.hook_names_out == [f"blocks.{i}.hook_mlp_out" for i in range(n)]
    xs = [ref[f"x.{i}"] for i in range(n)]
    feats = m.encode_all(xs)
    out = m(xs)
    for i in range(n):
        assert (feats[i] - ref["codes"][:, i]).abs().max().item() <= 1e-5
        assert (out[i] - ref["recon"][i]).abs().max().item() <= 1e-5
    fired = torch.stack([feats[i] > 0 for i in range(n)]).float().mean().item()
    assert 0.05 < fired < 0.95  # the gate decides something in every case
    assert any("regrouped" in c for c in m.cfg.provenance.conversions)
    if "dataset_wise" in case:
        assert any("dataset-wise" in c for c in m.cfg.provenance.conversions)


@pytest.mark.parametrize("case", CC_CASES)
def test_llamascopium_crosscoder_fixtures_load_whole_and_match_the_library(case: str) -> None:
    assert detect_format(LS / case) == "llamascopium-crosscoder"
    cc = CrossCoder.load_from_disk(LS / case)
    ref = load_file(LS / case / "reference.safetensors")
    n = cc.cfg.n_sites
    xs = [ref[f"x.{h}"] for h in range(n)]
    feats = cc.encode(xs)
    outs = cc(xs)
    for h in range(n):
        assert (feats[h] - ref["codes"][:, h]).abs().max().item() <= 1e-5
        assert (outs[h] - ref["recon"][:, h]).abs().max().item() <= 1e-5
    assert cc.cfg.hook_names == json.loads((LS / case / "config.json").read_text())["hook_points"]


@pytest.mark.parametrize("case", ["clt_relu", "crosscoder_relu"])
def test_the_wrong_class_names_the_right_one(case: str) -> None:
    want = "MultiLayerDictionary" if case.startswith("clt") else "CrossCoder"
    with pytest.raises(UnsupportedSAEError, match=want) as e:
        SAE.load_from_disk(LS / case)
    assert e.value.field == "format"
    other = CrossCoder if case.startswith("clt") else MultiLayerDictionary
    with pytest.raises(UnsupportedSAEError, match=want):
        other.load_from_disk(LS / case)


# ---------------------------------------------------------------------- generated cases (library layout)


def _write_clt(folder: Path, *, n: int = 4, d: int = 6, s: int = 10, act: str = "relu", sidn: bool = False,
               k: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0,
               norm: str = "inference") -> dict[str, torch.Tensor]:
    """A CLT in llamascopium's files: W_E [n, d, s], b_E [n, s], W_D.{t} [t+1, s, d], b_D.{t} [d]."""
    g = torch.Generator().manual_seed(seed)
    sd = {"W_E": torch.randn(n, d, s, generator=g) / math.sqrt(d), "b_E": torch.randn(n, s, generator=g) * 0.2}
    for t in range(n):
        sd[f"W_D.{t}"] = torch.randn(t + 1, s, d, generator=g) / math.sqrt(s)
        sd[f"b_D.{t}"] = torch.randn(d, generator=g) * 0.3
    if act == "jumprelu":
        sd["activation_function.log_jumprelu_threshold"] = (torch.rand(n, s, generator=g) * 0.4 + 0.05).log()
    sd = {key: v.to(dtype) for key, v in sd.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "sae_weights.safetensors"), metadata={"version": "2.0.0b34"})
    cfg = {"sae_type": "clt", "d_model": d, "expansion_factor": s / d, "use_decoder_bias": True, "act_fn": act,
           "norm_activation": norm, "sparsity_include_decoder_norm": sidn, "top_k": k or 50,
           "hook_points_in": [f"blocks.{i}.ln2.hook_normalized" for i in range(n)],
           "hook_points_out": [f"blocks.{i}.hook_mlp_out" for i in range(n)]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return sd


def _library_formula(sd: dict[str, torch.Tensor], xs: list[torch.Tensor], act: str, sidn: bool,
                     k: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """llamascopium's CrossLayerTranscoder.encode/decode in float64, in its own layout: hidden = x_i W_E[i] + b_E[i],
    times the feature's norm over every decoder when sidn, activation, divided back; y_t = sum_{i<=t} c_i W_D.t[i]
    + b_D.t."""
    n = sd["W_E"].shape[0]
    sdd = {key: v.double() for key, v in sd.items()}
    codes = []
    for i in range(n):
        h = xs[i].double() @ sdd["W_E"][i] + sdd["b_E"][i]
        norm = torch.sqrt(sum(sdd[f"W_D.{t}"][i].pow(2).sum(-1) for t in range(i, n))) if sidn else None
        if norm is not None:
            h = h * norm
        if act == "relu":
            c = h * (h > 0)
        elif act == "jumprelu":
            c = h * (h > sdd["activation_function.log_jumprelu_threshold"][i].exp())
        else:
            r = h * (h > 0)
            c = torch.zeros_like(r)
            for row in range(r.shape[0]):
                top = torch.argsort(r[row], descending=True)[:k]
                c[row, top] = r[row, top]
        codes.append(c / norm if norm is not None else c)
    recon = [sum(codes[i] @ sdd[f"W_D.{t}"][i] for i in range(t + 1)) + sdd[f"b_D.{t}"] for t in range(n)]
    return codes, recon


@pytest.mark.parametrize("act,sidn,k,dtype,tol", [
    ("relu", False, None, torch.float32, 1e-5),
    ("relu", True, None, torch.float32, 1e-5),
    ("jumprelu", True, None, torch.float32, 1e-5),
    ("jumprelu", False, None, torch.float32, 1e-5),
    ("topk", False, 3, torch.float32, 1e-5),
    ("jumprelu", True, None, torch.bfloat16, 0.05),
])
def test_generated_clts_match_the_library_formula(tmp_path: Path, act: str, sidn: bool, k: int | None,
                                                  dtype: torch.dtype, tol: float) -> None:
    sd = _write_clt(tmp_path / "c", act=act, sidn=sidn, k=k, dtype=dtype, seed=7)
    m = MultiLayerDictionary.load_from_disk(tmp_path / "c")
    assert m.dtype == dtype and m.cfg.architecture == act and m.cfg.d_sae == [10] * 4
    xs = [torch.randn(12, 6, generator=torch.Generator().manual_seed(50 + i)).to(dtype) for i in range(4)]
    codes, recon = _library_formula(sd, xs, act, sidn, k)
    feats, out = m.encode_all(xs), m(xs)
    for i in range(4):
        scale = 1 + recon[i].abs().max().item() if dtype == torch.bfloat16 else 1
        if dtype == torch.float32:  # bfloat16: a value at a gate may flip; the outputs are compared below
            assert (feats[i].double() - codes[i]).abs().max().item() <= tol
        assert (out[i].double() - recon[i]).abs().max().item() <= tol * scale
    if act == "topk":
        assert all(int((feats[i] > 0).sum(-1).max()) <= 3 for i in range(4))


def test_dataset_wise_norm_is_folded_and_can_be_supplied(tmp_path: Path) -> None:
    sd = _write_clt(tmp_path / "d", act="jumprelu", sidn=True, norm="dataset-wise", seed=3)
    with pytest.raises(ConfigError, match="dataset_average_activation_norm") as e:
        MultiLayerDictionary.load_from_disk(tmp_path / "d")
    assert e.value.field == "dataset_average_activation_norm.blocks.0.ln2.hook_normalized"
    assert str(e.value.path).endswith("sae_weights.safetensors")
    norms = {f"blocks.{i}.ln2.hook_normalized": 2.0 + i for i in range(4)}
    norms.update({f"blocks.{i}.hook_mlp_out": 5.0 - i for i in range(4)})
    m = MultiLayerDictionary.load_from_disk(tmp_path / "d", dataset_average_activation_norm=norms)
    s = {h: math.sqrt(6) / v for h, v in norms.items()}
    xs = [torch.randn(9, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    codes, recon = _library_formula(sd, [x * s[f"blocks.{i}.ln2.hook_normalized"] for i, x in enumerate(xs)],
                                    "jumprelu", True, None)
    feats, out = m.encode_all(xs), m(xs)
    for i in range(4):
        assert (feats[i].double() - codes[i]).abs().max().item() <= 1e-5  # the library's codes, unscaled
        want = recon[i] / s[f"blocks.{i}.hook_mlp_out"]
        assert (out[i].double() - want).abs().max().item() <= 1e-5
    with pytest.raises(ConfigError) as e:
        MultiLayerDictionary.load_from_disk(tmp_path / "d",
                                            dataset_average_activation_norm={**norms, next(iter(norms)): -1.0})
    assert e.value.field.startswith("dataset_average_activation_norm.")


# ---------------------------------------------------------------------- refusals and bad files


@pytest.mark.parametrize("act,sidn,norm,field", [
    ("batchtopk", False, "inference", "act_fn"),
    ("layertopk", False, "inference", "act_fn"),
    ("batchlayertopk", False, "inference", "act_fn"),
    ("topk", True, "inference", "act_fn"),
    ("relu", False, "token-wise", "norm_activation"),
    ("relu", False, "batch-wise", "norm_activation"),
])
def test_what_the_canonical_type_cannot_state_is_refused(tmp_path: Path, act: str, sidn: bool, norm: str,
                                                         field: str) -> None:
    _write_clt(tmp_path / "r", act=act, sidn=sidn, k=3, norm=norm)
    with pytest.raises(UnsupportedSAEError) as e:
        MultiLayerDictionary.load_from_disk(tmp_path / "r")
    assert e.value.field == field and str(e.value.path).endswith("config.json")


def _mutated(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "bad"
    sd = _write_clt(folder)
    mutate(sd)
    save_file(sd, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.mark.parametrize("mutate,field", [
    (lambda sd: sd.pop("W_D.2"), "W_D.2"),  # a missing layer's decoders
    (lambda sd: sd.update({"W_D.2": torch.zeros(2, 10, 6)}), "W_D.2"),  # target 2 needs 3 sources
    (lambda sd: sd.update({"W_D.1": torch.zeros(2, 11, 6)}), "W_D.1"),  # mismatched d_sae
    (lambda sd: sd.update({"b_E": torch.zeros(4, 9)}), "b_E"),  # mismatched d_sae
    (lambda sd: sd.update({"W_E": torch.zeros(3, 6, 10)}), "W_E"),  # 3 encoders for 4 hooks
    (lambda sd: sd.update({"W_D.4": torch.zeros(5, 10, 6)}), "W_D.4"),  # a target beyond the layers
    (lambda sd: sd.pop("b_D.3"), "b_D.3"),
])
def test_bad_clt_files_are_typed_errors_naming_file_and_tensor(tmp_path: Path, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    folder = _mutated(tmp_path, mutate)
    with pytest.raises(ShapeMismatchError) as e:
        MultiLayerDictionary.load_from_disk(folder, format="llamascopium-clt")
    assert e.value.field == field and str(e.value.path).endswith("sae_weights.safetensors")


def test_hook_count_mismatch_is_a_config_error(tmp_path: Path) -> None:
    _write_clt(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    cfg["hook_points_out"] = cfg["hook_points_out"][:3]
    (tmp_path / "h" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        MultiLayerDictionary.load_from_disk(tmp_path / "h")
    assert e.value.field == "hook_points_out"


def test_crosscoder_bad_tensors_and_refusals(tmp_path: Path) -> None:
    folder = tmp_path / "cc"
    shutil.copytree(LS / "crosscoder_jumprelu", folder)
    sd = load_file(folder / "sae_weights.safetensors")
    save_file({**sd, "W_D": sd["W_D"][:2]}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ShapeMismatchError) as e:
        CrossCoder.load_from_disk(folder)
    assert e.value.field == "W_D" and str(e.value.path).endswith("sae_weights.safetensors")
    save_file({**sd, "activation_function.log_jumprelu_threshold": torch.zeros(47)},
              str(folder / "sae_weights.safetensors"))
    with pytest.raises(ShapeMismatchError) as e:
        CrossCoder.load_from_disk(folder)
    assert e.value.field == "activation_function.log_jumprelu_threshold"
    save_file(sd, str(folder / "sae_weights.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "act_fn": "topk"}))
    with pytest.raises(UnsupportedSAEError) as e:
        CrossCoder.load_from_disk(folder)
    assert e.value.field == "act_fn"


def test_zero_decoder_feature_never_fires(tmp_path: Path) -> None:
    """The library's 0/0 would be NaN; here a feature with no decoder weight has an infinite threshold."""
    sd = _write_clt(tmp_path / "z", act="jumprelu", sidn=True)
    for t in range(4):
        sd[f"W_D.{t}"][0, 2] = 0.0
    save_file(sd, str(tmp_path / "z" / "sae_weights.safetensors"))
    m = MultiLayerDictionary.load_from_disk(tmp_path / "z")
    assert math.isinf(m.threshold[0][2].item())  # type: ignore[index]
    f = m.encode(0, torch.full((2, 6), 100.0))
    assert torch.isfinite(f).all() and (f[:, 2] == 0).all()
