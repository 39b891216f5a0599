"""EleutherAI sparsify loader against sparsify's ``SparseCoder`` semantics, written out here independently.

sparsify (``sparse_coder.py`` / ``fused_encoder.py``): ``x' = x - b_dec`` unless ``transcode``;
``pre = relu(x' @ encoder.weight.T + encoder.bias)``; ``top_acts, top_indices = pre.topk(k)``;
``sae_out = top_acts @ W_dec[top_indices] + b_dec`` (+ ``x @ W_skip.mT`` with a skip connection).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sae_hub import SAE, detect_format
from sae_hub.errors import (
    ConfigError,
    CorruptFileError,
    FormatDetectionError,
    ShapeMismatchError,
    UnsupportedSAEError,
)

D_IN, N_LAT, K = 16, 64, 6
ATOL = RTOL = 1e-5


def write_sparsify(folder: Path, *, transcode: bool = False, skip: bool = False, layout: str = "current",
                   dtype: torch.dtype = torch.float32, seed: int = 0, **cfg_extra: object) -> dict[str, torch.Tensor]:
    """A hookpoint folder as ``SparseCoder.save_to_disk`` writes it (or the pre-release ``W_enc`` layout)."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(N_LAT, D_IN, generator=g) * 0.3
    sd = {
        "encoder.weight": enc,
        "encoder.bias": torch.randn(N_LAT, generator=g) * 0.3,
        "W_dec": torch.randn(N_LAT, D_IN, generator=g) * 0.3,
        "b_dec": torch.randn(D_IN, generator=g) + 1.0,
    }
    if skip:
        sd["W_skip"] = torch.randn(D_IN, D_IN, generator=g) * 0.1
    if layout == "prerelease":
        sd = {"W_enc": enc.T.contiguous(), "b_enc": sd.pop("encoder.bias"), "W_dec": sd["W_dec"],
              "b_dec": sd["b_dec"], **({"W_skip": sd["W_skip"]} if skip else {})}
    elif layout == "dec_transposed":
        sd["W_dec"] = sd["W_dec"].T.contiguous()
    sd = {k: v.to(dtype) for k, v in sd.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": N_LAT, "k": K,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": D_IN, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return sd


def sparsify_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, transcode: bool,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense codes, decode(top_acts, top_indices), forward output incl. the skip connection, pre_acts)."""
    w = {k: v.float() for k, v in sd.items()}
    enc_w = w["encoder.weight"] if "encoder.weight" in w else w["W_enc"].T
    enc_b = w["encoder.bias"] if "encoder.bias" in w else w["b_enc"]
    W_dec = w["W_dec"] if w["W_dec"].shape[0] == N_LAT else w["W_dec"].T
    xc = x if transcode else x - w["b_dec"]
    pre = torch.relu(torch.nn.functional.linear(xc, enc_w, enc_b))
    top_acts, top_idx = pre.topk(K, dim=-1, sorted=False)
    codes = torch.zeros_like(pre).scatter(-1, top_idx, top_acts)
    y = (top_acts[..., None] * W_dec[top_idx]).sum(-2) + w["b_dec"]
    out = y + x @ w["W_skip"].mT if "W_skip" in w else y
    return codes, y, out, pre


def _x(n: int = 32, seed: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g) * 2 + 1


@pytest.mark.parametrize(("kw", "hook_in", "hook_out"), [
    ({}, "blocks.5.hook_resid_post", None),
    ({"transcode": True}, "blocks.5.hook_resid_post", None),
    ({"skip": True}, "blocks.5.hook_resid_post", None),
    ({"transcode": True, "skip": True}, "blocks.5.hook_resid_post", None),
    ({"layout": "prerelease"}, "blocks.5.hook_resid_post", None),
    ({"layout": "dec_transposed"}, "blocks.5.hook_resid_post", None),
])
def test_sparsify_against_sparse_coder_semantics(tmp_path, kw, hook_in, hook_out):
    folder = tmp_path / "layers.5"
    sd = write_sparsify(folder, **kw)
    assert detect_format(folder) == "sparsify"
    sae = SAE.load_from_disk(folder)
    x = _x()
    codes_ref, y_ref, out_ref, _ = sparsify_reference(sd, x, kw.get("transcode", False))
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes, codes_ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(sae.decode(codes), y_ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(sae(x), out_ref, atol=ATOL, rtol=RTOL)
        vals, idx = sae.encode_topk(x)
        torch.testing.assert_close(sae.decode_sparse(vals, idx), y_ref, atol=ATOL, rtol=RTOL)
    c = sae.cfg
    assert (c.architecture, c.k, c.d_in, c.d_sae) == ("topk", K, D_IN, N_LAT)
    assert c.apply_b_dec_to_input == (not kw.get("transcode", False))
    assert c.has_skip == kw.get("skip", False)
    assert (c.hook_name, c.hook_name_out, c.hf_hook_name) == (hook_in, hook_out, "layers.5")


def test_sparsify_mlp_transcoder_hooks(tmp_path):
    folder = tmp_path / "layers.2.mlp"
    write_sparsify(folder, transcode=True)
    c = SAE.load_from_disk(folder).cfg
    assert (c.hook_name, c.hook_name_out) == ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
    assert c.is_transcoder
    folder = tmp_path / "layers.2.mlp_sae"
    write_sparsify(folder)
    assert SAE.load_from_disk(folder).cfg.hook_name is None  # unknown hookpoint: no guess
    write_sparsify(tmp_path / "embed_tokens")
    assert SAE.load_from_disk(tmp_path / "embed_tokens").cfg.hook_name == "hook_embed"


def test_sparsify_bf16(tmp_path):
    """bf16 as sparsify saves it: tolerance 2 % of the largest |value|, on rows whose top-k gap exceeds 1 %."""
    folder = tmp_path / "layers.1"
    sd = write_sparsify(folder, dtype=torch.bfloat16)
    sae = SAE.load_from_disk(folder)
    assert sae.dtype == torch.bfloat16
    x = _x(64)
    codes_ref, y_ref, _, pre = sparsify_reference(sd, x, False)
    with torch.no_grad():
        codes = sae.encode(x).float()
        y = sae.decode(codes).float()
    srt = pre.sort(dim=-1, descending=True).values
    clear = (srt[:, K - 1] - srt[:, K]) > 0.01 * pre.max()
    assert clear.sum() >= 32
    assert torch.equal((codes != 0)[clear], (codes_ref != 0)[clear])
    assert (codes - codes_ref)[clear].abs().max() <= 0.02 * codes_ref.abs().max()
    assert (y - y_ref)[clear].abs().max() <= 0.02 * y_ref.abs().max()


@pytest.mark.parametrize(("extra", "word"), [
    ({"activation": "groupmax"}, "groupmax"),
    ({"signed": True}, "signed"),
    ({"embed_skip": True}, "embedding"),
    ({"gram_lookup": True}, "n-gram"),
])
def test_unrepresentable_variants_are_refused(tmp_path, extra, word):
    write_sparsify(tmp_path / "layers.0", **extra)
    with pytest.raises(UnsupportedSAEError, match=word):
        SAE.load_from_disk(tmp_path / "layers.0")


def test_detection_separates_sparsify_from_saelens_cfg_json(tmp_path):
    from sae_hub.loaders import sparsify

    saelens = Path(__file__).parent / "fixtures" / "sae_lens" / "standard"
    assert detect_format(saelens) == "saelens" and not sparsify.detect(saelens)
    # a SAELens-style cfg.json next to sae.safetensors is not sparsify's
    d = tmp_path / "odd"
    write_sparsify(d)
    (d / "cfg.json").write_text((saelens / "cfg.json").read_text())
    assert not sparsify.detect(d)
    with pytest.raises(FormatDetectionError):
        SAE.load_from_disk(d)
    with pytest.raises(ConfigError, match="not a sparsify"):
        SAE.load_from_disk(d, format="sparsify")


def test_missing_k_is_a_config_error(tmp_path):
    write_sparsify(tmp_path / "layers.0")
    cfg = json.loads((tmp_path / "layers.0" / "cfg.json").read_text())
    del cfg["k"]
    (tmp_path / "layers.0" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        SAE.load_from_disk(tmp_path / "layers.0")
    assert e.value.field == "k"


def test_bad_files(tmp_path):
    write_sparsify(tmp_path / "t")
    p = tmp_path / "t" / "sae.safetensors"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CorruptFileError):
        SAE.load_from_disk(tmp_path / "t")
    write_sparsify(tmp_path / "j")
    (tmp_path / "j" / "cfg.json").write_text("{oops")
    assert detect_format(tmp_path / "j") == "sparsify"  # claimed, so the error names the broken file
    with pytest.raises(CorruptFileError, match="JSON"):
        SAE.load_from_disk(tmp_path / "j")
    write_sparsify(tmp_path / "d", d_in=D_IN + 1)
    with pytest.raises(ShapeMismatchError, match="d_in"):
        SAE.load_from_disk(tmp_path / "d")
    write_sparsify(tmp_path / "n", num_latents=N_LAT * 2)
    with pytest.raises(ShapeMismatchError):
        SAE.load_from_disk(tmp_path / "n")
    sd = write_sparsify(tmp_path / "s", skip=True)
    save_file({k: v for k, v in sd.items() if k != "W_skip"}, str(tmp_path / "s" / "sae.safetensors"))
    with pytest.raises(ShapeMismatchError, match="W_skip"):
        SAE.load_from_disk(tmp_path / "s")
    sd = write_sparsify(tmp_path / "m")
    save_file({k: v for k, v in sd.items() if k != "b_dec"}, str(tmp_path / "m" / "sae.safetensors"))
    with pytest.raises(ShapeMismatchError, match="b_dec"):
        SAE.load_from_disk(tmp_path / "m")


def test_roundtrip_through_the_native_format(tmp_path):
    folder = tmp_path / "layers.3"
    sd = write_sparsify(folder, skip=True)
    sae = SAE.load_from_disk(folder)
    sae.save_pretrained(tmp_path / "native", saelens_compatible=False)  # a topk skip transcoder: no SAELens form
    again = SAE.load_from_disk(tmp_path / "native")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(again(x), sparsify_reference(sd, x, False)[2], atol=ATOL, rtol=RTOL)
    assert again.cfg.provenance.source_format == "sparsify"
