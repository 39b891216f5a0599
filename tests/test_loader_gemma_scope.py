"""Gemma Scope 1 (``params.npz``) and Gemma Scope 2 (``params.safetensors``) loaders.

Reference semantics (Google's published JumpReLU module, as in the Gemma Scope tutorials):
``pre = x @ W_enc + b_enc``; ``acts = (pre > threshold) * relu(pre)``; ``recon = acts @ W_dec + b_dec``;
affine transcoders add ``x @ affine_skip_connection``. Embedding SAEs (Gemma Scope 1) are rescaled as SAELens
does: ``W_enc / sqrt(d_in)``, ``W_dec * sqrt(d_in)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sae_hub import SAE, detect_format
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    ShapeMismatchError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
    UnsupportedSAEError,
)

D_IN, D_SAE = 16, 64
ATOL = RTOL = 1e-5


def _params(d_out: int = D_IN, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.normal(size=(D_IN, D_SAE)) * 0.3).astype(np.float32),
        "W_dec": (rng.normal(size=(D_SAE, d_out)) * 0.3).astype(np.float32),
        "b_enc": (rng.normal(size=D_SAE) * 0.3).astype(np.float32),
        "b_dec": (rng.normal(size=d_out) * 0.5).astype(np.float32),
        "threshold": (np.abs(rng.normal(size=D_SAE)) * 0.8 + 0.05).astype(np.float32),
    }


def reference(p: dict[str, np.ndarray], x: torch.Tensor, skip: np.ndarray | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = {k.lower(): torch.from_numpy(v).float() for k, v in p.items()}
    pre = x @ t["w_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    recon = acts @ t["w_dec"] + t["b_dec"]
    out = recon + x @ torch.from_numpy(skip).float() if skip is not None else recon
    return acts, recon, out


def _x(n: int = 32, seed: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 2 + torch.randn(D_IN, generator=g)


def _check(sae: SAE, x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor, out: torch.Tensor) -> None:
    assert (acts != 0).any() and (acts == 0).any()
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes, acts, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(sae.decode(codes), recon, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(sae(x), out, atol=ATOL, rtol=RTOL)


# ================================================================================ Gemma Scope 1


def write_npz(folder: Path, p: dict[str, np.ndarray], lowercase: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{(k.lower() if lowercase else k): v for k, v in p.items()})
    return folder


@pytest.mark.parametrize(("repo", "hook", "hook_out", "reshape"), [
    ("gemma-scope-2b-pt-res", "blocks.5.hook_resid_post", None, "none"),
    ("models--google--gemma-scope-9b-it-res", "blocks.5.hook_resid_post", None, "none"),
    ("gemma-scope-2b-pt-mlp", "blocks.5.hook_mlp_out", None, "none"),
    ("gemma-scope-2b-pt-att", "blocks.5.attn.hook_z", None, "hook_z"),
    ("gemma-scope-2b-pt-transcoders", "blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out", "none"),
    ("somewhere-else", None, None, "none"),
])
def test_gemma_scope_1(tmp_path, repo, hook, hook_out, reshape):
    p = _params(seed=1)
    folder = write_npz(tmp_path / repo / "layer_5" / "width_16k" / "average_l0_68", p)
    assert detect_format(folder) == "gemma-scope"
    sae = SAE.load_from_disk(folder)
    _check(sae, _x(), *reference(p, _x()))
    c = sae.cfg
    assert (c.architecture, c.d_in, c.d_sae, c.apply_b_dec_to_input) == ("jumprelu", D_IN, D_SAE, False)
    assert (c.hook_name, c.hook_name_out, c.reshape_activations) == (hook, hook_out, reshape)
    if "9b-it" in repo:
        assert c.model_name == "google/gemma-2-9b-it"
    elif "2b" in repo:
        assert c.model_name == "google/gemma-2-2b"


def test_gemma_scope_1_file_path_and_lowercase_keys(tmp_path):
    p = _params(seed=2)
    folder = write_npz(tmp_path / "x", p, lowercase=True)
    sae = SAE.load_from_disk(folder / "params.npz")
    _check(sae, _x(), *reference(p, _x()))


def test_gemma_scope_1_embedding_rescaling(tmp_path):
    p = _params(seed=3)
    folder = write_npz(tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_4k" / "average_l0_6", p)
    sae = SAE.load_from_disk(folder)
    s = math.sqrt(D_IN)
    q = {**p, "W_enc": p["W_enc"] / s, "W_dec": p["W_dec"] * s}
    _check(sae, _x(), *reference(q, _x()))
    assert sae.cfg.hook_name == "hook_embed"
    assert any("embedding" in c for c in sae.cfg.provenance.conversions)
    # the option overrides the path, both ways
    plain = SAE.load_from_disk(folder, embedding=False)
    _check(plain, _x(), *reference(p, _x()))
    other = write_npz(tmp_path / "elsewhere", p)
    _check(SAE.load_from_disk(other, embedding=True), _x(), *reference(q, _x()))
    with pytest.raises(ConfigError):
        SAE.load_from_disk(other, embedding="yes")


def test_gemma_scope_1_bad_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "params.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path / "c")
    p = _params()
    folder = write_npz(tmp_path / "t", p)
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(folder)
    obj = tmp_path / "o"
    obj.mkdir()
    np.savez(obj / "params.npz", **p, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeCheckpointError):  # the object array is refused, never unpickled
        SAE.load_from_disk(obj)
    write_npz(tmp_path / "m", {k: v for k, v in p.items() if k != "threshold"})
    with pytest.raises(ShapeMismatchError, match="threshold"):
        SAE.load_from_disk(tmp_path / "m")
    write_npz(tmp_path / "s", {**p, "b_enc": p["b_enc"][:-1]})
    with pytest.raises(ShapeMismatchError, match="b_enc"):
        SAE.load_from_disk(tmp_path / "s")


# ================================================================================ Gemma Scope 2


def write_gs2(folder: Path, p: dict[str, np.ndarray], *, skip: np.ndarray | None = None, config: dict | None = None,
              name: str = "params.safetensors", dtype: torch.dtype = torch.float32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k.lower(): torch.from_numpy(v).to(dtype) for k, v in p.items()}
    if skip is not None:
        sd["affine_skip_connection"] = torch.from_numpy(skip).to(dtype)
    save_file(sd, str(folder / name))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder / name


def test_gemma_scope_2_sae_with_config(tmp_path):
    p = _params(seed=5)
    cfg = {"hf_hook_point_in": "model.layers.7.output", "width": D_SAE, "model_name": "gemma-3-1b-pt",
           "architecture": "jump_relu", "l0": 20, "type": "sae"}
    f = write_gs2(tmp_path / "gemma-scope-2-1b-pt" / "resid_post" / "layer_7_width_16k_l0_small", p, config=cfg)
    assert detect_format(f.parent) == "gemma-scope-2"
    sae = SAE.load_from_disk(f.parent)
    _check(sae, _x(), *reference(p, _x()))
    c = sae.cfg
    assert (c.hook_name, c.hf_hook_name, c.model_name) == ("blocks.7.hook_resid_post", "model.layers.7.output",
                                                           "google/gemma-3-1b-pt")
    assert c.extra["gemma_scope_2"]["l0"] == 20 and not c.is_transcoder


@pytest.mark.parametrize(("kind", "hook", "hook_out", "reshape"), [
    ("resid_post_all", "blocks.3.hook_resid_post", None, "none"),
    ("attn_out", "blocks.3.attn.hook_z", None, "hook_z"),
    ("mlp_out_all", "blocks.3.hook_mlp_out", None, "none"),
    ("transcoder_all", "blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out", "none"),
])
def test_gemma_scope_2_hooks_from_the_folder(tmp_path, kind, hook, hook_out, reshape):
    p = _params(seed=6)
    f = write_gs2(tmp_path / "models--google--gemma-scope-2-4b-it" / "snapshots" / "abc" / kind /
                  "layer_3_width_16k_l0_big", p)
    sae = SAE.load_from_disk(f.parent)
    _check(sae, _x(), *reference(p, _x()))
    c = sae.cfg
    assert (c.hook_name, c.hook_name_out, c.reshape_activations) == (hook, hook_out, reshape)
    assert c.model_name == "google/gemma-3-4b-it"


def test_gemma_scope_2_affine_transcoder(tmp_path):
    d_out = 12
    p = _params(d_out=d_out, seed=7)
    skip = (np.random.default_rng(8).normal(size=(D_IN, d_out)) * 0.2).astype(np.float32)
    cfg = {"hf_hook_point_in": "model.language_model.layers.4.pre_feedforward_layernorm.output",
           "hf_hook_point_out": "model.language_model.layers.4.post_feedforward_layernorm.output",
           "architecture": "jump_relu", "affine_connection": True, "type": "transcoder"}
    f = write_gs2(tmp_path / "transcoder" / "layer_4_width_16k_l0_big_affine", p, skip=skip, config=cfg)
    sae = SAE.load_from_disk(f.parent)
    assert sae.cfg.has_skip and tuple(sae.W_skip.shape) == (d_out, D_IN)
    _check(sae, _x(), *reference(p, _x(), skip))
    c = sae.cfg
    assert (c.hook_name, c.hook_name_out) == ("blocks.4.hook_mlp_in", "blocks.4.hook_mlp_out")
    assert c.is_transcoder and c.d_out == d_out


def test_gemma_scope_2_bf16(tmp_path):
    """bf16 weights: tolerance 2 % of the largest |value|, on entries whose gate is clear of its threshold by 1 %."""
    p = _params(seed=9)
    f = write_gs2(tmp_path / "bf", p, dtype=torch.bfloat16)
    sae = SAE.load_from_disk(f.parent)
    assert sae.dtype == torch.bfloat16
    q = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in p.items()}
    x = _x(64)
    acts, recon, _ = reference(q, x)
    pre = x @ torch.from_numpy(q["W_enc"]) + torch.from_numpy(q["b_enc"])
    clear = (pre - torch.from_numpy(q["threshold"])).abs() > 0.01 * pre.abs().max()
    with torch.no_grad():
        codes = sae.encode(x).float()
        out = sae.decode(codes).float()
    assert torch.equal((codes != 0)[clear], (acts != 0)[clear])
    assert (codes - acts)[clear].abs().max() <= 0.02 * acts.abs().max()
    rows = ((codes != 0) == (acts != 0)).all(-1)
    assert rows.float().mean() >= 0.75
    assert (out - recon)[rows].abs().max() <= 0.02 * recon.abs().max()


def _clt(tmp_path: Path, n_targets: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(10)
    p = _params(seed=11)
    p["W_dec"] = (rng.normal(size=(D_SAE, n_targets, D_IN)) * 0.3).astype(np.float32)
    f = write_gs2(tmp_path / "clt" / "width_262k_l0_medium", p, name="params_layer_2.safetensors")
    return f, p


def test_gemma_scope_2_clt_is_refused_by_default_and_sliced_on_request(tmp_path):
    f, p = _clt(tmp_path)
    assert detect_format(f) == "gemma-scope-2"
    with pytest.raises(UnsupportedSAEError, match="cross-layer") as e:
        SAE.load_from_disk(f)
    assert "clt_decoder='sum'" in str(e.value)
    summed = SAE.load_from_disk(f, clt_decoder="sum")
    _check(summed, _x(), *reference({**p, "W_dec": p["W_dec"].sum(axis=1)}, _x()))
    assert any("cross-layer structure dropped" in c for c in summed.cfg.provenance.conversions)
    one = SAE.load_from_disk(f, clt_decoder=1)
    _check(one, _x(), *reference({**p, "W_dec": p["W_dec"][:, 1, :]}, _x()))
    for bad in ("mean", 3, True):
        with pytest.raises(ConfigError):
            SAE.load_from_disk(f, clt_decoder=bad)


def test_gemma_scope_2_refusals_and_bad_files(tmp_path):
    p = _params()
    write_gs2(tmp_path / "crosscoder" / "layer_7_13_17_22_width_262k_l0_medium", p)
    with pytest.raises(UnsupportedSAEError, match="crosscoder"):
        SAE.load_from_disk(tmp_path / "crosscoder" / "layer_7_13_17_22_width_262k_l0_medium")
    write_gs2(tmp_path / "a", p, config={"architecture": "top_k"})
    with pytest.raises(UnknownArchitectureError):
        SAE.load_from_disk(tmp_path / "a")
    f = write_gs2(tmp_path / "s", p)
    with pytest.raises(ConfigError):
        SAE.load_from_disk(f.parent, clt_decoder="sum")
    f = write_gs2(tmp_path / "t", p)
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(CorruptFileError, match="truncated"):
        SAE.load_from_disk(f.parent)
    f = write_gs2(tmp_path / "k", {k: v for k, v in p.items() if k != "b_dec"})
    with pytest.raises(ShapeMismatchError, match="b_dec"):
        SAE.load_from_disk(f.parent)
    f = write_gs2(tmp_path / "w", p, skip=np.zeros((D_IN + 1, D_IN), dtype=np.float32))
    with pytest.raises(ShapeMismatchError, match="affine"):
        SAE.load_from_disk(f.parent)
    f = write_gs2(tmp_path / "j", p)
    (f.parent / "config.json").write_text("[1, 2")
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(f.parent)


def test_detection_is_unambiguous(tmp_path):
    from sae_hub.loaders import gemma_scope, gemma_scope_2

    saelens = Path(__file__).parent / "fixtures" / "sae_lens" / "standard"
    lm = Path(__file__).parent / "fixtures" / "llamascopium" / "jumprelu_dataset_wise"
    for other in (saelens, lm):
        assert not gemma_scope.detect(other) and not gemma_scope_2.detect(other)
    assert not gemma_scope_2.detect(saelens / "sae_weights.safetensors")  # upper-case SAELens keys
    f = write_gs2(tmp_path / "g2", _params())
    g1 = write_npz(tmp_path / "g1", _params())
    assert gemma_scope_2.detect(f) and gemma_scope_2.detect(f.parent) and not gemma_scope.detect(f.parent)
    assert gemma_scope.detect(g1) and not gemma_scope_2.detect(g1)
    assert detect_format(g1) == "gemma-scope" and detect_format(f.parent) == "gemma-scope-2"


# ---------------------------------------------------------------------- Gemma Scope 2 CLTs, whole


def _write_gs2_clt(folder: Path, *, n: int = 4, d: int = 8, s: int = 12, affine: bool = False, seed: int = 20,
                   dtype: torch.dtype = torch.float32, slots: str = "all") -> list[dict[str, torch.Tensor]]:
    """Gemma Scope 2 CLT files as the Hub holds them: params_layer_{L} with w_dec [d_sae, n, d] indexed by target
    layer (slots before L filled with noise: they must not be read) or [d_sae, n - L, d] (``slots="forward"``)."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for L in range(n):
        t = {"w_enc": torch.randn(d, s, generator=g) / math.sqrt(d), "b_enc": torch.randn(s, generator=g) * 0.2,
             "threshold": torch.rand(s, generator=g) * 0.5, "b_dec": torch.randn(d, generator=g) * 0.3,
             "w_dec": torch.randn(s, n if slots == "all" else n - L, d, generator=g) / math.sqrt(s)}
        if affine:
            t["affine_skip_connection"] = torch.randn(d, d, generator=g) * 0.1
        t = {k: v.to(dtype) for k, v in t.items()}
        save_file(t, str(folder / f"params_layer_{L}.safetensors"))
        out.append(t)
    return out


def _gs2_clt_reference(files: list[dict[str, torch.Tensor]], xs: list[torch.Tensor], slots: str = "all"
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Google's JumpReLU per source layer, (pre > threshold) * relu(pre), and every target t summing the decoders
    of sources L <= t (slot t of an absolute w_dec, slot t - L of a forward one) + b_dec[t] (+ x_t @ affine[t]);
    float64 loops."""
    n = len(files)
    f64 = [{k: v.double() for k, v in f.items()} for f in files]
    acts = []
    for L in range(n):
        pre = xs[L].double() @ f64[L]["w_enc"] + f64[L]["b_enc"]
        acts.append((pre > f64[L]["threshold"]) * torch.relu(pre))
    outs = []
    for t in range(n):
        y = f64[t]["b_dec"].expand(xs[0].shape[0], -1).clone()
        for L in range(t + 1):
            y = y + acts[L] @ f64[L]["w_dec"][:, t if slots == "all" else t - L, :]
        if "affine_skip_connection" in f64[t]:
            y = y + xs[t].double() @ f64[t]["affine_skip_connection"]
        outs.append(y)
    return acts, outs


@pytest.mark.parametrize("affine,slots,dtype,tol", [
    (False, "all", torch.float32, 1e-5), (True, "all", torch.float32, 1e-5), (True, "forward", torch.float32, 1e-5),
    (True, "all", torch.bfloat16, 0.03),
])
def test_gemma_scope_2_clt_loads_whole(tmp_path, affine, slots, dtype, tol):
    from sae_hub.multilayer import MultiLayerDictionary

    folder = tmp_path / "models--google--gemma-scope-2-1b-pt" / "snapshots" / "abc" / "clt" / "width_262k_l0_medium"
    files = _write_gs2_clt(folder, affine=affine, slots=slots, dtype=dtype)
    assert detect_format(folder) == "gemma-scope-2-clt"
    m = MultiLayerDictionary.load_from_disk(folder, feature_input_hook="hook_resid_mid",
                                            feature_output_hook="hook_mlp_out")
    c = m.cfg
    assert (c.kind, c.layers, c.has_skip, c.model_name, m.dtype) == ("clt", [0, 1, 2, 3], affine,
                                                                     "google/gemma-3-1b-pt", dtype)
    assert c.hook_names_in[3] == "blocks.3.hook_resid_mid" and c.hook_names_out[0] == "blocks.0.hook_mlp_out"
    xs = [torch.randn(10, 8, generator=torch.Generator().manual_seed(i)).to(dtype) for i in range(4)]
    acts, outs = _gs2_clt_reference(files, xs, slots)
    feats, got = m.encode_all(xs), m(xs)
    for t in range(4):
        if dtype == torch.float32:
            assert (feats[t].double() - acts[t]).abs().max().item() <= tol
        assert (got[t].double() - outs[t]).abs().max().item() <= tol * (1 + outs[t].abs().max().item())
    assert 0.05 < torch.stack([feats[t] > 0 for t in range(4)]).float().mean().item() < 0.95
    if slots == "all":  # the decoder is a view of the memory-mapped file, not a copy
        assert m.W_dec[2].data_ptr() != 0 and not m.W_dec[2].is_contiguous()


def test_gemma_scope_2_clt_negative_threshold_is_folded_exactly(tmp_path):
    from sae_hub.multilayer import MultiLayerDictionary

    files = _write_gs2_clt(tmp_path / "c", n=2)
    files[1]["threshold"][:4] = -0.3
    save_file(files[1], str(tmp_path / "c" / "params_layer_1.safetensors"))
    m = MultiLayerDictionary.load_from_disk(tmp_path / "c")
    xs = [torch.randn(50, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    acts, outs = _gs2_clt_reference(files, xs)
    assert (m.encode(1, xs[1]).double() - acts[1]).abs().max().item() <= 1e-5
    assert (m(xs)[1].double() - outs[1]).abs().max().item() <= 1e-5
    assert any("negative thresholds" in r for r in m.cfg.provenance.conversions)


@pytest.mark.parametrize("case,error,file,field", [
    ("missing_layer", "MissingFileError", "params_layer_2.safetensors", "w_dec"),
    ("missing_last", "ShapeMismatchError", "params_layer_0.safetensors", "w_dec"),
    ("d_sae", "ShapeMismatchError", "params_layer_1.safetensors", "w_enc"),
    ("d_sae_in_file", "ShapeMismatchError", "params_layer_1.safetensors", "threshold"),
    ("targets", "ShapeMismatchError", "params_layer_2.safetensors", "w_dec"),
    ("affine_some", "ShapeMismatchError", "params_layer_3.safetensors", "affine_skip_connection"),
    ("no_b_dec", "ShapeMismatchError", "params_layer_1.safetensors", "b_dec"),
])
def test_gemma_scope_2_clt_bad_file_sets_name_file_and_tensor(tmp_path, case, error, file, field):
    from sae_hub.multilayer import MultiLayerDictionary

    folder = tmp_path / "clt"
    files = _write_gs2_clt(folder, affine=case == "affine_some")

    def rewrite(layer: int, t: dict[str, torch.Tensor]) -> None:
        save_file(t, str(folder / f"params_layer_{layer}.safetensors"))

    if case == "missing_layer":
        (folder / "params_layer_2.safetensors").unlink()
    elif case == "missing_last":  # three files, but every decoder names four target layers
        (folder / "params_layer_3.safetensors").unlink()
    elif case == "d_sae":
        rewrite(1, {**files[1], "w_enc": torch.zeros(8, 13), "b_enc": torch.zeros(13), "threshold": torch.zeros(13),
                    "w_dec": torch.zeros(13, 4, 8)})
    elif case == "d_sae_in_file":
        rewrite(1, {**files[1], "threshold": torch.zeros(11)})
    elif case == "targets":
        rewrite(2, {**files[2], "w_dec": torch.zeros(12, 3, 8)})
    elif case == "affine_some":
        rewrite(3, {k: v for k, v in files[3].items() if k != "affine_skip_connection"})
    elif case == "no_b_dec":
        rewrite(1, {k: v for k, v in files[1].items() if k != "b_dec"})
    with pytest.raises(Exception) as e:
        MultiLayerDictionary.load_from_disk(folder, format="gemma-scope-2-clt")
    assert type(e.value).__name__ == error
    assert Path(str(e.value.path)).name == file and e.value.field == field


def test_gemma_scope_2_clt_layer_file_alone_still_refused_as_an_sae_pointing_to_the_whole(tmp_path):
    _write_gs2_clt(tmp_path / "clt", n=2)
    with pytest.raises(UnsupportedSAEError, match="MultiLayerDictionary") as e:
        SAE.load_from_disk(tmp_path / "clt" / "params_layer_0.safetensors")
    assert "clt_decoder='sum'" in str(e.value)
    with pytest.raises(UnsupportedSAEError, match="MultiLayerDictionary"):
        SAE.load_from_disk(tmp_path / "clt")  # the folder: the whole-CLT format, refused as an SAE


def test_gemma_scope_2_clt_release_from_the_hub_fetches_its_folder_only(hub, tmp_path):
    """The shipped release table entry, against the local test Hub: the CLT folder's layer files are fetched
    (nothing from the repo's other folders), hooks come from the release's options, outputs match the formula."""
    from sae_hub.multilayer import MultiLayerDictionary

    repo = "google/gemma-scope-2-1b-pt"
    files = _write_gs2_clt(tmp_path / "src", n=3, affine=True)
    for L in range(3):
        hub.add_file(repo, f"clt/width_262k_l0_medium_affine/params_layer_{L}.safetensors",
                     (tmp_path / "src" / f"params_layer_{L}.safetensors").read_bytes())
        hub.add_file(repo, f"clt/width_262k_l0_medium/params_layer_{L}.safetensors", b"not fetched")
    hub.add_file(repo, "resid_post/layer_0_width_16k_l0_small/params.safetensors", b"not fetched")
    m = MultiLayerDictionary.from_pretrained("gemma-scope-2-1b-pt-clt", "width_262k_l0_medium_affine")
    gets = sorted(r.path.split("/resolve/")[1].split("/", 1)[1]
                  for r in hub.find(method="GET", path_contains="/resolve/"))
    assert gets == [f"clt/width_262k_l0_medium_affine/params_layer_{L}.safetensors" for L in range(3)]
    assert m.cfg.hook_names_in == [f"blocks.{L}.hook_resid_mid" for L in range(3)]
    assert m.cfg.model_name == "google/gemma-3-1b-pt" and m.cfg.has_skip
    xs = [torch.randn(5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    _, outs = _gs2_clt_reference(files, xs)
    got = m(xs)
    assert max((got[t].double() - outs[t]).abs().max().item() for t in range(3)) <= 1e-5
